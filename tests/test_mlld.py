"""MLLD and MLLD-UU (Jin et al., CVPR 2023): the multi-level loss against a straightforward computation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kd_methods import get_method
from kd_methods.mlld import TEMPERATURES, mlld_loss
from utils import cli
from utils.errors import UserError


def _mlld_by_hand(student: np.ndarray, teacher: np.ndarray) -> float:
    def softmax(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    total = 0.0
    for tau in TEMPERATURES:
        ps, pt = softmax(student / tau), softmax(teacher / tau)
        instance = tau ** 2 * (pt * (np.log(pt) - np.log(ps))).sum() / len(ps)
        classes = ((ps.T @ ps - pt.T @ pt) ** 2).mean()
        batch = ((ps @ ps.T - pt @ pt.T) ** 2).mean()
        total += instance + classes + batch
    return total / 5 / 3


def test_mlld_matches_a_straightforward_computation():
    generator = torch.Generator().manual_seed(3)
    student, teacher = torch.randn(6, 4, generator=generator) * 3, torch.randn(6, 4, generator=generator) * 3
    expected = _mlld_by_hand(student.double().numpy(), teacher.double().numpy())
    assert mlld_loss(student, teacher).item() == pytest.approx(expected, rel=1e-5)
    assert mlld_loss(teacher, teacher).abs().item() < 1e-6


def test_mlld_refuses_nyu_up_front():
    with pytest.raises(UserError, match="reference crashes"):
        cli.parse_args(get_method("MLLD"), ["--database", "NYU-Depth-V2", "--ckpt_name", "x.pth"])
