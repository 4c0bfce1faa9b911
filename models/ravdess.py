"""RAVDESS emotion models: the dual-stream teacher ``DSCNN-I`` and its single-stream students
``VisualBranchNet`` / ``AudioBranchNet``, as the reference defines them.

Inputs arrive in the dataset layout: face video ``[B,15,3,224,224]`` (time first) and MFCC ``[B,15,156]``.
The reference permuted the video to ``[B,3,15,224,224]`` in an input wrapper; that permute lives in ``forward``
here (it has no parameters, so state dicts are unchanged).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.registry import register_model
from models.taps import LOGITS

NUM_CLASSES = 8
AUDIO_FEATURES = 256 * 5  # 156 MFCC frames pooled by 3 three times -> 5
VISUAL_FEATURES = 24 * 1 * 28 * 28  # 15 frames x 224^2 halved three times -> 1 x 28^2
#: per-sample inputs: 15 face frames (m1), 15 MFCC x 156 frames (m2)
RAVDESS_INPUTS = {"m1": (15, 3, 224, 224), "m2": (15, 156)}
HEAD_TAPS = {"fc1": (320,), "fc2": (160,)}


def video_to_channels_first(video: torch.Tensor) -> torch.Tensor:
    """``[B,T,C,H,W]`` (dataset layout) -> ``[B,C,T,H,W]`` (Conv3d layout)."""
    return video.permute(0, 2, 1, 3, 4)


class Conv1dBranch(nn.Module):
    """Three Conv1d(k3, p1)-BN-ReLU-MaxPool(3) stages, flattened: the audio stream of both dual-stream families
    (RAVDESS: the 15 MFCC coefficients are the channels; VGGSound: the 10 one-second segments are)."""

    def __init__(self, channels: tuple[int, int, int, int]):
        super().__init__()
        for i, (c_in, c_out) in enumerate(zip(channels, channels[1:]), start=1):  # conv1, bn1, conv2, ...: the
            setattr(self, f"conv{i}", nn.Conv1d(c_in, c_out, kernel_size=3, padding=1))  # reference's order
            setattr(self, f"bn{i}", nn.BatchNorm1d(c_out))
        self.pool = nn.MaxPool1d(kernel_size=3, stride=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in (1, 2, 3):
            x = self.pool(F.relu(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x))))
        return x.reshape(x.size(0), -1)


class Conv3dBranch(nn.Module):
    """Three Conv3d(k3, p1)-BN-ReLU stages, each followed by MaxPool3d(2) (VGGSound's last one is not pooled: its
    map is already ``[2, 1, 1]``), flattened: the visual stream of both dual-stream families."""

    def __init__(self, channels: tuple[int, int, int, int], pool_last: bool = True):
        super().__init__()
        for i, (c_in, c_out) in enumerate(zip(channels, channels[1:]), start=1):
            setattr(self, f"conv{i}", nn.Conv3d(c_in, c_out, kernel_size=3, padding=1))
            setattr(self, f"bn{i}", nn.BatchNorm3d(c_out))
        self.pool = nn.MaxPool3d(kernel_size=2, stride=2)
        self.pool_last = pool_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in (1, 2, 3):
            x = F.relu(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
            if i < 3 or self.pool_last:
                x = self.pool(x)
        return x.reshape(x.size(0), -1)


def audio_branch() -> Conv1dBranch:
    """RAVDESS audio stream: MFCC ``[B, 15, 156]`` -> ``[B, 1280]``."""
    return Conv1dBranch((15, 32, 128, 256))


def visual_branch() -> Conv3dBranch:
    """RAVDESS visual stream: face clip ``[B, 3, 15, 224, 224]`` -> ``[B, 18816]``."""
    return Conv3dBranch((3, 6, 12, 24))


class ClassifierHead(nn.Module):
    """``fc1 -> ReLU -> fc2 -> ReLU -> fc3``; ReLU is functional so hooks on fc1/fc2 see pre-activations."""

    def _init_head(self, in_features: int, num_classes: int) -> None:
        self.fc1 = nn.Linear(in_features, 320)
        self.fc2 = nn.Linear(320, 160)
        self.fc3 = nn.Linear(160, num_classes)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class DualStreamNet(ClassifierHead):
    """Dual-stream CNN teacher: an audio and a visual stream, concatenated ``[audio | visual]``, then the head.

    Shared by the RAVDESS (``DSCNN-I``) and VGGSound (``DSCNN-VGGS-I``) teachers, which differ only in their
    branches, and the visual input layout.
    """

    def __init__(self, audio_branch: nn.Module, visual_branch: nn.Module, visual_layout, in_features: int,
                 num_classes: int):
        super().__init__()
        self.audio_branch = audio_branch
        self.visual_branch = visual_branch
        self.visual_layout = visual_layout
        self._init_head(in_features, num_classes)

    def forward(self, m1: torch.Tensor, m2: torch.Tensor) -> torch.Tensor:
        visual = self.visual_branch(self.visual_layout(m1))
        audio = self.audio_branch(m2)
        return self.head(torch.cat([audio, visual], dim=1))


class SingleStreamNet(ClassifierHead):
    """One stream of a dual-stream teacher with its own head: the reference's ``*BranchNet`` students."""

    def __init__(self, branch_name: str, branch: nn.Module, layout, in_features: int, num_classes: int):
        super().__init__()
        setattr(self, branch_name, branch)  # registered first: the reference's state-dict order
        self.branch_name = branch_name
        self.layout = layout
        self._init_head(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(getattr(self, self.branch_name)(self.layout(x)))


def keep_layout(x: torch.Tensor) -> torch.Tensor:
    return x


@register_model("DSCNN-I", "RAVDESS", ("m1", "m2"), "dual-stream CNN teacher (Conv3d video + Conv1d MFCC)",
                taps=HEAD_TAPS, example_inputs=RAVDESS_INPUTS,
                probes={"visual_branch": (VISUAL_FEATURES,), "visual_branch.conv1": (6, 15, 224, 224),
                        "visual_branch.conv2": (12, 7, 112, 112), "visual_branch.conv3": (24, 3, 56, 56),
                        "audio_branch": (AUDIO_FEATURES,), "audio_branch.conv1": (32, 156),
                        "audio_branch.conv2": (128, 52), "audio_branch.conv3": (256, 17), "fc3": LOGITS})
def dscnn_intermediate(num_classes=NUM_CLASSES, input_shapes=None, **_):
    return DualStreamNet(audio_branch(), visual_branch(), video_to_channels_first, AUDIO_FEATURES + VISUAL_FEATURES,
                         num_classes)


@register_model("VisualBranchNet", "RAVDESS", ("m1",), "Conv3d face-video student",
                taps={"visual_branch": (VISUAL_FEATURES,), **HEAD_TAPS}, probes={"fc3": LOGITS},
                example_inputs=RAVDESS_INPUTS)
def visual_branch_net(num_classes=NUM_CLASSES, input_shapes=None, **_):
    return SingleStreamNet("visual_branch", visual_branch(), video_to_channels_first, VISUAL_FEATURES, num_classes)


@register_model("AudioBranchNet", "RAVDESS", ("m2",), "Conv1d MFCC student",
                taps={"audio_branch": (AUDIO_FEATURES,), **HEAD_TAPS}, probes={"fc3": LOGITS},
                example_inputs=RAVDESS_INPUTS)
def audio_branch_net(num_classes=NUM_CLASSES, input_shapes=None, **_):
    return SingleStreamNet("audio_branch", audio_branch(), keep_layout, AUDIO_FEATURES, num_classes)
