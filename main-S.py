"""Train a unimodal model on --mode: the no-KD baseline, or the cross-modal teacher of the -UU methods.

Example: python main-S.py --database RAVDESS --mode m2   # AudioBranchNet, a teacher for main-KD-UU.py --mode m1
"""
import utils

if __name__ == "__main__":
    utils.main("S")
