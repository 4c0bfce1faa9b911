"""Check a bring-your-own data folder (``--database Paired``) with every check a run makes before its first epoch,
and print what a run would see (N, shapes, dtypes, classes and their counts, splits), without training.

Example: python check_data.py data/my_pairs            (docs/own-data.md)
"""
from utils.datacheck import main

if __name__ == "__main__":
    main()
