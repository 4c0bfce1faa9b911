"""Test a trained multimodal model on the test split it was trained beside (the checkpoint's --seed, data options
and split) and print the reference's metrics.

Example: python test-T.py --database AV-MNIST --ckpt_name runs/T/AV-MNIST/<run>/best.pth
"""
import utils

if __name__ == "__main__":
    utils.main("test-T")
