"""Test a trained multimodal model on the test split of --seed and print the reference's metrics.

Example: python test-T.py --database AV-MNIST --ckpt_name runs/T/AV-MNIST/<run>/best.pth
"""
import utils

if __name__ == "__main__":
    utils.main("test-T")
