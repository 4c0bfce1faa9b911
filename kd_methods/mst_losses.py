"""MST-Distill's losses and schedules (Li et al., ACM MM 2025), at module level so tests check them on hand-made
tensors: the stage-3 weight decays, load balancing, top-k expert picking, per-sample KD and MaskNet application."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

TEMPERATURE = 4.0


def loss_weights(epoch: int, w_kl: float, w_lb: float) -> tuple[float, float]:
    """Stage-3 weights during 0-based epoch ``epoch``: ``(w_kl·0.5^ceil(e/30), w_lb·0.9^ceil(e/10))``.

    The reference multiplies after epoch e when ``e % 30 == 0`` / ``e % 10 == 0``, so the first decay already
    applies from epoch 1 on (unlike the baselines' halving after epochs 30, 60, 90).
    """
    return w_kl * 0.5 ** math.ceil(epoch / 30), w_lb * 0.9 ** math.ceil(epoch / 10)


def load_balancing_loss(gate_probs: torch.Tensor, mode: str = "KL") -> torch.Tensor:
    """Load balancing of the router probabilities ``[B, ways]`` (stage 3).

    ``KL``: ``(1/ways)·Σ_e u·(log u − log p̄_e)`` with ``p̄ = mean_b g`` and ``u = 1/ways``: KL(u ‖ p̄) divided by
    ``ways``, as the reference's "batchmean" reduction over a 1-d tensor. ``CV``: ``std(I)/mean(I)`` of the
    importance ``I_e = Σ_b g_b,e`` with the unbiased (N−1) standard deviation.
    """
    if mode == "KL":
        mean_probs = gate_probs.mean(dim=0)
        uniform = torch.full_like(mean_probs, 1.0 / mean_probs.numel())
        return F.kl_div(mean_probs.log(), uniform, reduction="sum") / mean_probs.numel()
    if mode == "CV":
        importance = gate_probs.sum(dim=0)
        return importance.std() / importance.mean()
    raise ValueError(f"unknown load-balancing mode {mode!r}; use KL or CV")


def pick_experts(experts: Sequence[torch.Tensor], choice: torch.Tensor) -> torch.Tensor:
    """Per sample ``b``, ``experts[choice[b]][b]``: ``[B, ...]`` from ``ways`` tensors ``[B, ...]`` and ``choice [B]``.

    Works for logits ``[B, K]`` and dense maps ``[B, K, H, W]`` alike without stacking all experts.
    """
    select = choice.view(-1, *([1] * (experts[0].dim() - 1)))
    picked = experts[0]
    for e in range(1, len(experts)):
        picked = torch.where(select == e, experts[e], picked)
    return picked


def gather_topk(experts: Sequence[torch.Tensor], indices: torch.Tensor) -> torch.Tensor:
    """``[B, k, ...]``: the logits of each sample's selected experts, ``indices [B, k]`` (routing ids)."""
    return torch.stack([pick_experts(experts, indices[:, r]) for r in range(indices.shape[1])], dim=1)


def kd_per_sample(pred: torch.Tensor, target: torch.Tensor, temperature: float = TEMPERATURE,
                  per_pixel: bool = False) -> torch.Tensor:
    """``[B]``: each sample's KD_T term, so that its batch mean equals :func:`kd_methods.base.kd_loss`."""
    log_q = F.log_softmax(pred / temperature, dim=1)
    p = F.softmax(target / temperature, dim=1)
    terms = F.kl_div(log_q, p, reduction="none").flatten(1).sum(dim=1)
    if per_pixel and pred.dim() > 2:
        terms = terms / pred[0, 0].numel()
    return terms * temperature ** 2


def apply_mask(masknet: nn.Module, output: torch.Tensor) -> torch.Tensor:
    """The reference's hook: ``mask(o) ⊙ o`` where a ``[B, C, 1, 1]`` output is first flattened to ``[B, C]``
    (so the replaced output keeps that flattened shape) and the mask gets trailing singleton dims."""
    if output.dim() == 4 and output.shape[-2:] == (1, 1):
        output = output.flatten(1)
    mask = masknet(output)
    return mask.reshape(mask.shape + (1,) * (output.dim() - mask.dim())) * output
