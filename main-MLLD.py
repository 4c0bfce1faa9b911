"""Multi-level logit distillation (Jin et al., CVPR 2023) from a pre-trained multimodal teacher.

Example: python main-MLLD.py --database CMMD-V2 --mode m1 --ckpt_name runs/T/CMMD-V2/<run>/best.pth
"""
import utils

if __name__ == "__main__":
    utils.main("MLLD")
