"""FitNets (Romero et al., ICLR 2015): hint training of two student layers, then KD from a multimodal teacher.

Example: python main-FitNets.py --database AV-MNIST --ckpt_name runs/T/AV-MNIST/<run>/best.pth
"""
import utils

if __name__ == "__main__":
    utils.main("FitNets")
