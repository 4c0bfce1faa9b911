"""Contrastive representation distillation (Tian et al., ICLR 2020) from a unimodal teacher of the other modality.

Example: python main-CRD-UU.py --database CMMD-V2 --mode m2 --ckpt_name runs/S/CMMD-V2/<m1 run>/best.pth
"""
import utils

if __name__ == "__main__":
    utils.main("CRD-UU")
