"""Multi-level logit distillation (Jin et al., CVPR 2023) from a unimodal teacher of the other modality.

Example: python main-MLLD-UU.py --database CMMD-V2 --mode m2 --ckpt_name runs/S/CMMD-V2/<m1 run>/best.pth
"""
import utils

if __name__ == "__main__":
    utils.main("MLLD-UU")
