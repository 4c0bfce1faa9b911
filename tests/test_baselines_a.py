"""KD, KD-UU, MLLD(-UU), DML, RKD(-UU), CRD(-UU): golden loss values on hand-made inputs, method-level checks
and smoke runs of every script (Synthetic-MVD from trained teachers; AV-MNIST on the on-disk fixture)."""
from __future__ import annotations

import json
import math
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest

from datasets import get_spec
import torch
import torch.nn.functional as F

from kd_methods import get_method
from kd_methods.base import kd_loss
from kd_methods.crd import ContrastMemory, NegativeSampler, nce_loss
from kd_methods.mlld import TEMPERATURES, mlld_loss
from kd_methods.rkd import Embed, angles, flatten_feature, pairwise_distances, rkd_terms
from models import build_model
from utils import cli
from utils.engine import build_context
from utils.errors import UserError
from utils.hooks import active_hook_count
from utils.runtime import seed_everything

ROOT = Path(__file__).resolve().parent.parent
MVD = ["--database", "Synthetic-MVD", "--mvd_samples", "400"]
MVD_SHAPES = {"m1": (50,), "m2": (50,)}


# -- helpers ---------------------------------------------------------------------------------------------------

def random_teacher(path: Path, name: str, num_classes: int, shapes: dict) -> str:
    """A reference-style bare state dict of a randomly initialised model."""
    torch.save(build_model(name, num_classes=num_classes, input_shapes=shapes).state_dict(), path)
    return str(path)


def build_method(name: str, argv: list[str]):
    method_cls = get_method(name)
    args = cli.parse_args(method_cls, argv)
    seed_everything(args.seed)
    ctx = build_context(args, torch.device("cpu"), log=lambda _message: None)
    return method_cls(ctx), ctx


def first_batch(ctx):
    return next(iter(ctx.make_loader("train")))


@pytest.fixture(scope="module")
def mvd_teachers(tmp_path_factory):
    """Random checkpoints: the fusion teacher and the m2 unimodal teacher (cross-modal for --mode m1)."""
    folder = tmp_path_factory.mktemp("teachers")
    return {"multimodal": random_teacher(folder / "t.pth", "MVD-MLP-I", 2, MVD_SHAPES),
            "crossmodal": random_teacher(folder / "s.pth", "MVD-MLP-m2", 2, MVD_SHAPES)}


# -- KD --------------------------------------------------------------------------------------------------------

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


# -- MLLD ------------------------------------------------------------------------------------------------------

