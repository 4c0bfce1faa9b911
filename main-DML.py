"""Deep Mutual Learning (Zhang et al., CVPR 2018): the student and a peer of the other modality learn together.

Example: python main-DML.py --database RAVDESS --mode m1   # VisualBranchNet with an AudioBranchNet peer, no checkpoint
"""
import utils

if __name__ == "__main__":
    utils.main("DML")
