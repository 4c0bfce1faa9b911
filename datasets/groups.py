"""Group-disjoint splits: every sample of a group (a subject, an actor, a recording) lands in one of train, val
and test (docs/splits.md).

The reference cuts a permutation of the samples 60/20/20, so windows of one recording or clips of one actor fall
into train and test alike. Here, for ``--seed s`` (the same 20 seeds as the per-sample scheme):

1. The ``G`` distinct group ids, sorted, are permuted: try 0 takes the ``s``-th of the 20 permutations drawn from
   NumPy's legacy generator seeded with 19980427 (the per-sample procedure of ``datasets/splits.py`` applied to
   groups), try ``t >= 1`` the permutation of ``numpy.random.RandomState([19980427, s, t])``.
2. Greedy fill: the groups are laid end to end in that order, and each one joins train, val or test by where the
   middle of its span falls against the per-sample cut positions ``int(0.6 N)`` and ``int(0.8 N)``. With one
   sample per group this is exactly the per-sample split; otherwise each part ends within half a group of its cut.
3. A try is kept when each part holds within 5 points of 60/20/20 of the samples and train holds every class;
   among the first :data:`MAX_TRIES` tries the first that also puts every class into val and test is preferred,
   else the first that meets the bounds and the train condition is used.

Inside a part, samples follow the group order, each group's samples in file order. All 20 seeds are resolved up
front (a cheap pass over group sizes and per-group class counts), so a seed without a valid split stops the first
run that reads the groups with one line naming that seed, not a later run of the sweep. When no try of a seed is
valid the line says why (the bounds, or the class that never made it into train) and exit code is 2.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from datasets.base import open_npy
from datasets.splits import INDEX_SEED, NUM_GROUPS, generate_permutations
from utils.core.errors import UserError

#: the parts' target shares of the samples, and how far (in fractions of N) each may be off
FRACTIONS = (0.6, 0.2, 0.2)
TOLERANCE = 0.05
#: seeded permutations tried per seed before the seed is refused
MAX_TRIES = 100
PARTS = ("train", "val", "test")


def read_groups(path: Path, n: int) -> np.ndarray:
    """``[N]`` group ids (integers or strings) from a ``.npy`` file; refuses pickled objects and other shapes."""
    fix = "save one integer or string id per sample with numpy.save (e.g. the subject of each sample)"
    groups = open_npy(path, "group id per sample, [N]", "Paired", mmap=False, fix=fix)
    if groups.ndim != 1 or len(groups) != n:
        raise UserError(f"{path} has shape {list(groups.shape)}, expected [{n}] (one group id per sample); {fix}")
    if groups.dtype.kind not in "iuUS":
        raise UserError(f"{path} holds {groups.dtype} values; group ids must be integers or strings; {fix}")
    return groups


def group_codes(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct ids ``[G]``, each sample's index into them ``[N]``)."""
    ids, codes = np.unique(groups, return_inverse=True)
    return ids, codes.reshape(-1).astype(np.int64)


def _fill(order: np.ndarray, sizes: np.ndarray, n: int) -> np.ndarray:
    """Part (0 train, 1 val, 2 test) of each group when the groups are laid end to end in ``order``."""
    spans = sizes[order]
    middles = np.cumsum(spans) - spans / 2
    part = np.empty(len(order), dtype=np.int64)
    part[order] = np.searchsorted([int(n * 0.6), int(n * 0.8)], middles, side="right")
    return part


def _tries(seed: int, count: int, first: np.ndarray):
    """The group permutations tried for ``seed``: ``first`` (the reference procedure's), then seeded others."""
    yield first
    for attempt in range(1, MAX_TRIES):
        yield np.random.RandomState([INDEX_SEED, seed, attempt]).permutation(count)


def _assign(seed: int, first: np.ndarray, sizes: np.ndarray, class_counts: np.ndarray, where: str) -> tuple:
    """(group order, part per group) of ``seed``: the first valid try, preferring every class in every part."""
    n = int(sizes.sum())
    fallback, missing = None, {}
    for order in _tries(seed, len(sizes), first):
        part = _fill(order, sizes, n)
        shares = np.bincount(part, weights=sizes, minlength=3) / n
        if np.any(np.abs(shares - FRACTIONS) > TOLERANCE + 1e-12):
            continue
        present = np.stack([class_counts[part == p].sum(axis=0) > 0 for p in range(3)])
        if not present[0].all():
            cls = int(np.flatnonzero(~present[0])[0])
            missing[cls] = missing.get(cls, 0) + 1
            continue
        if present.all():
            return order, part
        if fallback is None:  # val or test lacks a class: kept in case no try gives every part every class
            fallback = (order, part)
    if fallback is not None:
        return fallback
    if missing:
        cls = max(missing, key=missing.get)
        holders = int((class_counts[:, cls] > 0).sum())
        raise UserError(f"{where}: no split of seed {seed} puts class {cls} into train ({MAX_TRIES} seeded tries of "
                        f"whole groups within {TOLERANCE * 100:.0f} points of 60/20/20; class {cls} is in {holders} of "
                        f"{len(sizes)} groups); add samples of class {cls} from more groups")
    largest = sizes.max() / n if len(sizes) else 0.0
    raise UserError(f"{where}: no split of seed {seed} into whole groups has train/val/test within "
                    f"{TOLERANCE * 100:.0f} points of 60/20/20 of the samples ({MAX_TRIES} seeded tries; {len(sizes)} "
                    f"groups, the largest holds {largest:.0%} of the samples); use more, smaller groups")


def group_splits(groups: np.ndarray, labels: np.ndarray, num_classes: int, where: str) -> list[tuple]:
    """The (train, val, test) sample indices of all 20 seeds, whole groups per part (module docstring)."""
    _, codes = group_codes(groups)
    count = int(codes.max()) + 1 if len(codes) else 0
    sizes = np.bincount(codes, minlength=count)
    class_counts = np.zeros((count, num_classes), dtype=np.int64)
    np.add.at(class_counts, (codes, labels), 1)
    splits = []
    for seed, first in enumerate(generate_permutations(count, NUM_GROUPS)):
        order, part = _assign(seed, first, sizes, class_counts, where)
        rank = np.empty(count, dtype=np.int64)
        rank[order] = np.arange(count)
        samples = np.argsort(rank[codes], kind="stable")  # group by group, each group's samples in file order
        sample_part = part[codes[samples]]
        splits.append(tuple(samples[sample_part == p] for p in range(3)))
    return splits


def check_disjoint(splits: list[tuple], groups: np.ndarray, where: str) -> None:
    """Refuse (one line) given splits that put one group into two parts, naming the seed, the group and the parts."""
    ids, codes = group_codes(groups)
    for seed, parts in enumerate(splits):
        owner = np.full(len(ids), -1, dtype=np.int64)
        for p, indices in enumerate(parts):
            seen = np.unique(codes[np.asarray(indices)])
            clash = seen[owner[seen] >= 0]
            if clash.size:
                group = clash[0]
                raise UserError(f"{where}: column group_{seed} puts group {ids[group].item()!r} into both "
                                f"{PARTS[owner[group]]} and {PARTS[p]}; a group's samples must all be in one part: "
                                f"rewrite the splits so they keep groups together, or delete the file to use the "
                                f"group split generated from the groups")
            owner[seen] = p
