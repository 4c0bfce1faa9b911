"""Train/val/test splits exactly as the reference (``indices_gen.py`` + ``get_indices``).

``metadata/<database>_indices.csv`` holds 20 columns ``group_0..group_19``, each a permutation of ``0..N-1``
drawn in turn from NumPy's legacy MT19937 generator seeded with 19980427. A run with ``--seed s`` reads
column ``group_s`` and cuts it 60/20/20 by position (``int(0.6 N)``, ``int(0.8 N)``).
"""
from __future__ import annotations

import shlex
from pathlib import Path

import numpy as np

from datasets.base import read_text
from utils.core.atomic import atomic_write_bytes
from utils.core.errors import UserError

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
    header = ",".join(f"group_{g}" for g in range(len(permutations)))

    def write(handle):
        np.savetxt(handle, permutations.T, fmt="%d", delimiter=",", header=header, comments="")

    atomic_write_bytes(path, write, fix="pass a writable --metadata_dir", make_parents=True)
    return path


def read_group(path: str | Path, seed: int, regenerate: str = "") -> np.ndarray:
    """Column ``group_<seed>`` of a split file; ``regenerate`` is the command that rewrites it, for messages."""
    path = Path(path)
    lines = read_text(path, f"a split file with the columns group_0..group_{NUM_GROUPS - 1}").splitlines()
    header = [name.strip() for name in (lines[0] if lines else "").strip().split(",")]
    column = f"group_{seed}"
    if column not in header:
        found = ", ".join(header[:6]) + (", ..." if len(header) > 6 else "") if any(header) else "none"
        raise UserError(f"{path} has no column {column} (columns found: {found}); a split file has the columns "
                        f"group_0..group_{NUM_GROUPS - 1}{regenerate}")
    try:
        values = np.loadtxt(path, delimiter=",", skiprows=1, usecols=header.index(column), dtype=np.int64, ndmin=1)
    except ValueError as error:
        raise UserError(f"{path}, column {column}: {str(error).strip().splitlines()[-1]}; sample indices must be "
                        f"integers{regenerate}") from None
    return values


def cut(permutation: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = len(permutation)
    a, b = int(n * 0.6), int(n * 0.8)
    return permutation[:a], permutation[a:b], permutation[b:]


def check_seed(seed: int) -> None:
    if not 0 <= seed < NUM_GROUPS:
        raise UserError(f"--seed {seed} has no split column; valid seeds are 0..{NUM_GROUPS - 1}")


def regenerate_command(database: str, metadata_dir: str | Path = "metadata", data_root: str | None = None) -> str:
    """The ``indices_gen.py`` command that rewrites the split file, exactly as it must be typed."""
    parts = ["python indices_gen.py", "--database", database, "--overwrite"]
    if str(metadata_dir) != "metadata":
        parts += ["--metadata_dir", str(metadata_dir)]
    if data_root is not None:
        parts += ["--data_root", str(data_root)]
    return " ".join(shlex.quote(p) if i else p for i, p in enumerate(parts))


def resolve_split(database: str, n: int, seed: int, from_file: bool = True,
                  metadata_dir: str | Path = "metadata", log=print,
                  data_root: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The (train, val, test) sample indices of ``database`` for ``--seed``.

    With ``from_file`` the reference's CSV is read, and written first when missing. Otherwise (embedded
    synthetic data) the same permutation is computed in memory. A file that is not a permutation of ``0..N-1``
    (another N, repeated or missing indices) is refused with the command that rewrites it.
    """
    check_seed(seed)
    if n == 0:
        raise UserError(f"{database} has no samples; check --data_root and the data files (docs/data.md, "
                        f"section '{database}')")
    if not from_file:
        return cut(generate_permutations(n, seed + 1)[seed])
    path = indices_path(database, metadata_dir)
    if not path.is_file():
        write_indices_csv(path, generate_permutations(n))
        log(f"Split file {path} was missing: generated it for N={n} (seed {INDEX_SEED}, as indices_gen.py).")
    command = regenerate_command(database, metadata_dir, data_root)
    fix = f"; rewrite it (this changes the splits of every run on it): {command}"
    permutation = read_group(path, seed, fix)
    if len(permutation) != n:
        raise UserError(f"{path} is a split for N={len(permutation)} samples but {database} has N={n}{fix}")
    counts = np.bincount(permutation[(permutation >= 0) & (permutation < n)], minlength=n)
    outside = permutation[(permutation < 0) | (permutation >= n)]
    if outside.size:
        raise UserError(f"{path}, column group_{seed}: index {int(outside[0])} is outside 0..{n - 1} "
                        f"({database} has N={n}){fix}")
    if counts.max(initial=0) > 1:
        repeated = np.flatnonzero(counts > 1)
        raise UserError(f"{path}, column group_{seed} repeats {repeated.size} sample index(es) (e.g. "
                        f"{int(repeated[0])} appears {int(counts[repeated[0]])} times) and misses as many; a split "
                        f"column must be a permutation of 0..{n - 1}{fix}")
    return cut(permutation)
