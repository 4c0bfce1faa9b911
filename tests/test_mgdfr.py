"""MGDFR (MFH Algorithm 1 + KD): the phase-C teacher and the channel removal."""
from __future__ import annotations

import argparse

import pytest
import torch
import torch.nn.functional as F

from kd_methods.base import kd_loss
from kd_methods.mgdfr import MGDFR
from utils import cli, engine


QUICK = ["--mvd_samples", "400", "--no-record", "--device", "cpu"]


def _mgdfr(tmp_path, *extra):
    description = cli.describe(MGDFR, ["--epochs", "1", "--max_steps", "1", "--out_dir", str(tmp_path), *QUICK,
                                       *extra])
    ctx = engine.build_context(description, torch.device("cpu"))
    return MGDFR(ctx), ctx


def test_mgdfr_phase_c_teacher_default_unchanged_and_removal_uses_batch_mean(tmp_path):
    torch.manual_seed(0)
    method, ctx = _mgdfr(tmp_path)
    method.args = argparse.Namespace(**vars(method.args))  # the test switches --mgdfr_apply_removal below
    method.end_co_training()  # phase B on one batch, then the fresh student
    assert method.salience.min().item() == 0.0 and method.salience.max().item() == 1.0
    assert not torch.equal(method.student.fc1.weight, method.co_student.fc1.weight)
    removed = method.removed_channels()
    assert len(removed) == int(0.75 * method.salience.numel())
    assert torch.all(method.salience[removed].max() <= method.salience[[i for i in range(32) if i not in removed]])
    method.eval()
    batch = next(iter(ctx.make_loader("val")))
    teacher = method.teacher
    with torch.no_grad():
        plain = teacher(batch.m2)  # --mode m1: the teacher reads m2
        assert torch.equal(method.teacher_logits(batch), plain), "reference: the freeze hook is a no-op"
        method.args.mgdfr_apply_removal = True
        hidden = teacher.fc2(F.relu(teacher.fc1(batch.m2)))
        expected_hidden = hidden.clone()
        expected_hidden[:, removed] = hidden[:, removed].mean(0)
        expected = teacher.fc3(F.relu(expected_hidden))
        assert torch.allclose(method.teacher_logits(batch), expected, atol=1e-6)
        assert not torch.allclose(expected, plain)
    assert sum(len(m._forward_hooks) for m in teacher.modules()) == 0


def test_mgdfr_phase_c_kd_temperature_is_a_flag(tmp_path):
    torch.manual_seed(0)
    method, ctx = _mgdfr(tmp_path, "--kd_temperature", "2", "--alpha", "0.5")
    batch = next(iter(ctx.make_loader("train")))
    losses = method.kd_step(batch, 0)
    with torch.no_grad():
        expected = 0.5 * kd_loss(method.student(batch.m1), method.teacher(batch.m2), 2.0)
    assert losses["kd"].item() == pytest.approx(expected.item(), rel=1e-5)
