"""NYU-Depth-V2 semantic segmentation, 40 classes + void (docs/data.md, section "NYU-Depth-V2").

One MATLAB v7.3 (HDF5) file ``<data_root>/NYU-Depth-V2/NYU-Depth-V2_data.mat`` with the labelled set of
Silberman et al., "Indoor Segmentation and Support Inference from RGBD Images" (ECCV 2012) and the 40-class
labels of Gupta et al. (CVPR 2013). h5py returns MATLAB's column-major arrays width first:
``images [N, 3, W, H]`` (uint8 RGB), ``depths [N, W, H]`` (metres), ``labels40 [N, W, H]`` (0 = void).

As the reference: images are min-max normalised **per channel over the whole dataset** (4-d array), depths
**per image** (3-d array); everything is transposed height first; depth gets a channel axis; labels are cast
to int32 and then int64 (labels are not normalised). The result is ``rgb [N, 3, H, W]`` and ``depth
[N, 1, H, W]`` float32 and ``labels [N, H, W]`` int64 (480x640 for the real file; any H, W is accepted). The
file is read a few images at a time straight into the final tensors, so no float64 copy is ever held.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from datasets.base import DatasetSpec, TensorSource, check_shape, reading, require_file
from datasets.checks import integer_labels
from datasets.minmax import channel_min_max, normalise_per_channel, normalise_per_sample, uint8_lookup, \
    warn_constant_channels
from utils.core.errors import UserError

NAME = "NYU-Depth-V2"
KEYS = {"images": "RGB images [N, 3, W, H]", "depths": "depth maps [N, W, H]",
        "labels40": "40-class labels [N, W, H]"}
CHUNK = 16


def path(data_root: str | Path) -> Path:
    return Path(data_root) / "NYU-Depth-V2" / "NYU-Depth-V2_data.mat"


def load(args: argparse.Namespace) -> TensorSource:
    import h5py

    file_path = require_file(path(args.data_root), "HDF5/MATLAB-v7.3 file with images, depths, labels40", NAME)
    try:
        handle = h5py.File(file_path, "r")
    except OSError as error:
        raise UserError(f"{file_path} is not a readable HDF5/MATLAB-v7.3 file ({error}) for {NAME}") from None
    with handle, reading(file_path, NAME):
        for key, description in KEYS.items():
            if key not in handle:
                raise UserError(f"{file_path} has no dataset '{key}' ({description}) for {NAME} "
                                f"(docs/data.md, section '{NAME}')")
        images, depths, labels = handle["images"], handle["depths"], handle["labels40"]
        check_shape(images.shape, (None, 3, None, None), f"{file_path}:images", NAME)
        n, _, width, height = images.shape
        check_shape(depths.shape, (n, width, height), f"{file_path}:depths", NAME)
        check_shape(labels.shape, (n, width, height), f"{file_path}:labels40", NAME)

        rgb = torch.empty((n, 3, height, width), dtype=torch.float32)
        depth = torch.empty((n, 1, height, width), dtype=torch.float32)
        target = torch.empty((n, height, width), dtype=torch.int64)
        mins, maxs = channel_min_max(images, channel_axis=1, chunk=CHUNK)
        warn_constant_channels(mins, maxs, f"{NAME} images")
        lookup = uint8_lookup(mins, maxs) if images.dtype == np.uint8 else None
        scratch = np.empty((min(CHUNK, n), width, height), dtype=np.float32)
        for start in range(0, n, CHUNK):
            stop = min(start + CHUNK, n)
            block = normalise_per_channel(np.asarray(images[start:stop]), 1, mins, maxs, lookup=lookup)
            rgb.numpy()[start:stop] = block.transpose(0, 1, 3, 2)
            normalise_per_sample(depths[start:stop], scratch[: stop - start], what=f"{NAME} depths")
            depth.numpy()[start:stop, 0] = scratch[: stop - start].transpose(0, 2, 1)
            block = integer_labels(np.asarray(labels[start:stop]), f"{file_path}:labels40")
            target.numpy()[start:stop] = block.astype(np.int32).transpose(0, 2, 1)
    return TensorSource(rgb, depth, target)


SPEC = DatasetSpec(
    data_files=lambda args: [path(args.data_root)],
    name=NAME,
    task="segmentation",
    num_classes=41,
    modalities={"m1": "RGB", "m2": "depth"},
    teacher="FuseNet-I",
    students={"m1": "FuseNet-RGBbranch", "m2": "FuseNet-Dbranch"},
    batch_size=6,
    input_shapes={"m1": (3, 480, 640), "m2": (1, 480, 640)},
    lr=1e-4,
    epochs=100,
    ignore_index=0,
    load=load,
    how_to_obtain="merge the official NYU Depth V2 labelled set (nyu_depth_v2_labeled.mat: images, depths) with "
                  "the 40-class labels40 into one MATLAB-v7.3 file <data_root>/NYU-Depth-V2/NYU-Depth-V2_data.mat",
)
