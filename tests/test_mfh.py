"""MFH (Xue et al., ICLR 2023): the Gaussian generator's arithmetic, Algorithm 1 (batched == loop, ranks the shared
columns first), channel nullification and selection, the batched logistic regressions, and smoke runs of every
``main-MFH.py --exp``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from datasets.synthetic import MVDConfig, draw_label_weights, sample_mvd
from kd_methods import feature_ranking as fr
from utils import mfh_experiments as experiments
from kd_methods import mfh_lab as lab
from models import build_model
from utils.core.hooks import active_hook_count


@pytest.fixture(autouse=True)
def _restore_threads():
    """The MFH driver sets one CPU thread for its tiny models; keep other tests' setting intact."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------------------------
# the generator (datasets/synthetic.py) as MFH uses it
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dims", [(50, 50, 20, 20, 10), (25, 50, 10, 10, 4), (50, 50, 15, 5, 5), (50, 50, 40, 10, 10)])
def test_mvd_ratios(dims):
    config = MVDConfig(*dims)
    union = config.decisive_a + config.decisive_b - config.shared
    assert config.num_decisive == union
    assert config.gamma == pytest.approx(config.shared / union)
    assert config.alpha == pytest.approx(1 - config.decisive_b / union)
    assert config.beta == pytest.approx(1 - config.decisive_a / union)
    assert config.alpha + config.beta + config.gamma == pytest.approx(1.0)


def test_mvd_paper_settings():
    # Fig. 2: gamma = 0, .11, .25, .43, .67, 1 with alpha = beta = (1 - gamma) / 2 (App. B.2)
    gammas = [MVDConfig(25, 50, 10, 10, s).gamma for s in lab.GAMMA_OVERLAPS]
    assert np.allclose(gammas, [0, 2 / 18, 4 / 16, 6 / 14, 8 / 12, 1])
    for s in lab.GAMMA_OVERLAPS:
        c = MVDConfig(25, 50, 10, 10, s)
        assert c.alpha == pytest.approx((1 - c.gamma) / 2) and c.beta == pytest.approx((1 - c.gamma) / 2)
    # Table 2 rows: gamma = xs2 / (xs1 + xs2), beta = 0
    for gamma, xs1, xs2 in lab.TABLE2_ROWS:
        c = MVDConfig(50, 50, xs1 + xs2, xs2, xs2)
        assert c.gamma == pytest.approx(gamma, abs=0.01) and c.beta == 0


def _decisive(config, n, seed):
    """x* as sample_mvd draws it first from the stream."""
    return np.random.RandomState(seed).randn(n, config.num_decisive)


@pytest.mark.parametrize("delta", ["gaussian", "ones"])
def test_mvd_column_placement_and_labels(delta):
    config = MVDConfig(30, 40, 12, 9, 5)
    rng = np.random.RandomState(7)
    weights = draw_label_weights(config, np.random.RandomState(3), delta=delta)
    x_a, x_b, y = sample_mvd(config, 500, rng, weights)
    x_star = _decisive(config, 500, 7)
    # shared columns really equal across modalities
    np.testing.assert_array_equal(x_a[:, config.shared_columns("m1")], x_b[:, config.shared_columns("m2")])
    # decisive columns hold x* ([a-exclusive | shared] and [shared | b-exclusive])
    np.testing.assert_allclose(x_a[:, : config.decisive_a], x_star[:, : config.decisive_a].astype(np.float32))
    np.testing.assert_allclose(x_b[:, : config.decisive_b], x_star[:, config.exclusive_a:].astype(np.float32))
    # the other columns are independent noise, not copies
    noise_a, noise_b = x_a[:, config.decisive_a:config.decisive_a + 5], x_b[:, config.decisive_b:config.decisive_b + 5]
    assert not np.allclose(noise_a, noise_b)
    # labels follow delta
    np.testing.assert_array_equal(y, (x_star @ weights > 0).astype(np.int64))
    assert 0.3 < y.mean() < 0.7


