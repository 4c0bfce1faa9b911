"""FitNets(-UU), OFA(-UU), C2KD and MGDFR: golden values on hand-made inputs, and smoke runs of their scripts on
Synthetic-MVD (subprocess) and on the AV-MNIST fixture (in process)."""
from __future__ import annotations

import functools
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.stats import kendalltau

from kd_methods.c2kd import (ProxyNet, ProxyNet1D, ProxyNetDense, gate_non_target, kendall_tau_b, non_target_kl,
                             poly_lr)
from kd_methods.features import feature_shapes, modules_up_to
from kd_methods.fitnets import HINT_PAIRS, HINT_PAIRS_UU, R1D, REGRESSORS, Down, Fixed, R2Dto1D, Up
from kd_methods.mgdfr import MGDFR
from kd_methods.ofa import Projector1D, Projector2D, build_projectors, init_projector, ofa_loss
from models import build_model, get_entry
from utils import cli, engine

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--mvd_samples", "400", "--no-record", "--device", "cpu"]


# -- FitNets regressors (methods.md §4.2) -------------------------------------------------------------------

@pytest.mark.parametrize("length_in,length_out,stride,conv_length", [
    (25088, 120, 209, 121),   # AV-MNIST UU LeNet5 <- ThreeLayerCNN-A: strided conv, then nearest-resize down
    (120, 25088, 1, 120),     # the reverse: stride 1, nearest-resize up
    (84, 298, 1, 84),         # CNN-I fc1 <- LeNet5 fc1
    (1024, 512, 2, 512),      # CMMD-V2 MLP-I fc1 <- MLP-Vb fc1
    (320, 320, 1, 320),
])
def test_r1d_stride_and_lengths(length_in, length_out, stride, conv_length):
    regressor = R1D((length_in,), (length_out,))
    assert regressor.conv1d.stride == (stride,)
    x = torch.randn(3, length_in)
    assert regressor.conv1d(x.unsqueeze(1)).shape == (3, 1, conv_length)
    assert regressor(x).shape == (3, length_out)


@pytest.mark.parametrize("length_in,length_out,source", [
    (5, 8, [0, 0, 1, 1, 2, 3, 3, 4]),  # legacy nearest: floor(k * in / out); nearest-exact would give 2 at k=3
    (8, 5, [0, 1, 3, 4, 6]),
])
def test_r1d_uses_legacy_nearest_resize(length_in, length_out, source):
    regressor = R1D((length_in,), (length_out,))
    with torch.no_grad():  # identity convolution, so only the resize acts
        regressor.conv1d.weight.copy_(torch.tensor([[[0.0, 1.0, 0.0]]]))
        regressor.conv1d.bias.zero_()
    x = torch.arange(2 * length_in, dtype=torch.float32).view(2, length_in)
    assert torch.equal(regressor(x), x[:, source])


def test_2d_regressor_shapes():
    r = R2Dto1D((120, 1, 1), (596,))  # CNN-I concat_identity <- LeNet5 conv3
    assert (r.conv2d.in_channels, r.conv2d.out_channels, r.fc.in_features, r.fc.out_features) == (120, 16, 16, 596)
    assert r(torch.randn(2, 120, 1, 1)).shape == (2, 596)
    assert R2Dto1D((64, 56, 56), (596,)).fc.in_features == 50176
    assert R2Dto1D((128, 28, 28), (298,)).fc.in_features == 12544
    assert Down((64, 56, 56), (6, 28, 28))(torch.randn(2, 64, 56, 56)).shape == (2, 6, 28, 28)
    assert Up((6, 28, 28), (64, 56, 56))(torch.randn(2, 6, 28, 28)).shape == (2, 64, 56, 56)
    assert Fixed((8, 6, 10), (4, 6, 10))(torch.randn(2, 8, 6, 10)).shape == (2, 4, 6, 10)
    down = Down((4, 30, 40), (4, 15, 20))
    assert (down.conv.kernel_size, down.conv.stride, down.conv.padding) == ((3, 3), (2, 2), (1, 1))
    up = Up((4, 6, 5), (3, 12, 10))
    assert (up.deconv.stride, up.deconv.padding, up.deconv.output_padding) == ((2, 2), (1, 1), (1, 1))


def test_r2d_to_1d_draws_the_reference_rng():
    """The reference sized its Linear with torch.rand(1, C, H, W): the same draw keeps later inits identical."""
    torch.manual_seed(3)
    ours = R2Dto1D((4, 3, 3), (7,))
    torch.manual_seed(3)
    conv = nn.Conv2d(4, 16, 3, padding=1)
    torch.rand(1, 4, 3, 3)
    fc = nn.Linear(16 * 9, 7)
    assert torch.equal(ours.conv2d.weight, conv.weight) and torch.equal(ours.fc.weight, fc.weight)


