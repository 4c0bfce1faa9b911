"""``Paired``: bring your own paired data, no code needed (docs/own-data.md).

``--database Paired --data_root DIR`` reads

* ``DIR/m1.npy``, ``DIR/m2.npy``: ``[N, ...]`` arrays of any per-sample shape and numeric dtype, memory-mapped (read a
  batch at a time, so they may be larger than memory); row ``i`` of both is the same sample; ``[N]`` is one value
  per sample (read as ``[N, 1]``);
* ``DIR/labels.npy``: ``[N]`` integer class ids ``0..K-1``;
* ``DIR/splits.csv`` (optional): columns ``group_0..group_19``, each a permutation of ``0..N-1`` as the reference's
  split files; ``--seed s`` reads ``group_s`` and cuts it 60/20/20. Without it the same 20-permutation procedure
  (seed 19980427) is computed in memory;
* ``DIR/groups.npy`` (optional): ``[N]`` integer or string ids (subject, actor, recording); the 20 splits then
  put whole groups into train, val and test (:mod:`datasets.groups`, docs/splits.md), or, with ``splits.csv``,
  the given splits are checked to keep every group in one part;
* ``DIR/meta.json`` (optional): ``{"modalities": {"m1": "image", "m2": "text"}, "class_names": [...]}``
  (``num_classes`` may be given too; default: the largest label + 1).

Default models follow the per-sample shape: ``[C, H, W]`` images get the small CNN (``CNN-m1``/``CNN-m2``), every
other shape the MLP on the flattened sample (``MLP-m1``/``MLP-m2``); the teacher is ``Fusion-I``.
``--Tmodel/--Smodel/--AUXmodel`` override them. Normalisation (``--paired_norm standardize``, default): per
channel (the first per-sample dimension: a vector's columns, an image's channels) with the mean and standard
deviation of the training split; ``none`` feeds the values as they are.

Refused with one line, before training: files of different ``N``; labels that are not integers or not in
``0..K-1``; NaN or infinite values, or values too large for float32; a train split of any of the 20 seeds without a
sample of some class (all seeds checked before the first run), a val or test split of ``--seed`` without one; a
malformed ``splits.csv``, ``meta.json`` or ``groups.npy``; a ``splits.csv`` that puts one group into two parts;
files that are empty, truncated, ``.npz`` archives or pickles. A split smaller than a batch is evaluated as one
short batch. ``python check_data.py DIR`` runs every check and prints a summary without training
(:mod:`utils.datacheck`).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import torch

from datasets.base import DatasetSpec, DataSource, open_npy, read_text
from datasets.checks import check_classes
from datasets.groups import check_disjoint, group_splits, read_groups
from datasets.splits import NUM_GROUPS, check_seed, cut, generate_permutations
from utils.core.errors import UserError

NAME = "Paired"
#: how to mend a split without some class
SPLIT_FIX = "add samples of that class, or give a splits.csv that puts some in every split"
#: rows per chunk of the passes over memory-mapped files (NaN scan, statistics)
CHUNK_ROWS = 4096


def _path(args, name: str) -> Path:
    return Path(args.data_root) / name


FIX = "docs/own-data.md"


def _open(path: Path, description: str) -> np.ndarray:
    if not path.is_file():
        raise UserError(f"missing data file {path} ({description}) for Paired; write it with numpy.save or pass "
                        f"--data_root ({FIX})")
    return open_npy(path, description, NAME, fix=FIX)


def read_features(root: Path, modality: str) -> np.ndarray:
    """``DIR/<modality>.npy`` as ``[N, ...]``: a numeric array with at least one value per sample; ``[N]`` (one
    value per sample) is read as ``[N, 1]``."""
    path = root / f"{modality}.npy"
    array = _open(path, f"modality {modality}, [N, ...]")
    if array.dtype.kind not in "biuf" or array.ndim < 1:
        raise UserError(f"{path} has dtype {array.dtype} and shape {list(array.shape)}; expected a numeric array "
                        f"[N, ...] (bool, integer or float) with one row per sample")
    if array.ndim == 1:
        array = array.reshape(len(array), 1)
    if 0 in array.shape[1:]:
        raise UserError(f"{path} has shape {list(array.shape)}: its samples hold no values; expected [N, ...] with "
                        f"at least one value per sample")
    return array


def read_labels(path: Path) -> np.ndarray:
    """``[N]`` int64 class ids; refuses other shapes and values that are not whole numbers."""
    labels = np.asarray(_open(path, "class id per sample, [N] integers"))
    if labels.ndim != 1:
        raise UserError(f"{path} has shape {list(labels.shape)}; expected [N] class ids")
    if labels.dtype.kind in "iub":
        return labels.astype(np.int64)
    if labels.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(labels) | (labels != np.round(labels)))
        if bad.size:
            raise UserError(f"{path} holds labels that are not integers (e.g. {labels[bad[0]]!r} at sample "
                            f"{int(bad[0])}); class ids must be integers 0..K-1")
        return labels.astype(np.int64)
    raise UserError(f"{path} holds {labels.dtype} labels; class ids must be integers 0..K-1")


def read_meta(args) -> dict:
    """``meta.json``, checked: a JSON object with ``modalities`` (``{"m1": str, "m2": str}``), ``class_names`` (a
    list of strings) and ``num_classes`` (an integer), each optional."""
    path = _path(args, "meta.json")
    if not path.is_file():
        return {}
    try:
        meta = json.loads(read_text(path, f"a JSON object ({FIX})"))
    except ValueError as error:
        raise UserError(f"{path} is not valid JSON ({error}); see {FIX}") from None
    example = '{"modalities": {"m1": "image", "m2": "text"}, "class_names": ["cat", "dog"]}'
    if not isinstance(meta, dict):
        raise UserError(f"{path} must hold a JSON object such as {example}")
    unknown = set(meta) - {"modalities", "class_names", "num_classes"}
    if unknown:
        raise UserError(f"{path} has unknown keys {sorted(unknown)}; known: modalities, class_names, num_classes")
    modalities = meta.get("modalities", {})
    if not isinstance(modalities, dict) or set(modalities) - {"m1", "m2"} or not all(
            isinstance(v, str) for v in modalities.values()):
        raise UserError(f"{path}: \"modalities\" must map m1 and m2 to names (strings), e.g. {example}; got "
                        f"{json.dumps(modalities)[:80]}")
    names = meta.get("class_names")
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        raise UserError(f"{path}: \"class_names\" must be a list of strings, one per class 0..K-1; got "
                        f"{json.dumps(names)[:80]}")
    k = meta.get("num_classes")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int)):
        raise UserError(f"{path}: \"num_classes\" must be an integer; got {json.dumps(k)[:40]}")
    return meta


def num_classes(labels: np.ndarray, meta: dict, root: Path) -> int:
    """``K``: meta.json's ``num_classes`` or ``len(class_names)``, else the largest label + 1; labels in 0..K-1."""
    names = meta.get("class_names")
    meta_path, labels_path = root / "meta.json", root / "labels.npy"
    if names is not None and meta.get("num_classes", len(names)) != len(names):
        raise UserError(f"{meta_path}: num_classes is {meta['num_classes']} but class_names lists {len(names)} "
                        f"names; give one name per class")
    k = meta.get("num_classes", len(names) if names is not None else (int(labels.max()) + 1 if len(labels) else 0))
    if len(labels) and labels.min() < 0:
        value = int(labels.min())
        sample = int(np.flatnonzero(labels == value)[0])
        raise UserError(f"{labels_path} has label {value} at sample {sample}, outside 0..K-1; class ids must be "
                        f"0..K-1")
    if len(labels) and labels.max() >= k and ("num_classes" in meta or names is not None):
        value = int(labels.max())
        sample = int(np.flatnonzero(labels == value)[0])
        declared = f"num_classes {k}" if "num_classes" in meta else f"{k} class_names"
        raise UserError(f"{meta_path} declares {declared}, but {labels_path} has label {value} (sample {sample}); "
                        f"list one class name per class 0..{value} in meta.json (or fix the labels)")
    if k < 2 and len(labels):  # no samples at all: the engine says so (datasets/checks.py)
        where = meta_path if ("num_classes" in meta or names is not None) else labels_path
        raise UserError(f"{where}: {k} class(es); classification needs at least 2 classes (labels.npy holds "
                        f"{len(np.unique(labels)) if len(labels) else 0} distinct label(s))")
    return k


