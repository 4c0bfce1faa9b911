"""The Gaussian lab of the Modality Focusing Hypothesis: batched logistic regressions and synthetic MVD data.

Xue, Gao, Ren, Zhao, "The Modality Focusing Hypothesis: Towards Understanding Crossmodal Knowledge Distillation",
ICLR 2023, Sec. 5.2 and App. B.2. Teacher and student are logistic regressions ``d -> 2`` trained full-batch with
plain SGD (lr 0.1, 1000 epochs, cross-entropy), as the authors' public code; the KD student minimises
``CE + KL(softmax(teacher) || softmax(student))`` with the KL averaged over all ``N x 2`` elements (PyTorch
``KLDivLoss`` default ``mean``), no temperature. All runs of one setting are trained at once as a batch of
independent models (``[runs, N, d] @ [runs, d, 2]``) with closed-form gradients, which equal autograd's; initial
weights are drawn exactly as ``nn.Linear`` draws them, from one generator per run.

This module computes; it writes nothing. The drivers that report (CSV, Markdown, figures) are in
:mod:`utils.mfh_experiments`.

Data of Fig. 2 / Fig. 3 (:func:`sweep_setting`), two protocols:

* ``fixed="student"`` (default, the authors' protocol): run ``i`` draws ``delta`` as 500 standard normals (the
  first ``d`` are used), then ``x*``, the student's modality and the teacher's modality, from seed ``seed + i``
  (test set: seed ``seed + i + 1``). The decisive features are laid out ``[b-exclusive | shared | a-exclusive |
  hidden]``; the student (modality b) holds the first ``|J2|`` in its first columns, the teacher (modality a)
  holds its ``|J1|`` at the same column positions as in ``x*``. Across the sweep only the teacher's modality
  changes: the student's data, its labels and its initial weights are the same at every point, so the no-KD
  line is one constant and ``KD - no-KD`` is a paired difference.
* ``fixed="teacher"``: the shared generator
  :func:`datasets.synthetic.sample_mvd`, layout ``[a-exclusive | shared | b-exclusive | hidden]``; the teacher's
  data stay fixed across the sweep and the student's change.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from datasets.synthetic import MVDConfig, draw_label_weights, sample_mvd
from kd_methods.feature_ranking import channel_salience, normalise_salience

TABLE2_TEACHERS = ("gt", "alg1", "random")
#: which modality's data stay the same across a Fig. 2 / Fig. 3 sweep (see the module docstring)
SWEEP_FIXED = ("student", "teacher")
#: the authors' code draws ``delta`` as this many standard normals and uses the first ``d``
LABEL_WEIGHT_DRAWS = 500

#: Fig. 2: overlap |J1 ∩ J2| of two 10-column decisive sets; d1 = 25, d2 = 50 (App. B.2)
GAMMA_OVERLAPS = (0, 2, 4, 6, 8, 10)
#: Fig. 3: modality-a-exclusive decisive columns next to the 10 shared ones; d1 = d2 = 50
ALPHA_EXCLUSIVE = (0, 10, 20, 30, 40)
#: Table 2 rows: (gamma as printed in the paper, xs1 teacher-exclusive columns, xs2 shared columns)
TABLE2_ROWS = ((0.25, 15, 5), (0.33, 10, 5), (0.50, 10, 10), (0.66, 10, 20), (0.75, 10, 30))
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



class RunLinear(torch.nn.Module):
    """One run's logistic regression as a module, for :func:`channel_salience` (input channels = columns)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.weight, self.bias = weight, bias

    def forward(self, x):
        return torch.addmm(self.bias, x, self.weight)


# =============================================================================================================
# Gaussian data
# =============================================================================================================
def sample_student_fixed(setting: dict, n: int, rng: np.random.RandomState, weights: np.ndarray):
    """One draw of the authors' Fig. 2 / Fig. 3 data: ``(x_a [n, d1], x_b [n, d2], y [n])``, float32/float32/int64.

    ``x* ~ N(0, I_d)`` (``d = |J1 ∪ J2| + hidden``), then modality b, then modality a, each ``N(0, I)`` noise
    with decisive columns written over it, in this order from ``rng``, as the authors' ``gauss/main.py`` draws
    them. The decisive features are laid out ``[b-exclusive | shared | a-exclusive | hidden]``: modality b
    holds the first ``|J2|`` of them in its first columns; modality a holds ``x*`` columns
    ``[|J2| - shared, |J2| - shared + |J1|)`` at the same column positions. The label is ``1[<delta, x*> > 0]``.
    Because modality b and the label are drawn before modality a, they do not depend on the teacher's layout.
    """
    decisive_a, decisive_b, shared = setting["decisive_a"], setting["decisive_b"], setting["shared"]
    start = decisive_b - shared
    x_star = rng.randn(n, decisive_a + start + setting["hidden"])
    x_b = rng.randn(n, setting["dim_b"])
    x_b[:, :decisive_b] = x_star[:, :decisive_b]
    x_a = rng.randn(n, setting["dim_a"])
    x_a[:, start:start + decisive_a] = x_star[:, start:start + decisive_a]
    y = (x_star @ weights > 0).astype(np.int64)
    return x_a.astype(np.float32), x_b.astype(np.float32), y


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


