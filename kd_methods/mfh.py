"""Experiments of the Modality Focusing Hypothesis (``main-MFH.py``).

Xue, Gao, Ren, Zhao, "The Modality Focusing Hypothesis: Towards Understanding Crossmodal Knowledge Distillation",
ICLR 2023. The hypothesis: what a cross-modal student gains from KD is decided by the modality-general decisive
features the teacher relies on (the share ``gamma`` of the Modality Venn Diagram), not by the teacher's accuracy.

Experiments (``--exp``):

* ``gamma`` - Fig. 2: Gaussian MVD data with a growing share of modality-general decisive features.
* ``alpha`` - Fig. 3: the teacher's modality holds more and more modality-specific decisive features.
* ``table2`` - Table 2: a regular teacher against a modality-general teacher trained on the modality-general
  columns only, those columns being known (``gt``), found by Algorithm 1 (``alg1``) or random (``random``).
* ``rank`` - Algorithm 1 on any framework dataset: saliences of the channels of one layer of a network on
  modality a, measured against a network on modality b (:mod:`kd_methods.feature_ranking`).
* ``nullify`` - Sec. 5.4 / Table 8: KD from teachers whose lowest (modality-general teacher), highest
  (modality-specific) or random ``r%`` channels are nullified, to a student of the other modality; the students
  are trained by the shared engine (:func:`utils.engine.run`) with the method :class:`NullifiedTeacherKD`.

The Gaussian experiments follow the public MFH code (facts in ``spec/mfh.md`` §2): logistic regressions
``d -> 2`` trained full-batch with plain SGD (lr 0.1, 1000 epochs, cross-entropy); the KD student minimises
``CE + KL(softmax(teacher) || softmax(student))`` with the KL averaged over all ``N x 2`` elements (PyTorch
``KLDivLoss`` default ``mean``), no temperature. All runs of one setting are trained at once as a batch of
independent models (``[runs, N, d] @ [runs, d, 2]``) with closed-form gradients, which equal autograd's.
Data come from the shared generator :mod:`datasets.synthetic`; initial weights are drawn exactly as
``nn.Linear`` draws them, from one generator per run.
"""
from __future__ import annotations

import argparse
import copy
import csv
import io
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from datasets.synthetic import MVDConfig, draw_label_weights, sample_mvd
from kd_methods.base import Method, Stage, freeze
from kd_methods.feature_ranking import (SELECTION_KINDS, channel_salience, normalise_salience, nullified,
                                        select_channels)
from utils.errors import NonFiniteLossError, UserError
from utils.rundir import RunDir, atomic_save, atomic_write_bytes, atomic_write_json

EXPERIMENTS = ("gamma", "alpha", "table2", "rank", "nullify")
LR_EXPERIMENTS = ("gamma", "alpha", "table2")
TABLE2_TEACHERS = ("gt", "alg1", "random")

#: Fig. 2: overlap |J1 ∩ J2| of two 10-column decisive sets; d1 = 25, d2 = 50 (App. B.2)
GAMMA_OVERLAPS = (0, 2, 4, 6, 8, 10)
#: Fig. 3: modality-a-exclusive decisive columns next to the 10 shared ones; d1 = d2 = 50
ALPHA_EXCLUSIVE = (0, 10, 20, 30, 40)
#: Table 2 rows: (gamma as printed in the paper, xs1 teacher-exclusive columns, xs2 shared columns)
TABLE2_ROWS = ((0.25, 15, 5), (0.33, 10, 5), (0.50, 10, 10), (0.66, 10, 20), (0.75, 10, 30))
#: paper Table 2 (accuracy %): regular teacher, MG teacher, no-KD, regular KD, MG KD
PAPER_TABLE2 = {
    0.25: (89.70, 64.84, 59.29, 59.46, 61.01),
    0.33: (89.41, 68.42, 61.98, 62.16, 64.50),
    0.50: (89.62, 73.41, 67.64, 67.86, 70.25),
    0.66: (89.82, 77.98, 73.48, 73.60, 75.43),
    0.75: (89.70, 79.41, 76.46, 76.53, 77.70),
}
#: the quality target: every student column within this many points of the paper
PAPER_TOLERANCE = 2.0
N_TRAIN, N_TEST = 200, 1000
LR_LR, JOINT_LR, JOINT_MOMENTUM = 0.1, 0.01, 0.9


# =============================================================================================================
# batched logistic regressions (one independent model per run)
# =============================================================================================================
def init_logreg(in_dim: int, generators: list[torch.Generator], classes: int = 2, device="cpu"):
    """``(W [R, d, K], b [R, 1, K])`` drawn as ``nn.Linear(d, K)`` draws them (same values from the same seed)."""
    weights, biases = [], []
    bound = 1.0 / math.sqrt(in_dim)
    for generator in generators:
        w = torch.empty(classes, in_dim)
        torch.nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=generator)
        b = torch.empty(classes).uniform_(-bound, bound, generator=generator)
        weights.append(w.t())
        biases.append(b)
    return torch.stack(weights).to(device), torch.stack(biases).unsqueeze(1).to(device)


def logreg_logits(params, x: torch.Tensor) -> torch.Tensor:
    weight, bias = params
    return torch.baddbmm(bias, x, weight)


