"""Test a trained unimodal model (a baseline or a distilled student) on the test split it was trained beside (the
checkpoint's database, --mode, data options and --seed are the defaults) and print the reference's metrics.

Example: python test-S.py --ckpt_name runs/KD/AV-MNIST/<run>/best.pth
"""
import utils

if __name__ == "__main__":
    utils.main("test-S")
