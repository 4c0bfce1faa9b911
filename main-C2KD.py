"""C2KD (Huo et al., CVPR 2024): a cross-modal teacher and the student trained together with proxies and a rank gate.

Example: python main-C2KD.py --database AV-MNIST --mode m1 --ckpt_name runs/S/AV-MNIST/<m2 run>/best.pth
"""
import utils

if __name__ == "__main__":
    utils.main("C2KD")
