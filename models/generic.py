"""Generic models for any dataset whose inputs fit (UCI-MFeat, Paired, your own): sized from ``input_shapes``.

* ``MLP-m1`` / ``MLP-m2``: a unimodal MLP ``fc1 -> fc2 -> fc3`` (64-32 hidden) on the flattened input, so it takes
  vectors ``[D]`` and any other per-sample shape (flattened).
* ``CNN-m1`` / ``CNN-m2``: a small CNN for images ``[C, H, W]``: two 3x3 convs (16, 32 channels; max-pool 2 after
  the first), adaptive average pool to 4x4, then the MLP head.
* ``Fusion-I``: the multimodal teacher: each modality through the CNN trunk when it is an image ``[C, H, W]``,
  flattened otherwise, the two concatenated (m1 first), then the MLP head.

ReLU is functional, so the taps (``conv1``, ``conv2``, ``fc1``, ``fc2``) see pre-activation outputs, as in the
reference's models.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.registry import register_model
from models.taps import LOGITS
from utils.core.errors import UserError

HIDDEN = (64, 32)
CONV_CHANNELS = (16, 32)
POOLED = (4, 4)
#: the shapes the models are declared (and tested) with: UCI-MFeat's default views, a 16x15 one-channel image
VECTOR_INPUTS = {"m1": (76,), "m2": (240,)}
IMAGE_INPUTS = {"m1": (1, 16, 15), "m2": (1, 16, 15)}
HEAD_TAPS = {"fc1": (HIDDEN[0],), "fc2": (HIDDEN[1],)}
CNN_TAPS = {"conv1": (CONV_CHANNELS[0], None, None), "conv2": (CONV_CHANNELS[1], None, None), **HEAD_TAPS}


class Head(nn.Module):
    """``fc1 -> ReLU -> fc2 -> ReLU -> fc3`` on a flat feature."""

    def __init__(self, in_dim: int, num_classes: int):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, HIDDEN[0])
        self.fc2 = nn.Linear(HIDDEN[0], HIDDEN[1])
        self.fc3 = nn.Linear(HIDDEN[1], num_classes)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class ConvTrunk(nn.Module):
    """``[B, C, H, W] -> [B, 32·4·4]``: conv 3x3 (16), ReLU, max-pool 2 (ceil), conv 3x3 (32), ReLU, avg-pool 4x4."""

    out_features = CONV_CHANNELS[1] * POOLED[0] * POOLED[1]

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, CONV_CHANNELS[0], kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(CONV_CHANNELS[0], CONV_CHANNELS[1], kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2, ceil_mode=True)
        x = F.adaptive_avg_pool2d(F.relu(self.conv2(x)), POOLED)
        return x.flatten(1)


class MLP(Head):
    """Unimodal MLP on the flattened input."""

    def __init__(self, in_dim: int, num_classes: int):
        super().__init__(in_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.flatten(1))


class SmallCNN(ConvTrunk):
    """Unimodal small CNN for ``[C, H, W]`` inputs: :class:`ConvTrunk`, then the MLP head (fc1, fc2, fc3)."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__(channels)
        self.fc1 = nn.Linear(self.out_features, HIDDEN[0])
        self.fc2 = nn.Linear(HIDDEN[0], HIDDEN[1])
        self.fc3 = nn.Linear(HIDDEN[1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return Head.head(self, super().forward(x))


class FusionNet(Head):
    """Multimodal teacher: per modality the CNN trunk (images) or the flattened input, concatenated, MLP head."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], num_classes: int):
        encoders, width = {}, 0
        for modality in ("m1", "m2"):
            shape = tuple(shapes[modality])
            encoders[modality] = ConvTrunk(shape[0]) if len(shape) == 3 else nn.Flatten()
            width += ConvTrunk.out_features if len(shape) == 3 else math.prod(shape)
        super().__init__(width, num_classes)
        self.m1_encoder, self.m2_encoder = encoders["m1"], encoders["m2"]
        self.concat_identity = nn.Identity()

    def forward(self, m1: torch.Tensor, m2: torch.Tensor) -> torch.Tensor:
        return self.head(self.concat_identity(torch.cat([self.m1_encoder(m1), self.m2_encoder(m2)], dim=1)))


def _shape(input_shapes, modality: str, model: str) -> tuple[int, ...]:
    if not input_shapes or modality not in input_shapes:
        raise UserError(f"model {model} is sized from the data: build it with input_shapes")
    return tuple(int(d) for d in input_shapes[modality])


def _mlp(modality: str):
    def build(num_classes=10, input_shapes=None, **_):
        return MLP(math.prod(_shape(input_shapes, modality, f"MLP-{modality}")), num_classes)

    return build


def _cnn(modality: str):
    def build(num_classes=10, input_shapes=None, **_):
        shape = _shape(input_shapes, modality, f"CNN-{modality}")
        if len(shape) != 3:
            raise UserError(f"CNN-{modality} takes images [C, H, W], but {modality} is {list(shape)} per sample; "
                            f"use --Smodel/--Tmodel/--AUXmodel MLP-{modality}")
        return SmallCNN(shape[0], num_classes)

    return build


for _modality in ("m1", "m2"):
    register_model(f"MLP-{_modality}", None, (_modality,), "generic MLP (64-32) on the flattened input",
                   taps=HEAD_TAPS, probes={"fc3": LOGITS}, example_inputs=VECTOR_INPUTS)(_mlp(_modality))
    register_model(f"CNN-{_modality}", None, (_modality,), "generic small CNN (16-32 conv, 64-32 MLP) for [C, H, W]",
                   taps=CNN_TAPS, probes={"fc3": LOGITS}, example_inputs=IMAGE_INPUTS)(_cnn(_modality))


@register_model("Fusion-I", None, ("m1", "m2"), "generic fusion teacher (CNN trunk for images, else flattened; MLP)",
                taps=HEAD_TAPS, probes={"concat_identity": (None,), "fc3": LOGITS}, example_inputs=VECTOR_INPUTS)
def fusion_teacher(num_classes=10, input_shapes=None, **_):
    return FusionNet({m: _shape(input_shapes, m, "Fusion-I") for m in ("m1", "m2")}, num_classes)