def logreg_accuracy(params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Test accuracy in % per run ``[R]``."""
    return (logreg_logits(params, x).argmax(dim=2) == y).double().mean(dim=1) * 100.0


def fit_logreg(params, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float = LR_LR,
               teacher_probs: torch.Tensor | None = None):
    """Full-batch plain SGD on ``CE`` (+ ``KL(teacher || student)`` mean over ``N x K`` when ``teacher_probs``).

    Closed-form gradients of the batch-mean losses: ``dCE/dz = (q - onehot) / N`` and ``dKL/dz = (q - p) / (N K)``
    (``q`` the student's softmax, ``p`` the teacher's), i.e. exactly what autograd gives for
    ``CrossEntropyLoss()`` and ``KLDivLoss()`` (reduction ``mean``), but without building graphs for 10 runs x
    1000 epochs.
    """
    weight, bias = (p.clone() for p in params)
    n, classes = x.shape[1], weight.shape[2]
    onehot = F.one_hot(y, classes).to(x.dtype)
    x_t = x.transpose(1, 2).contiguous()
    target = onehot / n
    if teacher_probs is not None:
        target = target + teacher_probs / (n * classes)
    scale = 1.0 / n + (1.0 / (n * classes) if teacher_probs is not None else 0.0)
    for _ in range(epochs):
        q = torch.softmax(torch.baddbmm(bias, x, weight), dim=2)
        grad = q * scale - target
        weight -= lr * torch.bmm(x_t, grad)
        bias -= lr * grad.sum(dim=1, keepdim=True)
    return weight, bias


def fit_joint(params_a, params_b, x_a, x_b, y, epochs: int, lr: float = JOINT_LR, momentum: float = JOINT_MOMENTUM):
    """Algorithm 1, step 1, for logistic regressions: ``MSE(f_a(X_a), f_b(X_b)) + CE_a + CE_b``, SGD + momentum.

    Public code: SGD lr 0.01, momentum 0.9, 1000 full-batch epochs; the MSE is the mean over ``N x K`` elements.
    """
    wa, ba = (p.clone() for p in params_a)
    wb, bb = (p.clone() for p in params_b)
    n, classes = x_a.shape[1], wa.shape[2]
    onehot = F.one_hot(y, classes).to(x_a.dtype)
    xa_t, xb_t = x_a.transpose(1, 2).contiguous(), x_b.transpose(1, 2).contiguous()
    buffers = None
    for _ in range(epochs):
        za, zb = torch.baddbmm(ba, x_a, wa), torch.baddbmm(bb, x_b, wb)
        dist = 2.0 * (za - zb) / (n * classes)
        ga = (torch.softmax(za, dim=2) - onehot) / n + dist
        gb = (torch.softmax(zb, dim=2) - onehot) / n - dist
        grads = (torch.bmm(xa_t, ga), ga.sum(1, keepdim=True), torch.bmm(xb_t, gb), gb.sum(1, keepdim=True))
        buffers = grads if buffers is None else tuple(momentum * m + g for m, g in zip(buffers, grads))
        for param, step in zip((wa, ba, wb, bb), buffers):
            param -= lr * step
    return (wa, ba), (wb, bb)


class _RunLinear(torch.nn.Module):
    """One run's logistic regression as a module, for :func:`channel_salience` (input channels = columns)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.weight, self.bias = weight, bias

    def forward(self, x):
        return torch.addmm(self.bias, x, self.weight)


# =============================================================================================================
# Gaussian data (shared generator) and the three paper experiments
# =============================================================================================================
def sample_hidden(dim_a: int, dim_b: int, decisive_a: int, decisive_b: int, shared: int, hidden: int, n: int,
                  rng: np.random.RandomState, weights: np.ndarray):
    """:func:`sample_mvd` plus ``hidden`` decisive features that neither modality observes.

    The public code draws the label from decisive features some of which are in neither modality (Fig. 2:
    20 decisive features, of which ``20 - overlap`` are observed; Fig. 3: 50, of which ``10 + exclusive``).
    The shared generator has no such option, so they are generated as extra modality-b-exclusive columns that
    are then deleted from ``x_b``: same distribution, one generator.
    """
    config = MVDConfig(dim_a, dim_b + hidden, decisive_a, decisive_b + hidden, shared)
    x_a, x_b, y = sample_mvd(config, n, rng, weights)
    keep = np.r_[np.arange(decisive_b), np.arange(decisive_b + hidden, dim_b + hidden)]
    return x_a, np.ascontiguousarray(x_b[:, keep]), y


def _hidden_config(dim_a, dim_b, decisive_a, decisive_b, shared, hidden) -> MVDConfig:
    return MVDConfig(dim_a, dim_b + hidden, decisive_a, decisive_b + hidden, shared)


def _stack(arrays, device) -> torch.Tensor:
    return torch.from_numpy(np.stack(arrays)).to(device)


def sweep_setting(setting: dict, runs: int, seed: int, epochs: int, device) -> dict:
    """One point of Fig. 2 / Fig. 3 for all runs: teacher, no-KD and KD student test accuracies ``[R]`` each.

    Public protocol (``gauss/main.py``): run ``i`` draws its label weights and training set from seed
    ``seed + i`` and its test set from ``seed + i + 1``; the teacher (modality a) and both students (modality b)
    use the same training set; the weights are initialised after the test draw (teacher, KD student, no-KD).
    """
    hidden = setting["hidden"]
    config = _hidden_config(setting["dim_a"], setting["dim_b"], setting["decisive_a"], setting["decisive_b"],
                            setting["shared"], hidden)
    train, test = [], []
    for run in range(runs):
        rng = np.random.RandomState(seed + run)
        weights = draw_label_weights(config, rng)
        args = (setting["dim_a"], setting["dim_b"], setting["decisive_a"], setting["decisive_b"], setting["shared"],
                hidden)
        train.append(sample_hidden(*args, N_TRAIN, rng, weights))
        test.append(sample_hidden(*args, N_TEST, np.random.RandomState(seed + run + 1), weights))
    xa, xb, y = (_stack([t[i] for t in train], device) for i in range(3))
    xa_test, xb_test, y_test = (_stack([t[i] for t in test], device) for i in range(3))
    generators = [torch.Generator().manual_seed(seed + run + 1) for run in range(runs)]
    init_t = init_logreg(xa.shape[2], generators, device=device)
    init_kd = init_logreg(xb.shape[2], generators, device=device)
    init_s = init_logreg(xb.shape[2], generators, device=device)
    teacher = fit_logreg(init_t, xa, y, epochs)
    probs = torch.softmax(logreg_logits(teacher, xa), dim=2)
    kd = fit_logreg(init_kd, xb, y, epochs, teacher_probs=probs)
    no_kd = fit_logreg(init_s, xb, y, epochs)
    return {"teacher": logreg_accuracy(teacher, xa_test, y_test), "no_kd": logreg_accuracy(no_kd, xb_test, y_test),
            "kd": logreg_accuracy(kd, xb_test, y_test)}


def gamma_settings(hidden_decisive: bool) -> list[dict]:
    settings = []
    for overlap in GAMMA_OVERLAPS:
        settings.append({"x": overlap / (20 - overlap), "label": f"{overlap / (20 - overlap):.2f}", "overlap": overlap,
                         "dim_a": 25, "dim_b": 50, "decisive_a": 10, "decisive_b": 10, "shared": overlap,
                         "hidden": overlap if hidden_decisive else 0})
    return settings


def alpha_settings(hidden_decisive: bool) -> list[dict]:
    settings = []
    for exclusive in ALPHA_EXCLUSIVE:
        alpha = exclusive / (exclusive + 10)
        settings.append({"x": alpha, "label": f"{alpha:.2f}", "exclusive": exclusive, "dim_a": 50, "dim_b": 50,
                         "decisive_a": 10 + exclusive, "decisive_b": 10, "shared": 10,
                         "hidden": 40 - exclusive if hidden_decisive else 0})
    return settings


def table2_layout(config: MVDConfig, x_a: np.ndarray) -> np.ndarray:
    """Modality a with its shared columns first, ``[shared | a-exclusive | noise]``, as the public code lays it out.

    The generator stores ``[a-exclusive | shared]``. For a logistic regression the column order is immaterial,
    but the public regular-KD call feeds the teacher ``x_b`` (``--swap_kd_modalities``), which is only the
    quirk it was when the shared columns sit at the same positions in both modalities.
    """
    shared = config.shared_columns("m1")
    exclusive = np.arange(config.exclusive_a)
    rest = np.arange(config.decisive_a, config.dim_a)
    return np.ascontiguousarray(x_a[:, np.r_[shared, exclusive, rest]])


def table2_row(xs1: int, xs2: int, runs: int, seed: int, epochs: int, device, swap: bool, teachers,
               repeats: int) -> dict:
    """One row of Table 2 for all runs at once; returns accuracies ``[R]`` per column and Algorithm 1 details.

    Public protocol (``gauss/main_modify_gamma.py``), run ``i`` seeded with ``seed + i``: the regular teacher's
    training set, the test set, then a fresh training set for the students and the modality-general teachers
    (same size) are drawn in that order; ``delta`` is all ones; d1 = d2 = 50. Weights are drawn in the order
    regular teacher, no-KD, regular-KD student, then per modality-general teacher kind: that teacher and its
    student (Algorithm 1's two joint networks first).
    """
    config = MVDConfig(50, 50, xs1 + xs2, xs2, xs2)
    sets = {"teacher": [], "test": [], "student": []}
    for run in range(runs):
        rng = np.random.RandomState(seed + run)
        weights = draw_label_weights(config, rng, delta="ones")
        for name, n in (("teacher", N_TRAIN), ("test", N_TEST), ("student", N_TRAIN)):
            x_a, x_b, y = sample_mvd(config, n, rng, weights)
            sets[name].append((table2_layout(config, x_a), x_b, y))
    data = {name: tuple(_stack([s[i] for s in rows], device) for i in range(3)) for name, rows in sets.items()}
    (xa_t, xb_t, y_t), (xa_test, xb_test, y_test), (xa_s, xb_s, y_s) = data["teacher"], data["test"], data["student"]
    generators = [torch.Generator().manual_seed(seed + run) for run in range(runs)]
    init_t, init_s, init_kd = (init_logreg(50, generators, device=device) for _ in range(3))

    out = {}
    teacher = fit_logreg(init_t, xa_t, y_t, epochs)
    out["teacher"] = logreg_accuracy(teacher, xa_test, y_test)
    out["no_kd"] = logreg_accuracy(fit_logreg(init_s, xb_s, y_s, epochs), xb_test, y_test)
    if swap:  # the public call: the teacher sees x_b, the "student" learns from x_a, and is tested on x_b
        probs = torch.softmax(logreg_logits(teacher, xb_s), dim=2)
        out["kd"] = logreg_accuracy(fit_logreg(init_kd, xa_s, y_s, epochs, teacher_probs=probs), xb_test, y_test)
    else:
        probs = torch.softmax(logreg_logits(teacher, xa_s), dim=2)
        out["kd"] = logreg_accuracy(fit_logreg(init_kd, xb_s, y_s, epochs, teacher_probs=probs), xb_test, y_test)

    truth = torch.arange(xs2)  # the shared columns, first in the public layout
    for kind in teachers:
        if kind == "gt":
            columns = [truth.clone() for _ in range(runs)]
        elif kind == "random":
            columns = [torch.sort(torch.randperm(50, generator=g)[:xs2]).values for g in generators]
        else:  # Algorithm 1 on the teacher's training set: joint training, then permutation saliences
            joint_a, joint_b = fit_joint(init_logreg(50, generators, device=device),
                                         init_logreg(50, generators, device=device), xa_t, xb_t, y_t, epochs)
            columns, recovered, saliences = [], [], []
            for run in range(runs):
                f_a = _RunLinear(joint_a[0][run], joint_a[1][run])
                f_b = _RunLinear(joint_b[0][run], joint_b[1][run])
                salience = channel_salience(f_a, f_b, xa_t[run], xb_t[run], None, repeats=repeats,
                                            generator=generators[run])
                top = torch.argsort(salience.cpu(), descending=True, stable=True)[:xs2]
                columns.append(top)
                recovered.append(float(np.isin(top.numpy(), truth.numpy()).mean() * 100.0))
                saliences.append(normalise_salience(salience).cpu())
            out["alg1_recovered"] = torch.tensor(recovered, dtype=torch.float64)
            out["alg1_salience"] = torch.stack(saliences)
        index = torch.stack(columns).to(device)  # [R, xs2]
        pick = lambda x: torch.gather(x, 2, index.unsqueeze(1).expand(-1, x.shape[1], -1))  # noqa: E731
        init_g = init_logreg(xs2, generators, device=device)
        init_m = init_logreg(50, generators, device=device)
        general = fit_logreg(init_g, pick(xa_s), y_s, epochs)
        out[f"{kind}_teacher"] = logreg_accuracy(general, pick(xa_test), y_test)
        probs = torch.softmax(logreg_logits(general, pick(xa_s)), dim=2)
        out[f"{kind}_kd"] = logreg_accuracy(fit_logreg(init_m, xb_s, y_s, epochs, teacher_probs=probs), xb_test,
                                            y_test)
    return out


# =============================================================================================================
# tables, CSV and figures
# =============================================================================================================
def _mean_std(values) -> tuple[float, float]:
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std())  # population std over runs, as the public code (np.std)


