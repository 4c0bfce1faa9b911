"""``python check_data.py DIR``: check a bring-your-own data folder (docs/own-data.md)
with every check a run makes before its first epoch, and print what a run would see, without training.

The checks are the run's own (the same loader, split and checks as ``main-*.py --database Paired``): readable,
numeric ``.npy`` files of the same ``N``, finite values within the float32 range, integer labels ``0..K-1``, a
valid ``meta.json``, ``splits.csv`` and ``groups.npy`` (no group in two parts); and for every seed (``--seeds``,
default all 20 split columns) non-empty train/val/test splits that hold every class. Exit code 0 when everything
passes, else one ``error:`` line and 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from datasets.checks import check_classes, check_splits
from datasets.paired import NAME, SPLIT_FIX, all_splits, read_meta, split_groups
from datasets.splits import NUM_GROUPS, check_seed
from kd_methods import get_method
from utils import cli
from utils.cli import _Parser
from utils.core.errors import UserError
from utils.core.script import exit_on_error
from utils.engine import build_context


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="check_data.py", description=(
        "Check a Paired data folder (m1.npy, m2.npy, labels.npy, optional splits.csv and meta.json) with every "
        "check a run makes, and print N, shapes, dtypes, classes and their counts and the splits, without "
        "training."))
    parser.add_argument("data_root", metavar="DIR", help="the folder holding m1.npy, m2.npy and labels.npy")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, metavar="S",
                        help="split seeds to check (default: 0..19, every column of the split procedure)")
    parser.add_argument("--paired_norm", default="standardize", choices=["standardize", "none"],
                        help="normalisation a run would use (default: %(default)s)")
    return parser


def check(data_root: str, seeds: list[int] | None = None, paired_norm: str = "standardize") -> list[str]:
    """Every check of a Paired run on ``data_root``; returns the summary's lines (raises UserError on a problem)."""

    seeds = list(range(NUM_GROUPS)) if seeds is None else list(dict.fromkeys(seeds))
    for seed in seeds:
        check_seed(seed)
    notes: list[str] = []
    argv = ["--database", NAME, "--data_root", data_root, "--seed", str(seeds[0]), "--paired_norm", paired_norm,
            "--out_dir", str(Path(data_root) / "unused")]
    description = cli.describe(get_method("S"), argv)
    args = description.args
    ctx = build_context(description, torch.device("cpu"), log=notes.append)  # loader, split, every check, statistics
    spec, source = ctx.spec, ctx.source
    every = all_splits(args, len(source), lambda _: None)
    chosen = {seed: every[seed] for seed in seeds}
    for seed, split in chosen.items():
        check_splits(spec.name, len(source), dict(zip(("train", "val", "test"), split)))
    check_classes(source.labels(), spec.num_classes, chosen, data_root, SPLIT_FIX)
    sizes = {seed: "/".join(str(len(part)) for part in split) for seed, split in chosen.items()}
    root = Path(data_root)
    groups = split_groups(args, len(source))
    names = read_meta(args).get("class_names") or [str(k) for k in range(spec.num_classes)]
    counts = np.bincount(source.labels(), minlength=spec.num_classes)
    lines = [f"{root}: every check passed (Paired, as a run would read it)",
             f"  N: {len(source)} samples"]
    for modality in ("m1", "m2"):
        array = source.m1 if modality == "m1" else source.m2
        shape = ", ".join(map(str, array.shape))
        lines.append(f"  {modality} ({spec.modalities[modality]}): {root / (modality + '.npy')} [{shape}] "
                     f"{array.dtype}; default student {spec.students[modality]}")
    lines.append(f"  labels: {spec.num_classes} classes: " + ", ".join(
        f"{k} {name!r} {int(counts[k])}" if name != str(k) else f"{k}: {int(counts[k])}"
        for k, name in enumerate(names)))
    if (root / "splits.csv").is_file():
        origin = f"{root / 'splits.csv'}" + (f", checked to keep the {len(np.unique(groups))} groups of groups.npy "
                                              f"together" if groups is not None else "")
    elif groups is not None:
        origin = f"whole groups of {root / 'groups.npy'} ({len(np.unique(groups))} groups) per part"
    else:
        origin = "generated in memory (no splits.csv, no groups.npy)"
    shown = ", ".join(f"seed {seed} {size}" for seed, size in sizes.items()) if len(set(sizes.values())) > 1 else \
        f"{next(iter(sizes.values()))} for each of seeds {_seed_range(seeds)}"
    lines.append(f"  splits (train/val/test, 60/20/20): {origin}; {shown}; every split holds every class")
    lines.append(f"  normalisation: {paired_norm}" + (" (per channel, training-split statistics)"
                                                     if paired_norm == "standardize" else ""))
    return lines


def _seed_range(seeds: list[int]) -> str:
    return f"{seeds[0]}..{seeds[-1]}" if seeds == list(range(seeds[0], seeds[-1] + 1)) and len(seeds) > 1 \
        else " ".join(map(str, seeds))


def main(argv=None) -> None:
    def body():
        args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
        if not Path(args.data_root).is_dir():
            raise UserError(f"{args.data_root} is not a folder; pass the folder holding m1.npy, m2.npy and "
                            f"labels.npy")
        for line in check(args.data_root, args.seeds, args.paired_norm):
            print(line)

    exit_on_error(body)
