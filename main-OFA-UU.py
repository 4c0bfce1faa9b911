"""OFA (Hao et al., NeurIPS 2023) from a cross-modal unimodal teacher (a main-S.py model of the other modality).

Example: python main-OFA-UU.py --database CMMD-V2 --mode m1 --ckpt_name runs/S/CMMD-V2/<m2 run>/best.pth
"""
import utils

if __name__ == "__main__":
    utils.main("OFA-UU")
