"""MGDFR (Xue et al., ICLR 2023): co-train a cross-modal teacher, rank its features by salience, KD to a fresh student.

Example: python main-MGDFR.py --database RAVDESS --mode m2
"""
import utils

if __name__ == "__main__":
    utils.main("MGDFR")