def _fmt(values) -> str:
    mean, std = _mean_std(values)
    return f"{mean:.2f} ± {std:.2f}"


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([f"{v:.4f}" if isinstance(v, float) else v for v in row])
    text = buffer.getvalue().encode()
    atomic_write_bytes(path, lambda handle: handle.write(text))


def write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda handle: handle.write(text.encode()))


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _pyplot():
    import matplotlib  # heavy: only when a figure is written

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    atomic_write_bytes(path, lambda handle: fig.savefig(handle, format="png", dpi=120, bbox_inches="tight"))


def plot_sweep(results: list[dict], xlabel: str, title: str, path: Path) -> None:
    plt = _pyplot()
    xs = np.array([r["x"] for r in results])
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for key, label, colour in (("teacher", "teacher (modality a)", "tab:gray"), ("no_kd", "student, no KD", "tab:blue"),
                               ("kd", "student, KD", "tab:red")):
        stats = np.array([_mean_std(r[key]) for r in results])
        ax.plot(xs, stats[:, 0], marker="o", color=colour, label=label)
        ax.fill_between(xs, stats[:, 0] - stats[:, 1], stats[:, 0] + stats[:, 1], color=colour, alpha=0.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)
    plt.close(fig)


def plot_salience(salience: torch.Tensor, title: str, path: Path, highlight=None) -> None:
    plt = _pyplot()
    values = salience.detach().cpu().numpy()
    fig, ax = plt.subplots(figsize=(max(5.0, min(16.0, 0.06 * len(values) + 3)), 3.5))
    colours = ["tab:red" if highlight is not None and i in highlight else "tab:blue" for i in range(len(values))]
    ax.bar(np.arange(len(values)), values, color=colours, width=0.9)
    ax.set_xlabel("channel")
    ax.set_ylabel("normalised salience")
    ax.set_title(title)
    save_figure(fig, path)
    plt.close(fig)


