"""Contrastive representation distillation (Tian et al., ICLR 2020) from a pre-trained multimodal teacher.

Example: python main-CRD.py --database AV-MNIST --mode m1 --ckpt_name runs/T/AV-MNIST/<run>/best.pth
"""
import utils

if __name__ == "__main__":
    utils.main("CRD")