def _mlld_by_hand(student: np.ndarray, teacher: np.ndarray) -> float:
    def softmax(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    total = 0.0
    for tau in TEMPERATURES:
        ps, pt = softmax(student / tau), softmax(teacher / tau)
        instance = tau ** 2 * (pt * (np.log(pt) - np.log(ps))).sum() / len(ps)
        classes = ((ps.T @ ps - pt.T @ pt) ** 2).mean()
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


# -- DML -------------------------------------------------------------------------------------------------------

def test_dml_symmetric_terms_and_gradients():
    method, ctx = build_method("DML", MVD + ["--dml_T", "2"])
    assert method.peer.model_name == "MVD-MLP-m2" and method.student.model_name == "MVD-MLP-m1"
    batch = first_batch(ctx)
    losses = method.train_step(batch, 0)
    with torch.no_grad():
        z_s, z_p = method.student(batch.m1), method.peer(batch.m2)
    assert losses["kl"].item() == pytest.approx(kd_loss(z_s, z_p, 2.0).item(), rel=1e-5)
    assert losses["peer_kl"].item() == pytest.approx(kd_loss(z_p, z_s, 2.0).item(), rel=1e-5)
    assert losses["peer_ce"].item() == pytest.approx(F.cross_entropy(z_p, batch.y).item(), rel=1e-5)
    # each KL term trains only its own network: the other's prediction is a detached target
    losses["kl"].backward()
    assert all(p.grad is None for p in method.peer.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.student.parameters())
    # swapping the roles swaps the terms
    swapped = kd_loss(z_p, z_s, 2.0), kd_loss(z_s, z_p, 2.0)
    assert swapped[0].item() == pytest.approx(losses["peer_kl"].item(), rel=1e-5)


# -- RKD -------------------------------------------------------------------------------------------------------

def test_rkd_relations_scale_invariant_and_zero_for_identical_relations():
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(6, 5, generator=generator), torch.randn(6, 5, generator=generator)
    distance, angle = rkd_terms(student, teacher)
    scaled = rkd_terms(2.5 * student, 0.3 * teacher)
    assert scaled[0].item() == pytest.approx(distance.item(), rel=1e-4)
    assert scaled[1].item() == pytest.approx(angle.item(), rel=1e-4)
    rotation, _ = torch.linalg.qr(torch.randn(5, 5, generator=generator))
    same = rkd_terms(3.0 * teacher @ rotation + 1.0, teacher)  # scaled, rotated, shifted: identical relations
    assert same[0].item() < 1e-9 and same[1].item() < 1e-9
    assert distance.item() > 0 and angle.item() > 0


def test_rkd_embedder_invariant_to_input_scale_without_bias():
    embed = Embed(5, 4)
    with torch.no_grad():
        embed.linear.bias.zero_()
    x = torch.randn(3, 5)
    assert torch.allclose(embed(x), embed(7.0 * x), atol=1e-6)
    assert torch.allclose(embed(x).norm(dim=1), torch.ones(3))


def test_rkd_distances_and_angles_by_hand():
    points = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    assert torch.allclose(pairwise_distances(points), torch.tensor([[0, 3, 4], [3, 0, 5], [4, 5, 0.0]]), atol=1e-5)
    cosines = angles(points).view(3, 3, 3)
    assert cosines[0, 1, 2].item() == pytest.approx(0.0, abs=1e-6)       # right angle at the origin
    assert cosines[1, 0, 2].item() == pytest.approx(3 / 5, rel=1e-5)     # at (3, 0) between the other two
    assert cosines[0, 0, 1].item() == 0.0                                 # zero vectors stay zero
    assert rkd_terms(points[:1], points[:1])[0].item() == 0.0             # one sample: no relation, no NaN


def test_avmnist_4d_features_are_max_pooled():
    feature = torch.randn(2, 128, 28, 28)
    flat = flatten_feature(feature, "AV-MNIST")
    assert flat.shape == (2, 25088)
    assert torch.equal(flat, F.max_pool2d(feature, 2, 2).reshape(2, -1))
    assert flatten_feature(feature, "Synthetic-MVD").shape == (2, 128 * 28 * 28)


@pytest.mark.parametrize("train_teacher_embed", [False, True])
def test_rkd_teacher_embedding_quirk_and_hooks(mvd_teachers, train_teacher_embed):
    flag = "--rkd_train_teacher_embed" if train_teacher_embed else "--no-rkd_train_teacher_embed"
    method, ctx = build_method("RKD", MVD + ["--ckpt_name", mvd_teachers["multimodal"], flag])
    assert (method.student_dim, method.teacher_dim) == (32, 32)
    losses = method.train_step(first_batch(ctx), 0)
    sum(losses.values()).backward()
    assert active_hook_count(method) == 0
    assert all(p.grad is not None for p in method.embed_s.parameters())
    assert all((p.grad is not None) == train_teacher_embed for p in method.embed_t.parameters())
    assert all(p.grad is None for p in method.teacher.parameters())


def test_rkd_uu_batch_size_default_and_unsupported_models(mvd_teachers):
    args = cli.parse_args(get_method("RKD-UU"), MVD + ["--ckpt_name", mvd_teachers["crossmodal"]])
    assert args.batch_size == get_spec("Synthetic-MVD").batch_size  # the dataset's table, as every method
    with pytest.raises(UserError, match="no feature layer"):
        cli.parse_args(get_method("RKD"), MVD + ["--ckpt_name", "x", "--Smodel", "MVD-LR-m1"])
    for name in ("RKD", "CRD-UU"):
        with pytest.raises(UserError, match="NYU-Depth-V2"):
            cli.parse_args(get_method(name), ["--database", "NYU-Depth-V2", "--ckpt_name", "x.pth"])


# -- CRD -------------------------------------------------------------------------------------------------------

def test_crd_memory_update_by_hand():
    memory = ContrastMemory(dim=2, n=3, temperature=1.0)
    memory.memory_s.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]))
    memory.update(memory.memory_s, torch.tensor([0, 2]), torch.tensor([[0.0, 1.0], [0.6, -0.8]]))
    root_half = math.sqrt(0.5)
    expected = torch.tensor([[root_half, root_half], [0.0, 1.0], [1.0, 0.0]])  # (0.6, 0) normalised
    assert torch.allclose(memory.memory_s, expected, atol=1e-6)


