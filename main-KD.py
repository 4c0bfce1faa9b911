"""Knowledge distillation (Hinton et al. 2015) from a pre-trained multimodal teacher to a unimodal student.

Example: python main-KD.py --database AV-MNIST --mode m1 --ckpt_name runs/T/AV-MNIST/<run>/best.pth
"""
import utils

if __name__ == "__main__":
    utils.main("KD")
