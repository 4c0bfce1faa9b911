"""NTDH and NTDH-UU (Chen et al., arXiv:2409.02438): the weight, the losses and the divergences on hand-made logits,
parity with the authors' functions on identical tensors (tests/reference/ntdh_authors.py), the methods' training
step, the refusals, and the diagnostic ``main-MFH.py --exp ntdh`` on checkpoints trained here."""
from __future__ import annotations

import csv
import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import utils
from conftest import MVD, build_method, first_batch, refused, run_dir_of, run_script
from kd_methods import get_method
from kd_methods.mfh import load_network
from kd_methods.ntdh import (class_divergences, divergences, ntdh_dkd_loss, ntdh_kl_loss, ntdh_weight,
                             teacher_wrong)
from reference import ntdh_authors as authors
from tolerances import scale_tolerance
from utils import cli
from utils.engine import build_context

LN = math.log


# -- golden values, by hand ----------------------------------------------------------------------------------------

def test_weight_by_hand():
    cos_small = 1 / math.sqrt(1 + 0.05 ** 2)  # cos([1, 0], [1, 0.05]) = 0.99875 >= 0.996
    teacher = torch.tensor([[2.0, 0.0],   # label 0: right -> 1 whatever the student
                            [0.0, 1.0],   # label 0: wrong, student parallel -> (1 + 1) / 2
                            [0.0, 1.0],   # label 0: wrong, student orthogonal (cos 0) -> 0
                            [1.0, 0.0],   # label 1: wrong, cos 0.99875 -> (1 + cos) / 2
                            [3.0, 4.0]])  # label 0: wrong, cos 24/25 = 0.96 < 0.996 -> 0
    student = torch.tensor([[-5.0, 3.0], [0.0, 2.0], [1.0, 0.0], [1.0, 0.05], [4.0, 3.0]])
    labels = torch.tensor([0, 0, 0, 1, 0])
    assert teacher_wrong(teacher, labels).tolist() == [False, True, True, True, True]
    expected = [1.0, 1.0, 0.0, (1 + cos_small) / 2, 0.0]
    assert ntdh_weight(teacher, student, labels).tolist() == pytest.approx(expected, abs=1e-6)
    # a lower threshold lets the 0.96 sample through: (1 + 0.96) / 2
    assert ntdh_weight(teacher, student, labels, 0.9)[4].item() == pytest.approx(0.98, abs=1e-6)


def test_kl_loss_by_hand():
    # T = 0.7: softmax([0.7 ln 3, 0] / 0.7) = [3/4, 1/4] against the uniform student; omega 1 -> KL, no T^2 factor;
    # the second sample (omega 0) is uniform on both sides, so it adds 0 but counts in the batch mean
    teacher = torch.tensor([[0.7 * LN(3.0), 0.0], [5.0, -5.0]])
    student = torch.tensor([[0.0, 0.0], [-5.0, 5.0]])
    expected = (0.75 * LN(0.75 / 0.5) + 0.25 * LN(0.25 / 0.5)) / 2
    loss = ntdh_kl_loss(student, teacher, torch.tensor([1.0, 0.0]))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # omega scales the logits: omega 0.5 at T = 0.7 is the plain KL at T = 1.4 (softmax of [ln 3, 0] / 2)
    teacher = torch.tensor([[2 * 0.7 * LN(3.0), 0.0]])
    loss = ntdh_kl_loss(torch.zeros(1, 2), teacher, torch.tensor([0.5]))
    assert loss.item() == pytest.approx(0.75 * LN(1.5) + 0.25 * LN(0.5), rel=1e-6)