def test_crd_z_constants_set_once_and_scores():
    torch.manual_seed(0)
    n = 10
    memory = ContrastMemory(dim=3, n=n, temperature=0.5)
    assert memory.z_s.item() == -1 and memory.z_t.item() == -1
    v_s, v_t = F.normalize(torch.randn(2, 3), dim=1), F.normalize(torch.randn(2, 3), dim=1)
    idx = torch.tensor([[0, 3, 4, 5, 6], [1, 7, 8, 9, 2]])
    m_s, m_t = memory.memory_s.clone(), memory.memory_t.clone()
    p_s, p_t = memory(v_s, v_t, idx[:, 0], idx)
    s_s = torch.exp((m_t[idx] * v_s[:, None]).sum(2) / 0.5)   # student anchor vs teacher memory
    s_t = torch.exp((m_s[idx] * v_t[:, None]).sum(2) / 0.5)
    assert memory.z_s.item() == pytest.approx(s_s.mean().item() * n, rel=1e-5)
    assert memory.z_t.item() == pytest.approx(s_t.mean().item() * n, rel=1e-5)
    assert torch.allclose(p_s, s_s / memory.z_s, rtol=1e-5) and torch.allclose(p_t, s_t / memory.z_t, rtol=1e-5)
    z = memory.z_s.item(), memory.z_t.item()
    memory(v_t, v_s, idx[:, 0], idx)
    assert (memory.z_s.item(), memory.z_t.item()) == z
    assert set(memory.state_dict()) == {"memory_s", "memory_t", "z_s", "z_t"}


def test_crd_dense_and_gathered_scores_agree():
    torch.manual_seed(1)
    memory = ContrastMemory(dim=8, n=50, temperature=0.07)
    anchor = F.normalize(torch.randn(4, 8), dim=1)
    idx = torch.randint(0, 50, (4, 5))
    dense = memory.scores(memory.memory_s, anchor, idx)           # 50 <= 16 * 5: one product and a gather
    idx_wide = torch.randint(0, 50, (4, 2))                       # 50 > 16 * 2: gathered rows
    gathered = memory.scores(memory.memory_s, anchor, idx_wide)
    rows = memory.memory_s[idx]
    assert torch.allclose(dense, torch.exp((rows * anchor[:, None]).sum(2) / 0.07), rtol=1e-5)
    rows = memory.memory_s[idx_wide]
    assert torch.allclose(gathered, torch.exp((rows * anchor[:, None]).sum(2) / 0.07), rtol=1e-5)


def test_nce_loss_by_hand():
    p = torch.tensor([[0.5, 0.1, 0.2], [0.05, 0.3, 0.01]])
    n, k = 4, 2
    noise = k / n
    expected = -(sum(math.log(r[0] / (r[0] + noise + 1e-7)) for r in p.tolist())
                 + sum(math.log(noise / (x + noise + 1e-7)) for r in p.tolist() for x in r[1:])) / 2
    assert nce_loss(p, n).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("k, expect_distinct", [(3, True), (5, True), (6, True), (9, False), (20, False)])
def test_crd_negatives_avoid_the_anchor_class(k, expect_distinct):
    # class 0 has 4 samples, class 1 has 6, class 2 has 2: pools of 8, 6 and 10 candidates. k = 3 draws the
    # chosen ranks, k = 5 and 6 the left-out ones (k = 6 is all of class 1's pool), k = 9 mixes distinct rows
    # (class 2) with rows drawn with replacement, k = 20 draws every row with replacement
    labels = np.array([0, 1, 1, 2, 0, 1, 1, 0, 1, 2, 0, 1])
    sampler = NegativeSampler(labels, k)
    torch.manual_seed(0)
    positions = torch.arange(len(labels)).repeat(30)
    negatives = sampler(positions)
    assert negatives.shape == (len(positions), k)
    classes = torch.as_tensor(labels)
    assert not (classes[negatives] == classes[positions][:, None]).any()
    pools = {0: 8, 1: 6, 2: 10}
    for row, position in zip(negatives.tolist(), positions.tolist()):
        if k <= pools[labels[position]]:
            assert len(set(row)) == k
    if expect_distinct:
        seen = set(negatives[positions == 0].flatten().tolist())      # every candidate turns up
        assert seen == set(np.flatnonzero(labels != 0).tolist())


