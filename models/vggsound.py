"""VGGSound-50k models: the dual-stream teacher ``DSCNN-VGGS-I`` and its single-stream students
``VisualBranchNet-VGGS`` / ``AudioBranchNet-VGGS`` (models-and-data.md §3.3).

They work on pre-extracted features: visual VGG feature maps ``[B,10,7,7,512]`` (10 one-second segments) and
audio embeddings ``[B,10,128]``. The reference permuted the visual maps to ``[B,512,10,7,7]`` in an input
wrapper; that permute lives in ``forward`` here. Labels (int64 class ids) are not the models' concern.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.ravdess import DualStreamNet, SingleStreamNet, keep_layout
from models.registry import register_model

NUM_CLASSES = 141
AUDIO_FEATURES = 64 * 4  # 128-long embedding pooled by 3 three times -> 4
VISUAL_FEATURES = 64 * 2 * 1 * 1  # [10,7,7] halved twice -> [2,1,1]


def features_to_channels_first(visual: torch.Tensor) -> torch.Tensor:
    """``[B,T,H,W,C]`` (dataset layout) -> ``[B,C,T,H,W]`` (Conv3d layout)."""
    return visual.permute(0, 4, 1, 2, 3)


class AudioBranchVGGS(nn.Module):
    """Three Conv1d-BN-ReLU-MaxPool stages; the 10 segments are the channels, the embedding is the length."""

    def __init__(self, in_channels: int = 10):
        super().__init__()
        self.conv1 = nn.Conv1d(in_channels, 16, kernel_size=3, padding=1)
        self.bn1 = nn.BatchNorm1d(16)
        self.conv2 = nn.Conv1d(16, 32, kernel_size=3, padding=1)
        self.bn2 = nn.BatchNorm1d(32)
        self.conv3 = nn.Conv1d(32, 64, kernel_size=3, padding=1)
        self.bn3 = nn.BatchNorm1d(64)
        self.pool = nn.MaxPool1d(kernel_size=3, stride=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.bn1(self.conv1(x))))
        x = self.pool(F.relu(self.bn2(self.conv2(x))))
        x = self.pool(F.relu(self.bn3(self.conv3(x))))
        return x.reshape(x.size(0), -1)


class VisualBranchVGGS(nn.Module):
    """Three Conv3d-BN-ReLU stages over ``[B,512,10,7,7]`` feature maps; the last stage is not pooled because the
    map is already ``[2,1,1]``."""

    def __init__(self, in_channels: int = 512):
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, 256, kernel_size=3, padding=1)
        self.bn1 = nn.BatchNorm3d(256)
        self.conv2 = nn.Conv3d(256, 128, kernel_size=3, padding=1)
        self.bn2 = nn.BatchNorm3d(128)
        self.conv3 = nn.Conv3d(128, 64, kernel_size=3, padding=1)
        self.bn3 = nn.BatchNorm3d(64)
        self.pool = nn.MaxPool3d(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.bn1(self.conv1(x))))
        x = self.pool(F.relu(self.bn2(self.conv2(x))))
        x = F.relu(self.bn3(self.conv3(x)))
        return x.reshape(x.size(0), -1)


@register_model("DSCNN-VGGS-I", "VGGSound-50k", ("m1", "m2"), "dual-stream CNN teacher on VGGish/VGG features")
def dscnn_vggs_intermediate(num_classes=NUM_CLASSES, input_shapes=None, **_):
    taps = ["audio_branch", "visual_branch", "fc1", "fc2", "fc3"]
    return DualStreamNet(AudioBranchVGGS(), VisualBranchVGGS(), features_to_channels_first,
                         AUDIO_FEATURES + VISUAL_FEATURES, num_classes, taps)


@register_model("VisualBranchNet-VGGS", "VGGSound-50k", ("m1",), "Conv3d student on visual feature maps")
def visual_branch_net_vggs(num_classes=NUM_CLASSES, input_shapes=None, **_):
    return SingleStreamNet("visual_branch", VisualBranchVGGS(), features_to_channels_first, VISUAL_FEATURES,
                           num_classes)


@register_model("AudioBranchNet-VGGS", "VGGSound-50k", ("m2",), "Conv1d student on audio embeddings")
def audio_branch_net_vggs(num_classes=NUM_CLASSES, input_shapes=None, **_):
    return SingleStreamNet("audio_branch", AudioBranchVGGS(), keep_layout, AUDIO_FEATURES, num_classes)
