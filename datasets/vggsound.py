"""VGGSound-50k: the VGGSound-AVEL50k subset, video-level event classification, 141 classes (docs/data.md).

Source data: Chen et al., "VGGSound: A Large-scale Audio-Visual Dataset" (ICASSP 2020) with the AVEL50k
annotations of Zhou et al., "Contrastive Positive Sample Propagation along the Audio-Visual Event Line"
(CPSP, TPAMI 2023). ``data_preprocess/vggsound.py`` writes under ``<data_root>/VGGS50K/``:

* ``VGGS50k_metadata.txt``: one sample per line, ``<sample_name>&<class_id>``; the line order is the sample
  order the split CSV refers to;
* ``VGGS50K_features_normed/visual_features/<sample_name>_vFeature.npy`` ``[10, 7, 7, 512]`` and
  ``VGGS50K_features_normed/audio_features/<sample_name>_aFeature.npy`` ``[10, 128]``, globally min-max
  normalised by the preprocessing (the loader applies no further normalisation);
* ``seg_labels/<sample_name>_sLabel.npy`` ``[1, 10]`` per-segment event flags.

Labels: the reference packs a ``[10, 143]`` float tensor per sample (per-segment flags in the class column,
background flags in column 141, the class id in column 142) and every reachable model reads only the class id
``L[0, 142]``; the per-segment flags feed dead CPSP code. This source therefore returns the metadata line's
class id as an int64 ``[B]`` batch and does not read ``seg_labels/`` (``data_preprocess.vggsound.packed_label``
rebuilds the packed tensor where it is wanted).

The ~50 GB of features are not loaded at start-up: :meth:`VGGSoundSource.get_batch` reads one visual and one
audio ``.npy`` per sample, in DataLoader workers when the framework uses them.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from datasets.base import DataSource, DatasetSpec, check_shape, open_npy, read_text, require_file
from utils.core.errors import UserError

NAME = "VGGSound-50k"
NUM_CLASSES = 141
FOLDER = "VGGS50K"
METADATA = "VGGS50k_metadata.txt"
FEATURES = "VGGS50K_features_normed"
VISUAL_SHAPE = (10, 7, 7, 512)
AUDIO_SHAPE = (10, 128)


def root(data_root: str | Path) -> Path:
    return Path(data_root) / FOLDER


def visual_path(base: Path, sample: str) -> Path:
    return base / FEATURES / "visual_features" / f"{sample}_vFeature.npy"


def audio_path(base: Path, sample: str) -> Path:
    return base / FEATURES / "audio_features" / f"{sample}_aFeature.npy"


def seg_label_path(base: Path, sample: str) -> Path:
    return base / "seg_labels" / f"{sample}_sLabel.npy"


def read_metadata(path: Path, num_classes: int = NUM_CLASSES) -> tuple[list[str], np.ndarray]:
    """Sample names and int64 class ids in file order; blank lines are skipped, anything else malformed fails."""
    names, classes = [], []
    text = read_text(path, "one '<sample_name>&<class_id>' line per sample")
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        name, sep, class_id = line.rpartition("&")
        try:
            value = int(class_id) if sep and name else -1
        except ValueError:
            value = -1
        if not 0 <= value < num_classes:
            raise UserError(f"{path}, line {number}: expected '<sample_name>&<class_id>' with a class id in "
                            f"0..{num_classes - 1}, got {line[:80]!r}")
        names.append(name)
        classes.append(value)
    return names, np.asarray(classes, dtype=np.int64)


def _read(path: Path, expected: tuple, description: str) -> np.ndarray:
    array = open_npy(path, description, NAME, mmap=False)
    check_shape(array.shape, expected, path, NAME)
    return array


class VGGSoundSource(DataSource):
    """Per-sample feature files read inside ``get_batch``; only names and class ids live in memory."""

    in_memory = False

    def __init__(self, base: Path, names: list[str], classes: np.ndarray):
        self.base, self.names, self.classes = Path(base), list(names), classes
        self.input_shapes = {"m1": VISUAL_SHAPE, "m2": AUDIO_SHAPE}

    def __len__(self) -> int:
        return len(self.names)

    def get_batch(self, indices):
        indices = np.asarray(indices, dtype=np.int64)
        visual = np.empty((len(indices),) + VISUAL_SHAPE, dtype=np.float32)
        audio = np.empty((len(indices),) + AUDIO_SHAPE, dtype=np.float32)
        for row, index in enumerate(indices):
            name = self.names[index]
            visual[row] = _read(visual_path(self.base, name), VISUAL_SHAPE, "visual feature [10, 7, 7, 512]")
            audio[row] = _read(audio_path(self.base, name), AUDIO_SHAPE, "audio feature [10, 128]")
        return torch.from_numpy(visual), torch.from_numpy(audio), torch.from_numpy(self.classes[indices])

    def labels(self) -> np.ndarray:
        return self.classes.copy()

    def memory_arrays(self) -> dict:
        return {"y": self.classes}  # the features stay in their files and are checked per batch as read

    def describe(self, index: int) -> str:
        name = self.names[index]
        return f"{NAME} sample {index} ({visual_path(self.base, name)}, {audio_path(self.base, name)})"


def load(args: argparse.Namespace) -> VGGSoundSource:
    base = root(args.data_root)
    metadata = require_file(base / METADATA, "one '<sample_name>&<class_id>' line per sample", NAME)
    names, classes = read_metadata(metadata)
    if not names:
        raise UserError(f"{metadata} lists no samples for {NAME}")
    # Check the first sample's files now so a wrong folder fails at start-up, not in a DataLoader worker.
    _read(visual_path(base, names[0]), VISUAL_SHAPE, "visual feature [10, 7, 7, 512]")
    _read(audio_path(base, names[0]), AUDIO_SHAPE, "audio feature [10, 128]")
    return VGGSoundSource(base, names, classes)


def data_files(args: argparse.Namespace) -> list[Path]:
    """The metadata file and the two feature files of every sample it lists (the data's identity)."""
    base = root(args.data_root)
    if not (base / METADATA).is_file():
        return [base / METADATA]
    names, _ = read_metadata(base / METADATA)
    return [base / METADATA, *(f(base, name) for name in names for f in (visual_path, audio_path))]


SPEC = DatasetSpec(
    data_files=data_files,
    name=NAME,
    task="classification",
    num_classes=NUM_CLASSES,
    modalities={"m1": "visual", "m2": "audio"},
    teacher="DSCNN-VGGS-I",
    students={"m1": "VisualBranchNet-VGGS", "m2": "AudioBranchNet-VGGS"},
    batch_size=512,
    input_shapes={"m1": VISUAL_SHAPE, "m2": AUDIO_SHAPE},
    lr=1e-4,
    epochs=100,
    load=load,
    how_to_obtain="download the VGGSound videos listed in the VGGSound-AVEL50k annotations, extract CPSP-style "
                  "VGG-19/VGGish features and run data_preprocess/vggsound.py, which writes <data_root>/VGGS50K/",
)