@pytest.mark.parametrize("k", [3, 7])
def test_crd_negatives_are_uniform(k):
    labels = np.array([0] * 5 + [1] * 10)                              # anchors of class 0: 10 candidates
    sampler = NegativeSampler(labels, k)
    torch.manual_seed(1)
    draws = 4000
    negatives = sampler(torch.zeros(draws, dtype=torch.long))
    assert all(len(set(row)) == k for row in negatives.tolist())
    frequency = torch.bincount(negatives.flatten(), minlength=15)[5:].double() / (draws * k)
    assert torch.allclose(frequency, torch.full((10,), 0.1, dtype=torch.double), atol=0.01)


def test_crd_negatives_large_pool():
    labels = np.repeat(np.arange(3), [20, 200, 30])
    sampler = NegativeSampler(labels, 16)                              # pools 230, 50, 220, all >= 2k
    torch.manual_seed(0)
    positions = torch.tensor([0, 25, 240]).repeat(200)
    negatives = sampler(positions)
    assert all(len(set(row)) == 16 for row in negatives.tolist())
    classes = torch.as_tensor(labels)
    assert not (classes[negatives] == classes[positions][:, None]).any()
    assert set(negatives[positions == 25].flatten().tolist()) == set(np.flatnonzero(labels != 1).tolist())


def test_crd_step_uses_train_positions_and_keeps_state(mvd_teachers):
    method, ctx = build_method("CRD", MVD + ["--ckpt_name", mvd_teachers["multimodal"], "--nce_k", "50"])
    n_train = len(ctx.splits["train"])
    assert method.memory.memory_s.shape == (n_train, 128)
    batch = first_batch(ctx)
    before = method.memory.memory_s.clone()
    losses = method.train_step(batch, 0)
    sum(losses.values()).backward()
    changed = (method.memory.memory_s != before).any(1).nonzero().flatten()
    assert set(changed.tolist()) == set(batch.index.tolist())
    assert method.memory.z_s.item() > 0
    assert all(p.grad is not None for p in method.embed_t.parameters())   # both embedders learn in CRD
    keys = set(method.state_dict())
    assert {"memory.memory_s", "memory.memory_t", "memory.z_s", "memory.z_t"} <= keys
    assert not any(key.startswith("sampler.") for key in keys)


# -- smoke runs of the scripts ---------------------------------------------------------------------------------

def run_script(script: str, argv: list[str], capsys) -> Path:
    """Run ``main-*.py`` in this process as ``python main-*.py ARGV``; returns its run directory."""
    saved = sys.argv
    sys.argv = [script, *argv]
    try:
        runpy.run_path(str(ROOT / script), run_name="__main__")
    finally:
        sys.argv = saved
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("Run directory: ")
    return Path(last[len("Run directory: "):])


def check_results(run_dir: Path, method: str) -> dict:
    results = json.loads((run_dir / "results.json").read_text())
    assert results["method"] == method
    test = results["metrics"]["test"]
    assert 0.0 <= test["accuracy"] <= 1.0 and math.isfinite(test["loss"])
    return results


@pytest.fixture(scope="module")
def trained_mvd_teachers(tmp_path_factory):
    """Teachers trained by main-T.py and main-S.py (1 epoch), as a user would."""
    out = tmp_path_factory.mktemp("mvd_teachers")
    common = MVD + ["--epochs", "1", "--out_dir", str(out), "--no-record"]
    paths = {}
    for key, script, extra in (("multimodal", "main-T.py", []), ("crossmodal", "main-S.py", ["--mode", "m2"])):
        saved = sys.argv
        sys.argv = [script, *common, *extra]
        try:
            runpy.run_path(str(ROOT / script), run_name="__main__")
        finally:
            sys.argv = saved
        paths[key] = str(next((out / ("T" if key == "multimodal" else "S")).glob("*/*/best.pth")))
    return paths


