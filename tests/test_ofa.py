"""OFA and OFA-UU (Hao et al., NeurIPS 2023): the loss against loops, projectors and their init."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from kd_methods.ofa import Projector1D, Projector2D, build_projectors, init_projector, ofa_loss


def _ofa_by_loops(student, teacher, labels, eps, temperature):
    total = 0.0
    for b in range(student.shape[0]):
        s = [v / temperature for v in student[b].tolist()]
        t = [v / temperature for v in teacher[b].tolist()]
        zs, zt = sum(math.exp(v) for v in s), sum(math.exp(v) for v in t)
        for c in range(len(s)):
            p, q, y = math.exp(t[c]) / zt, math.exp(s[c]) / zs, float(c == labels[b])
            total += -((p + y) ** eps - y) * math.log(q)
    return total / student.shape[0]


@pytest.mark.parametrize("log_softmax", [False, True])
@pytest.mark.parametrize("eps,temperature", [(1.1, 1.0), (1.5, 2.0)])
def test_ofa_loss_matches_a_plain_recomputation(log_softmax, eps, temperature):
    torch.manual_seed(0)
    student, teacher = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    labels = torch.tensor([0, 3, 4, 3])
    ours = ofa_loss(student, teacher, F.one_hot(labels, 5), eps, temperature, log_softmax)
    assert ours.item() == pytest.approx(_ofa_by_loops(student, teacher, labels.tolist(), eps, temperature), rel=1e-10)


def test_ofa_loss_behaviour():
    torch.manual_seed(1)
    teacher = torch.randn(3, 6, dtype=torch.float64)
    onehot = F.one_hot(torch.tensor([1, 0, 5]), 6)
    # ε = 1: the target is the teacher's distribution, so the loss is a soft cross-entropy, minimal (= entropy of p)
    # with zero gradient when the student equals the teacher
    student = teacher.clone().requires_grad_(True)
    loss = ofa_loss(student, teacher, onehot, eps=1.0)
    p = F.softmax(teacher, 1)
    assert loss.item() == pytest.approx(-(p * p.log()).sum(1).mean().item(), rel=1e-12)
    loss.backward()
    assert student.grad.abs().max().item() < 1e-12
    # the teacher side carries no gradient
    teacher_leaf = teacher.clone().requires_grad_(True)
    ofa_loss(torch.randn(3, 6, dtype=torch.float64, requires_grad=True), teacher_leaf, onehot, 1.1).backward()
    assert teacher_leaf.grad is None
    # reference log(softmax) overflows to inf on a confident projector; the log_softmax switch stays finite
    confident = torch.tensor([[0.0, 200.0, 0.0]])
    uniform = torch.zeros(1, 3)
    label = F.one_hot(torch.tensor([1]), 3)
    assert torch.isinf(ofa_loss(confident, uniform, label, 1.1))
    assert torch.isfinite(ofa_loss(confident, uniform, label, 1.1, log_softmax=True))


def test_ofa_projectors_and_init():
    torch.manual_seed(0)
    p2 = init_projector(Projector2D(6, 20, 10))  # LeNet5 conv1 (6, 28, 28), AV-MNIST hidden 2·10
    assert p2(torch.randn(2, 6, 28, 28)).shape == (2, 10)
    p1 = init_projector(Projector1D(84, 20, 10))
    assert p1(torch.randn(2, 84)).shape == (2, 10)
    big = init_projector(Projector1D(4000, 200, 10)).blks[0]
    assert big.weight.std().item() == pytest.approx(0.02, rel=0.05) and not big.bias.any()
    bn = p2.blks[0].op[2]
    assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and not bn.bias.any()


def _reference_init_weights(module):
    """The reference's OFA ``init_weights``, which it ran through ``proj.apply``: every submodule's whole subtree."""
    for _, m in module.named_modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def test_ofa_projectors_replay_the_reference_rng_sequence():
    """The reference built every projector (default init) before re-initialising them in order with
    ``proj.apply(init_weights)``, which redraws a layer once per ancestor: same seed -> same initial weights."""
    shapes = {"conv1": (6, 28, 28), "conv2": (16, 10, 10), "fc1": (84,)}  # LeNet5's stages, AV-MNIST
    torch.manual_seed(5)
    ours = build_projectors(shapes, ("conv1", "conv2", "fc1"), 10)
    after_ours = torch.rand(4)
    torch.manual_seed(5)
    reference = [Projector2D(6, 20, 10), Projector2D(16, 20, 10), Projector1D(84, 20, 10)]
    for projector in reference:
        projector.apply(_reference_init_weights)
    assert torch.equal(after_ours, torch.rand(4)), "the RNG stream after the projectors is the reference's"
    for mine, theirs in zip(ours, reference):
        assert list(mine.state_dict()) == list(theirs.state_dict())
        for name, tensor in theirs.state_dict().items():
            assert torch.equal(mine.state_dict()[name], tensor), name
    # a single init pass per projector (or init right after each construction) draws other numbers
    torch.manual_seed(5)
    single = [Projector2D(6, 20, 10), Projector2D(16, 20, 10), Projector1D(84, 20, 10)]
    for projector in single:
        for m in projector.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    assert not torch.equal(single[0].blks[0].op[0].weight, ours[0].blks[0].op[0].weight)
