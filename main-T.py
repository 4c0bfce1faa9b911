"""Train the multimodal (fusion) teacher of a dataset; its best.pth is a --ckpt_name for the KD scripts.

Example: python main-T.py --database AV-MNIST --epochs 100
"""
import utils

if __name__ == "__main__":
    utils.main("T")
