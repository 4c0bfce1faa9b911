"""MLLD and MLLD-UU (Jin et al., CVPR 2023): the multi-level loss against a straightforward computation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import MVD, build_method, first_batch
from kd_methods import get_method
from kd_methods.mlld import CLASS_GRAMS, TEMPERATURES, mlld_loss
from utils import cli
from utils.core.errors import UserError


def _mlld_by_hand(student: np.ndarray, teacher: np.ndarray, class_gram_mean: bool = False) -> float:
    """The loss in float64 NumPy; ``class_gram_mean``: the class Gram matrices averaged over the batch
    (``--mlld_class_gram mean``) instead of summed (the reference)."""
    def softmax(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    total = 0.0
    for tau in TEMPERATURES:
        ps, pt = softmax(student / tau), softmax(teacher / tau)
        instance = tau ** 2 * (pt * (np.log(pt) - np.log(ps))).sum() / len(ps)
        scale = 1.0 / len(ps) if class_gram_mean else 1.0
        classes = ((ps.T @ ps * scale - pt.T @ pt * scale) ** 2).mean()
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


def test_mlld_class_gram_mean_matches_a_straightforward_computation():
    generator = torch.Generator().manual_seed(4)
    student, teacher = torch.randn(7, 3, generator=generator) * 3, torch.randn(7, 3, generator=generator) * 3
    expected = _mlld_by_hand(student.double().numpy(), teacher.double().numpy(), class_gram_mean=True)
    assert mlld_loss(student, teacher, class_gram="mean").item() == pytest.approx(expected, rel=1e-5)
    assert mlld_loss(student, teacher, class_gram="sum").item() == pytest.approx(
        _mlld_by_hand(student.double().numpy(), teacher.double().numpy()), rel=1e-5)
    with pytest.raises(ValueError, match="class_gram"):
        mlld_loss(student, teacher, class_gram="max")


def test_reference_class_term_grows_with_the_batch_and_ignores_which_sample_gets_which_class():
    generator = torch.Generator().manual_seed(5)
    student, teacher = torch.randn(16, 2, generator=generator) * 3, torch.randn(16, 2, generator=generator) * 3
    twice_s, twice_t = student.repeat(2, 1), teacher.repeat(2, 1)
    # The same predictions seen twice: the instance (batch-mean KL) and batch (mean over B x B) terms keep their
    # value, so the loss changes only through the class term, which the reference's summed Gram makes 4x larger.
    assert mlld_loss(twice_s, twice_t, class_gram="mean").item() == pytest.approx(
        mlld_loss(student, teacher, class_gram="mean").item(), rel=1e-5)
    class_sum = (mlld_loss(student, teacher) - mlld_loss(student, teacher, class_gram="mean")).item()
    class_sum_twice = (mlld_loss(twice_s, twice_t) - mlld_loss(twice_s, twice_t, class_gram="mean")).item()
    assert class_sum > 0 and class_sum_twice == pytest.approx(4 * class_sum * (1 - 1 / 32 ** 2) / (1 - 1 / 16 ** 2),
                                                              rel=1e-4)
    # P^T P is a sum over samples: shuffling the student's rows (wrong sample-to-prediction pairing) leaves the
    # class term unchanged; only the instance and batch terms notice.
    shuffled = student[torch.randperm(16, generator=generator)]
    class_shuffled = (mlld_loss(shuffled, teacher) - mlld_loss(shuffled, teacher, class_gram="mean")).item()
    assert class_shuffled == pytest.approx(class_sum, rel=1e-4)


def test_binary_batch_of_256_reference_class_term_swamps_ce_and_the_mean_gram_does_not():
    """The collapse on Synthetic-MVD (2 classes, batch 256): at the start of training, a confident teacher and a
    near-uniform student, the reference loss pushes the logits tens of times harder than the CE (here about 37x;
    about 100x in a real Synthetic-MVD run, whose student starts biased towards one class)."""
    generator = torch.Generator().manual_seed(6)
    labels = torch.randint(0, 2, (256,), generator=generator)
    teacher = 10.0 * F.one_hot(labels, 2).float() - 5.0
    student = (0.05 * torch.randn(256, 2, generator=generator)).requires_grad_()

    def logit_grad_norm(loss):
        return torch.autograd.grad(loss, student)[0].norm().item()

    ce = logit_grad_norm(F.cross_entropy(student, labels))
    reference = logit_grad_norm(mlld_loss(student, teacher))
    mean = logit_grad_norm(mlld_loss(student, teacher, class_gram="mean"))
    assert reference > 10 * ce and reference > 10 * mean
    assert mean < 3 * ce


@pytest.mark.parametrize("name", ["MLLD", "MLLD-UU"])
def test_mlld_class_gram_flag_reaches_the_loss(name, mvd_teachers):
    teacher = mvd_teachers["multimodal" if name == "MLLD" else "crossmodal"]
    assert cli.parse_args(get_method(name), MVD + ["--ckpt_name", teacher]).mlld_class_gram == "sum"
    for choice in CLASS_GRAMS:
        method, ctx = build_method(name, MVD + ["--ckpt_name", teacher, "--mlld_class_gram", choice])
        batch = first_batch(ctx)
        with torch.no_grad():
            losses = method.train_step(batch, 0)
            logits = method.run_model(method.student, batch, (method.mode,))
            target = method.run_model(method.teacher, batch, method.teacher_modalities())
        expected = 0.5 * mlld_loss(logits, target, class_gram=choice)
        assert losses["mlld"].item() == pytest.approx(expected.item(), rel=1e-5)
