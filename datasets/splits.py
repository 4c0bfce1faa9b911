"""Train/val/test splits exactly as the reference (``indices_gen.py`` + ``get_indices``).

``metadata/<database>_indices.csv`` holds 20 columns ``group_0..group_19``, each a permutation of ``0..N-1``
drawn in turn from NumPy's legacy MT19937 generator seeded with 19980427. A run with ``--seed s`` reads
column ``group_s`` and cuts it 60/20/20 by position (``int(0.6 N)``, ``int(0.8 N)``).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from utils.errors import UserError

INDEX_SEED = 19980427
NUM_GROUPS = 20


def generate_permutations(n: int, groups: int = NUM_GROUPS) -> np.ndarray:
    """``[groups, n]``: the successive ``numpy.random.permutation(n)`` draws after ``np.random.seed(19980427)``."""
    rng = np.random.RandomState(INDEX_SEED)  # same stream as the legacy global generator after np.random.seed
    return np.stack([rng.permutation(n) for _ in range(groups)])


def indices_path(database: str, metadata_dir: str | Path = "metadata") -> Path:
    return Path(metadata_dir) / f"{database}_indices.csv"


def write_indices_csv(path: str | Path, permutations: np.ndarray) -> Path:
    """Header ``group_0,...,group_19``, one row per position, no index column; written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    header = ",".join(f"group_{g}" for g in range(len(permutations)))
    np.savetxt(tmp, permutations.T, fmt="%d", delimiter=",", header=header, comments="")
    os.replace(tmp, path)
    return path


def read_group(path: str | Path, seed: int) -> np.ndarray:
    path = Path(path)
    with open(path) as handle:
        header = handle.readline().strip().split(",")
    column = f"group_{seed}"
    if column not in header:
        raise UserError(f"{path} has no column {column}; valid --seed values are 0..{len(header) - 1}")
    values = np.loadtxt(path, delimiter=",", skiprows=1, usecols=header.index(column), dtype=np.int64, ndmin=1)
    return values


def cut(permutation: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = len(permutation)
    a, b = int(n * 0.6), int(n * 0.8)
    return permutation[:a], permutation[a:b], permutation[b:]


def check_seed(seed: int) -> None:
    if not 0 <= seed < NUM_GROUPS:
        raise UserError(f"--seed {seed} has no split column; valid seeds are 0..{NUM_GROUPS - 1}")


def resolve_split(database: str, n: int, seed: int, from_file: bool = True,
                  metadata_dir: str | Path = "metadata", log=print) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The (train, val, test) sample indices of ``database`` for ``--seed``.

    With ``from_file`` the reference's CSV is read, and written first when missing. Otherwise (embedded
    synthetic data) the same permutation is computed in memory.
    """
    check_seed(seed)
    if not from_file:
        return cut(generate_permutations(n, seed + 1)[seed])
    path = indices_path(database, metadata_dir)
    if not path.is_file():
        write_indices_csv(path, generate_permutations(n))
        log(f"Split file {path} was missing: generated it for N={n} (seed {INDEX_SEED}, as indices_gen.py).")
    permutation = read_group(path, seed)
    if len(permutation) != n or not np.array_equal(np.sort(permutation), np.arange(n)):
        raise UserError(
            f"{path} is a split for N={len(permutation)} samples but {database} has N={n}; "
            f"delete it or run: python indices_gen.py --database {database}"
        )
    return cut(permutation)