def test_hidden_decisive_features():
    """gamma/alpha with --hidden_decisive: the label depends on decisive features neither modality observes."""
    rng = np.random.RandomState(0)
    config = lab.hidden_config(25, 50, 10, 10, 4, 4)
    assert config.num_decisive == 20  # App. B.2: d = 20 for every overlap
    weights = draw_label_weights(config, np.random.RandomState(1))
    x_a, x_b, y = lab.sample_hidden(25, 50, 10, 10, 4, 4, 300, rng, weights)
    assert x_a.shape == (300, 25) and x_b.shape == (300, 50)
    x_star = _decisive(config, 300, 0)
    np.testing.assert_array_equal(x_a[:, 6:10], x_b[:, :4])  # the 4 shared columns
    np.testing.assert_allclose(x_b[:, 4:10], x_star[:, 10:16].astype(np.float32))  # b-exclusive
    observed = np.concatenate([x_a[:, :10], x_b[:, 4:10]], axis=1)
    hidden = x_star[:, 16:20].astype(np.float32)
    assert not any(np.allclose(observed[:, i], hidden[:, j]) for i in range(observed.shape[1]) for j in range(4))
    for j in range(4):
        assert not any(np.allclose(x_b[:, i], hidden[:, j]) for i in range(50))
    np.testing.assert_array_equal(y, (x_star @ weights > 0).astype(np.int64))


def test_table2_layout_puts_shared_first():
    config = MVDConfig(50, 50, 15, 5, 5)
    x_a, x_b, _ = sample_mvd(config, 100, np.random.RandomState(0), draw_label_weights(config, None, "ones"))
    laid = lab.table2_layout(config, x_a)
    np.testing.assert_array_equal(laid[:, :5], x_b[:, :5])
    assert sorted(map(tuple, laid.T.tolist())) == sorted(map(tuple, x_a.T.tolist()))  # a permutation of columns


# ---------------------------------------------------------------------------------------------------------------
# batched logistic regressions
# ---------------------------------------------------------------------------------------------------------------
def test_init_logreg_matches_nn_linear():
    weight, bias = lab.init_logreg(17, [torch.Generator().manual_seed(s) for s in (3, 4)])
    for run, seed in enumerate((3, 4)):
        torch.manual_seed(seed)
        layer = nn.Linear(17, 2)
        torch.testing.assert_close(weight[run], layer.weight.detach().t())
        torch.testing.assert_close(bias[run, 0], layer.bias.detach())


def _autograd_fit(params, x, y, epochs, lr, probs=None):
    weight, bias = (p.clone().requires_grad_() for p in params)
    optimizer = torch.optim.SGD([weight, bias], lr=lr)
    for _ in range(epochs):
        total = 0
        for r in range(x.shape[0]):
            logits = x[r] @ weight[r] + bias[r]
            loss = F.cross_entropy(logits, y[r])
            if probs is not None:
                log_q = F.log_softmax(logits, 1)  # KLDivLoss(reduction="mean") written out (torch warns on it)
                loss = loss + (torch.xlogy(probs[r], probs[r]) - probs[r] * log_q).mean()
            total = total + loss
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    return weight.detach(), bias.detach()


@pytest.mark.parametrize("kd", [False, True])
def test_fit_logreg_equals_autograd(kd):
    torch.manual_seed(0)
    x, y = torch.randn(3, 40, 6), torch.randint(0, 2, (3, 40))
    probs = torch.softmax(torch.randn(3, 40, 2), 2) if kd else None
    params = lab.init_logreg(6, [torch.Generator().manual_seed(s) for s in range(3)])
    ours = lab.fit_logreg(params, x, y, 25, teacher_probs=probs)
    theirs = _autograd_fit(params, x, y, 25, 0.1, probs)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fit_joint_equals_autograd():
    torch.manual_seed(1)
    xa, xb, y = torch.randn(2, 30, 5), torch.randn(2, 30, 4), torch.randint(0, 2, (2, 30))
    gens = [torch.Generator().manual_seed(s) for s in range(2)]
    pa, pb = lab.init_logreg(5, gens), lab.init_logreg(4, gens)
    ours = lab.fit_joint(pa, pb, xa, xb, y, 20)
    params = [p.clone().requires_grad_() for p in (*pa, *pb)]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    for _ in range(20):
        za = torch.baddbmm(params[1], xa, params[0])
        zb = torch.baddbmm(params[3], xb, params[2])
        loss = sum(F.cross_entropy(za[r], y[r]) + F.cross_entropy(zb[r], y[r]) + F.mse_loss(za[r], zb[r])
                   for r in range(2))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for a, b in zip((*ours[0], *ours[1]), params):
        torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# Fig. 2 / Fig. 3: the authors' protocol (student's data fixed) and the earlier one (--sweep_fixed teacher)
