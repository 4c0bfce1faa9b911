"""FD-CMKD (Liu et al., AAAI 2026): frequency-decoupled feature distillation from a pre-trained unimodal teacher of the
other modality.

Example: python main-FD-CMKD.py --database UCI-MFeat --mode m1 --ckpt_name runs/S/UCI-MFeat/<m2 run>/best.pth
"""
import utils

if __name__ == "__main__":
    utils.main("FD-CMKD")