#: the largest magnitude a value may have: batches are read as float32, where anything larger becomes infinite
FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_finite(array: np.ndarray, path: Path) -> None:
    """One chunked pass: the first sample holding NaN or an infinite value, or a value too large for float32 (it
    would become infinite when read), ends the run with one line."""
    if array.dtype.kind != "f":
        return
    wide = array.dtype.itemsize > 4
    for start in range(0, len(array), CHUNK_ROWS):
        chunk = np.asarray(array[start:start + CHUNK_ROWS]).reshape(min(CHUNK_ROWS, len(array) - start), -1)
        finite = np.isfinite(chunk).all(axis=1)
        if not finite.all():
            row = start + int(np.flatnonzero(~finite)[0])
            raise UserError(f"{path} has NaN or infinite values (first at sample {row}); replace or drop those "
                            f"samples")
        if wide:
            too_large = (np.abs(chunk) > FLOAT32_MAX).any(axis=1)
            if too_large.any():
                row = start + int(np.flatnonzero(too_large)[0])
                value = float(chunk[row - start][np.abs(chunk[row - start]) > FLOAT32_MAX][0])
                raise UserError(f"{path} has values beyond the float32 range (first at sample {row}: {value:.3g}; "
                                f"largest allowed {FLOAT32_MAX:.3g}), which become infinite when read as float32; "
                                f"rescale the data")