# ---------------------------------------------------------------------------------------------------------------
def _authors_point(exp: str, vary: int, run_seed: int, epochs: int):
    """One run of one Fig. 2 / Fig. 3 point as the authors' ``gauss/main.py`` does it, written independently:
    NumPy draws in their order, ``nn.Linear`` models built after a global ``torch.manual_seed(run_seed + 1)``,
    trained with ``torch.optim.SGD`` and autograd. Returns the data, the three trained models and accuracies."""
    def draw(rng, n):
        if exp == "gamma":  # 20 decisive features; the student sees 0..9, the teacher 10-o..19-o at those columns
            x_star = rng.randn(n, 20)
            x_b = rng.randn(n, 50)
            x_b[:, :10] = x_star[:, :10]
            x_a = rng.randn(n, 25)
            x_a[:, 10 - vary:20 - vary] = x_star[:, 10 - vary:20 - vary]
        else:  # 50 decisive features; the student sees 0..9, the teacher 0..9+e
            x_star = rng.randn(n, 50)
            x_b = rng.randn(n, 50)
            x_b[:, :10] = x_star[:, :10]
            x_a = rng.randn(n, 50)
            x_a[:, :10 + vary] = x_star[:, :10 + vary]
        y = x_star @ delta[:x_star.shape[1]] > 0
        return torch.tensor(x_a, dtype=torch.float32), torch.tensor(x_b, dtype=torch.float32), torch.tensor(y).long()

    rng = np.random.RandomState(run_seed)
    delta = rng.randn(500)
    train = draw(rng, 200)
    test = draw(np.random.RandomState(run_seed + 1), 1000)
    torch.manual_seed(run_seed + 1)
    models = {"teacher": nn.Linear(train[0].shape[1], 2), "kd": nn.Linear(50, 2), "no_kd": nn.Linear(50, 2)}
    probs = None
    for role in ("teacher", "kd", "no_kd"):
        model = models[role]
        x = train[0] if role == "teacher" else train[1]
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(epochs):
            logits = model(x)
            loss = F.cross_entropy(logits, train[2])
            if role == "kd":  # KLDivLoss(reduction="mean") written out (torch warns on it)
                loss = loss + (torch.xlogy(probs, probs) - probs * F.log_softmax(logits, 1)).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if role == "teacher":
            with torch.no_grad():
                probs = torch.softmax(model(train[0]), 1)
    return train, test, models


@pytest.mark.parametrize("exp, index", [("gamma", 1), ("gamma", 5), ("alpha", 2)])
def test_sweep_equals_the_authors_protocol(exp, index):
    """Default protocol: the data are the authors' bit for bit; the trained models agree up to float rounding, so
    the accuracies differ at most by the test samples lying within that rounding of the decision boundary."""
    settings = lab.gamma_settings(True) if exp == "gamma" else lab.alpha_settings(True)
    setting = settings[index]
    vary = setting["overlap"] if exp == "gamma" else setting["exclusive"]
    seed, runs, epochs = 3, 2, 30
    data = lab.sweep_data(setting, runs, seed, "cpu")
    ours = lab.sweep_models(data, seed, epochs)
    for run in range(runs):
        train, test, models = _authors_point(exp, vary, seed + run, epochs)
        for name, theirs in (("train", train), ("test", test)):
            for mine, reference in zip(data[name], theirs):
                assert torch.equal(mine[run], reference)
        for role, model in models.items():
            weight, bias = ours[role][0][run], ours[role][1][run, 0]
            torch.testing.assert_close(weight, model.weight.detach().t(), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(bias, model.bias.detach(), rtol=1e-5, atol=1e-6)
            x = test[0] if role == "teacher" else test[1]
            logits = x @ weight + bias
            with torch.no_grad():
                reference = model(x)
            margin = (logits[:, 1] - logits[:, 0]).abs()
            close = margin <= 1e-4 * logits.abs().max()  # far beyond the weights' rounding differences
            differ = logits.argmax(1) != reference.argmax(1)
            assert not (differ & ~close).any()


def test_sweep_protocols_hold_the_named_modality_fixed():
    """Default: the student's data, labels and initial weights are the same at every gamma, so no-KD is one
    constant per run; --sweep_fixed teacher keeps the teacher's data fixed and lets the student's change."""
    settings = lab.gamma_settings(True)
    student = [lab.sweep_data(s, 2, 0, "cpu", fixed="student") for s in settings]
    teacher = [lab.sweep_data(s, 2, 0, "cpu", fixed="teacher") for s in settings]
    for split in ("train", "test"):
        assert all(torch.equal(d[split][1], student[0][split][1]) for d in student)  # x_b
        assert all(torch.equal(d[split][2], student[0][split][2]) for d in student)  # y
        assert not torch.equal(student[1][split][0], student[0][split][0])  # x_a changes
        assert all(torch.equal(d[split][0], teacher[0][split][0]) for d in teacher)
        assert not torch.equal(teacher[1][split][1], teacher[0][split][1])
    no_kd = [lab.sweep_setting(s, 2, 0, 20, "cpu")["no_kd"] for s in settings]
    assert all(torch.equal(v, no_kd[0]) for v in no_kd)
    old = [lab.sweep_setting(s, 2, 0, 20, "cpu", fixed="teacher")["no_kd"] for s in settings]
    assert not all(torch.equal(v, old[0]) for v in old)
    with pytest.raises(ValueError):
        lab.sweep_data(settings[0], 1, 0, "cpu", fixed="both")


# ---------------------------------------------------------------------------------------------------------------
# Algorithm 1
# ---------------------------------------------------------------------------------------------------------------
def test_algorithm1_ranks_shared_columns_first():
    """Table-2-like data (10 teacher-exclusive + 5 shared decisive columns of 50): after the joint training of
    step 1, the 5 largest saliences are the 5 shared columns."""
    torch.set_num_threads(1)
    config = MVDConfig(50, 50, 15, 5, 5)
    shared = set(config.shared_columns("m1").tolist())
    hits = []
    for seed in (0, 1, 2):
        rng = np.random.RandomState(seed)
        x_a, x_b, y = sample_mvd(config, 200, rng, draw_label_weights(config, rng, "ones"))
        xa, xb, yt = (torch.from_numpy(v).unsqueeze(0) for v in (x_a, x_b, y))
        gens = [torch.Generator().manual_seed(seed)]
        (wa, ba), (wb, bb) = lab.fit_joint(lab.init_logreg(50, gens), lab.init_logreg(50, gens), xa, xb, yt, 1000)
        salience = fr.channel_salience(lab.RunLinear(wa[0], ba[0]), lab.RunLinear(wb[0], bb[0]), xa[0], xb[0],
                                       None, repeats=30, generator=torch.Generator().manual_seed(seed))
        order = torch.argsort(salience, descending=True).tolist()
        assert shared <= set(order[:8]), (seed, order[:8])  # robust: every shared column near the top
        hits.append(set(order[:5]) == shared)
    assert sum(hits) >= 2  # and exactly the top 5 in most seeds (all three at the time of writing)


class _LateBranchFusion(nn.Module):
    """Branch b runs AFTER the ranked layer of branch a, so the batched path must tile the inputs."""

    def __init__(self):
        super().__init__()
        self.a1, self.a2 = nn.Linear(6, 8), nn.Linear(8, 5)
        self.b1 = nn.Linear(4, 5)
        self.act = nn.ReLU()  # shared module: called in the prefix and in the suffix
        self.head = nn.Linear(10, 3)

    def forward(self, xa, xb):
        h = self.a2(self.act(self.a1(xa)))
        g = self.act(self.b1(xb))
        return self.head(torch.cat([self.act(h), g], dim=1))


class _SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 5 * 5, 3)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        return self.fc(x.flatten(1))


