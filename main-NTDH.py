"""NTDH (Chen et al., arXiv 2024) from a pre-trained multimodal teacher: KD masked where the teacher is wrong and its
logits differ from the student's (our reading; the paper's teachers are cross-modal, main-NTDH-UU.py).

Example: python main-NTDH.py --database AV-MNIST --mode m1 --ckpt_name runs/T/AV-MNIST/<run>/best.pth
"""
import utils

if __name__ == "__main__":
    utils.main("NTDH")
