"""VGGSound-50k models: the dual-stream teacher ``DSCNN-VGGS-I`` and its single-stream students
``VisualBranchNet-VGGS`` / ``AudioBranchNet-VGGS``, as the reference defines them.

They work on pre-extracted features: visual VGG feature maps ``[B,10,7,7,512]`` (10 one-second segments) and
audio embeddings ``[B,10,128]``. The reference permuted the visual maps to ``[B,512,10,7,7]`` in an input
wrapper; that permute lives in ``forward`` here. Labels (int64 class ids) are not the models' concern.
"""
from __future__ import annotations

import torch

from models.ravdess import HEAD_TAPS, Conv1dBranch, Conv3dBranch, DualStreamNet, SingleStreamNet, keep_layout
from models.registry import register_model
from models.taps import LOGITS

NUM_CLASSES = 141
AUDIO_FEATURES = 64 * 4  # 128-long embedding pooled by 3 three times -> 4
VISUAL_FEATURES = 64 * 2 * 1 * 1  # [10,7,7] halved twice -> [2,1,1]
#: per-sample inputs: 10 VGG-19 pool5 maps (m1), 10 VGGish embeddings (m2)
VGGS_INPUTS = {"m1": (10, 7, 7, 512), "m2": (10, 128)}


def features_to_channels_first(visual: torch.Tensor) -> torch.Tensor:
    """``[B,T,H,W,C]`` (dataset layout) -> ``[B,C,T,H,W]`` (Conv3d layout)."""
    return visual.permute(0, 4, 1, 2, 3)


def audio_branch_vggs() -> Conv1dBranch:
    """VGGish embeddings ``[B, 10, 128]`` (segments as channels) -> ``[B, 256]``."""
    return Conv1dBranch((10, 16, 32, 64))


def visual_branch_vggs() -> Conv3dBranch:
    """VGG feature maps ``[B, 512, 10, 7, 7]`` -> ``[B, 128]`` (the last stage is not pooled)."""
    return Conv3dBranch((512, 256, 128, 64), pool_last=False)


@register_model("DSCNN-VGGS-I", "VGGSound-50k", ("m1", "m2"), "dual-stream CNN teacher on VGGish/VGG features",
                taps=HEAD_TAPS, probes={"audio_branch": (AUDIO_FEATURES,), "visual_branch": (VISUAL_FEATURES,),
                                        "fc3": LOGITS}, example_inputs=VGGS_INPUTS)
def dscnn_vggs_intermediate(num_classes=NUM_CLASSES, input_shapes=None, **_):
    return DualStreamNet(audio_branch_vggs(), visual_branch_vggs(), features_to_channels_first,
                         AUDIO_FEATURES + VISUAL_FEATURES, num_classes)


@register_model("VisualBranchNet-VGGS", "VGGSound-50k", ("m1",), "Conv3d student on visual feature maps",
                taps={"visual_branch": (VISUAL_FEATURES,), **HEAD_TAPS}, probes={"fc3": LOGITS},
                example_inputs=VGGS_INPUTS)
def visual_branch_net_vggs(num_classes=NUM_CLASSES, input_shapes=None, **_):
    return SingleStreamNet("visual_branch", visual_branch_vggs(), features_to_channels_first, VISUAL_FEATURES,
                           num_classes)


@register_model("AudioBranchNet-VGGS", "VGGSound-50k", ("m2",), "Conv1d student on audio embeddings",
                taps={"audio_branch": (AUDIO_FEATURES,), **HEAD_TAPS}, probes={"fc3": LOGITS},
                example_inputs=VGGS_INPUTS)
def audio_branch_net_vggs(num_classes=NUM_CLASSES, input_shapes=None, **_):
    return SingleStreamNet("audio_branch", audio_branch_vggs(), keep_layout, AUDIO_FEATURES, num_classes)
