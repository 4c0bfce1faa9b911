"""FD-CMKD (Liu et al., AAAI 2026): the band split and the losses on hand-made features, parity with the authors' loss
code on identical tensors (tests/reference/fd_cmkd_authors.py), the training step and the refusals."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import MVD, build_method, first_batch, random_teacher, refused
from kd_methods.fd_cmkd import FrequencyDecoupledLoss, band_split, distillation_terms, pooled
from reference import fd_cmkd_authors as authors

EPS32 = torch.finfo(torch.float32).eps


def _tones(width: int, *terms: tuple[float, float, str]) -> np.ndarray:
    """``sum a * cos/sin(2 pi k n / width)`` over ``(a, k, 'cos'|'sin')``, n = 0..width-1, in float64."""
    n = np.arange(width)
    return sum(a * getattr(np, wave)(2 * np.pi * k * n / width) for a, k, wave in terms)


# -- the split and the losses by hand ----------------------------------------------------------------------------

@pytest.mark.parametrize("width,low,high", [
    # 8 values: bins 0..4; low 1..2, high 3..4 (4: the Nyquist bin, (-1)^n)
    (8, [(1.0, 1, "cos"), (-0.5, 2, "sin")], [(2.0, 3, "cos"), (0.5, 4, "cos")]),
    # 7 values: bins 0..3; low 1 (7 // 4), high 2..3; the inverse FFT must give back 7 values, not 6
    (7, [(1.5, 1, "sin")], [(1.0, 2, "cos"), (-0.7, 3, "sin")]),
])
def test_band_split_of_pure_tones(width, low, high):
    dc = 3.0  # dropped from both bands
    feature = _tones(width, (dc, 0, "cos"), *low, *high)
    got_low, got_high = band_split(torch.tensor(np.stack([feature, -feature]), dtype=torch.float64))
    for got, expected in ((got_low, _tones(width, *low)), (got_high, _tones(width, *high))):
        assert got.shape == (2, width)
        np.testing.assert_allclose(got.numpy(), np.stack([expected, -expected]), atol=1e-6)


def test_distillation_terms_by_hand():
    """Width 8. Teacher 5 + cos(pi n/4) + (-1)^n, student -2 + sin(pi n/4) - (-1)^n. Low bands cos and sin (norm 2):
    MSE = mean((cos - sin)^2) / 4 = 1/4. High bands +-(-1)^n (norm sqrt 8): the signed logs of the normalised bands
    are +-log1p(1/sqrt 8), so MSE = (2 log1p(1/sqrt 8))^2."""
    n = torch.arange(8, dtype=torch.float64)
    alternating = torch.cos(math.pi * n)
    teacher = 5 + torch.cos(math.pi * n / 4) + alternating
    student = (-2 + torch.sin(math.pi * n / 4) - alternating).requires_grad_()
    low, high = distillation_terms(*band_split(student[None]), *band_split(teacher[None]))
    assert low.item() == pytest.approx(0.25, rel=1e-6)
    assert high.item() == pytest.approx(4 * math.log1p(8 ** -0.5) ** 2, rel=1e-6)
    # identical bands give zero; the teacher is a target only
    same_low, same_high = distillation_terms(*band_split(teacher[None]), *band_split(teacher[None]))
    assert same_low.item() < 1e-12 and same_high.item() < 1e-12


def test_band_classifiers_by_hand():
    """Zero weights and biases (0, ln 3): every head gives softmax (1/4, 3/4), so each CE is ln 4 for label 0 and
    ln(4/3) for label 1: align = 4 heads' CE, band_ce = 2."""
    loss = FrequencyDecoupledLoss(8, 2)
    for head in (loss.align_low, loss.align_high, loss.task_low, loss.task_high):
        head.fc.weight.data.zero_()
        head.fc.bias.data.copy_(torch.tensor([0.0, math.log(3.0)]))
    features = torch.randn(2, 8)
    terms = loss(features, torch.randn(2, 8), torch.tensor([0, 1]))
    one_ce = (math.log(4.0) + math.log(4.0 / 3.0)) / 2
    assert terms["align"].item() == pytest.approx(4 * one_ce, rel=1e-6)
    assert terms["band_ce"].item() == pytest.approx(2 * one_ce, rel=1e-6)


def test_half_precision_features_are_split_in_float32():
    """``--amp`` gives bfloat16 features, which ``torch.fft`` does not take."""
    feature = torch.randn(3, 16).bfloat16()
    low, high = band_split(feature)
    assert low.dtype == high.dtype == torch.float32
    assert all(torch.equal(a, b) for a, b in zip((low, high), band_split(feature.float())))


def test_pooling_of_feature_maps():
    maps = torch.randn(3, 5, 4, 2)
    assert torch.equal(pooled(maps), maps.mean((2, 3)))
    vectors = torch.randn(3, 5)
    assert pooled(vectors) is vectors


# -- parity with the authors' code -------------------------------------------------------------------------------

