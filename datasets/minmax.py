"""The reference's min-max normalisation, computed in bounded memory.

The reference rescales a whole array with ``(x - min) / (max - min)`` and **no epsilon**, where the
statistics depend on the array's rank: per sample for 2-d ``[N, M]`` and 3-d ``[N, H, W]`` arrays, per channel
over the whole dataset for 4-d ``[N, C, H, W]`` (axis 1) and 5-d ``[N, T, C, H, W]`` (axis 2) arrays. The
statistics always cover the full dataset (train, val and test together).

The helpers below reproduce those values exactly while never holding more than one chunk of intermediates:

* arithmetic happens in the input's dtype when it is floating (as NumPy does in the reference) and in float64
  for integer input (integer ``x - min`` is exact and true division promotes to float64); the result is
  stored as float32, which is what the reference hands to torch;
* for uint8 input a per-channel 256-entry lookup table holds the float64 quotient for every possible value,
  so a batch is normalised by one gather per channel with bit-identical results.

A constant slice (``max == min``) yields NaN exactly as in the reference; a warning says so (and the run is then
refused before training by :mod:`datasets.checks`). Input that already holds NaN or infinite values is refused
here, naming the first such sample or channel: that is a broken file, not a constant slice.
"""
from __future__ import annotations

import warnings

import numpy as np

from utils.core.errors import UserError


def working_dtype(dtype) -> np.dtype:
    """The dtype NumPy computes ``(x - min) / (max - min)`` in for an array of ``dtype``."""
    dtype = np.dtype(dtype)
    return dtype if np.issubdtype(dtype, np.floating) else np.dtype(np.float64)


def _warn_constant(mins: np.ndarray, maxs: np.ndarray, what: str, unit: str = "slice", offset: int = 0) -> None:
    finite = np.isfinite(mins) & np.isfinite(maxs)
    if not finite.all():
        bad = np.flatnonzero(~finite.reshape(-1))
        raise UserError(f"{what}: {bad.size} {unit}(s) hold NaN or infinite values (the first is {unit} "
                        f"{offset + int(bad[0])}); fix or drop them, min-max normalisation cannot rescale them")
    constant = int(np.count_nonzero(~(maxs > mins)))
    if constant:
        warnings.warn(f"{what}: {constant} constant slice(s) (max == min) become NaN, as in the reference "
                      "min-max normalisation (no epsilon)", RuntimeWarning, stacklevel=3)


def normalise_per_sample(x, out: np.ndarray, chunk: int = 1024, what: str = "array") -> np.ndarray:
    """Per-sample min-max of ``x[i]`` (all axes but 0) into the float32 array ``out`` (any shape with N rows).

    ``x`` may be a NumPy array, a memory map or an h5py dataset; it is read ``chunk`` samples at a time.
    """
    n = len(x)
    if n == 0:  # an empty file: nothing to rescale (the run is refused as having no samples)
        return out
    flat_out = out.reshape(n, -1)
    if not np.shares_memory(flat_out, out):
        raise ValueError("normalise_per_sample needs a C-contiguous output array")
    for start in range(0, n, chunk):
        block = np.asarray(x[start:start + chunk])
        block = block.reshape(len(block), -1).astype(working_dtype(block.dtype), copy=False)
        mins = block.min(axis=1, keepdims=True)
        maxs = block.max(axis=1, keepdims=True)
        _warn_constant(mins, maxs, what, "sample", start)
        with np.errstate(invalid="ignore", divide="ignore"):
            flat_out[start:start + len(block)] = (block - mins) / (maxs - mins)
    return out


def channel_min_max(x, channel_axis: int, chunk: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel minimum and maximum over every other axis of ``x``, in one streaming pass over axis 0."""
    if len(x) == 0:
        raise UserError("an empty data file has no samples to compute min-max statistics from; check --data_root")
    mins = maxs = None
    axes = tuple(a for a in range(len(x.shape)) if a != channel_axis)
    for start in range(0, len(x), chunk):
        block = np.asarray(x[start:start + chunk])
        block_min, block_max = block.min(axis=axes), block.max(axis=axes)
        mins = block_min if mins is None else np.minimum(mins, block_min)
        maxs = block_max if maxs is None else np.maximum(maxs, block_max)
    return mins, maxs


def uint8_lookup(mins: np.ndarray, maxs: np.ndarray) -> np.ndarray:
    """``[C, 256]`` float32 table: entry ``[c, v]`` is ``(v - min_c) / (max_c - min_c)`` computed in float64."""
    values = np.arange(256, dtype=np.float64)[None, :]
    mins = np.asarray(mins, dtype=np.float64)[:, None]
    maxs = np.asarray(maxs, dtype=np.float64)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((values - mins) / (maxs - mins)).astype(np.float32)


def normalise_per_channel(x: np.ndarray, channel_axis: int, mins: np.ndarray, maxs: np.ndarray,
                          out: np.ndarray | None = None, lookup: np.ndarray | None = None) -> np.ndarray:
    """Normalise an in-memory block ``x`` with per-channel statistics of the whole dataset; float32 result.

    uint8 blocks use ``lookup`` (or build it); other dtypes use the reference arithmetic directly.
    """
    if out is None:
        out = np.empty(x.shape, dtype=np.float32)
    index = [slice(None)] * x.ndim
    if x.dtype == np.uint8:
        table = uint8_lookup(mins, maxs) if lookup is None else lookup
        for c in range(x.shape[channel_axis]):
            index[channel_axis] = c
            out[tuple(index)] = table[c][x[tuple(index)]]
        return out
    dtype = working_dtype(x.dtype)
    shape = [1] * x.ndim
    shape[channel_axis] = -1
    mins = np.asarray(mins).astype(dtype).reshape(shape)
    maxs = np.asarray(maxs).astype(dtype).reshape(shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        out[...] = (x.astype(dtype, copy=False) - mins) / (maxs - mins)
    return out


def warn_constant_channels(mins, maxs, what: str) -> None:
    """Public wrapper of the NaN warning for callers that compute the statistics themselves."""
    _warn_constant(np.asarray(mins), np.asarray(maxs), what, "channel")
