"""NYU-Depth-V2: the official labelled set + the 40-class labels -> ``<data_root>/NYU-Depth-V2/NYU-Depth-V2_data.mat``.

    python data_preprocess/nyu.py --labeled nyu_depth_v2_labeled.mat --labels40 labels40.mat \\
        --dst <data_root>/NYU-Depth-V2

Inputs: ``nyu_depth_v2_labeled.mat``, the labelled set of NYU Depth V2 (Silberman et al., "Indoor Segmentation and
Support Inference from RGBD Images", ECCV 2012), a MATLAB v7.3 file, i.e. HDF5, of which ``images`` (RGB, uint8)
and ``depths`` (metres) are used; and ``labels40.mat``, the mapping of its labels onto the 40 classes of Gupta et
al. ("Perceptual Organization and Recognition of Indoor Scenes from RGB-D Images", CVPR 2013), 0 = void, saved
by MATLAB in its older (v5) format as one ``labels40`` array of MATLAB shape ``[H, W, N]``.

Orientation. MATLAB stores arrays column-major. ``scipy.io.loadmat`` reads a v5 file into a NumPy array of
MATLAB's own shape, so ``labels40`` arrives as ``[H, W, N]`` = ``[480, 640, 1449]``. ``h5py`` reads a v7.3 file
row-major without reordering the bytes, so every array arrives with its axes reversed: ``images`` as ``[N, 3, W,
H]`` = ``[1449, 3, 640, 480]`` and ``depths`` as ``[N, W, H]``. The loader (``datasets/nyu.py``) reads the three
arrays in that h5py layout, so ``labels40`` is written with its axes reversed too, ``labels40.transpose(2, 1, 0)``
-> ``[N, W, H]``: exactly what h5py would return had MATLAB saved ``labels40`` in v7.3, and pixel ``(n, x, y)`` of
the labels is pixel ``(n, :, x, y)`` of the image. A ``labels40`` file already in v7.3 format is read with h5py and
used as it is (its axes are reversed already).

Checks: the same number of samples and the same image size in both files (1449 images of 640x480 in the official
files), ``depths`` of the size of ``images``, labels within 0..40. Output: one MATLAB v7.3 file (HDF5 with the
512-byte MATLAB header and ``MATLAB_class`` attributes, as MATLAB writes them) holding ``images [N, 3, W, H]``
uint8, ``depths [N, W, H]`` (the source dtype, float32 in the official file) and ``labels40 [N, W, H]`` uint8,
copied a few images at a time, written to a temporary file in ``--dst`` and renamed when complete. Needs h5py and
scipy.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

OUTPUT = "NYU-Depth-V2_data.mat"
NUM_CLASSES = 40
CHUNK = 16
OFFICIAL = (1449, 640, 480)  # N, W, H of the official files
MATLAB_CLASS = {np.dtype(np.uint8): "uint8", np.dtype(np.uint16): "uint16", np.dtype(np.float32): "single",
                np.dtype(np.float64): "double"}


class RawDataError(ValueError):
    """A missing or malformed input file; printed as one ``error:`` line, exit code 2."""


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise RawDataError(f"{what} {path} not found")
    return path


def open_labeled(path: Path):
    """The h5py handle of ``nyu_depth_v2_labeled.mat`` and its ``images``, ``depths`` datasets (checked)."""
    import h5py

    _require(path, "--labeled file")
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise RawDataError(f"--labeled {path} is not a MATLAB v7.3 (HDF5) file ({error}); expected the official "
                           f"nyu_depth_v2_labeled.mat") from None
    for key in ("images", "depths"):
        if key not in handle or not isinstance(handle[key], h5py.Dataset):
            handle.close()
            raise RawDataError(f"--labeled {path} has no dataset '{key}'; expected the official "
                               f"nyu_depth_v2_labeled.mat (images, depths, ...)")
    images, depths = handle["images"], handle["depths"]
    if images.ndim != 4 or images.shape[1] != 3:
        handle.close()
        raise RawDataError(f"{path}:images has shape {images.shape}, expected [N, 3, W, H] (h5py order of MATLAB's "
                           f"[H, W, 3, N])")
    if depths.shape != (images.shape[0],) + images.shape[2:]:
        handle.close()
        raise RawDataError(f"{path}:depths has shape {depths.shape}, expected {(images.shape[0],) + images.shape[2:]} "
                           f"to match images {images.shape}")
    return handle, images, depths


def _read_hdf5(path: Path) -> dict[str, np.ndarray]:
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            return {key: np.asarray(handle[key]) for key in handle if isinstance(handle[key], h5py.Dataset)}
    except OSError as error:
        raise RawDataError(f"--labels40 {path} is not a readable MATLAB v7.3 file ({error})") from None


def read_labels40(path: Path) -> np.ndarray:
    """``labels40`` in the h5py (width-first) layout ``[N, W, H]``, from a v5 file (``loadmat``: ``[H, W, N]``,
    reversed here) or a v7.3 file (``h5py``: already ``[N, W, H]``)."""
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    _require(path, "--labels40 file")
    try:
        content = loadmat(path)
        reverse = True
    except NotImplementedError:  # scipy's answer for MATLAB v7.3 files
        content, reverse = _read_hdf5(path), False
    except (MatReadError, ValueError, TypeError, OSError) as error:
        import h5py

        if not h5py.is_hdf5(path):  # an HDF5 file without MATLAB's header is read as v7.3 too
            raise RawDataError(f"--labels40 {path} is not a readable MATLAB file ({error})") from None
        content, reverse = _read_hdf5(path), False
    arrays = {key: value for key, value in content.items() if not key.startswith("__")}
    if "labels40" in arrays:
        labels = arrays["labels40"]
    elif len(arrays) == 1:
        labels = next(iter(arrays.values()))
    else:
        raise RawDataError(f"--labels40 {path} has no variable 'labels40' (found: {', '.join(sorted(arrays))})")
    labels = np.asarray(labels)
    if labels.ndim != 3 or not np.issubdtype(labels.dtype, np.number):
        raise RawDataError(f"--labels40 {path}: labels40 has shape {labels.shape} ({labels.dtype}), expected a "
                           f"numeric MATLAB [H, W, N] array")
    return labels.transpose(2, 1, 0) if reverse else labels


def check_labels(labels: np.ndarray, images_shape: tuple, labeled: Path, labels_path: Path) -> np.ndarray:
    """uint8 ``[N, W, H]`` labels after the agreement and range checks."""
    n, _, width, height = images_shape
    if labels.shape != (n, width, height):
        raise RawDataError(f"--labels40 {labels_path} holds {labels.shape[0]} label maps of {labels.shape[1]}x"
                           f"{labels.shape[2]} (W x H, MATLAB [H, W, N] = {labels.shape[::-1]}), but --labeled "
                           f"{labeled} holds {n} images of {width}x{height}; they must come from the same set")
    if np.issubdtype(labels.dtype, np.floating) and not np.array_equal(labels, np.round(labels)):
        raise RawDataError(f"--labels40 {labels_path}: labels40 holds non-integer values")
    low, high = labels.min(), labels.max()
    if low < 0 or high > NUM_CLASSES:
        raise RawDataError(f"--labels40 {labels_path}: labels40 values span {low}..{high}, expected 0 (void) .. "
                           f"{NUM_CLASSES}")
    return labels.astype(np.uint8)


def _matlab_header() -> bytes:
    """The 128-byte header of a MATLAB v7.3 file: text, subsystem offset, version 0x0200, endian indicator."""
    text = (f"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: {time.strftime('%a %b %d %H:%M:%S %Y')} "
            f"HDF5 schema 1.00 .").encode("ascii")
    return text.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM"


def _dataset(handle, name: str, shape: tuple, dtype) -> object:
    dataset = handle.create_dataset(name, shape=shape, dtype=dtype)
    dataset.attrs["MATLAB_class"] = np.bytes_(MATLAB_CLASS.get(np.dtype(dtype), "double"))
    return dataset


def build(labeled: Path, labels40: Path, dst: Path) -> tuple[int, int, int]:
    """Write ``dst/NYU-Depth-V2_data.mat``; returns ``(N, W, H)``."""
    import h5py

    labels = read_labels40(labels40)
    handle, images, depths = open_labeled(labeled)
    with handle:
        labels = check_labels(labels, images.shape, labeled, labels40)
        n, _, width, height = images.shape
        dst.mkdir(parents=True, exist_ok=True)
        final = dst / OUTPUT
        tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
        try:
            with h5py.File(tmp, "w", userblock_size=512) as out:
                out_images = _dataset(out, "images", images.shape, images.dtype)
                out_depths = _dataset(out, "depths", depths.shape, depths.dtype)
                _dataset(out, "labels40", labels.shape, np.uint8)[...] = labels
                for start in range(0, n, CHUNK):
                    stop = min(start + CHUNK, n)
                    out_images[start:stop] = images[start:stop]
                    out_depths[start:stop] = depths[start:stop]
            with open(tmp, "r+b") as raw:
                raw.write(_matlab_header())
                raw.flush()
                os.fsync(raw.fileno())
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
    return n, width, height


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labeled", type=Path, required=True,
                        help="nyu_depth_v2_labeled.mat (MATLAB v7.3 / HDF5: images, depths)")
    parser.add_argument("--labels40", type=Path, required=True,
                        help="labels40.mat of Gupta et al. (MATLAB v5, labels40 [H, W, N])")
    parser.add_argument("--dst", type=Path, required=True, help="output folder, normally <data_root>/NYU-Depth-V2")
    args = parser.parse_args(argv)
    try:
        n, width, height = build(args.labeled, args.labels40, args.dst)
    except (RawDataError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if (n, width, height) != OFFICIAL:
        print(f"note: {n} images of {width}x{height}; the official labelled set has {OFFICIAL[0]} of "
              f"{OFFICIAL[1]}x{OFFICIAL[2]}")
    print(f"NYU-Depth-V2: {n} samples ({width}x{height}) -> {args.dst / OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