SMALL_INPUTS = {  # per-sample shapes; NYU smaller than 480x640 to stay fast (every pair is size-agnostic)
    "AV-MNIST": {"m1": (1, 28, 28), "m2": (1, 112, 112)},
    "CMMD-V2": {"m1": (2048,), "m2": (768,)},
    "RAVDESS": {"m1": (15, 3, 224, 224), "m2": (15, 156)},
    "VGGSound-50k": {"m1": (10, 7, 7, 512), "m2": (10, 128)},
    "NYU-Depth-V2": {"m1": (3, 64, 96), "m2": (1, 64, 96)},
    "Synthetic-MVD": {"m1": (50,), "m2": (50,)},
}


@functools.lru_cache(maxsize=None)
def _model(name):
    entry = get_entry(name)
    torch.manual_seed(0)
    return build_model(name, num_classes=10 if entry.database == "AV-MNIST" else 8,
                       input_shapes=SMALL_INPUTS[entry.database]).eval()


def _inputs(name):
    entry = get_entry(name)
    torch.manual_seed(1)
    return tuple(torch.rand(1, *SMALL_INPUTS[entry.database][m]) for m in entry.inputs)


@pytest.mark.parametrize("pair", [*HINT_PAIRS, *HINT_PAIRS_UU], ids=lambda p: "->".join(p))
def test_every_hint_pair_regresses_to_the_teacher_shape(pair):
    table = HINT_PAIRS if pair in HINT_PAIRS else HINT_PAIRS_UU
    teacher, student = _model(pair[0]), _model(pair[1])
    t_shapes = feature_shapes(teacher, [t for t, _, _ in table[pair]], _inputs(pair[0]))
    s_shapes = feature_shapes(student, [s for _, s, _ in table[pair]], _inputs(pair[1]))
    for t, s, kind in table[pair]:
        regressor = REGRESSORS[kind](s_shapes[s], t_shapes[t])
        assert regressor(torch.randn(2, *s_shapes[s])).shape == (2, *t_shapes[t]), (t, s, kind)


def test_hint_table_facts():
    assert HINT_PAIRS_UU[("LeNet5", "ThreeLayerCNN-A")] == (("conv1", "conv2", "Down"),
                                                           ("flatten_identity", "conv3_maxpool_flatten", "R1D"))
    assert ("MVD-MLP-I", "MVD-MLP-m2") in HINT_PAIRS and ("MVD-MLP-m2", "MVD-MLP-m1") in HINT_PAIRS_UU
    assert not set(HINT_PAIRS) & set(HINT_PAIRS_UU)


def test_modules_up_to_follow_execution_order():
    student = _model("ThreeLayerCNN-A")
    got = modules_up_to(student, ["conv2", "conv3_maxpool_flatten"], _inputs("ThreeLayerCNN-A"))
    assert got == ["conv1", "conv2", "conv3", "conv3_maxpool", "conv3_maxpool_flatten"]


# -- OFA (methods.md §7) ------------------------------------------------------------------------------------

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


# -- C2KD (methods.md §9) -----------------------------------------------------------------------------------

def test_kendall_tau_b_matches_scipy_with_ties():
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0], [1.0, 1.0, 2.0, 2.0, 3.0], [3.0, 1.0, 2.0, 2.0, 0.0],
                      [0.5, 0.5, 0.5, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0, 2.0]])
    y = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 2.0, 3.0, 3.0], [3.0, 1.0, 2.0, 0.0, 0.0],
                      [1.0, 0.0, 1.0, 0.0, 1.0], [1.0, 2.0, 3.0, 4.0, 5.0]])
    rng = np.random.RandomState(0)
    x = torch.cat([x, torch.from_numpy(rng.randint(0, 3, size=(6, 5)).astype(np.float32))])
    y = torch.cat([y, torch.from_numpy(rng.randint(0, 3, size=(6, 5)).astype(np.float32))])
    ours = kendall_tau_b(x, y)
    for row in range(len(x)):
        expected = kendalltau(x[row].numpy(), y[row].numpy(), variant="b").statistic
        if np.isnan(expected):  # an all-tied row: scipy gives NaN, the reference's +1e-8 gives 0
            assert ours[row].item() == 0.0
        else:
            assert ours[row].item() == pytest.approx(expected, abs=1e-6), row
    assert ours[0].item() == pytest.approx(-1.0) and ours[4].item() == 0.0
    assert torch.equal(kendall_tau_b(x, y, chunk_rows=3), ours), "chunking does not change the result"