def test_dkd_loss_by_hand():
    # teacher softmax(z/T) = [1/2, 3/8, 1/8], student uniform, label 0: TCKD between the binary [1/2, 1/2] and
    # [1/3, 2/3], NCKD between the non-target [3/4, 1/4] and [1/2, 1/2]; omega 0.5 on the first sample, 0 on the
    # second; times T^2 / B
    t = 0.7
    teacher = torch.tensor([[t * LN(0.5), t * LN(0.375), t * LN(0.125)], [1.0, 2.0, 3.0]])
    student = torch.tensor([[0.0, 0.0, 0.0], [3.0, 2.0, 1.0]])
    labels = torch.tensor([0, 2])
    tckd = 0.5 * LN(0.5 / (1 / 3)) + 0.5 * LN(0.5 / (2 / 3))
    nckd = 0.75 * LN(0.75 / 0.5) + 0.25 * LN(0.25 / 0.5)
    expected = 0.5 * (2.0 * tckd + 3.0 * nckd) * t ** 2 / 2
    loss = ntdh_dkd_loss(student, teacher, labels, torch.tensor([0.5, 0.0]), t, alpha=2.0, beta=3.0)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_divergences_by_hand():
    # a: softmax = [1/2, 3/8, 1/8], b: uniform, label 0
    a = torch.tensor([[LN(0.5), LN(0.375), LN(0.125)]])
    b = torch.zeros(1, 3)
    labels = torch.tensor([0])
    binary_a, binary_b, binary_m = (0.5, 0.5), (1 / 3, 2 / 3), (5 / 12, 7 / 12)
    rest_a, rest_b, rest_m = (0.75, 0.25), (0.5, 0.5), (0.625, 0.375)

    def kl(p, q):
        return sum(x * LN(x / y) for x, y in zip(p, q))

    target, non_target = divergences(a, b, labels)  # the authors': each KL reversed
    assert target.item() == pytest.approx((kl(binary_m, binary_a) + kl(binary_m, binary_b)) / 2, rel=1e-5)
    assert non_target.item() == pytest.approx((kl(rest_m, rest_a) + kl(rest_m, rest_b)) / 2, rel=1e-5)
    target, non_target = divergences(a, b, labels, true_jsd=True)
    assert target.item() == pytest.approx((kl(binary_a, binary_m) + kl(binary_b, binary_m)) / 2, rel=1e-5)
    assert non_target.item() == pytest.approx((kl(rest_a, rest_m) + kl(rest_b, rest_m)) / 2, rel=1e-5)
    assert divergences(b, a, labels, true_jsd=True)[1].item() == pytest.approx(non_target.item(), rel=1e-6)
    # two classes: one non-target class, whose distribution is [1] on both sides
    assert divergences(torch.tensor([[1.0, -1.0]]), torch.tensor([[-3.0, 2.0]]), labels)[1].item() == 0.0


def test_class_divergences_by_hand():
    teacher = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0], [0.0, 0.0, 2.0]])
    student = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 2.0, 0.0], [1.0, 0.0, 1.5]])
    labels = torch.tensor([0, 0, 2, 2])  # teacher: right, wrong, right, right; student: right, wrong, wrong, right
    rows = class_divergences(teacher, student, labels, num_classes=3)
    assert [row["class"] for row in rows] == [0, 1, 2, "all"]
    by_class = {row["class"]: row for row in rows}
    assert [by_class[c]["samples"] for c in (0, 1, 2, "all")] == [2, 0, 2, 4]
    assert (by_class[0]["teacher_acc"], by_class[0]["student_acc"], by_class[0]["teacher_wrong"]) == (50.0, 50.0, 1)
    assert (by_class[2]["teacher_acc"], by_class[2]["student_acc"], by_class[2]["teacher_wrong"]) == (100.0, 50.0, 0)
    assert by_class["all"]["teacher_acc"] == 75.0 and by_class["all"]["student_acc"] == 50.0
    # class 0: sample 0 right (weight 1), sample 1 wrong with identical logits (cos 1, weight 1)
    assert by_class[0]["cosine"] == pytest.approx(1.0) and by_class[0]["weight"] == pytest.approx(1.0)
    assert by_class[2]["cosine"] == pytest.approx((0.0 + 1.5 / math.sqrt(3.25)) / 2)
    assert by_class[1]["cosine"] is None and by_class[1]["teacher_acc"] is None
    # the error distribution: the mean softmax over the samples the teacher gets wrong (class 0: sample 1 only)
    assert by_class[0]["teacher_error_distribution"] == pytest.approx(F.softmax(teacher[1], 0).tolist())
    assert by_class[0]["student_error_distribution"] == pytest.approx(F.softmax(student[1], 0).tolist())
    assert by_class[2]["teacher_error_distribution"] is None
    mean = (divergences(teacher, student, labels)[1][2:]).mean().item()
    assert by_class[2]["non_target_divergence"] == pytest.approx(mean)