class _TwiceLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 5)
        self.out = nn.Linear(5, 2)

    def forward(self, x):
        return self.out(self.fc(torch.tanh(self.fc(x))))


class _InPlaceSuffix(nn.Module):
    """The suffix writes into the ranked layer's output (``ReLU(inplace=True)``): the reused copy buffer must notice."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 3)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class _SkipAround(nn.Module):
    """A skip connection reads a prefix output after the ranked layer, so the prefix must be tiled."""

    def __init__(self):
        super().__init__()
        self.stem, self.block, self.head = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = torch.tanh(self.stem(x))
        return self.head(h + self.block(h))


class _BatchSizeAfterCut(nn.Module):
    """After the ranked layer the forward reads the batch size taken before it and adds a skip tensor from before it:
    stacking the copies along the batch would break both; one copy per vmap lane keeps them right."""

    def __init__(self):
        super().__init__()
        self.stem, self.block = nn.Conv1d(2, 4, 3, padding=1), nn.Conv1d(4, 4, 3, padding=1)
        self.head = nn.Linear(4 * 6, 3)

    def forward(self, x):
        n = x.size(0)
        h = torch.tanh(self.stem(x))
        y = self.block(h) + h
        return self.head(torch.relu(y).view(n, -1))


class _DataDependentForward(nn.Module):
    """Control flow on a tensor's value: torch.fx cannot trace it, so the plain path is taken."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = self.fc1(x)
        if h.sum() > 0:
            h = 2 * h
        return self.fc2(torch.relu(h))


class _SuffixWritesPrefixValue(nn.Module):
    """After the ranked layer the forward writes into a tensor computed before it: a shared carried value would
    carry that write into the next group, so the plain path is taken."""

    def __init__(self):
        super().__init__()
        self.stem, self.block, self.head = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = torch.tanh(self.stem(x))
        y = self.block(h)
        h.mul_(2)
        return self.head(h + y)


