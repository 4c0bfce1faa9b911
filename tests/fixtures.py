"""Tiny datasets in the exact on-disk formats the loaders read (docs/data.md), for tests.

``make_fixture(database, root, n)`` writes one database under ``root`` (a ``--data_root``) and returns
``root``. Data are random from a fixed NumPy seed. Labels are laid out along the reference split permutation
of ``n`` samples for ``--seed 0`` (``generate_permutations(n)[0]``): the sample at position ``j`` of that
permutation gets class ``j % num_classes``, so train, val and test each hold several classes.

Import as ``from tests.fixtures import make_fixture`` or ``from fixtures import make_fixture``; the
``fixture_root`` pytest fixture of ``tests/conftest.py`` caches one data root per session.
"""
from __future__ import annotations

import pathlib

import numpy as np

FIXTURE_DATABASES = ("AV-MNIST", "RAVDESS", "VGGSound-50k", "CMMD-V2", "NYU-Depth-V2")
ALIASES = {"CrisisMMD-V2": "CMMD-V2"}
DEFAULT_N = {"AV-MNIST": 20, "RAVDESS": 5, "VGGSound-50k": 20, "CMMD-V2": 20, "NYU-Depth-V2": 5}
NUM_CLASSES = {"AV-MNIST": 10, "RAVDESS": 8, "VGGSound-50k": 141, "CMMD-V2": 8, "NYU-Depth-V2": 41}
#: NYU fixture maps: stored width-first as [n, 3, W, H] like the MATLAB file, loaded as [n, 3, H, W]
NYU_WIDTH, NYU_HEIGHT = 96, 64
SEED = 1234


def split_labels(n: int, num_classes: int) -> np.ndarray:
    """int64 ``[n]``: class ``j % num_classes`` for the sample at position ``j`` of the seed-0 split column."""
    rng = np.random.RandomState(19980427)  # the split generator (datasets/splits.py), first column only
    permutation = rng.permutation(n)
    labels = np.empty(n, dtype=np.int64)
    labels[permutation] = np.arange(n) % num_classes
    return labels


