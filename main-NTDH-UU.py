"""NTDH (Chen et al., arXiv 2024) from a unimodal teacher of the other modality, the paper's setting: KD masked where
the teacher is wrong and its logits differ from the student's.

Example: python main-NTDH-UU.py --database AV-MNIST --mode m1 --ckpt_name runs/S/AV-MNIST/<m2 run>/best.pth
"""
import utils

if __name__ == "__main__":
    utils.main("NTDH-UU")