def test_non_target_kl_golden():
    trained, target = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[3.0, 1.0, 0.0]])
    mask = torch.tensor([[True, False, False]])

    def kl(b, a):  # KL(softmax(b) || softmax(a)) by hand
        zb, za = sum(math.exp(v) for v in b), sum(math.exp(v) for v in a)
        return sum(math.exp(bv) / zb * ((bv - math.log(zb)) - (av - math.log(za))) for av, bv in zip(a, b))

    # reference: the target logit set to 0 (and kept); switch: the target class removed
    assert non_target_kl(trained, target, mask).item() == pytest.approx(kl([0, 1, 0], [0, 2, 3]), rel=1e-6)
    assert non_target_kl(trained, target, mask, remove_target=True).item() == pytest.approx(kl([1, 0], [2, 3]),
                                                                                           rel=1e-6)


def test_non_target_gate():
    per_sample = torch.tensor([1.0, 2.0, 4.0, 8.0])
    passed = torch.tensor([1.0, 0.0, 1.0, 0.0])
    assert gate_non_target(per_sample, passed, dense=False).item() == pytest.approx(5.0 / 4)  # masked count as 0
    assert gate_non_target(per_sample, torch.zeros(4), dense=False).item() == 0.0
    per_pixel = torch.arange(1.0, 9.0)  # 2 images x 4 pixels, image-major
    one_image = torch.tensor([0.0, 1.0])
    # reference (NYU): the mean over every pixel as soon as one image passes; nothing when none does
    assert gate_non_target(per_pixel, one_image, dense=True).item() == pytest.approx(4.5)
    assert gate_non_target(per_pixel, torch.zeros(2), dense=True).item() == 0.0
    # --c2kd_image_mask: only the passing image's pixels, still over all pixels of the batch
    assert gate_non_target(per_pixel, one_image, dense=True, image_mask=True).item() == pytest.approx(26.0 / 8)


def test_poly_lr_schedule():
    assert poly_lr(0.01, 100, 0) == 0.01
    assert poly_lr(0.01, 100, 1) == pytest.approx(0.01 * 0.99 ** 0.9)
    assert poly_lr(0.01, 100, 50) == pytest.approx(0.01 * 0.5 ** 0.9)  # the product telescopes
    assert poly_lr(0.01, 100, 100) == 1e-4  # the floor


def test_c2kd_proxies():
    torch.manual_seed(0)
    assert ProxyNet(10, 128)(torch.randn(2, 128, 14, 14)).shape == (2, 10)
    one_d = ProxyNet1D(10, 84)
    assert one_d(torch.randn(2, 84)).shape == (2, 10)
    assert not one_d.fc1.bias.any() and not one_d.fc2.bias.any()
    dense = ProxyNetDense(41, 64)
    assert dense(torch.randn(2, 64, 8, 12), (16, 24)).shape == (2, 41, 16, 24)  # follows the label size


# -- MGDFR (methods.md §10) ---------------------------------------------------------------------------------

def _mgdfr(tmp_path, *extra):
    args = cli.parse_args(MGDFR, ["--epochs", "1", "--max_steps", "1", "--out_dir", str(tmp_path), *QUICK, *extra])
    ctx = engine.build_context(args, torch.device("cpu"))
    return MGDFR(ctx), ctx


def test_mgdfr_phase_c_teacher_default_unchanged_and_removal_uses_batch_mean(tmp_path):
    torch.manual_seed(0)
    method, ctx = _mgdfr(tmp_path)
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


# -- smoke runs ---------------------------------------------------------------------------------------------

def run_script(script, *argv):
    result = subprocess.run([sys.executable, str(ROOT / script), *map(str, argv)], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, f"{script}:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("Run directory: "), last
    return Path(last[len("Run directory: "):])


@pytest.fixture(scope="module")
def synthetic_teachers(tmp_path_factory):
    out = tmp_path_factory.mktemp("teachers")
    multimodal = run_script("main-T.py", "--epochs", "1", "--out_dir", out, *QUICK)
    crossmodal = run_script("main-S.py", "--mode", "m2", "--epochs", "1", "--out_dir", out, *QUICK)
    return {"multimodal": multimodal / "best.pth", "crossmodal": crossmodal / "best.pth"}


@pytest.mark.parametrize("script,teacher,extra", [
    ("main-FitNets.py", "multimodal", ["--hint_epochs", "1"]),
    ("main-FitNets-UU.py", "crossmodal", ["--hint_epochs", "1", "--hint_full_student", "--select_on_ce"]),
    ("main-OFA.py", "multimodal", []),
    ("main-OFA-UU.py", "crossmodal", ["--ofa_log_softmax"]),
    ("main-C2KD.py", "crossmodal", ["--c2kd_poly_lr"]),
    ("main-MGDFR.py", None, ["--co_epochs", "1", "--mgdfr_apply_removal"]),
])
def test_scripts_on_synthetic(script, teacher, extra, synthetic_teachers, tmp_path):
    ckpt = ["--ckpt_name", synthetic_teachers[teacher]] if teacher else []
    run = run_script(script, "--epochs", "2", "--max_steps", "2", "--out_dir", tmp_path, *QUICK, *ckpt, *extra)
    results = json.loads((run / "results.json").read_text())
    assert 0.0 <= results["metrics"]["test"]["accuracy"] <= 1.0
    assert results["models"]["student"] == "MVD-MLP-m1"
    if script == "main-MGDFR.py":
        assert (run / "salience.npy").is_file() and len(results["extra"]["removed_channels"]) == 24
        assert np.allclose(np.load(run / "salience.npy"), results["extra"]["salience"], atol=1e-6)
    if script == "main-FitNets-UU.py":
        assert results["extra"]["hint_trained_parameters"] == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]


