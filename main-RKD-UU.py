"""Relational knowledge distillation (Park et al., CVPR 2019) from a unimodal teacher of the other modality.

Example: python main-RKD-UU.py --database AV-MNIST --mode m1 --ckpt_name runs/S/AV-MNIST/<m2 run>/best.pth
"""
import utils

if __name__ == "__main__":
    utils.main("RKD-UU")
