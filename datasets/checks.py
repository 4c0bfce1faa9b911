"""Checks of a loaded dataset before the first epoch, the same for every source (docs/inputs.md).

A wrong label or a NaN feature does not crash training: the reference trains on, and the damage shows up as an
``IndexError`` at the final test, a truncated class id, or a NaN validation loss that silently switches model
selection off. So every run checks, once its data are loaded and split:

* the dataset and each of the train/val/test splits hold samples;
* the labels are whole numbers in ``0..K-1`` (``K`` the dataset's class count; segmentation maps included);
* what a source holds in memory (:meth:`DataSource.memory_arrays`) is finite, by one chunked pass.

File-backed parts that are too large to scan at start-up (per-sample feature files) are checked per batch as
they are read (:func:`check_batch_finite`, called by :class:`datasets.base.BatchLoader`).
"""
from __future__ import annotations

import numpy as np
import torch

from utils.core.errors import UserError

#: elements per chunk of the finiteness pass, so it never allocates more than a few tens of MB of temporaries
SCAN_ELEMENTS = 1 << 24


def integer_labels(values, where: str) -> np.ndarray:
    """``values`` as int64, refusing labels that are not whole numbers (a float label 2.7 was silently truncated
    to class 2). Integral floats (MATLAB stores labels as double) are accepted as they convert exactly."""
    array = np.asarray(values)
    if array.dtype.kind in "iub":
        return array.astype(np.int64)
    if array.dtype.kind != "f":
        raise UserError(f"{where} has labels of type {array.dtype}; class ids must be integers")
    flat = array.reshape(-1)
    bad = np.flatnonzero(~np.isfinite(flat) | (flat != np.round(flat)))
    if bad.size:
        raise UserError(f"{where} has {bad.size} label(s) that are not whole numbers (e.g. {float(flat[bad[0]])} at "
                        f"position {int(bad[0])}); class ids must be integers 0..K-1")
    return array.astype(np.int64)


def split_of(index: int, splits: dict) -> str:
    for name, indices in splits.items():
        if np.any(np.asarray(indices) == index):
            return name
    return "no"


def check_splits(database: str, n: int, splits: dict) -> None:
    if n == 0:
        raise UserError(f"{database} has no samples; check --data_root and the data files (docs/data.md, "
                        f"section '{database}')")
    sizes = {name: len(indices) for name, indices in splits.items()}
    empty = [name for name, size in sizes.items() if size == 0]
    if empty:
        shown = "/".join(str(s) for s in sizes.values())
        raise UserError(f"the {' and '.join(empty)} split of {database} is empty: N={n} samples give "
                        f"{'/'.join(sizes)} {shown}; every split needs samples (the 60/20/20 cut: at least 3)")


def check_classes(labels: np.ndarray, num_classes: int, splits: dict, where: str, fix: str,
                  parts: tuple[str, ...] = ("train", "val", "test")) -> None:
    """Each of ``parts`` of every split (``{seed: (train, val, test)}``) holds every class; one line naming the
    seed, the part and the class. Given all 20 seeds, a sweep is refused before its first run, not at its
    thirteenth seed."""
    for seed, split in splits.items():
        for name, indices in zip(("train", "val", "test"), split):
            if name not in parts:
                continue
            present = np.bincount(labels[np.asarray(indices, dtype=np.int64)], minlength=num_classes)
            if (present == 0).any():
                missing = int(np.flatnonzero(present == 0)[0])
                raise UserError(f"the {name} split of seed {seed} of {where} has no sample of class {missing}; {fix}")


def _blocks(tensor: torch.Tensor, rows: np.ndarray | None, chunk: int):
    """``(sample indices, block of those samples)`` over ``tensor``'s rows, or over ``rows`` only, ``chunk`` at a
    time (no copy of the whole array)."""
    indices = np.arange(len(tensor)) if rows is None else rows
    for start in range(0, len(indices), chunk):
        part = indices[start:start + chunk]
        yield part, (tensor[start:start + chunk] if rows is None else tensor[torch.as_tensor(part)])


