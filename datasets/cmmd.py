"""CMMD-V2: CrisisMMD v2.0, humanitarian task, as pre-extracted features (docs/data.md, section "CMMD-V2").

Source data: Alam et al., "CrisisMMD: Multimodal Twitter Datasets from Natural Disasters" (ICWSM 2018),
version 2.0. ``data_preprocess/crisismmd.py`` turns it into ``<data_root>/CMMD-V2/CMMD_data.pth``: a
``torch.save``-d tuple of three NumPy arrays ``(image_features [N, 2048] float32 (ResNet-50),
text_features [N, 768] float32 (BERTweet pooler), labels [N] int64 (0..7))``.

The file is read with ``torch.load(weights_only=True)``; only the NumPy reconstruction functions and dtype
classes that a pickled ``ndarray`` needs are allow-listed (never ``weights_only=False``). Both NumPy 2 and
NumPy 1 pickles are accepted (NumPy 1 names the reconstruct function ``numpy.core.multiarray._reconstruct``).
No normalisation, as the reference (its min-max lines are commented out).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from numpy._core import multiarray

from datasets.base import DatasetSpec, TensorSource, check_shape, require_file
from datasets.checks import integer_labels
from utils.core.checkpoints import torch_load_failure
from utils.core.errors import UserError

NAME = "CMMD-V2"
CLASS_NAMES = ("not_humanitarian", "affected_individuals", "infrastructure_and_utility_damage",
               "injured_or_dead_people", "missing_or_found_people", "rescue_volunteering_or_donation_effort",
               "vehicle_damage", "other_relevant_information")


def path(data_root: str | Path) -> Path:
    return Path(data_root) / "CMMD-V2" / "CMMD_data.pth"


def numpy_safe_globals() -> list:
    """What unpickling a tuple of plain NumPy arrays needs, and nothing that can run arbitrary code."""
    allowed: list = [multiarray._reconstruct, (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
                     np.ndarray, np.dtype]
    for name in ("Float16DType", "Float32DType", "Float64DType", "Int8DType", "Int16DType", "Int32DType",
                 "Int64DType", "UInt8DType", "UInt16DType", "UInt32DType", "UInt64DType", "BoolDType",
                 "LongDType", "ULongDType", "LongLongDType", "ULongLongDType"):
        if hasattr(np.dtypes, name):
            allowed.append(getattr(np.dtypes, name))
    return allowed


def read_tuple(file_path: Path):
    try:
        with torch.serialization.safe_globals(numpy_safe_globals()):
            return torch.load(file_path, weights_only=True)
    except Exception as error:  # noqa: BLE001 -- any unpickling failure is a bad file for the user
        raise UserError(f"{file_path} could not be read as a tuple of NumPy arrays with torch.load(weights_only="
                        f"True): {torch_load_failure(error)}; rebuild it with data_preprocess/crisismmd.py") from None


def load(args: argparse.Namespace) -> TensorSource:
    file_path = require_file(path(args.data_root), "torch-saved tuple (image features, text features, labels)",
                             NAME)
    data = read_tuple(file_path)
    if not isinstance(data, (tuple, list)) or len(data) != 3:
        raise UserError(f"{file_path} holds {type(data).__name__}, expected a tuple of 3 arrays "
                        f"(image features, text features, labels) for {NAME}")
    image, text, label = (np.asarray(part) for part in data)
    n = image.shape[0] if image.ndim else None
    check_shape(image.shape, (n, 2048), f"{file_path}[0] (image features)", NAME)
    check_shape(text.shape, (n, 768), f"{file_path}[1] (text features)", NAME)
    check_shape(label.shape, (n,), f"{file_path}[2] (labels)", NAME)
    label = integer_labels(label, f"{file_path}[2]")
    if n and (label.min() < 0 or label.max() >= len(CLASS_NAMES)):
        raise UserError(f"{file_path}[2] has labels outside 0..{len(CLASS_NAMES) - 1} for {NAME}")
    return TensorSource(torch.from_numpy(image.astype(np.float32)), torch.from_numpy(text.astype(np.float32)),
                        torch.from_numpy(label.astype(np.int64)))


SPEC = DatasetSpec(
    data_files=lambda args: [path(args.data_root)],
    name=NAME,
    task="classification",
    num_classes=8,
    modalities={"m1": "image", "m2": "text"},
    teacher="MLP-I",
    students={"m1": "MLP-Vb", "m2": "MLP-Tb"},
    batch_size=512,
    input_shapes={"m1": (2048,), "m2": (768,)},
    lr=5e-3,
    epochs=100,
    aliases=("CrisisMMD-V2",),
    load=load,
    how_to_obtain="download CrisisMMD v2.0 (crisisnlp.qcri.org/crisismmd) and run data_preprocess/crisismmd.py, "
                  "which writes <data_root>/CMMD-V2/CMMD_data.pth",
)
