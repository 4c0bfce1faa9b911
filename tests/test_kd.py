"""KD and KD-UU (Hinton et al. 2015): the loss on hand-made logits, the weight schedule, the frozen teacher."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import MVD, build_method, first_batch
from kd_methods.base import kd_loss


def test_kd_zero_for_identical_logits():
    logits = torch.randn(5, 7)
    assert kd_loss(logits, logits).abs().item() < 1e-6


def test_kd_hand_computed_value():
    # T = 4: softmax([4 ln 3, 0] / 4) = [3/4, 1/4] against the uniform student: 16 * KL
    teacher = torch.tensor([[4 * math.log(3.0), 0.0]])
    student = torch.zeros(1, 2)
    expected = 16 * (0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5))
    assert kd_loss(student, teacher).item() == pytest.approx(expected, rel=1e-6)


def test_kd_train_step_weights_halving_and_frozen_teacher(mvd_teachers):
    method, ctx = build_method("KD", MVD + ["--ckpt_name", mvd_teachers["multimodal"], "--alpha", "0.4"])
    batch = first_batch(ctx)
    for epoch, alpha in ((0, 0.4), (29, 0.4), (30, 0.2), (65, 0.1)):
        losses = method.train_step(batch, epoch)
        with torch.no_grad():
            student = method.student(batch.m1)
            teacher = method.teacher(batch.m1, batch.m2)
        assert losses["ce"].item() == pytest.approx((1 - alpha) * F.cross_entropy(student, batch.y).item(), rel=1e-5)
        assert losses["kd"].item() == pytest.approx(alpha * kd_loss(student, teacher).item(), rel=1e-5)
    sum(losses.values()).backward()
    assert all(p.grad is None and not p.requires_grad for p in method.teacher.parameters())
    assert all(p.grad is not None for p in method.student.parameters())


def test_kd_uu_feeds_the_other_modality(mvd_teachers):
    method, _ = build_method("KD-UU", MVD + ["--ckpt_name", mvd_teachers["crossmodal"]])
    assert method.teacher_modalities() == ("m2",) and method.teacher.model_name == "MVD-MLP-m2"


@pytest.mark.parametrize("name", ["KD", "FitNets"])
def test_kd_temperature_sets_the_distillation_term(mvd_teachers, name):
    method, ctx = build_method(name, MVD + ["--ckpt_name", mvd_teachers["multimodal"], "--kd_temperature", "2"])
    batch = first_batch(ctx)
    logits, terms = method.distill_terms(batch, 0)
    with torch.no_grad():
        teacher = method.teacher(batch.m1, batch.m2)
    assert terms["kd"].item() == pytest.approx(kd_loss(logits, teacher, 2.0).item(), rel=1e-5)
    assert terms["kd"].item() != pytest.approx(kd_loss(logits, teacher).item(), rel=1e-3)