class PairedSource(DataSource):
    """The two memory-mapped arrays and the labels; batches are read, cast to float32 and normalised per batch."""

    in_memory = False

    def __init__(self, m1: np.ndarray, m2: np.ndarray, y: np.ndarray, root: Path, scanned: bool = True):
        self.m1, self.m2, self.y, self.root = m1, m2, y, root
        #: both files were scanned for NaN and infinite values by load(); else each batch is checked as read
        self.scanned = scanned
        self.input_shapes = {"m1": tuple(m1.shape[1:]), "m2": tuple(m2.shape[1:])}
        self.stats: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.y)

    def _read(self, modality: str, indices: np.ndarray) -> torch.Tensor:
        array = self.m1 if modality == "m1" else self.m2
        order = np.argsort(indices, kind="stable")  # ascending reads from the memory map, then the batch order back
        rows = np.empty((len(indices), *array.shape[1:]), dtype=np.float32)
        rows[order] = array[indices[order]]
        if modality in self.stats:
            mean, std = self.stats[modality]
            rows -= mean
            rows /= std
        return torch.from_numpy(rows)

    def get_batch(self, indices):
        indices = np.asarray(indices, dtype=np.int64)
        return self._read("m1", indices), self._read("m2", indices), torch.from_numpy(self.y[indices])

    def labels(self) -> np.ndarray:
        return self.y

    @property
    def per_batch_checked(self) -> tuple[str, ...]:
        return () if self.scanned else ("m1", "m2")

    def describe(self, index: int) -> str:
        return f"sample {index} of {self.root}"

    def fit_statistics(self, train: np.ndarray) -> None:
        """Per-channel mean and std (ddof 0, float64 sums over chunks) of the training rows; std 0 keeps 1."""
        for modality, array in (("m1", self.m1), ("m2", self.m2)):
            rows = np.sort(train)
            channels = array.shape[1]
            total, square, count = np.zeros(channels), np.zeros(channels), 0
            for start in range(0, len(rows), CHUNK_ROWS):
                chunk = np.asarray(array[rows[start:start + CHUNK_ROWS]], dtype=np.float64)
                chunk = chunk.reshape(len(chunk), channels, -1)
                total += chunk.sum(axis=(0, 2))
                square += (chunk * chunk).sum(axis=(0, 2))
                count += chunk.shape[0] * chunk.shape[2]
            mean = total / count
            std = np.sqrt(np.maximum(square / count - mean * mean, 0.0))
            shape = (channels,) + (1,) * (array.ndim - 2)
            self.stats[modality] = (mean.reshape(shape).astype(np.float32),
                                    np.where(std > 0, std, 1.0).reshape(shape).astype(np.float32))