@pytest.mark.parametrize("method,argv,message", [
    ("C2KD", ["--Tmodel", "MVD-MLP-I", "--ckpt_name", "x.pth"], "multimodal"),
    ("MGDFR", ["--Tmodel", "MVD-MLP-I"], "multimodal"),
    ("FitNets-UU", ["--Tmodel", "MVD-LR-m2", "--ckpt_name", "x.pth"], "MVD-MLP-m2 -> MVD-MLP-m1"),
    ("OFA", ["--database", "NYU-Depth-V2", "--ckpt_name", "x.pth"], "does not support NYU-Depth-V2"),
    ("C2KD", ["--Smodel", "MVD-LR-m1", "--ckpt_name", "x.pth"], "proxy-layer"),
])
def test_unsupported_configurations_fail_up_front(method, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        engine.main(method, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_every_method_on_the_avmnist_fixture(fixture_root, tmp_path):
    base = ["--database", "AV-MNIST", "--data_root", str(fixture_root("AV-MNIST")), "--metadata_dir",
            str(tmp_path / "metadata"), "--batch_size", "8", "--epochs", "1", "--no-record", "--device", "cpu",
            "--out_dir", str(tmp_path / "runs")]

    def best(script_method, tag):
        (run,) = (tmp_path / "runs" / script_method / "AV-MNIST").glob(f"{tag}_seed0_*")
        return str(run / "best.pth")

    engine.main("T", base)
    engine.main("S", [*base, "--mode", "m2"])
    engine.main("S", [*base, "--mode", "m1"])
    cnn_i, audio, image = best("T", "CNN-I_m1"), best("S", "ThreeLayerCNN-A_m2"), best("S", "LeNet5_m1")
    hint = ["--hint_epochs", "1"]
    results = {
        "FitNets": engine.main("FitNets", [*base, *hint, "--ckpt_name", cnn_i]),
        "FitNets-UU": engine.main("FitNets-UU", [*base, *hint, "--ckpt_name", audio]),  # ThreeLayerCNN-A -> LeNet5
        "FitNets-UU-m2": engine.main("FitNets-UU", [*base, *hint, "--mode", "m2", "--ckpt_name", image]),
        "FitNets-UU-full": engine.main("FitNets-UU", [*base, *hint, "--mode", "m2", "--ckpt_name", image,
                                                      "--hint_full_student"]),
        "OFA": engine.main("OFA", [*base, "--ckpt_name", cnn_i]),
        "OFA-UU": engine.main("OFA-UU", [*base, "--mode", "m2", "--ckpt_name", image]),
        "C2KD": engine.main("C2KD", [*base, "--ckpt_name", audio]),
        # --mode m2: the ranked teacher layer is LeNet5's fc1 (84 channels), cheap on a CPU
        "MGDFR": engine.main("MGDFR", [*base, "--mode", "m2", "--co_epochs", "1", "--repeat_permute", "2"]),
    }
    for name, result in results.items():
        assert 0.0 <= result["metrics"]["test"]["accuracy"] <= 1.0, name
    # LeNet5 teacher -> ThreeLayerCNN-A: the reference's substring rule trains conv2 only (no parameter is named
    # after conv3_maxpool_flatten); the paper's rule trains every conv before the flattened features
    assert results["FitNets-UU-m2"]["extra"]["hint_trained_parameters"] == ["conv2.weight", "conv2.bias"]
    assert results["FitNets-UU-full"]["extra"]["hint_trained_parameters"] == [
        "conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "conv3.weight", "conv3.bias"]
    assert results["FitNets"]["extra"]["hint_trained_parameters"] == ["conv3.weight", "conv3.bias", "fc1.weight",
                                                                      "fc1.bias"]
    assert results["MGDFR"]["extra"]["teacher_layer"] == "fc1" and len(results["MGDFR"]["extra"]["salience"]) == 84
    assert results["OFA-UU"]["extra"]["stages"] == ["conv1", "conv2", "conv3"]
