"""Knowledge distillation (Hinton et al. 2015) from a unimodal teacher of the other modality.

Example: python main-KD-UU.py --database AV-MNIST --mode m1 --ckpt_name runs/S/AV-MNIST/<m2 run>/best.pth
"""
import utils

if __name__ == "__main__":
    utils.main("KD-UU")
