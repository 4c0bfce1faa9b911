"""Relational knowledge distillation (Park et al., CVPR 2019) from a pre-trained multimodal teacher.

Example: python main-RKD.py --database AV-MNIST --mode m1 --ckpt_name runs/T/AV-MNIST/<run>/best.pth
"""
import utils

if __name__ == "__main__":
    utils.main("RKD")
