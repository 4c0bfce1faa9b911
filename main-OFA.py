"""OFA (Hao et al., NeurIPS 2023): projectors on the student stages trained against a multimodal teacher's logits.

Example: python main-OFA.py --database AV-MNIST --ckpt_name runs/T/AV-MNIST/<run>/best.pth
"""
import utils

if __name__ == "__main__":
    utils.main("OFA")