def _avmnist(root: pathlib.Path, n: int, rng: np.random.RandomState) -> None:
    base = root / "avmnist"
    (base / "image").mkdir(parents=True, exist_ok=True)
    (base / "audio").mkdir(parents=True, exist_ok=True)
    labels = split_labels(n, 10)
    n_test = max(1, n // 4)
    parts = {"train": slice(0, n - n_test), "test": slice(n - n_test, n)}
    for part, rows in parts.items():
        k = rows.stop - rows.start
        # per-sample ranges differ, so per-sample and global normalisation give different results
        scale = rng.uniform(0.5, 255.0, size=(k, 1))
        np.save(base / "image" / f"{part}_data.npy", (rng.rand(k, 784) * scale).astype(np.float32))
        np.save(base / "audio" / f"{part}_data.npy",
                (rng.rand(k, 112, 112) * scale[:, :, None] - 3.0).astype(np.float32))
        np.save(base / f"{part}_labels.npy", labels[rows])


def _ravdess(root: pathlib.Path, n: int, rng: np.random.RandomState) -> None:
    base = root / "RAVDESS_preprocessed_npy"
    base.mkdir(parents=True, exist_ok=True)
    video = np.lib.format.open_memmap(base / "video_data.npy", mode="w+", dtype=np.uint8,
                                      shape=(n, 15, 3, 224, 224))
    low, high = (12, 30, 0), (200, 255, 90)  # a different range per BGR channel
    for c in range(3):
        video[:, :, c] = rng.randint(low[c], high[c] + 1, size=(n, 15, 224, 224), dtype=np.uint8)
    video.flush()
    del video
    audio = rng.randn(n, 15, 156).astype(np.float32) * rng.uniform(1, 50, size=(n, 1, 1)).astype(np.float32)
    np.save(base / "audio_data.npy", audio)
    np.save(base / "label_data.npy", split_labels(n, 8))


def _vggsound(root: pathlib.Path, n: int, rng: np.random.RandomState) -> None:
    base = root / "VGGS50K"
    visual_dir = base / "VGGS50K_features_normed" / "visual_features"
    audio_dir = base / "VGGS50K_features_normed" / "audio_features"
    seg_dir = base / "seg_labels"
    for folder in (visual_dir, audio_dir, seg_dir):
        folder.mkdir(parents=True, exist_ok=True)
    labels = split_labels(n, 141)
    alphabet = np.array(list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"))
    lines = []
    for i in range(n):
        youtube_id = "".join(rng.choice(alphabet, 11))
        name = f"{'ab'[i % 2]}{youtube_id}_{10 * i:06d}_{10 * i + 10:06d}_out"
        np.save(visual_dir / f"{name}_vFeature.npy", rng.rand(10, 7, 7, 512).astype(np.float32))
        np.save(audio_dir / f"{name}_aFeature.npy", rng.rand(10, 128).astype(np.float32))
        np.save(seg_dir / f"{name}_sLabel.npy", rng.randint(0, 2, size=(1, 10)).astype(np.int64))
        lines.append(f"{name}&{labels[i]}\n")
    (base / "VGGS50k_metadata.txt").write_text("".join(lines), encoding="utf-8")


def _cmmd(root: pathlib.Path, n: int, rng: np.random.RandomState) -> None:
    import torch

    base = root / "CMMD-V2"
    base.mkdir(parents=True, exist_ok=True)
    image = rng.rand(n, 2048).astype(np.float32) * 3.0
    text = rng.randn(n, 768).astype(np.float32)
    torch.save((image, text, split_labels(n, 8)), base / "CMMD_data.pth")


def _nyu(root: pathlib.Path, n: int, rng: np.random.RandomState) -> None:
    import h5py

    base = root / "NYU-Depth-V2"
    base.mkdir(parents=True, exist_ok=True)
    path = base / "NYU-Depth-V2_data.mat"
    w, h = NYU_WIDTH, NYU_HEIGHT
    images = np.empty((n, 3, w, h), dtype=np.uint8)
    low, high = (5, 40, 0), (250, 180, 255)
    for c in range(3):
        images[:, c] = rng.randint(low[c], high[c] + 1, size=(n, w, h), dtype=np.uint8)
    depths = (rng.rand(n, w, h) * rng.uniform(1, 9, size=(n, 1, 1)) + 0.5).astype(np.float32)
    labels = rng.randint(0, 41, size=(n, w, h)).astype(np.uint16)
    # MATLAB v7.3 files are HDF5 with a 512-byte user block that starts with a text header
    with h5py.File(path, "w", userblock_size=512) as handle:
        handle.create_dataset("images", data=images)
        handle.create_dataset("depths", data=depths)
        handle.create_dataset("labels40", data=labels)
    with open(path, "r+b") as handle:
        handle.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Sun Nov 22 00:00:00 2026 HDF5 schema 1.00 .")


WRITERS = {"AV-MNIST": _avmnist, "RAVDESS": _ravdess, "VGGSound-50k": _vggsound, "CMMD-V2": _cmmd,
           "NYU-Depth-V2": _nyu}


def make_fixture(database: str, root: pathlib.Path, n: int | None = None) -> pathlib.Path:
    """Write a tiny ``database`` (one of :data:`FIXTURE_DATABASES`) under ``root``; return ``root``."""
    database = ALIASES.get(database, database)
    if database not in WRITERS:
        raise ValueError(f"no fixture for {database!r}; choose from {', '.join(FIXTURE_DATABASES)}")
    root = pathlib.Path(root)
    n = DEFAULT_N[database] if n is None else int(n)
    if n < 1:
        raise ValueError("a fixture needs at least one sample")
    seed = SEED + FIXTURE_DATABASES.index(database)
    WRITERS[database](root, n, np.random.RandomState(seed))
    return root