def _mvd_models():
    shapes = {"m1": (12,), "m2": (9,)}
    torch.manual_seed(0)
    return (build_model("MVD-MLP-m1", num_classes=2, input_shapes=shapes),
            build_model("MVD-MLP-m2", num_classes=2, input_shapes=shapes),
            build_model("MVD-MLP-I", num_classes=2, input_shapes=shapes))


def _cases():
    m1, m2, fusion = _mvd_models()
    torch.manual_seed(1)
    xa, xb = torch.randn(24, 12), torch.randn(24, 9)
    late, cnn, twice = _LateBranchFusion(), _SmallCNN(), _TwiceLayer()
    head = nn.Linear(9, 3)
    return {
        "input": (m1, m2, xa, xb, None),
        "mlp-fc1": (m1, m2, xa, xb, "fc1"),
        "mlp-fc2": (m1, m2, xa, xb, "fc2"),
        "fusion-fc1": (fusion, m2, (xa, xb), xb, "fc1"),
        "fusion-concat": (fusion, m2, (xa, xb), xb, "concat_identity"),
        "late-branch": (late, head, (torch.randn(24, 6), torch.randn(24, 4)), xb, "a2"),
        "cnn-4d": (cnn, head, torch.randn(24, 2, 5, 5), xb, "conv1"),
        "layer-called-twice": (twice, nn.Linear(9, 2), torch.randn(24, 5), xb, "fc"),
        "inplace-suffix": (_InPlaceSuffix(), head, torch.randn(24, 6), xb, "fc1"),
        "skip-around-layer": (_SkipAround(), head, torch.randn(24, 6), xb, "block"),
        "batch-size-after-cut": (_BatchSizeAfterCut(), head, torch.randn(24, 2, 6), xb, "block"),
        "data-dependent-forward": (_DataDependentForward(), head, torch.randn(24, 6), xb, "fc1"),
        "suffix-writes-prefix-value": (_SuffixWritesPrefixValue(), head, torch.randn(24, 6), xb, "block"),
    }