def load(args: argparse.Namespace) -> PairedSource:
    root = Path(args.data_root)
    m1, m2 = read_features(root, "m1"), read_features(root, "m2")
    labels = read_labels(root / "labels.npy")
    if not len(m1) == len(m2) == len(labels):
        raise UserError(f"{root}: m1.npy has N={len(m1)}, m2.npy N={len(m2)} and labels.npy N={len(labels)} "
                        f"samples; the three files must hold the same samples in the same order")
    num_classes(labels, read_meta(args), root)
    # --no_test: no scan of the whole files (it would read the test samples); the batches read are checked instead
    scan = not getattr(args, "no_test", False)
    if scan:
        check_finite(m1, root / "m1.npy")
        check_finite(m2, root / "m2.npy")
    return PairedSource(m1, m2, labels, root, scanned=scan)


def read_splits_csv(path: Path, n: int, seed: int) -> np.ndarray:
    """Every column of a split file ``[N, columns]``, checked: a header ``group_0,...``, a column for ``seed``,
    integers, a permutation of ``0..N-1`` in every column."""
    def malformed(why: str):
        return UserError(f"{path} is malformed: {why}; expected columns group_0..group_19 (one row per sample, each "
                         f"column a permutation of 0..N-1), or delete it to use the generated split")

    lines = read_text(path, "columns group_0..group_19 of sample indices").splitlines()
    header = [h.strip() for h in lines[0].split(",")] if lines else []
    if not header or header != [f"group_{g}" for g in range(len(header))]:
        raise malformed(f"header {','.join(header[:4])}{'...' if len(header) > 4 else ''}")
    if seed >= len(header):
        raise malformed(f"no column group_{seed} for --seed {seed}")
    try:
        table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)
    except ValueError as error:
        raise malformed(f"a value is not an integer ({str(error).splitlines()[0]})") from None
    if table.shape != (n, len(header)):
        raise malformed(f"{table.shape[0]} rows of {table.shape[1]} columns for N={n} samples")
    expected = np.arange(n)
    for g in range(len(header)):
        if not np.array_equal(np.sort(table[:, g]), expected):
            raise malformed(f"column group_{g} is not a permutation of 0..{n - 1}")
    return table


def split_groups(args: argparse.Namespace, n: int) -> np.ndarray | None:
    """``DIR/groups.npy`` (``[N]`` ids), or ``None`` when there is none (per-sample splits)."""
    path = _path(args, "groups.npy")
    return read_groups(path, n) if path.is_file() else None


def resolve_split(args: argparse.Namespace, n: int, log=print):
    """The split of ``--seed``: ``splits.csv`` (checked to keep groups together when ``groups.npy`` exists), else
    whole groups of ``groups.npy`` per part, else the reference's permutations; all seeds checked for classes."""
    check_seed(args.seed)
    return all_splits(args, n, log)[args.seed]