# -- parity with the authors' functions on identical tensors -------------------------------------------------------

def parity_inputs(seed: int = 0, n: int = 64, classes: int = 5):
    """Logits where about half of the students nearly copy their teacher (cosine above 0.996) and the teacher is wrong
    on about half of the samples, so that every branch of the weight is taken."""
    generator = torch.Generator().manual_seed(seed)
    teacher = torch.randn(n, classes, generator=generator) * 3
    student = torch.randn(n, classes, generator=generator) * 3
    close = torch.arange(n) % 2 == 0
    student[close] = teacher[close] + 0.02 * torch.randn(int(close.sum()), classes, generator=generator)
    labels = torch.where(torch.arange(n) % 4 < 2, teacher.argmax(1), torch.randint(0, classes, (n,),
                                                                                    generator=generator))
    return teacher, student, labels


def test_weight_equals_pd_diff():
    teacher, student, labels = parity_inputs()
    omega, wrong = authors.pd_diff(teacher, labels, student)
    mine = ntdh_weight(teacher, student, labels)
    assert torch.equal(mine, omega.to(mine.dtype)) and torch.equal(teacher_wrong(teacher, labels), wrong.bool())
    gated_in = wrong.bool() & (omega > 0)
    assert gated_in.any() and (wrong.bool() & (omega == 0)).any() and (~wrong.bool()).any(), "every branch taken"


@pytest.mark.parametrize("variant", ["kl", "dkd"])
def test_losses_and_gradients_equal_the_authors(variant):
    """The loss and the student's gradient (which, as the code, also flows through the weight) are bitwise the
    authors' on the same tensors; gauss/main.py's constants (T 0.7, threshold 0.996, DKD alpha = beta = 1)."""
    teacher, student, labels = parity_inputs(seed=1)
    theirs_in = student.clone().requires_grad_(True)
    omega, _ = authors.pd_diff(teacher, labels, theirs_in)
    if variant == "kl":
        theirs = authors.kd_kl_pssm(theirs_in, teacher, omega)
    else:
        theirs = authors.dkd_loss(theirs_in, teacher, labels, 1, 1, 0.7, omega)
    theirs.backward()
    mine_in = student.clone().requires_grad_(True)
    weight = ntdh_weight(teacher, mine_in, labels)
    mine = (ntdh_kl_loss(mine_in, teacher, weight) if variant == "kl" else
            ntdh_dkd_loss(mine_in, teacher, labels, weight))
    mine.backward()
    assert torch.equal(mine, theirs) and torch.equal(mine_in.grad, theirs_in.grad)


def test_divergences_equal_the_authors_js_divergence():
    """Their batch value is the sum over the batch divided by its size; ours the mean of per-sample values: the same
    up to the order of the sum (tolerance from the magnitude)."""
    teacher, student, labels = parity_inputs(seed=2)
    target, non_target = divergences(teacher, student, labels)
    their_target, their_non_target = authors.js_divergence(teacher, student, labels)
    torch.testing.assert_close(target.mean(), their_target, **scale_tolerance(their_target))
    torch.testing.assert_close(non_target.mean(), their_non_target, **scale_tolerance(their_non_target))
    rows = class_divergences(teacher, student, labels, num_classes=5)
    assert rows[-1]["non_target_divergence"] == pytest.approx(their_non_target.item(), rel=1e-5)