@pytest.mark.parametrize("case", list(_cases()))
@pytest.mark.parametrize("chunk", [None, 1, 3])
def test_batched_equals_loop(case, chunk):
    model_a, model_b, inputs_a, inputs_b, layer = _cases()[case]
    batched = fr.channel_salience(model_a, model_b, inputs_a, inputs_b, layer, repeats=4, chunk=chunk,
                                  generator=torch.Generator().manual_seed(5))
    loop = fr.channel_salience_loop(model_a, model_b, inputs_a, inputs_b, layer, repeats=4,
                                    generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(batched, loop, rtol=1e-5, atol=1e-7)
    assert (batched > 0).all()
    for model in (model_a, model_b):  # nothing left behind: no hooks, no patched forwards
        assert active_hook_count(model) == 0
        assert not any("forward" in m.__dict__ for m in model.modules())


@pytest.mark.parametrize("case", ["input", "mlp-fc2", "inplace-suffix"])
def test_one_copy_per_forward_leaves_the_inputs_alone(case):
    """repeats=1, chunk=1: one permuted copy per forward, the copy buffer then has the feature's own shape."""
    model_a, model_b, inputs_a, inputs_b, layer = _cases()[case]
    before = inputs_a.clone()
    batched = fr.channel_salience(model_a, model_b, inputs_a, inputs_b, layer, repeats=1, chunk=1,
                                  generator=torch.Generator().manual_seed(2))
    loop = fr.channel_salience_loop(model_a, model_b, inputs_a, inputs_b, layer, repeats=1,
                                    generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(batched, loop, rtol=1e-5, atol=1e-7)
    assert torch.equal(inputs_a, before)


def test_batched_resumes_after_the_layer_when_it_can():
    """The cut network's suffix runs under vmap for a fusion net, a late-fusion net (branch b after the layer) and a
    skip connection around the layer; a layer that runs twice per forward takes the plain path."""
    _, _, fusion = _mvd_models()
    for model, inputs, layer in ((fusion, (torch.randn(8, 12), torch.randn(8, 9)), "fc1"),
                                 (_LateBranchFusion(), (torch.randn(8, 6), torch.randn(8, 4)), "a2"),
                                 (_SkipAround(), (torch.randn(8, 6),), "block")):
        with torch.no_grad():
            runner = fr._SuffixRunner(model, inputs, layer)
        assert runner.vmapped and runner.segmented is not None
        assert runner.per_copy_elements() == 8 * (runner.feature[0].numel() + runner.output[0].numel())
    with torch.no_grad():
        runner = fr._SuffixRunner(_TwiceLayer(), (torch.randn(8, 5),), "fc")
        assert not runner.vmapped  # SegmentedForward refuses a layer called twice
        assert runner.per_copy_elements() == 8 * (5 + 2 + 5)  # feature, output and the tiled input
        assert not fr._SuffixRunner(_DataDependentForward(), (torch.randn(8, 6),), "fc1").vmapped  # untraceable
        assert not fr._SuffixRunner(_SuffixWritesPrefixValue(), (torch.randn(8, 6),), "block").vmapped
        assert fr._SuffixRunner(_BatchSizeAfterCut(), (torch.randn(8, 2, 6),), "block").vmapped


def test_auto_group_follows_the_problem():
    """Cache-sized groups on a CPU (the Table 2 input: about one channel's 100 repeats per forward), large ones on
    an accelerator, never fewer than one copy."""
    per_copy = 200 * 50
    assert fr.auto_group(per_copy, torch.device("cpu")) == fr.CPU_GROUP_ELEMENTS // per_copy
    assert 50 <= fr.auto_group(per_copy, torch.device("cpu")) <= 200
    assert fr.auto_group(per_copy, torch.device("cuda")) == fr.DEVICE_GROUP_ELEMENTS // per_copy
    assert fr.auto_group(10 * fr.CPU_GROUP_ELEMENTS, "cpu") == 1


def test_bench_mfh_runs(capsys):
    """benchmarks/bench_mfh.py at tiny sizes: both problems, every variant, saliences checked against the loop."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_mfh.py"
    spec = importlib.util.spec_from_file_location("bench_mfh", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    reports = bench.main(["--trials", "1", "--table2_repeats", "3", "--samples", "8", "--repeats", "1",
                          "--layer", "fc2", "--threads", "1"])
    assert [r["name"] for r in reports] == ["table2", "ravdess"]
    out = capsys.readouterr().out
    assert "table2: batched/loop speed-up" in out and "ravdess: batched/loop speed-up" in out


def test_salience_other_distances_and_errors():
    m1, m2, _ = _mvd_models()
    xa, xb = torch.randn(16, 12), torch.randn(16, 9)
    for distance in ("l1", lambda a, b: (a - b).abs().max()):
        batched = fr.channel_salience(m1, m2, xa, xb, "fc1", repeats=2, distance=distance,
                                      generator=torch.Generator().manual_seed(0))
        loop = fr.channel_salience_loop(m1, m2, xa, xb, "fc1", repeats=2, distance=distance,
                                        generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(batched, loop, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError):
        fr.channel_salience(m1, m2, xa, xb, "fc1", distance="cosine")
    with pytest.raises(ValueError):
        fr.channel_salience(m1, m2, xa, xb[:5], "fc1", repeats=1)
    _, _, fusion = _mvd_models()
    with pytest.raises(ValueError):
        fr.channel_salience(fusion, m2, (xa, xb), xb, None, repeats=1)


def test_salience_restores_training_mode():
    m1, m2, _ = _mvd_models()
    m1.train()
    m2.eval()
    fr.channel_salience(m1, m2, torch.randn(8, 12), torch.randn(8, 9), "fc1", repeats=1)
    assert m1.training and all(m.training for m in m1.modules())
    assert not m2.training


def test_normalise_salience():
    values = fr.normalise_salience(torch.tensor([2.0, 4.0, 3.0]))
    torch.testing.assert_close(values, torch.tensor([0.0, 1.0, 0.5]))
    assert torch.equal(fr.normalise_salience(torch.ones(4)), torch.zeros(4))


# ---------------------------------------------------------------------------------------------------------------
# nullification and channel selection
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(7, 5), (7, 5, 3, 4)])
def test_nullify_channels(shape):
    torch.manual_seed(0)
    feature = torch.randn(*shape)
    original = feature.clone()
    out = fr.nullify_channels(feature, [1, 3])
    assert out.shape == feature.shape
    assert torch.equal(feature, original)  # not in place
    for c in (1, 3):
        # every sample holds the batch mean (per position for 4-d maps)
        expected = feature[:, c].mean(dim=0, keepdim=True).expand_as(feature[:, c])
        torch.testing.assert_close(out[:, c], expected)
    for c in (0, 2, 4):
        assert torch.equal(out[:, c], feature[:, c])
    assert torch.equal(fr.nullify_channels(feature, []), feature)


def test_nullified_context_manager():
    m1, _, _ = _mvd_models()
    x = torch.randn(10, 12)
    plain = m1(x)
    with fr.nullified(m1, "fc1", [0, 5, 7]):
        changed = m1(x)
    assert not torch.allclose(plain, changed)
    torch.testing.assert_close(m1(x), plain)
    assert active_hook_count(m1) == 0
    with fr.nullified(m1, None, list(range(12))):
        constant = m1(x)  # every input column replaced by its batch mean: identical rows
    torch.testing.assert_close(constant, constant[:1].expand_as(constant))
    assert active_hook_count(m1) == 0


def test_select_channels():
    salience = torch.tensor([0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 0.8, 0.4])
    assert fr.select_channels(salience, 0.25, "general").tolist() == [1, 5]  # the lowest: general ones remain
    assert fr.select_channels(salience, 0.25, "specific").tolist() == [2, 6]  # the highest
    assert fr.select_channels(salience, 0.5, "general").tolist() == [1, 3, 5, 7]
    assert fr.select_channels(salience, 0.0, "general").numel() == 0
    assert fr.select_channels(salience, 1.0, "specific").tolist() == list(range(8))
    first = fr.select_channels(salience, 0.5, "random", torch.Generator().manual_seed(3))
    again = fr.select_channels(salience, 0.5, "random", torch.Generator().manual_seed(3))
    assert torch.equal(first, again) and first.numel() == 4 and len(set(first.tolist())) == 4
    assert fr.select_channels(torch.rand(10), 0.33, "general").numel() == 3  # int(r * C), as the reference
    with pytest.raises(ValueError):
        fr.select_channels(salience, 0.5, "biggest")
    with pytest.raises(ValueError):
        fr.select_channels(salience, 1.5, "general")


# ---------------------------------------------------------------------------------------------------------------
# main-MFH.py smoke runs
# ---------------------------------------------------------------------------------------------------------------
def _run(argv, tmp_path, capsys) -> Path:
    experiments.main(argv + ["--out_dir", str(tmp_path), "--device", "cpu"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert lines[-1].startswith("Run directory: ")
    path = Path(lines[-1].split(": ", 1)[1])
    assert path.is_dir() and path.parent.parent == tmp_path / "MFH"
    for name in ("args.json", "log.txt", "results.json"):
        assert (path / name).is_file()
    assert not list(path.glob(".*.tmp*"))  # atomic writes leave no temporaries
    return path


@pytest.mark.parametrize("exp", ["gamma", "alpha"])
@pytest.mark.parametrize("fixed", ["student", "teacher"])
def test_smoke_sweeps(exp, fixed, tmp_path, capsys):
    path = _run(["--exp", exp, "--runs", "2", "--epochs", "20", "--sweep_fixed", fixed], tmp_path, capsys)
    for suffix in ("csv", "md", "png"):
        assert (path / f"{exp}.{suffix}").stat().st_size > 0
    rows = (path / f"{exp}.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * (len(lab.GAMMA_OVERLAPS) if exp == "gamma" else len(lab.ALPHA_EXCLUSIVE))
    no_kd = {tuple(row.split(",")[3] for row in rows[1:][run::2]) for run in range(2)}
    results = json.loads((path / "results.json").read_text())
    assert results["fixed"] == fixed
    constant = all(len(set(values)) == 1 for values in no_kd)  # no-KD accuracy of each run across the sweep
    assert constant == (fixed == "student")


def test_smoke_table2(tmp_path, capsys):
    path = _run(["--exp", "table2", "--runs", "2", "--epochs", "20", "--repeats", "3"], tmp_path, capsys)
    text = (path / "table2.md").read_text()
    assert "meets target" in text and "89.70" in text and "alg1" in text and "random" in text
    results = json.loads((path / "results.json").read_text())
    assert len(results["rows"]) == len(lab.TABLE2_ROWS)
    assert len((path / "table2.csv").read_text().splitlines()) == 1 + 2 * len(lab.TABLE2_ROWS)


def test_smoke_rank(tmp_path, capsys):
    path = _run(["--exp", "rank", "--layer", "input", "--joint_epochs", "30", "--mvd_samples", "300",
                 "--salience_samples", "100", "--repeats", "2"], tmp_path, capsys)
    for name in ("salience.csv", "salience.pt", "salience.png"):
        assert (path / name).is_file()
    saved = torch.load(path / "salience.pt", weights_only=True)
    assert saved["salience"].shape == (50,) and saved["normalised"].max() == 1.0
    assert json.loads((path / "results.json").read_text())["layer"] == "input"


def test_smoke_nullify(tmp_path, capsys):
    path = _run(["--exp", "nullify", "--runs", "1", "--epochs", "1", "--joint_epochs", "10", "--mvd_samples", "300",
                 "--salience_samples", "100", "--repeats", "2", "--ratios", "0.5", "--kinds", "general", "random",
                 "--batch_size", "64"], tmp_path, capsys)
    for name in ("nullify.csv", "nullify.md", "salience.csv", "teacher_a.pth"):
        assert (path / name).is_file()
    rows = (path / "nullify.csv").read_text().splitlines()
    assert len(rows) == 1 + 3  # regular + general + random, one run each
    students = list((path / "students").rglob("results.json"))
    assert len(students) == 3
    extra = [json.loads(p.read_text())["extra"] for p in students]
    assert sorted(len(e["nullified_channels"]) for e in extra) == [0, 32, 32]  # half of fc1's 64 channels


def test_smoke_rank_from_checkpoints(tmp_path, capsys):
    """Networks trained by main-S.py (best.pth with model_name) on each modality, ranked at fc2."""
    import utils

    ckpts = []
    for mode in ("m1", "m2"):
        utils.main("S", ["--mode", mode, "--epochs", "1", "--mvd_samples", "300", "--out_dir", str(tmp_path / "S"),
                         "--no-record", "--device", "cpu"])
        ckpts.append(next((tmp_path / "S").rglob(f"*_{mode}_seed0_*/best.pth")))
    capsys.readouterr()
    path = _run(["--exp", "rank", "--ckpt_a", str(ckpts[0]), "--ckpt_b", str(ckpts[1]), "--layer", "fc2",
                 "--mvd_samples", "300", "--repeats", "2"], tmp_path, capsys)
    results = json.loads((path / "results.json").read_text())
    assert results["model_a"] == "MVD-MLP-m1" and results["model_b"] == "MVD-MLP-m2" and results["layer"] == "fc2"
    assert torch.load(path / "salience.pt", weights_only=True)["salience"].shape == (32,)
    with pytest.raises(SystemExit) as exit_info:  # a checkpoint that does not fit the named model
        experiments.main(["--exp", "rank", "--ckpt_a", str(ckpts[0]), "--ckpt_b", str(ckpts[1]),
                          "--model_a", "MVD-LR-m1", "--mvd_samples", "300", "--out_dir", str(tmp_path)])
    assert exit_info.value.code == 2


@pytest.mark.parametrize("database", ["UCI-MFeat", "Paired"])
def test_rank_generic_models_from_checkpoints(database, tmp_path, capsys):
    """``--exp rank`` takes the generic models (sized from the data) as every method does: one model resolver."""
    import utils

    data = ["--database", database]
    if database == "Paired":  # 60 samples, 3 classes, 12- and 9-d vectors with the label in m1
        rng = np.random.RandomState(0)
        labels = np.arange(60) % 3
        root = tmp_path / "data"
        root.mkdir()
        np.save(root / "m1.npy", rng.randn(60, 12).astype(np.float32) + labels[:, None])
        np.save(root / "m2.npy", rng.randn(60, 9).astype(np.float32))
        np.save(root / "labels.npy", labels)
        data += ["--data_root", str(root)]
    ckpts = []
    for mode in ("m1", "m2"):
        utils.main("S", [*data, "--mode", mode, "--epochs", "1", "--out_dir", str(tmp_path / "S"), "--no-record",
                         "--device", "cpu"])
        ckpts.append(next((tmp_path / "S").rglob(f"*_{mode}_seed0*/best.pth")))
    capsys.readouterr()
    path = _run([*data, "--exp", "rank", "--ckpt_a", str(ckpts[1]), "--ckpt_b", str(ckpts[0]), "--repeats", "2"],
                tmp_path, capsys)
    results = json.loads((path / "results.json").read_text())
    names = [torch.load(ckpt, weights_only=True)["model_name"] for ckpt in ckpts]
    assert (results["model_a"], results["model_b"]) == (names[1], names[0])
    salience = torch.load(path / "salience.pt", weights_only=True)["salience"]
    assert salience.ndim == 1 and len(salience) > 0 and torch.isfinite(salience).all()


@pytest.mark.parametrize("argv", [[], ["--exp", "nope"], ["--exp", "rank", "--database", "RAVDESS"],
                                  ["--exp", "rank", "--ckpt_a", "x.pth"], ["--exp", "nullify", "--ratios", "1.5"],
                                  ["--exp", "table2", "--runs", "0"]])
def test_bad_input_exits_2(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        experiments.main(argv + ["--out_dir", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert not (tmp_path / "MFH").exists()


def test_paper_table_constants():
    assert set(experiments.PAPER_TABLE2) == {g for g, _, _ in lab.TABLE2_ROWS}
    assert all(math.isclose(experiments.PAPER_TABLE2[0.50][i], v)
               for i, v in enumerate((89.62, 73.41, 67.64, 67.86, 70.25)))
