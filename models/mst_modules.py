"""MST-Distill's extra networks: the feature MaskNets (1-d and 2-d) and the routers (GateNet, GateNet-dense).

Li et al., "MST-Distill: Mixture of Specialized Teachers for Cross-Modal Knowledge Distillation", ACM MM 2025.
Plain ``nn.Module`` classes, not registered as CLI models: ``kd_methods/mst.py`` builds
them. Submodule names equal the reference's (``embed``, ``mha``, ``fc``, ``spatial_reduce.downsample``...), and
so does the order in which they are created, so random initialisation consumes the RNG in the reference order
and state dicts keep the reference's keys. Every layer keeps PyTorch's default initialisation, as the reference.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def hidden_width(channels: int, factor: int, heads: int) -> int:
    """``hd = floor(C / (f·h)) · h``: the token width, a multiple of the head count, as the reference.

    ``factor`` is ``--hidden_dim_factor`` (f, reference default 2), ``heads`` is ``--mask_head_num`` (h, 3).
    """
    return (channels // (factor * heads)) * heads


class MaskNet1d(nn.Module):
    """Per-feature soft mask in (0, 1) for a vector feature ``[B, C]``.

    Every feature index is a token: one ``Linear(C -> C·hd)`` embeds the whole vector into ``C`` tokens of width
    ``hd`` (token j is output slice ``[j·hd, (j+1)·hd)``), one multi-head self-attention layer mixes them (no
    residual, no normalisation, no feed-forward, as the reference), and ``Linear(hd -> 1)`` + sigmoid gives the
    mask. The embedding holds ``C²·hd`` weights, which is why ``--hidden_dim_factor`` exists.
    """

    def __init__(self, channels: int, hidden_dim: int, num_heads: int = 3):
        super().__init__()
        if hidden_dim < num_heads or hidden_dim % num_heads:
            raise ValueError(f"MaskNet width {hidden_dim} must be a positive multiple of the head count {num_heads}")
        self.seq_len = channels
        self.hidden_dim = hidden_dim
        self.embed = nn.Linear(channels, hidden_dim * channels)
        self.mha = nn.MultiheadAttention(embed_dim=hidden_dim, num_heads=num_heads, batch_first=True)
        self.fc = nn.Linear(hidden_dim, 1)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x).reshape(x.size(0), self.seq_len, self.hidden_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.tokens(x)
        # The attention weights are never used, so they are not computed: less work and memory; the output equals
        # the reference's need_weights=True path up to float rounding (a different attention kernel).
        attended, _ = self.mha(tokens, tokens, tokens, need_weights=False)
        return torch.sigmoid(self.fc(attended).squeeze(-1))


class SpatialReduction(nn.Module):
    """``[B, C, H, W] -> [B, C]``: depthwise 3x3/2 conv, pointwise conv, BN, ReLU, global average pool."""

    def __init__(self, channels: int):
        super().__init__()
        self.downsample = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1, groups=channels, bias=False),
            nn.Conv2d(channels, channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )
        self.gap = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gap(self.downsample(x)).flatten(1)


class MaskNet2d(MaskNet1d):
    """Per-channel soft mask for a feature map ``[B, C, H, W]``: spatial reduction, then exactly MaskNet-1d.

    The mask is ``[B, C]``; the caller broadcasts it over H and W.
    """

    def __init__(self, channels: int, hidden_dim: int, num_heads: int = 3):
        nn.Module.__init__(self)
        if hidden_dim < num_heads or hidden_dim % num_heads:
            raise ValueError(f"MaskNet width {hidden_dim} must be a positive multiple of the head count {num_heads}")
        self.seq_len = channels
        self.hidden_dim = hidden_dim
        # Created before the embedding, as in the reference, so the RNG is consumed in the same order.
        self.spatial_reduce = SpatialReduction(channels)
        self.embed = nn.Linear(channels, hidden_dim * channels)
        self.mha = nn.MultiheadAttention(embed_dim=hidden_dim, num_heads=num_heads, batch_first=True)
        self.fc = nn.Linear(hidden_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.spatial_reduce(x))


def masknet_kind(feature_shape: tuple[int, ...]) -> str:
    """``"1d"`` or ``"2d"`` for a per-sample feature shape (the reference's rule).

    ``(C,)`` -> 1-d; ``(C, H, W)`` with ``H = W = 1`` -> 1-d (the hook flattens it first); other ``(C, H, W)`` -> 2-d.
    """
    if len(feature_shape) == 1:
        return "1d"
    if len(feature_shape) == 3:
        return "1d" if tuple(feature_shape[1:]) == (1, 1) else "2d"
    raise ValueError(f"MaskNets take [C] or [C, H, W] features, not per-sample shape {tuple(feature_shape)}")


def build_masknet(feature_shape: tuple[int, ...], factor: int, heads: int) -> nn.Module:
    channels = int(feature_shape[0])
    width = hidden_width(channels, factor, heads)
    cls = MaskNet1d if masknet_kind(feature_shape) == "1d" else MaskNet2d
    return cls(channels, width, heads)


class GateNet(nn.Module):
    """Router on the student's logits ``[B, K] -> [B, ways]``.

    Two linear layers with no activation between them, as the reference (so it is effectively one affine map).
    """

    def __init__(self, num_classes: int, ways: int):
        super().__init__()
        self.fc1 = nn.Linear(num_classes, 2 * num_classes)
        self.fc2 = nn.Linear(2 * num_classes, ways)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(logits))


class GateNetDense(nn.Module):
    """Router on dense student logits ``[B, K, H, W] -> [B, ways]``: one routing decision per image.

    1x1 conv (K -> 2K) + ReLU, depthwise 3x3/2 conv + ReLU, global average pool, ``Linear(2K -> ways)``.
    """

    def __init__(self, num_classes: int, ways: int):
        super().__init__()
        hidden = 2 * num_classes
        self.conv_point = nn.Conv2d(num_classes, hidden, kernel_size=1, stride=1)
        self.conv_depthwise = nn.Conv2d(hidden, hidden, kernel_size=3, stride=2, padding=1, groups=hidden)
        self.fc = nn.Linear(hidden, ways)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv_point(logits))
        x = F.relu(self.conv_depthwise(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))
