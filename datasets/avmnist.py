"""AV-MNIST: MNIST digit images paired with spoken-digit spectrograms (docs/data.md, section "AV-MNIST").

Files (the MultiBench ``avmnist`` package, Liang et al., "MultiBench", NeurIPS 2021 Datasets and Benchmarks)
under ``<data_root>/avmnist/``: ``image/{train,test}_data.npy`` ``[n, 784]`` (``[n, 28, 28]`` gives the same
result), ``audio/{train,test}_data.npy`` ``[n, 112, 112]`` and ``{train,test}_labels.npy`` ``[n]``.

As the reference: the train file's samples come first, then the test file's (global indices 60 000..69 999 are
the original test set; the split CSV decides train/val/test). Both arrays are min-max normalised **per sample**
(2-d and 3-d arrays in the reference helper), then reshaped to ``[N, 1, 28, 28]`` and ``[N, 1, 112, 112]``
float32; labels are int64 ``[N]``. The normalisation runs in chunks straight into the final float32 tensors,
so no float64 copy of the dataset is ever held.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from datasets.base import DatasetSpec, TensorSource, check_shape, open_npy
from datasets.checks import integer_labels
from datasets.minmax import normalise_per_sample

NAME = "AV-MNIST"
FOLDER = "avmnist"
PARTS = ("train", "test")


def paths(data_root: str | Path) -> dict[str, dict[str, Path]]:
    """``{"train": {"image": ..., "audio": ..., "label": ...}, "test": {...}}``."""
    root = Path(data_root) / FOLDER
    return {part: {"image": root / "image" / f"{part}_data.npy", "audio": root / "audio" / f"{part}_data.npy",
                   "label": root / f"{part}_labels.npy"} for part in PARTS}


def load(args: argparse.Namespace) -> TensorSource:
    images, audios, labels = [], [], []
    for part, files in paths(args.data_root).items():
        image = open_npy(files["image"], f"{part} images, [n, 784]", NAME)
        audio = open_npy(files["audio"], f"{part} audio spectrograms, [n, 112, 112]", NAME)
        label = open_npy(files["label"], f"{part} digit labels, [n]", NAME)
        n = image.shape[0] if image.ndim else None
        check_shape(image.shape, (n, 28, 28) if image.ndim == 3 else (n, 784), files["image"], NAME)
        check_shape(audio.shape, (n, 112, 112), files["audio"], NAME)
        check_shape(label.shape, (n,), files["label"], NAME)
        images.append(image)
        audios.append(audio)
        labels.append(label)
    total = sum(len(y) for y in labels)
    m1 = torch.empty((total, 1, 28, 28), dtype=torch.float32)
    m2 = torch.empty((total, 1, 112, 112), dtype=torch.float32)
    start = 0
    for image, audio in zip(images, audios):
        stop = start + len(image)
        normalise_per_sample(image, m1.numpy()[start:stop], what=f"{NAME} images")
        normalise_per_sample(audio, m2.numpy()[start:stop], what=f"{NAME} audio")
        start = stop
    parts = [integer_labels(y, files["label"]) for y, files in zip(labels, paths(args.data_root).values())]
    y = torch.from_numpy(np.concatenate(parts))
    return TensorSource(m1, m2, y)


SPEC = DatasetSpec(
    data_files=lambda args: [f for files in paths(args.data_root).values() for f in files.values()],
    name=NAME,
    task="classification",
    num_classes=10,
    modalities={"m1": "image", "m2": "audio"},
    teacher="CNN-I",
    students={"m1": "LeNet5", "m2": "ThreeLayerCNN-A"},
    batch_size=512,
    input_shapes={"m1": (1, 28, 28), "m2": (1, 112, 112)},
    pool_feature_maps=True,
    lr=1e-4,
    epochs=100,
    load=load,
    how_to_obtain="download the MultiBench 'avmnist' folder (github.com/pliang279/MultiBench) into "
                  "<data_root>/avmnist/",
)
