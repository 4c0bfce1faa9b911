"""DML (Zhang et al., CVPR 2018): symmetric terms and gradients of the two peers."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import MVD, build_method, first_batch
from kd_methods.base import kd_loss


def test_dml_symmetric_terms_and_gradients():
    method, ctx = build_method("DML", MVD + ["--dml_T", "2"])
    assert method.peer.model_name == "MVD-MLP-m2" and method.student.model_name == "MVD-MLP-m1"
    batch = first_batch(ctx)
    losses = method.train_step(batch, 0)
    with torch.no_grad():
        z_s, z_p = method.student(batch.m1), method.peer(batch.m2)
    assert losses["kl"].item() == pytest.approx(kd_loss(z_s, z_p, 2.0).item(), rel=1e-5)
    assert losses["peer_kl"].item() == pytest.approx(kd_loss(z_p, z_s, 2.0).item(), rel=1e-5)
    assert losses["peer_ce"].item() == pytest.approx(F.cross_entropy(z_p, batch.y).item(), rel=1e-5)
    # each KL term trains only its own network: the other's prediction is a detached target
    losses["kl"].backward()
    assert all(p.grad is None for p in method.peer.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.student.parameters())
    # swapping the roles swaps the terms
    swapped = kd_loss(z_p, z_s, 2.0), kd_loss(z_s, z_p, 2.0)
    assert swapped[0].item() == pytest.approx(losses["peer_kl"].item(), rel=1e-5)
