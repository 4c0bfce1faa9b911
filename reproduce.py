"""Reproduce the comparison table: teachers, no-KD baselines and every method, for each database, student modality
and seed, as a dependency graph run in parallel and resumably, then aggregated into tables with paired statistics.

Example: python reproduce.py --database Synthetic-MVD --jobs 2     (docs/sweep.md)
"""
import sys

import utils.sweep

if __name__ == "__main__":
    sys.exit(utils.sweep.main())