def hidden_config(dim_a, dim_b, decisive_a, decisive_b, shared, hidden) -> MVDConfig:
    return MVDConfig(dim_a, dim_b + hidden, decisive_a, decisive_b + hidden, shared)


def _stack(arrays, device) -> torch.Tensor:
    return torch.from_numpy(np.stack(arrays)).to(device)


def sweep_data(setting: dict, runs: int, seed: int, device, fixed: str = "student") -> dict:
    """The training and test sets of one Fig. 2 / Fig. 3 point for all runs: ``{"train": (x_a, x_b, y), "test": ...}``
    with ``x [R, N, d]`` and ``y [R, N]``.

    Both protocols (module docstring): run ``i`` draws its label weights and training set from seed ``seed + i``
    and its test set from seed ``seed + i + 1``; the teacher (modality a) and both students (modality b) use the
    same training set.
    """
    if fixed not in SWEEP_FIXED:
        raise ValueError(f"fixed must be one of {', '.join(SWEEP_FIXED)}, not {fixed!r}")
    hidden = setting["hidden"]
    config = hidden_config(setting["dim_a"], setting["dim_b"], setting["decisive_a"], setting["decisive_b"],
                           setting["shared"], hidden)
    train, test = [], []
    for run in range(runs):
        rng = np.random.RandomState(seed + run)
        if fixed == "student":
            weights = rng.randn(LABEL_WEIGHT_DRAWS)[:config.num_decisive]
            train.append(sample_student_fixed(setting, N_TRAIN, rng, weights))
            test.append(sample_student_fixed(setting, N_TEST, np.random.RandomState(seed + run + 1), weights))
            continue
        weights = draw_label_weights(config, rng)
        args = (setting["dim_a"], setting["dim_b"], setting["decisive_a"], setting["decisive_b"], setting["shared"],
                hidden)
        train.append(sample_hidden(*args, N_TRAIN, rng, weights))
        test.append(sample_hidden(*args, N_TEST, np.random.RandomState(seed + run + 1), weights))
    return {name: tuple(_stack([s[i] for s in sets], device) for i in range(3))
            for name, sets in (("train", train), ("test", test))}


def sweep_models(data: dict, seed: int, epochs: int) -> dict:
    """Teacher, KD student and no-KD student of one sweep point, trained on ``data["train"]``: params per role.

    Run ``i``'s weights are initialised after its data, from seed ``seed + i + 1``, in the order teacher, KD
    student, no-KD student (the authors' order; with ``fixed="student"`` the teacher's width is the same at every
    point of a sweep, so both students start from the same weights at every point).
    """
    xa, xb, y = data["train"]
    generators = [torch.Generator().manual_seed(seed + run + 1) for run in range(xa.shape[0])]
    init_t = init_logreg(xa.shape[2], generators, device=xa.device)
    init_kd = init_logreg(xb.shape[2], generators, device=xa.device)
    init_s = init_logreg(xb.shape[2], generators, device=xa.device)
    teacher = fit_logreg(init_t, xa, y, epochs)
    probs = torch.softmax(logreg_logits(teacher, xa), dim=2)
    return {"teacher": teacher, "kd": fit_logreg(init_kd, xb, y, epochs, teacher_probs=probs),
            "no_kd": fit_logreg(init_s, xb, y, epochs)}


def sweep_setting(setting: dict, runs: int, seed: int, epochs: int, device, fixed: str = "student") -> dict:
    """One point of Fig. 2 / Fig. 3 for all runs: teacher, no-KD and KD student test accuracies ``[R]`` each."""
    data = sweep_data(setting, runs, seed, device, fixed)
    models = sweep_models(data, seed, epochs)
    xa_test, xb_test, y_test = data["test"]
    return {"teacher": logreg_accuracy(models["teacher"], xa_test, y_test),
            "no_kd": logreg_accuracy(models["no_kd"], xb_test, y_test),
            "kd": logreg_accuracy(models["kd"], xb_test, y_test)}


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
                f_a = RunLinear(joint_a[0][run], joint_a[1][run])
                f_b = RunLinear(joint_b[0][run], joint_b[1][run])
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