# =============================================================================================================
# experiment drivers
# =============================================================================================================
def run_sweep(args, run_dir: RunDir, device) -> dict:
    exp = args.exp
    settings = gamma_settings(args.hidden_decisive) if exp == "gamma" else alpha_settings(args.hidden_decisive)
    xlabel = "gamma (share of modality-general decisive features)" if exp == "gamma" else \
        "alpha (share of teacher-specific decisive features)"
    results, csv_rows, md_rows = [], [], []
    for setting in settings:
        started = time.time()
        accs = sweep_setting(setting, args.runs, args.seed, args.epochs, device)
        results.append({"x": setting["x"], **{k: v.tolist() for k, v in accs.items()}})
        for run in range(args.runs):
            csv_rows.append([setting["label"], run, float(accs["teacher"][run]), float(accs["no_kd"][run]),
                             float(accs["kd"][run])])
        delta = accs["kd"] - accs["no_kd"]
        md_rows.append([setting["label"], _fmt(accs["teacher"]), _fmt(accs["no_kd"]), _fmt(accs["kd"]), _fmt(delta)])
        run_dir.log(f"{exp} {setting['label']}: teacher {_fmt(accs['teacher'])}, no-KD {_fmt(accs['no_kd'])}, "
                    f"KD {_fmt(accs['kd'])}, KD - no-KD {_fmt(delta)} ({time.time() - started:.1f}s)")
    name = exp
    write_csv(run_dir.path / f"{name}.csv", [exp, "run", "teacher_acc", "no_kd_acc", "kd_acc"], csv_rows)
    figure = "Fig. 2" if exp == "gamma" else "Fig. 3"
    text = (f"# MFH {figure}: accuracy (%) vs {exp}, mean ± std over {args.runs} runs\n\n"
            f"Logistic regressions, full-batch SGD lr {LR_LR}, {args.epochs} epochs, seeds {args.seed}+run; "
            f"decisive features hidden from both modalities: {'yes' if args.hidden_decisive else 'no'}.\n\n"
            + markdown_table([exp, "teacher", "no-KD student", "KD student", "KD - no-KD"], md_rows))
    write_text(run_dir.path / f"{name}.md", text)
    plot_sweep(results, xlabel, f"MFH {figure} ({args.runs} runs)", run_dir.path / f"{name}.png")
    return {"experiment": exp, "points": results}


def _target_check(row_means: dict, paper: tuple) -> tuple[bool, str]:
    problems = []
    if not row_means["gt_kd"] > row_means["no_kd"]:
        problems.append("MG-KD <= no-KD")
    if not row_means["gt_kd"] > row_means["kd"]:
        problems.append("MG-KD <= regular KD")
    for key, label, ref in (("no_kd", "no-KD", paper[2]), ("kd", "regular KD", paper[3]), ("gt_kd", "MG KD", paper[4])):
        if abs(row_means[key] - ref) > PAPER_TOLERANCE:
            problems.append(f"{label} {row_means[key] - ref:+.2f} from paper")
    return not problems, "yes" if not problems else "no: " + "; ".join(problems)


def run_table2(args, run_dir: RunDir, device) -> dict:
    teachers = list(dict.fromkeys(["gt", *args.table2_teachers]))  # gt always: the paper's table and the target
    csv_rows, md_rows, extra_rows, summary = [], [], [], []
    all_met = True
    for gamma, xs1, xs2 in TABLE2_ROWS:
        started = time.time()
        out = table2_row(xs1, xs2, args.runs, args.seed, args.epochs, device, args.swap_kd_modalities, teachers,
                         args.repeats)
        means = {k: _mean_std(v)[0] for k, v in out.items() if k != "alg1_salience"}
        paper = PAPER_TABLE2[gamma]
        met, verdict = _target_check(means, paper)
        all_met &= met
        for run in range(args.runs):
            csv_rows.append([f"{gamma:.2f}", xs1, xs2, run] + [float(out[k][run]) for k in _table2_columns(teachers)])
        md_rows.append([f"{gamma:.2f} ({xs1}+{xs2})", f"{_fmt(out['teacher'])} ({paper[0]:.2f})",
                        f"{_fmt(out['gt_teacher'])} ({paper[1]:.2f})", f"{_fmt(out['no_kd'])} ({paper[2]:.2f})",
                        f"{_fmt(out['kd'])} ({paper[3]:.2f})", f"{_fmt(out['gt_kd'])} ({paper[4]:.2f})", verdict])
        for kind in teachers:
            if kind == "gt":
                continue
            beats = means[f"{kind}_kd"] > means["kd"] and means[f"{kind}_kd"] > means["no_kd"]
            extra_rows.append([f"{gamma:.2f}", kind, _fmt(out[f"{kind}_teacher"]), _fmt(out[f"{kind}_kd"]),
                               _fmt(out["alg1_recovered"]) if kind == "alg1" else "-",
                               "yes" if beats else "no"])
        summary.append({"gamma": gamma, "xs1": xs1, "xs2": xs2, "means": means, "paper": paper, "meets_target": met,
                        "verdict": verdict})
        run_dir.log(f"gamma {gamma:.2f} (xs1 {xs1}, xs2 {xs2}): teacher {means['teacher']:.2f}, MG teacher "
                    f"{means['gt_teacher']:.2f}, no-KD {means['no_kd']:.2f}, KD {means['kd']:.2f}, MG KD "
                    f"{means['gt_kd']:.2f} - target met: {verdict} ({time.time() - started:.1f}s)")
    write_csv(run_dir.path / "table2.csv", ["gamma", "xs1", "xs2", "run", *_table2_columns(teachers)], csv_rows)
    order = "swapped as the public code (teacher fed x_b)" if args.swap_kd_modalities else "intended (teacher fed x_a)"
    text = (f"# MFH Table 2 (synthetic Gaussian): accuracy (%), mean ± std over {args.runs} runs "
            f"(paper in brackets)\n\n"
            f"Seeds {args.seed}+run, {N_TRAIN} train / {N_TEST} test, logistic regressions, full-batch SGD lr {LR_LR}, "
            f"{args.epochs} epochs; regular-KD modality order: {order}. The modality-general (MG) teacher is trained "
            f"on the known shared columns (`gt`). Target: MG KD beats no-KD and regular KD, every student column "
            f"within {PAPER_TOLERANCE} points of the paper.\n\n"
            + markdown_table(["gamma (xs1+xs2)", "regular teacher", "MG teacher (gamma 1)", "no-KD", "regular KD",
                              "MG KD", "meets target"], md_rows))
    if extra_rows:
        text += (f"\n## Other modality-general teachers\n\n`alg1`: the top-xs2 columns by Algorithm 1 ({args.repeats} "
                 f"permutations, joint training SGD lr {JOINT_LR} momentum {JOINT_MOMENTUM}); `random`: xs2 random "
                 f"columns (control). `recovered`: share of the chosen columns that are truly shared.\n\n"
                 + markdown_table(["gamma", "teacher", "MG teacher", "MG KD", "recovered (%)",
                                   "MG KD beats no-KD and regular KD"], extra_rows))
    text += f"\nAll rows meet the target: {'yes' if all_met else 'no'}\n"
    write_text(run_dir.path / "table2.md", text)
    run_dir.log("\n" + text)
    return {"experiment": "table2", "rows": summary, "all_rows_meet_target": all_met}