def check_labels(y, database: str, num_classes: int, splits: dict, rows: np.ndarray | None = None) -> None:
    """Whole numbers in ``0..num_classes-1`` (``y`` of any shape: per sample, or per pixel for segmentation), of
    the samples ``rows`` (default: all)."""
    if y is None:
        return
    tensor = torch.as_tensor(y)
    if tensor.is_floating_point() or tensor.is_complex():
        raise UserError(f"{database} labels are {tensor.dtype} values; class ids must be integers 0..{num_classes - 1}")
    if tensor.numel() == 0 or (rows is not None and len(rows) == 0):
        return
    chunk = max(1, SCAN_ELEMENTS // max(1, tensor[0].numel()))
    sample, value = -1, None
    for indices, block in _blocks(tensor, rows, chunk):
        low, high = int(block.min()), int(block.max())
        if low < 0 or high >= num_classes:
            value = low if low < 0 else high
            found = (block.reshape(len(block), -1) == value).any(dim=1).nonzero()
            sample = int(indices[int(found[0])]) if len(found) else -1
            break
    if value is None:
        return
    raise UserError(f"{database} has label {value} (sample {sample}, {split_of(sample, splits)} split), outside "
                    f"0..{num_classes - 1} ({num_classes} classes); fix the label file, or use the class count the "
                    f"labels need")


def count_nonfinite_rows(array, rows: np.ndarray | None = None) -> tuple[int, int]:
    """(number of rows holding NaN or +-inf, first such row; -1 if none), read in bounded chunks; ``rows``: only
    those samples (default: all)."""
    tensor = torch.as_tensor(array)
    if not tensor.is_floating_point() or len(tensor) == 0:
        return 0, -1
    per_row = max(1, tensor[0].numel())
    chunk = max(1, SCAN_ELEMENTS // per_row)
    count, first = 0, -1
    for indices, block in _blocks(tensor, rows, chunk):
        if bool(torch.isfinite(block).all()):
            continue
        bad = (~torch.isfinite(block)).reshape(len(block), -1).any(dim=1).nonzero().flatten()
        count += len(bad)
        if first < 0:
            first = int(indices[int(bad[0])])
    return count, first


def check_finite(array, database: str, modality: str, description: str, splits: dict,
                 rows: np.ndarray | None = None) -> None:
    count, first = count_nonfinite_rows(array, rows)
    if count:
        raise UserError(f"{database} {modality} ({description}) holds NaN or infinite values in {count} sample(s), "
                        f"the first is sample {first} ({split_of(first, splits)} split); fix or drop them (a sample "
                        f"that is constant becomes NaN under the reference's min-max normalisation: see the warning "
                        f"above, if any)")


def check_source(source, spec, splits: dict) -> None:
    """Every check of this module on a loaded source and its splits; one :class:`UserError` line on the first
    problem. Only the samples of ``splits`` are read: a run that leaves the test split out (``--no_test``) passes
    train and val, and a test sample, even one holding NaN, changes nothing."""
    check_splits(spec.name, len(source), splits)
    rows = np.unique(np.concatenate([np.asarray(part, dtype=np.int64) for part in splits.values()]))
    rows = None if len(rows) == len(source) else rows
    arrays = source.memory_arrays()
    labels = arrays.get("y")
    if labels is None:
        try:
            labels = source.labels()
        except (NotImplementedError, UserError):
            labels = None
    check_labels(labels, spec.name, spec.num_classes, splits, rows)
    for modality in ("m1", "m2"):
        if modality in arrays:
            check_finite(arrays[modality], spec.name, modality, spec.modalities.get(modality, modality), splits, rows)


def check_batch_finite(batch_m: dict, describe) -> None:
    """Per-batch check of file-backed modalities: ``batch_m`` maps modality -> tensor; ``describe(k)`` names the
    k-th sample of the batch (with its file), for the message."""
    for modality, tensor in batch_m.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            row = int((~torch.isfinite(tensor)).reshape(len(tensor), -1).any(dim=1).nonzero()[0])
            raise UserError(f"{modality} of {describe(row)} holds NaN or infinite values (found when its batch was "
                            f"read); fix or drop that sample")