def all_splits(args: argparse.Namespace, n: int, log=print) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(train, val, test)`` of every seed (as :func:`resolve_split` chooses them), every train split checked to
    hold every class."""
    root = Path(args.data_root)
    labels = read_labels(root / "labels.npy")
    k = num_classes(labels, read_meta(args), root)
    groups = split_groups(args, n)
    path = _path(args, "splits.csv")
    if path.is_file():
        table = read_splits_csv(path, n, args.seed)
        splits = [cut(table[:, column]) for column in range(table.shape[1])]
        if groups is not None:
            check_disjoint(splits, groups, str(path))
    elif groups is not None:
        where = str(root / "groups.npy")
        splits = group_splits(groups, labels, k, where)
        sizes = "/".join(str(len(part)) for part in splits[args.seed])
        log(f"No {path}: split {args.seed} keeps the {len(np.unique(groups))} groups of {where} together "
            f"(train/val/test {sizes} samples; datasets/groups.py)")
    else:
        log(f"No {path}: split {args.seed} generated in memory (the {NUM_GROUPS}-permutation procedure, "
            f"seed 19980427)")
        splits = [cut(permutation) for permutation in generate_permutations(n)]
    # every seed's train split before any run, so a sweep is not stopped at a later seed
    check_classes(labels, k, dict(enumerate(splits)), str(root), SPLIT_FIX, parts=("train",))
    return splits


def fit(source: PairedSource, splits: dict, args: argparse.Namespace) -> PairedSource:
    """Check every split it is given (a sample of each class), then learn the training statistics. A split smaller
    than a batch is one short batch."""
    check_classes(source.y, num_classes(source.y, read_meta(args), source.root),
                  {args.seed: tuple(splits[name] for name in ("train", "val", "test") if name in splits)},
                  str(source.root), SPLIT_FIX)  # without the test split under --no_test
    if args.paired_norm == "standardize":
        source.fit_statistics(np.asarray(splits["train"]))
    return source


def default_model(shape: tuple[int, ...], modality: str) -> str:
    """``CNN-<m>`` for images ``[C, H, W]``, ``MLP-<m>`` (flattened) for every other per-sample shape."""
    return f"CNN-{modality}" if len(shape) == 3 else f"MLP-{modality}"


def configure(args: argparse.Namespace) -> DatasetSpec:
    """The spec for the arrays in ``--data_root``: class count, modality names and default models from the files
    (headers only); the plain spec while they are missing (the loader then names the missing file)."""
    root = Path(args.data_root)
    if not all((root / f).is_file() for f in ("m1.npy", "m2.npy", "labels.npy")):
        return SPEC
    shapes = {m: tuple(read_features(root, m).shape[1:]) for m in ("m1", "m2")}
    meta = read_meta(args)
    k = num_classes(read_labels(root / "labels.npy"), meta, root)
    modalities = {**SPEC.modalities, **meta.get("modalities", {})}
    return dataclasses.replace(SPEC, num_classes=k, modalities=modalities, input_shapes=shapes,
                               students={m: default_model(shapes[m], m) for m in ("m1", "m2")})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Paired (your own arrays in --data_root)")
    group.add_argument("--paired_norm", default="standardize", choices=["standardize", "none"],
                       help="per-channel standardisation with training-split statistics, or none "
                            "(default: %(default)s)")


def run_tag(args: argparse.Namespace) -> str:
    """The data folder's name, so runs on two folders never share a run directory name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(args.data_root).resolve().name) or "data"


def data_files(args: argparse.Namespace) -> list[Path]:
    """The arrays, and the split, groups and meta files where they exist (the data's identity)."""
    root = Path(args.data_root)
    return [root / name for name in ("m1.npy", "m2.npy", "labels.npy", "splits.csv", "groups.npy", "meta.json")
            if name in ("m1.npy", "m2.npy", "labels.npy") or (root / name).is_file()]


SPEC = DatasetSpec(
    data_files=data_files,
    name=NAME,
    task="classification",
    num_classes=2,
    modalities={"m1": "modality m1", "m2": "modality m2"},
    teacher="Fusion-I",
    students={"m1": "MLP-m1", "m2": "MLP-m2"},
    batch_size=64,
    lr=1e-3,
    epochs=30,
    load=load,
    split="generated",
    how_to_obtain="write m1.npy, m2.npy and labels.npy into --data_root (docs/own-data.md)",
    add_arguments=add_arguments,
    method_defaults={"MST-Distill": {"epochs_s1": 30, "epochs_s2": 5, "s1_lr": 1e-3, "s2_lr": 1e-3}},
    configure=configure,
    fit=fit,
    resolve_split=resolve_split,
    groups=split_groups,
    run_tag=run_tag,
    input_shapes={"m1": (16,), "m2": (16,)},
)