def _table2_columns(teachers) -> list[str]:
    columns = ["teacher", "no_kd", "kd"]
    for kind in teachers:
        columns += [f"{kind}_teacher", f"{kind}_kd"]
    if "alg1" in teachers:
        columns.append("alg1_recovered")
    return columns


# -- Algorithm 1 and nullification on framework datasets -----------------------------------------------------------
def _load_network(ctx, name: str | None, ckpt: str | None, modalities_hint: tuple[str, ...], role: str):
    """Build ``name`` (or the checkpoint's ``model_name``) and load ``ckpt`` into it (strict)."""
    from models import build_model, get_entry
    from utils.rundir import load_checkpoint

    state = None
    if ckpt:
        state = load_checkpoint(ckpt)
        if name is None:
            name = state.get("model_name") if isinstance(state, dict) else None
            if name is None:
                raise UserError(f"{ckpt} does not record its model name; pass --model_{role[-1]}")
    if name is None:
        name = ctx.spec.students[modalities_hint[0]] if len(modalities_hint) == 1 else ctx.spec.teacher
    entry = get_entry(name)
    if entry.database != ctx.spec.name:
        raise UserError(f"--model_{role[-1]} '{name}' is built for {entry.database}, not {ctx.spec.name}")
    model = build_model(name, num_classes=ctx.spec.num_classes, input_shapes=ctx.input_shapes)
    if state is not None:
        weights = state["model"] if isinstance(state, dict) and isinstance(state.get("model"), dict) else state
        try:
            model.load_state_dict(weights, strict=True)
        except RuntimeError:
            raise UserError(f"--ckpt_{role[-1]} {ckpt} does not fit model '{name}'; pass the matching "
                            f"--model_{role[-1]}") from None
    return model.to(ctx.device), tuple(entry.inputs)


def _full_batch(ctx, split: str, limit: int | None = None):
    loader = ctx.make_loader(split, shuffle=False, batch_size=len(ctx.splits[split]), max_steps=None)
    batch = next(iter(loader))
    if limit is not None and len(batch) > limit:
        keep = torch.arange(limit, device=batch.y.device)
        batch = type(batch)(batch.m1[keep], batch.m2[keep], batch.y[keep], batch.index[keep])
    return batch