SCRIPTS = [("KD", "multimodal"), ("KD-UU", "crossmodal"), ("MLLD", "multimodal"), ("MLLD-UU", "crossmodal"),
           ("DML", None), ("RKD", "multimodal"), ("RKD-UU", "crossmodal"), ("CRD", "multimodal"),
           ("CRD-UU", "crossmodal")]


@pytest.mark.parametrize("method, teacher", SCRIPTS)
def test_script_smoke_synthetic(method, teacher, trained_mvd_teachers, tmp_path, capsys):
    argv = MVD + ["--epochs", "1", "--max_steps", "2", "--out_dir", str(tmp_path), "--no-record"]
    if teacher is not None:
        argv += ["--ckpt_name", trained_mvd_teachers[teacher]]
    run_dir = run_script(f"main-{method}.py", argv, capsys)
    results = check_results(run_dir, method)
    assert results["models"]["student"] == "MVD-MLP-m1"


AVMNIST_SHAPES = {"m1": (1, 28, 28), "m2": (1, 112, 112)}
# (method, --mode, teacher model): covers the 4-d conv3 rule on the student (m2) and on the teacher (UU, m1)
AVMNIST_RUNS = [("KD", "m1", "CNN-I"), ("KD-UU", "m2", "LeNet5"), ("MLLD", "m2", "CNN-I"),
                ("MLLD-UU", "m1", "ThreeLayerCNN-A"), ("DML", "m1", None), ("RKD", "m2", "CNN-I"),
                ("RKD-UU", "m1", "ThreeLayerCNN-A"), ("CRD", "m2", "CNN-I"), ("CRD-UU", "m1", "ThreeLayerCNN-A")]


@pytest.fixture(scope="module")
def trained_avmnist_teachers(fixture_root, tmp_path_factory):
    """CNN-I by main-T.py, LeNet5 and ThreeLayerCNN-A by main-S.py, trained briefly on the AV-MNIST fixture."""
    from utils import engine

    out = tmp_path_factory.mktemp("avmnist_teachers")
    common = ["--database", "AV-MNIST", "--data_root", str(fixture_root("AV-MNIST")), "--metadata_dir",
              str(out / "metadata"), "--batch_size", "8", "--epochs", "1", "--out_dir", str(out), "--no-record",
              "--device", "cpu"]
    engine.main("T", common)
    engine.main("S", common + ["--mode", "m1"])
    engine.main("S", common + ["--mode", "m2"])
    return {path.parent.name.split("_")[0]: str(path) for path in out.glob("*/AV-MNIST/*/best.pth")}


@pytest.mark.parametrize("method, mode, teacher", AVMNIST_RUNS)
def test_script_smoke_avmnist_fixture(method, mode, teacher, fixture_root, trained_avmnist_teachers, tmp_path,
                                      capsys):
    argv = ["--database", "AV-MNIST", "--data_root", str(fixture_root("AV-MNIST")), "--mode", mode,
            "--metadata_dir", str(tmp_path / "metadata"), "--batch_size", "8", "--epochs", "1",
            "--out_dir", str(tmp_path), "--no-record", "--device", "cpu"]
    if teacher is not None:
        argv += ["--ckpt_name", trained_avmnist_teachers[teacher]]
    run_dir = run_script(f"main-{method}.py", argv, capsys)
    check_results(run_dir, method)


def test_avmnist_feature_widths(fixture_root, tmp_path):
    common = ["--database", "AV-MNIST", "--data_root", str(fixture_root("AV-MNIST")),
              "--metadata_dir", str(tmp_path / "metadata"), "--no-record"]
    teacher = random_teacher(tmp_path / "t.pth", "CNN-I", 10, AVMNIST_SHAPES)
    method, _ = build_method("RKD", common + ["--mode", "m2", "--ckpt_name", teacher])
    assert (method.teacher_dim, method.student_dim) == (298, 25088)
    teacher = random_teacher(tmp_path / "a.pth", "ThreeLayerCNN-A", 10, AVMNIST_SHAPES)
    method, _ = build_method("CRD-UU", common + ["--mode", "m1", "--ckpt_name", teacher])
    assert (method.teacher_dim, method.student_dim) == (25088, 84)
