"""Run any registered method by name, also one without a script of its own (a method of a package named in
$CMKD_METHODS, see docs/extending.md, "Adding a method"): python main.py NAME [flags]; main.py KD is main-KD.py.

Example: python main.py KD --database AV-MNIST --mode m1 --ckpt_name runs/T/AV-MNIST/<run>/best.pth
"""
import utils

if __name__ == "__main__":
    utils.main_named()
