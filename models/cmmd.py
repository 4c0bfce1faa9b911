"""CrisisMMD v2 (humanitarian task) models over pre-extracted features: the fusion teacher ``MLP-I`` and the
students ``MLP-Vb`` (ResNet-50 image features, m1) and ``MLP-Tb`` (BERTweet text features, m2)
(as the reference). ReLU is functional so hooks on ``fc*`` see pre-activation outputs.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.registry import register_model
from models.taps import LOGITS

NUM_CLASSES = 8
IMAGE_DIM = 2048
TEXT_DIM = 768
#: per-sample inputs: ResNet-50 image features (m1), BERTweet text features (m2)
CMMD_INPUTS = {"m1": (IMAGE_DIM,), "m2": (TEXT_DIM,)}


class FeatureMLP(nn.Module):
    """Two linear layers with ReLU after each: one modality's 512-d embedding inside ``MLP-I``."""

    def __init__(self, in_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, 1024)
        self.fc2 = nn.Linear(1024, 512)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc2(F.relu(self.fc1(x))))


class UnimodalMLP(nn.Module):
    """Three-layer MLP classifier ``in -> 1024 -> 512 -> K`` on one modality's features."""

    def __init__(self, in_dim: int, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, 1024)
        self.fc2 = nn.Linear(1024, 512)
        self.fc3 = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class FusionMLP(nn.Module):
    """Intermediate-fusion teacher: per-modality MLPs, concatenation [visual 512 | text 512], three-layer head."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.VisualNet = FeatureMLP(IMAGE_DIM)
        self.TextualNet = FeatureMLP(TEXT_DIM)
        self.fc1 = nn.Linear(512 + 512, 512)
        self.fc2 = nn.Linear(512, 256)
        self.fc3 = nn.Linear(256, num_classes)

    def forward(self, m1: torch.Tensor, m2: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.VisualNet(m1), self.TextualNet(m2)], dim=1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


@register_model("MLP-I", "CMMD-V2", ("m1", "m2"), "intermediate-fusion MLP teacher (image + text features)",
                taps={"fc1": (512,), "fc2": (256,)},
                probes={"VisualNet.fc1": (1024,), "VisualNet.fc2": (512,), "TextualNet.fc1": (1024,),
                        "TextualNet.fc2": (512,), "fc3": LOGITS},
                example_inputs=CMMD_INPUTS)
def mlp_intermediate(num_classes=NUM_CLASSES, input_shapes=None, **_):
    return FusionMLP(num_classes)


@register_model("MLP-Vb", "CMMD-V2", ("m1",), "MLP on 2048-d image features",
                taps={"fc1": (1024,), "fc2": (512,)}, probes={"fc3": LOGITS}, example_inputs=CMMD_INPUTS)
def mlp_visual(num_classes=NUM_CLASSES, input_shapes=None, **_):
    return UnimodalMLP(IMAGE_DIM, num_classes)


@register_model("MLP-Tb", "CMMD-V2", ("m2",), "MLP on 768-d text features",
                taps={"fc1": (1024,), "fc2": (512,)}, probes={"fc3": LOGITS}, example_inputs=CMMD_INPUTS)
def mlp_text(num_classes=NUM_CLASSES, input_shapes=None, **_):
    return UnimodalMLP(TEXT_DIM, num_classes)