def test_loss_terms_equal_the_authors_code_on_identical_tensors():
    """At their width (512) and their CREMA-D classes (6): the split is bit-identical to their FDFilter, the two
    distillation terms and the shared classifiers' CE too; the whole loss of one direction (their loss_a) agrees to
    float rounding of the sum, and so do the gradients reaching the student's feature and the heads."""
    torch.manual_seed(0)
    width, classes, batch = 512, 6, 16
    ours = FrequencyDecoupledLoss(width, classes)
    heads = {name: authors.Classifier(width, classes) for name in ("align_low", "align_high", "task_low", "task_high")}
    for name, head in heads.items():
        head.load_state_dict(getattr(ours, name).state_dict())
    student_feature = torch.randn(batch, width) * 3
    teacher_feature = torch.randn(batch, width).relu() * 2  # their teacher feature carries no gradient
    logits = torch.randn(batch, classes)
    label = torch.randint(0, classes, (batch,))

    s_ours, s_theirs = student_feature.clone().requires_grad_(), student_feature.clone().requires_grad_()
    z_ours, z_theirs = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    filter_a, filter_v = authors.FDFilter(), authors.FDFilter()
    assert all(torch.equal(a, b) for a, b in zip(filter_a(student_feature), band_split(student_feature)))

    terms = ours(s_ours, teacher_feature, label)
    kd_low, kd_high, align, task, total = authors.audio_direction_loss(
        s_theirs, teacher_feature, z_theirs, label, filter_a, filter_v, heads["align_low"], heads["align_high"],
        heads["task_low"], heads["task_high"])
    assert torch.equal(terms["low"], kd_low) and torch.equal(terms["high"], kd_high)
    assert torch.equal(terms["align"], align)
    mine = F.cross_entropy(z_ours, label) + sum(terms.values())
    assert mine.item() == pytest.approx(total.item(), rel=8 * EPS32)
    assert (F.cross_entropy(z_ours, label) + terms["band_ce"]).item() == pytest.approx(task.item(), rel=4 * EPS32)

    mine.backward()
    total.backward()
    for a, b in ((s_ours.grad, s_theirs.grad), (z_ours.grad, z_theirs.grad)):
        torch.testing.assert_close(a, b, rtol=0, atol=16 * EPS32 * b.abs().max().item())
    for name, head in heads.items():
        for a, b in zip(getattr(ours, name).parameters(), head.parameters()):
            torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=16 * EPS32 * b.grad.abs().max().item())


# -- the method ----------------------------------------------------------------------------------------------------

def test_train_step_terms_weights_and_frozen_teacher(mvd_teachers):
    argv = [*MVD, "--ckpt_name", mvd_teachers["crossmodal"]]
    method, ctx = build_method("FD-CMKD", argv)
    assert method.teacher.model_name == "MVD-MLP-m2" and method.adapter is None and method.width == 32
    batch = first_batch(ctx)
    losses = method.train_step(batch, 0)
    assert set(losses) == {"ce", "low", "high", "align", "band_ce"}
    with torch.no_grad():
        logits = method.student(batch.m1)
    assert losses["ce"].item() == pytest.approx(F.cross_entropy(logits, batch.y).item(), rel=1e-6)
    sum(losses.values()).backward()
    assert all(p.grad is None for p in method.teacher.parameters())
    trained = [method.student, method.bands.align_low, method.bands.align_high, method.bands.task_low,
               method.bands.task_high]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for module in trained for p in module.parameters())

    weighted, _ = build_method("FD-CMKD", argv + ["--fd_low_weight", "0.5", "--fd_high_weight", "0",
                                                  "--fd_align_weight", "2", "--fd_band_ce_weight", "3"])
    again = weighted.train_step(batch, 0)  # same seed: same initial networks and heads
    for name, weight in (("ce", 1.0), ("low", 0.5), ("high", 0.0), ("align", 2.0), ("band_ce", 3.0)):
        assert again[name].item() == pytest.approx(weight * losses[name].item(), rel=1e-5, abs=1e-12), name


def test_avmnist_widths_differ_so_the_student_feature_is_mapped(fixture_root, tmp_path):
    """LeNet5's fc1 (84) against ThreeLayerCNN-A's conv3 map, averaged over its positions to 128 channels."""
    common = ["--database", "AV-MNIST", "--data_root", str(fixture_root("AV-MNIST")),
              "--metadata_dir", str(tmp_path / "metadata"), "--no-record", "--batch_size", "4"]
    shapes = {"m1": (1, 28, 28), "m2": (1, 112, 112)}
    for mode, teacher, widths in (("m1", "ThreeLayerCNN-A", (84, 128)), ("m2", "LeNet5", (128, 84))):
        checkpoint = random_teacher(tmp_path / f"{teacher}.pth", teacher, 10, shapes)
        method, ctx = build_method("FD-CMKD", common + ["--mode", mode, "--ckpt_name", checkpoint])
        assert (method.adapter.in_features, method.adapter.out_features) == widths and method.width == widths[1]
        losses = method.train_step(first_batch(ctx), 0)
        sum(losses.values()).backward()
        assert method.adapter.weight.grad.abs().sum() > 0
        assert method.extra_results()["low_bins"] == [1, widths[1] // 4]


@pytest.mark.parametrize("argv,message", [
    (["--database", "NYU-Depth-V2", "--ckpt_name", "x.pth"], "does not support NYU-Depth-V2"),
    ([*MVD, "--Tmodel", "MVD-MLP-I", "--ckpt_name", "x.pth"], "unimodal teacher of the other modality (m2)"),
    ([*MVD, "--Tmodel", "MVD-MLP-m1", "--ckpt_name", "x.pth"], "e.g. --Tmodel MVD-MLP-m2"),
    ([*MVD, "--ckpt_name", "x.pth", "--fd_high_weight", "-1"], "--fd_high_weight must be >= 0"),
    ([*MVD, "--ckpt_name", "x.pth", "--fd_align_weight", "nan"], "--fd_align_weight must be a finite number"),
])
def test_refused_up_front(argv, message, capsys):
    assert message in refused(capsys, "FD-CMKD", argv)
