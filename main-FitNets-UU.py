"""FitNets (Romero et al., ICLR 2015) from a cross-modal unimodal teacher (a main-S.py model of the other modality).

Example: python main-FitNets-UU.py --database RAVDESS --mode m2 --ckpt_name runs/S/RAVDESS/<m1 run>/best.pth
"""
import utils

if __name__ == "__main__":
    utils.main("FitNets-UU")