def train_joint_networks(ctx, model_a, inputs_a, model_b, inputs_b, epochs: int, log) -> None:
    """Algorithm 1, step 1, full batch on the training split (in-memory datasets such as Synthetic-MVD only)."""
    batch = _full_batch(ctx, "train")
    params = [p for p in list(model_a.parameters()) + list(model_b.parameters())]
    optimizer = torch.optim.SGD(params, lr=ctx.args.joint_lr, momentum=JOINT_MOMENTUM)
    model_a.train()
    model_b.train()
    for epoch in range(epochs):
        out_a, out_b = model_a(*batch.inputs(inputs_a)), model_b(*batch.inputs(inputs_b))
        ce_a, ce_b = F.cross_entropy(out_a, batch.y), F.cross_entropy(out_b, batch.y)
        dist = F.mse_loss(out_a, out_b)
        loss = ce_a + ce_b + dist
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"Algorithm 1 joint training diverged at epoch {epoch}; lower --joint_lr")
        if epoch == epochs - 1 or (epoch + 1) % max(1, epochs // 5) == 0:
            log(f"joint training epoch {epoch + 1}/{epochs}: CE_a {ce_a.item():.4f}, CE_b {ce_b.item():.4f}, "
                f"MSE {dist.item():.4f}")
    model_a.eval()
    model_b.eval()


@torch.no_grad()
def _accuracy(ctx, model, inputs, split: str, channels=None, layer=None) -> float:
    correct, total = 0, 0
    model.eval()
    for batch in ctx.make_loader(split, shuffle=False, max_steps=None):
        if channels is not None:
            with nullified(model, layer, channels):
                logits = model(*batch.inputs(inputs))
        else:
            logits = model(*batch.inputs(inputs))
        correct += int((logits.argmax(1) == batch.y).sum())
        total += len(batch)
    return 100.0 * correct / max(1, total)


def compute_ranking(args, ctx, run_dir: RunDir) -> dict:
    """Networks for modality a and b (loaded, or jointly trained on Synthetic-MVD), then Algorithm 1 on the
    training split: saliences written as CSV, .pt and a bar plot."""
    student_mod = args.mode
    teacher_mod = ctx.spec.other_modality(student_mod)
    model_a, inputs_a = _load_network(ctx, args.model_a, args.ckpt_a, (teacher_mod,), "model_a")
    model_b, inputs_b = _load_network(ctx, args.model_b, args.ckpt_b, (student_mod,), "model_b")
    if not args.ckpt_a:  # Synthetic-MVD only (checked by parse_args)
        run_dir.log(f"Algorithm 1 step 1: joint training of {model_a.model_name} ({'+'.join(inputs_a)}) and "
                    f"{model_b.model_name} ({'+'.join(inputs_b)}), full batch, SGD lr {args.joint_lr} momentum "
                    f"{JOINT_MOMENTUM}, {args.joint_epochs} epochs")
        train_joint_networks(ctx, model_a, inputs_a, model_b, inputs_b, args.joint_epochs, run_dir.log)
    model_a.eval()
    model_b.eval()
    hooks = list(getattr(model_a, "hook_names", []))
    layer = args.layer if args.layer is not None else (hooks[0] if hooks else "input")
    layer_arg = None if layer == "input" else layer
    if layer_arg is not None:
        names = {n for n, _ in model_a.named_modules() if n}
        if layer_arg not in names:
            raise UserError(f"--layer '{layer}' is not a submodule of {model_a.model_name}; hook names: "
                            f"{', '.join(hooks) or '-'}; or 'input'")
    elif len(inputs_a) != 1:
        raise UserError(f"--layer input needs a unimodal model_a; {model_a.model_name} takes {'+'.join(inputs_a)}")

    started = time.time()
    generator = torch.Generator().manual_seed(args.seed)
    total, weight_sum = None, 0
    loader = ctx.make_loader("train", shuffle=False, batch_size=min(args.salience_batch, args.salience_samples),
                             max_steps=None)
    seen = 0
    for batch in loader:
        if seen >= args.salience_samples:
            break
        sal = channel_salience(model_a, model_b, batch.inputs(inputs_a), batch.inputs(inputs_b), layer_arg,
                               repeats=args.repeats, generator=generator).double().cpu()
        total = sal * len(batch) if total is None else total + sal * len(batch)
        weight_sum += len(batch)
        seen += len(batch)
    salience = (total / weight_sum).float()
    normalised = normalise_salience(salience)
    order = torch.argsort(salience, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    elapsed = time.time() - started
    run_dir.log(f"Algorithm 1 on {model_a.model_name}.{layer} ({len(salience)} channels) against "
                f"{model_b.model_name}: {args.repeats} permutations x {seen} training samples in {elapsed:.1f}s")

    info = {"layer": layer, "model_a": model_a.model_name, "model_b": model_b.model_name, "inputs_a": inputs_a,
            "inputs_b": inputs_b, "repeats": args.repeats, "samples": seen, "seconds": round(elapsed, 2)}
    shared = None
    if ctx.spec.name == "Synthetic-MVD" and layer_arg is None and inputs_a == ("m1",):
        from datasets.synthetic import config_from_args

        config = config_from_args(args)
        shared = config.shared_columns(teacher_mod)
        top = order[: len(shared)].numpy()
        info["shared_columns"] = shared.tolist()
        info["shared_recovered_pct"] = float(np.isin(top, shared).mean() * 100) if len(shared) else None
        run_dir.log(f"Known shared columns {shared.tolist()}; top-{len(shared)} by salience {sorted(top.tolist())} "
                    f"({info['shared_recovered_pct']:.0f}% recovered)")
    rows = [[i, float(salience[i]), float(normalised[i]), int(rank[i])] for i in range(len(salience))]
    write_csv(run_dir.path / "salience.csv", ["channel", "salience", "normalised", "rank"], rows)
    atomic_save({"salience": salience, "normalised": normalised, **info}, run_dir.path / "salience.pt")
    plot_salience(normalised, f"Algorithm 1: {model_a.model_name}.{layer} vs {model_b.model_name}",
                  run_dir.path / "salience.png", highlight=set(shared.tolist()) if shared is not None else None)
    return {"model_a": model_a, "inputs_a": inputs_a, "model_b": model_b, "layer": layer_arg, "salience": salience,
            "info": info}


class NullifiedTeacherKD(Method):
    """KD from a cross-modal teacher with some channels of one layer nullified (MFH Sec. 5.4, Table 8).

    Loss ``gt_weight * CE(student, y) + pl_weight * KL(softmax(teacher) || softmax(student))`` with the KL
    averaged over all ``B x K`` elements (the public RAVDESS code; the paper's Table 8 uses ``rho = 0``:
    ``gt_weight 0``). The nullified channels are replaced by their mean over the current batch
    (:func:`~kd_methods.feature_ranking.nullify_channels`). Selection: the student's validation CE. Used by
    ``main-MFH.py --exp nullify`` through :func:`utils.engine.run`; not a registered script of its own.
    """

    name = "MFH-KD"
    summary = ("MFH experiments (Xue et al., ICLR 2023): Fig. 2/3 and Table 2 on Gaussian data, Algorithm 1 "
               "feature ranking and KD from nullified teachers on any dataset.")
    roles = ("student",)
    teacher_kind = "crossmodal"

    def __init__(self, ctx):
        super().__init__(ctx)
        args = self.args
        # one student initialisation per --runs index; data, split and batch order stay those of --seed
        torch.manual_seed(args.seed * 7919 + args.mfh_run)
        self.student = self.build(args.Smodel, (self.mode,), "student")
        teacher, self.teacher_inputs = _load_network(ctx, args.mfh_teacher_name, args.mfh_teacher_path,
                                                     (self.other,), "model_a")
        self.teacher = freeze(teacher)
        self.channels = torch.as_tensor(args.mfh_channels, dtype=torch.long)
        self.layer = args.mfh_layer

    @staticmethod
    def add_arguments(group: argparse._ArgumentGroup) -> None:
        add_mfh_arguments(group)

    @classmethod
    def check_args(cls, args, spec) -> None:
        check_mfh_args(args)

    def teacher_logits(self, batch):
        with torch.no_grad():
            if self.channels.numel():
                with nullified(self.teacher, self.layer, self.channels):
                    return self.teacher(*batch.inputs(self.teacher_inputs))
            return self.teacher(*batch.inputs(self.teacher_inputs))

    def stages(self):
        args = self.args

        def train_step(batch, epoch):
            logits = self.student(*batch.inputs((self.mode,)))
            probs = torch.softmax(self.teacher_logits(batch), dim=1)
            # KLDivLoss(reduction="mean"): the mean over all B x K elements (written out: torch warns on "mean")
            kl = (torch.xlogy(probs, probs) - probs * F.log_softmax(logits, dim=1)).mean()
            losses = {"kl": args.pl_weight * kl}
            if args.gt_weight:
                losses["ce"] = args.gt_weight * self.task_loss(logits, batch.y)
            return losses

        return [Stage("kd", args.epochs, self.adam(self.student), train_step, [self.student],
                      val_step=self.student_val_step, select_key="loss", selected=self.student)]

    def model_names(self):
        return {"student": self.args.Smodel, "teacher": self.teacher.model_name}

    def extra_results(self):
        return {"kind": self.args.mfh_kind, "ratio": self.args.mfh_ratio, "layer": self.layer,
                "nullified_channels": self.channels.tolist()}


def run_nullify(args, ctx, run_dir: RunDir) -> dict:
    from utils import engine

    ranking = compute_ranking(args, ctx, run_dir)
    teacher, layer, salience = ranking["model_a"], ranking["layer"], ranking["salience"]
    teacher_path = run_dir.path / "teacher_a.pth"
    atomic_save({"model": teacher.state_dict(), "model_name": teacher.model_name}, teacher_path)
    layer_name = ranking["info"]["layer"]
    variants = [("regular", 0.0)] + [(kind, ratio) for ratio in args.ratios for kind in args.kinds]
    generator = torch.Generator().manual_seed(args.seed)
    records, csv_rows = [], []
    for kind, ratio in variants:
        channels = [] if kind == "regular" else select_channels(salience, ratio, kind, generator).tolist()
        teacher_acc = _accuracy(ctx, teacher, ranking["inputs_a"], "test", channels if channels else None, layer)
        students = []
        for run in range(args.runs):
            inner = copy.copy(args)
            inner.out_dir = str(run_dir.path / "students")
            inner.record, inner.resume = False, None
            inner.mfh_run, inner.mfh_kind, inner.mfh_ratio = run, kind, ratio
            inner.mfh_channels, inner.mfh_layer = channels, layer
            inner.mfh_teacher_path, inner.mfh_teacher_name = str(teacher_path), teacher.model_name
            result = engine.run(NullifiedTeacherKD, inner)
            accuracy = 100.0 * float(result["metrics"]["test"]["accuracy"])
            students.append(accuracy)
            csv_rows.append([kind, ratio, run, len(channels), teacher_acc, accuracy])
        records.append({"kind": kind, "ratio": ratio, "channels": len(channels), "teacher_acc": teacher_acc,
                        "student_acc": students})
        run_dir.log(f"{kind} teacher, r = {ratio:.0%} ({len(channels)} of {len(salience)} channels of {layer_name} "
                    f"nullified): teacher test acc {teacher_acc:.2f}, student {_fmt(students)}")
    write_csv(run_dir.path / "nullify.csv", ["kind", "ratio", "run", "nullified", "teacher_acc", "student_acc"],
              csv_rows)
    regular = records[0]
    header = ["r (%)", "regular"] + [f"modality-{k}" if k != "random" else "random" for k in args.kinds]
    md_rows = []
    for ratio in args.ratios:
        row = [f"{ratio * 100:.0f}", _fmt(regular["student_acc"])]
        for kind in args.kinds:
            record = next(r for r in records if r["kind"] == kind and r["ratio"] == ratio)
            row.append(f"{_fmt(record['student_acc'])} (T {record['teacher_acc']:.1f})")
        md_rows.append(row)
    text = (f"# MFH nullified teachers (Sec. 5.4 / Table 8) on {ctx.spec.name}\n\n"
            f"Student {args.Smodel} ({args.mode}) distilled from {teacher.model_name} with channels of `{layer_name}` "
            f"nullified (replaced by their batch mean): the lowest-salience r% (modality-general teacher), the "
            f"highest (modality-specific) or random ones. Loss {args.gt_weight} x CE + {args.pl_weight} x KL (mean), "
            f"{args.epochs} epochs; student test accuracy (%), mean ± std over {args.runs} runs; "
            f"T = nullified teacher's test accuracy. Regular teacher test accuracy {regular['teacher_acc']:.2f}.\n\n"
            + markdown_table(header, md_rows))
    write_text(run_dir.path / "nullify.md", text)
    run_dir.log("\n" + text)
    return {"experiment": "nullify", "ranking": ranking["info"], "variants": records}


def run_rank(args, ctx, run_dir: RunDir) -> dict:
    ranking = compute_ranking(args, ctx, run_dir)
    salience = ranking["salience"]
    top = torch.argsort(salience, descending=True, stable=True)[:10].tolist()
    run_dir.log(f"Most modality-general channels of {ranking['info']['layer']}: {top}")
    return {"experiment": "rank", **ranking["info"], "top_channels": top}


# =============================================================================================================
# command line
# =============================================================================================================
def _floats_in_unit(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not in [0, 1]")
    return value


def add_mfh_arguments(group) -> None:
    group.add_argument("--exp", choices=EXPERIMENTS, default=None,
                       help="experiment: gamma (Fig. 2), alpha (Fig. 3), table2 (Table 2), rank (Algorithm 1), "
                            "nullify (KD from nullified teachers) (required)")
    group.add_argument("--runs", type=int, default=None,
                       help="independent runs (default: 10 for gamma/alpha/table2, 3 student inits for nullify)")
    group.add_argument("--swap_kd_modalities", action=argparse.BooleanOptionalAction, default=False,
                       help="table2: reproduce the public code's regular-KD call, which feeds the teacher x_b and "
                            "trains the student on x_a (default: off, the intended order)")
    group.add_argument("--hidden_decisive", action=argparse.BooleanOptionalAction, default=True,
                       help="gamma/alpha: the label also depends on decisive features neither modality sees, as the "
                            "public code and App. B.2 (Fig. 2: d = 20; Fig. 3: d = 50); --no-hidden_decisive uses "
                            "d = |J1 ∪ J2| (default: on)")
    group.add_argument("--table2_teachers", nargs="+", choices=TABLE2_TEACHERS, default=list(TABLE2_TEACHERS),
                       help="table2: modality-general teachers from the known columns (gt), Algorithm 1 (alg1), "
                            "random columns (random) (default: all three; gt is always included)")
    group.add_argument("--repeats", type=int, default=None,
                       help="Algorithm 1 permutations per channel, M (default: 100 for table2 as the public Gaussian "
                            "code, 10 for rank/nullify as the public RAVDESS code)")
    group.add_argument("--model_a", default=None,
                       help="rank/nullify: network on modality a (the teacher side, the modality that is not "
                            "--mode) (default: the checkpoint's model_name, else the dataset's unimodal model)")
    group.add_argument("--model_b", default=None,
                       help="rank/nullify: network on modality b = --mode (default: as --model_a)")
    group.add_argument("--ckpt_a", default=None,
                       help="rank/nullify: best.pth of the modality-a network (default: none; Synthetic-MVD then "
                            "trains both by Algorithm 1 step 1)")
    group.add_argument("--ckpt_b", default=None,
                       help="rank/nullify: best.pth of the modality-b network (default: none)")
    group.add_argument("--layer", default=None,
                       help="rank/nullify: hook name of model_a whose channels are ranked, or 'input' "
                            "(default: the model's first hook name)")
    group.add_argument("--joint_epochs", type=int, default=1000,
                       help="Algorithm 1 step 1 on Synthetic-MVD: full-batch epochs (default: %(default)s)")
    group.add_argument("--joint_lr", type=float, default=JOINT_LR,
                       help="Algorithm 1 step 1 on Synthetic-MVD: SGD lr, momentum 0.9 (default: %(default)s)")
    group.add_argument("--salience_samples", type=int, default=1000,
                       help="rank/nullify: training samples used by Algorithm 1 (default: %(default)s)")
    group.add_argument("--salience_batch", type=int, default=500,
                       help="rank/nullify: samples per Algorithm 1 batch; permutations stay within a batch "
                            "(default: %(default)s)")
    group.add_argument("--ratios", type=_floats_in_unit, nargs="+", default=[0.25, 0.5, 0.75],
                       help="nullify: shares r of the layer's channels to nullify (default: 0.25 0.5 0.75)")
    group.add_argument("--kinds", nargs="+", choices=SELECTION_KINDS, default=list(SELECTION_KINDS),
                       help="nullify: teachers to build: general (nullify the lowest saliences), specific (the "
                            "highest), random (default: all three)")
    group.add_argument("--gt_weight", type=float, default=0.0,
                       help="nullify: weight of the student's CE (default: %(default)s, rho = 0 as Table 8)")
    group.add_argument("--pl_weight", type=float, default=1.0,
                       help="nullify: weight of KL(teacher || student), mean reduction (default: %(default)s)")


def check_mfh_args(args) -> None:
    problems = []
    if args.exp is None:
        problems.append(f"--exp is required (one of {', '.join(EXPERIMENTS)})")
    if args.runs is not None and args.runs < 1:
        problems.append("--runs must be >= 1")
    if args.repeats is not None and args.repeats < 1:
        problems.append("--repeats must be >= 1")
    if args.joint_epochs < 0 or args.salience_samples < 1 or args.salience_batch < 1:
        problems.append("--joint_epochs must be >= 0, --salience_samples and --salience_batch >= 1")
    if args.threads is not None and args.threads < 1:
        problems.append("--threads must be >= 1")
    if args.joint_lr <= 0:
        problems.append("--joint_lr must be > 0")
    if args.gt_weight < 0 or args.pl_weight < 0 or args.gt_weight + args.pl_weight == 0:
        problems.append("--gt_weight and --pl_weight must be >= 0 and not both 0")
    if problems:
        raise UserError("; ".join(problems))


def build_parser() -> argparse.ArgumentParser:
    """The framework's standard parser (data, models, training, output, dataset options) plus the MFH flags."""
    from utils import cli

    parser = cli.build_parser(NullifiedTeacherKD)
    # MFH conventions: the student is modality b (m2 on Synthetic-MVD, whose m1 is modality a); table2's
    # public seed is 42, the figures' 0
    parser.set_defaults(mode="m2", seed=None)
    for action in parser._actions:
        if action.dest == "seed":
            action.help = ("seed: table2 uses seeds SEED+run (default 42, as the public code), gamma/alpha SEED+run "
                           "(default 0); rank/nullify: framework seed and split column group_<SEED> (default 0)")
        elif action.dest == "epochs":
            action.help = ("epochs: gamma/alpha/table2 full-batch epochs (default 1000); nullify: student epochs "
                           "(default: per dataset)")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    from utils import cli

    args = build_parser().parse_args(argv)
    check_mfh_args(args)
    if args.resume:
        raise UserError("main-MFH.py does not resume runs (each experiment is short); drop --resume")
    if args.exp in LR_EXPERIMENTS:
        args.seed = args.seed if args.seed is not None else (42 if args.exp == "table2" else 0)
        args.epochs = args.epochs if args.epochs is not None else 1000
        args.runs = args.runs or 10
        args.repeats = args.repeats or 100
        if args.epochs < 0:
            raise UserError("--epochs must be >= 0")
        return args
    args.seed = args.seed if args.seed is not None else 0
    args.runs = args.runs or 3
    args.repeats = args.repeats or 10
    args = cli.finalize_args(NullifiedTeacherKD, args)
    if bool(args.ckpt_a) != bool(args.ckpt_b):
        raise UserError("pass both --ckpt_a and --ckpt_b (networks on modality a and b), or neither")
    if not args.ckpt_a and args.database != "Synthetic-MVD":
        raise UserError(f"--exp {args.exp} on {args.database} needs trained networks: pass --ckpt_a and --ckpt_b "
                        f"(best.pth files of main-S.py); only Synthetic-MVD trains them itself (Algorithm 1 step 1)")
    return args


def run_experiment(args) -> dict:
    from utils.runtime import resolve_device, seed_everything

    device = resolve_device(args.device)
    seed_everything(args.seed)
    threads = args.threads  # default here: 1 for gamma/alpha/table2 and Synthetic-MVD
    if threads is None and (args.exp in LR_EXPERIMENTS or args.database == "Synthetic-MVD"):
        # the Gaussian models are tiny ([10, 200, 50] matmuls): intra-op threads only add synchronisation, which
        # made them up to ~100x slower on a loaded 2-core machine
        threads = 1
    if threads is not None and device.type == "cpu":
        torch.set_num_threads(threads)
    if args.exp in LR_EXPERIMENTS:
        tag = f"runs{args.runs}_seed{args.seed}_ep{args.epochs}"
    else:
        tag = f"{args.database}_{args.mode}_seed{args.seed}"
    record = vars(args).copy()
    run_dir = RunDir.create(args.out_dir, "MFH", args.exp, tag, record, record=False)
    started = time.time()
    try:
        run_dir.log(f"MFH --exp {args.exp} on {device}; run directory {run_dir.path}")
        if args.exp in ("gamma", "alpha"):
            results = run_sweep(args, run_dir, device)
        elif args.exp == "table2":
            results = run_table2(args, run_dir, device)
        else:
            from utils.engine import build_context

            ctx = build_context(args, device, log=run_dir.log)
            ctx.run_path = run_dir.path
            results = run_rank(args, ctx, run_dir) if args.exp == "rank" else run_nullify(args, ctx, run_dir)
        results["wall_time_s"] = round(time.time() - started, 2)
        results["device"] = str(device)
        atomic_write_json(results, run_dir.path / "results.json")
        run_dir.log(f"Done in {results['wall_time_s']:.1f}s")
    finally:
        run_dir.close()
    print(f"Run directory: {run_dir.path}")
    return results


def main(argv=None) -> dict | None:
    """Entry point of ``main-MFH.py``: bad input ends with one line on stderr and exit code 2."""
    try:
        return run_experiment(parse_args(argv))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(UserError.exit_code)
    except NonFiniteLossError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(NonFiniteLossError.exit_code)
