"""Models for the embedded ``Synthetic-MVD`` dataset (Gaussian Modality Venn Diagram data of the MFH paper).

Every builder takes ``num_classes`` and ``input_shapes`` (``{"m1": (d1,), "m2": (d2,)}``) because the
feature dimensions are dataset options. ReLU is applied functionally so that a hook on ``fc1``/``fc2``
sees the pre-activation output, as for the reference's MLPs.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.registry import register_model
from models.taps import LOGITS

HIDDEN = (64, 32)
#: the default Synthetic-MVD widths (50 + 50 columns; the builders follow --mvd_dim_a/--mvd_dim_b)
MVD_INPUTS = {"m1": (50,), "m2": (50,)}
MLP_TAPS = {"fc1": (HIDDEN[0],), "fc2": (HIDDEN[1],)}


class MLPHead(nn.Module):
    """``fc1 -> ReLU -> fc2 -> ReLU -> fc3``; the shared body of the synthetic MLPs."""

    def __init__(self, in_dim: int, num_classes: int, hidden: tuple[int, int] = HIDDEN):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden[0])
        self.fc2 = nn.Linear(hidden[0], hidden[1])
        self.fc3 = nn.Linear(hidden[1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class MVDFusionMLP(MLPHead):
    """Multimodal teacher: the two modalities concatenated (m1 first), then the MLP head."""

    def __init__(self, dim_m1: int, dim_m2: int, num_classes: int):
        super().__init__(dim_m1 + dim_m2, num_classes)
        self.concat_identity = nn.Identity()

    def forward(self, m1: torch.Tensor, m2: torch.Tensor) -> torch.Tensor:
        return super().forward(self.concat_identity(torch.cat([m1, m2], dim=1)))


class MVDUnimodalMLP(MLPHead):
    """Unimodal student: the MLP head on one modality."""


class LogisticRegression(nn.Module):
    """One linear layer ``d -> K``: the teacher and student of the MFH synthetic experiments."""

    def __init__(self, in_dim: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(in_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def _dim(input_shapes, modality):
    return int(input_shapes[modality][0])


@register_model("MVD-MLP-I", "Synthetic-MVD", ("m1", "m2"), "fusion MLP teacher (64-32 hidden)",
                taps=MLP_TAPS, probes={"concat_identity": (None,), "fc3": LOGITS}, example_inputs=MVD_INPUTS)
def mvd_mlp_fusion(num_classes=2, input_shapes=None, **_):
    return MVDFusionMLP(_dim(input_shapes, "m1"), _dim(input_shapes, "m2"), num_classes)


@register_model("MVD-MLP-m1", "Synthetic-MVD", ("m1",), "MLP on modality a (m1)",
                taps=MLP_TAPS, probes={"fc3": LOGITS}, example_inputs=MVD_INPUTS)
def mvd_mlp_m1(num_classes=2, input_shapes=None, **_):
    return MVDUnimodalMLP(_dim(input_shapes, "m1"), num_classes)


@register_model("MVD-MLP-m2", "Synthetic-MVD", ("m2",), "MLP on modality b (m2)",
                taps=MLP_TAPS, probes={"fc3": LOGITS}, example_inputs=MVD_INPUTS)
def mvd_mlp_m2(num_classes=2, input_shapes=None, **_):
    return MVDUnimodalMLP(_dim(input_shapes, "m2"), num_classes)


@register_model("MVD-LR-m1", "Synthetic-MVD", ("m1",), "logistic regression on modality a (MFH)",
                probes={"fc": LOGITS}, example_inputs=MVD_INPUTS)
def mvd_lr_m1(num_classes=2, input_shapes=None, **_):
    return LogisticRegression(_dim(input_shapes, "m1"), num_classes)


@register_model("MVD-LR-m2", "Synthetic-MVD", ("m2",), "logistic regression on modality b (MFH)",
                probes={"fc": LOGITS}, example_inputs=MVD_INPUTS)
def mvd_lr_m2(num_classes=2, input_shapes=None, **_):
    return LogisticRegression(_dim(input_shapes, "m2"), num_classes)