def test_error_distribution_equals_the_authors_for_class_zero():
    """The code's error_distribution (class 0, the samples the teacher gets wrong): the networks here are
    nn.Identity, so that it reads the given logits."""
    teacher, student, labels = parity_inputs(seed=3)
    labels[:8] = 0
    their_student, their_teacher = authors.error_distribution(teacher, student, labels, nn.Identity(), nn.Identity())
    row = class_divergences(teacher, student, labels, num_classes=5)[0]
    assert row["teacher_wrong"] > 0
    torch.testing.assert_close(torch.tensor(row["teacher_error_distribution"]), their_teacher, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(torch.tensor(row["student_error_distribution"]), their_student, rtol=1e-6, atol=1e-7)


# -- the methods ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,kind,inputs", [("NTDH", "multimodal", ("m1", "m2")), ("NTDH-UU", "crossmodal", ("m2",))])
@pytest.mark.parametrize("variant", ["kl", "dkd"])
def test_train_step_is_the_scaffold_with_the_authors_term(name, kind, inputs, variant, mvd_teachers):
    method, ctx = build_method(name, MVD + ["--ckpt_name", mvd_teachers[kind], "--alpha", "0.4", "--ntdh_loss",
                                            variant, "--ntdh_threshold", "0.5"])
    assert method.teacher_modalities() == inputs
    batch = first_batch(ctx)
    for epoch, alpha in ((0, 0.4), (30, 0.2)):
        losses = method.train_step(batch, epoch)
        with torch.no_grad():
            student = method.student(batch.m1)
            teacher = method.teacher(*batch.inputs(inputs))
            cosine = F.cosine_similarity(teacher, student, dim=1)
            wrong = (teacher.argmax(1) != batch.y).float()
            omega = wrong * (cosine + 1) / 2 * (cosine >= 0.5) + (1 - wrong)  # pd_diff at threshold 0.5
            term = (authors.kd_kl_pssm(student, teacher, omega) if variant == "kl" else
                    authors.dkd_loss(student, teacher, batch.y, 1.0, 1.0, 0.7, omega))
        assert losses["ce"].item() == pytest.approx((1 - alpha) * F.cross_entropy(student, batch.y).item(), rel=1e-5)
        assert losses["ntdh"].item() == pytest.approx(alpha * term.item(), rel=1e-5)
    sum(losses.values()).backward()
    assert all(p.grad is None and not p.requires_grad for p in method.teacher.parameters())
    assert all(p.grad is not None for p in method.student.parameters())


@pytest.mark.parametrize("argv,needle", [
    (["--database", "NYU-Depth-V2"], "NTDH-UU does not support NYU-Depth-V2: its per-sample weight needs one"),
    (["--ntdh_temperature", "0"], "--ntdh_temperature must be > 0"),
    (["--ntdh_threshold", "1.5"], "--ntdh_threshold is a cosine similarity"),
    (["--ntdh_loss", "dkd", "--dkd_beta", "-1"], "--dkd_alpha and --dkd_beta must be >= 0"),
])
def test_refused_up_front(argv, needle, capsys):
    assert needle in refused(capsys, "NTDH-UU", ["--ckpt_name", "missing.pth", *argv])


# -- the diagnostic ----------------------------------------------------------------------------------------------

UCI = ["--database", "UCI-MFeat", "--no-record", "--device", "cpu", "--epochs", "1", "--max_steps", "3"]


@pytest.fixture(scope="module")
def uci_checkpoints(tmp_path_factory):
    """A cross-modal teacher (main-S.py, m2) and an NTDH-UU student (m1) trained briefly on UCI-MFeat (10 classes)."""
    out = tmp_path_factory.mktemp("ntdh_uci")
    teacher = run_dir_of(run_script("main-S.py", *UCI, "--mode", "m2", "--out_dir", out, in_process=True))
    student = run_dir_of(run_script("main-NTDH-UU.py", *UCI, "--mode", "m1", "--ckpt_name", teacher / "best.pth",
                                    "--out_dir", out, in_process=True))
    return {"teacher": teacher / "best.pth", "student": student / "best.pth", "out": out}


def test_diagnostic_writes_the_authors_quantities_per_class(uci_checkpoints, tmp_path):
    paths = uci_checkpoints
    run = run_dir_of(run_script("main-MFH.py", "--exp", "ntdh", "--database", "UCI-MFeat", "--mode", "m1",
                                "--ckpt_a", paths["teacher"], "--ckpt_b", paths["student"], "--out_dir", tmp_path,
                                "--device", "cpu", in_process=True))
    results = json.loads((run / "results.json").read_text())
    assert (results["split"], results["teacher"], results["student"]) == ("val", "MLP-m2", "MLP-m1")
    rows = results["classes"]
    assert [row["class"] for row in rows] == [*range(10), "all"]
    with open(run / "ntdh.csv") as handle:
        table = list(csv.DictReader(handle))
    assert [r["class"] for r in table] == [str(c) for c in range(10)] + ["all"]
    assert "| all |" in (run / "ntdh.md").read_text()

    # recompute from the checkpoints on the validation split with the authors' functions
    description = cli.describe(get_method("S"), ["--database", "UCI-MFeat", "--mode", "m1"])
    ctx = build_context(description, torch.device("cpu"), log=lambda _message: None)
    teacher, _ = load_network(ctx, None, str(paths["teacher"]), "m2", "a")
    student, _ = load_network(ctx, None, str(paths["student"]), "m1", "b")
    batch = next(iter(ctx.make_loader("val", shuffle=False, batch_size=len(ctx.splits["val"]), max_steps=None)))
    with torch.no_grad():
        pl, output = teacher(batch.m2), student(batch.m1)
    omega, wrong = authors.pd_diff(pl, batch.y, output)
    _, non_target = authors.js_divergence(pl, output, batch.y)
    everything = rows[-1]
    assert everything["samples"] == len(batch.y) and everything["teacher_wrong"] == int(wrong.sum())
    assert everything["weight"] == pytest.approx(omega.mean().item(), rel=1e-5)
    assert everything["non_target_divergence"] == pytest.approx(non_target.item(), rel=1e-4)
    for label in range(10):
        chosen = batch.y == label
        _, theirs = authors.js_divergence(pl[chosen], output[chosen], batch.y[chosen])
        assert rows[label]["samples"] == int(chosen.sum())
        assert rows[label]["non_target_divergence"] == pytest.approx(theirs.item(), rel=1e-4)
        assert float(table[label]["non_target_divergence"]) == pytest.approx(theirs.item(), abs=1e-4)


def mfh_refusal(capsys, argv) -> str:
    """``main-MFH.py ARGV`` in-process: exit code 2 and exactly one ``error:`` line, returned."""
    with pytest.raises(SystemExit) as exit_info:
        utils.mfh_main([str(a) for a in argv])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_diagnostic_refuses_checkpoints_of_another_split(uci_checkpoints, capsys):
    paths = uci_checkpoints
    line = mfh_refusal(capsys, ["--exp", "ntdh", "--database", "UCI-MFeat", "--mode", "m1", "--seed", "1",
                                "--ckpt_a", paths["teacher"], "--ckpt_b", paths["student"], "--out_dir", paths["out"],
                                "--device", "cpu"])
    assert "--ckpt_a" in line and "--seed 0 split" in line, line


@pytest.mark.parametrize("argv,needle", [
    ([], "--exp ntdh compares two trained networks: pass --ckpt_a"),
    (["--ckpt_a", "a.pth"], "--exp ntdh compares two trained networks"),
    (["--database", "NYU-Depth-V2", "--ckpt_a", "a.pth", "--ckpt_b", "b.pth"], "--exp ntdh does not support NYU"),
    (["--ntdh_threshold", "-2", "--ckpt_a", "a.pth", "--ckpt_b", "b.pth"], "--ntdh_threshold is a cosine"),
])
def test_diagnostic_refused_up_front(argv, needle, capsys):
    assert needle in mfh_refusal(capsys, ["--exp", "ntdh", *argv])
