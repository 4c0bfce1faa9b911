"""Test a trained unimodal model (a baseline or a distilled student) and print the reference's metrics.

Example: python test-S.py --database AV-MNIST --mode m1 --ckpt_name runs/KD/AV-MNIST/<run>/best.pth
"""
import utils

if __name__ == "__main__":
    utils.main("test-S")
