"""MST-Distill (kd_methods/mst.py, models/mst_modules.py): losses and schedules on hand-made numbers, MaskNet sizes,
one batch of each stage against a literal port of the reference's code, the fast path against the reference (hook)
path for every model family, hook hygiene, whole runs on Synthetic-MVD
(results, plot, metrics, --resume inside stage 2, --start_stage/--init_from) and on the paper datasets' fixtures.

Runs single-threaded: on a shared 2-core machine small tensor ops are much faster with one thread.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from kd_methods.mst import MSTDistill
from kd_methods.mst_losses import gather_topk, kd_per_sample, load_balancing_loss, loss_weights
from kd_methods.mst_options import AUX_LAYERS, TEACHER_LAYERS
from kd_methods.segments import SegmentedForward
from utils.offline import offline_context
from datasets.base import Batch
from kd_methods.sample_cache import per_sample_bytes
from models import MODELS
from models.mst_modules import GateNet, MaskNet1d, MaskNet2d, build_masknet, hidden_width
from tests.tolerances import assert_reordered_close, floor_between, perturbation_floor, perturbed_outputs
from utils import cli
from utils.core.errors import UserError
from utils.core.hooks import active_hook_count


def with_writable_options(method):
    """``method`` with a writable copy of its options, for tests that compare two code paths of one built method
    by switching an option between calls (a described run's options are read-only)."""
    frozen, writable = method.args, argparse.Namespace(**vars(method.args))
    holders = [method, *method.modules(), *(value for value in vars(method).values() if hasattr(value, "__dict__"))]
    for holder in holders:  # the method and the helpers it built (its experts read the options at every call)
        for name, value in list(vars(holder).items()):
            if value is frozen:
                setattr(holder, name, writable)
    return method


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _models_registered(database: str) -> bool:
    names = [*TEACHER_LAYERS[database], *AUX_LAYERS[database]]
    return all(name in MODELS for name in names)


# --------------------------------------------------------------------------------------------------------------
# Small pieces on hand-made numbers
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("channels, spatial, width", [(596, None, 297), (298, None, 147), (512, None, 255),
                                                      (320, None, 159), (160, None, 78), (1024, None, 510),
                                                      (84, None, 42), (120, (1, 1), 60), (64, (56, 56), 30),
                                                      (128, (28, 28), 63), (512, (15, 20), 255)])
def test_masknet_widths_of_the_spec(channels, spatial, width):
    assert hidden_width(channels, 2, 3) == width
    if channels * channels * width <= 2_000_000:  # build only the small ones
        shape = (channels,) if spatial is None else (channels, *spatial)
        net = build_masknet(shape, 2, 3)
        assert net.hidden_dim == width
        assert type(net) is (MaskNet2d if spatial not in (None, (1, 1)) else MaskNet1d)


def test_masknet_parameter_counts_and_shapes():
    net = MaskNet1d(160, hidden_width(160, 2, 3), 3)  # C=160 -> 2.0M
    assert round(sum(p.numel() for p in net.parameters()) / 1e6, 1) == 2.0
    net = MaskNet1d(84, hidden_width(84, 2, 3), 3)  # C=84 -> 0.31M
    assert round(sum(p.numel() for p in net.parameters()) / 1e6, 2) == 0.31
    mask = net(torch.randn(5, 84))
    assert mask.shape == (5, 84) and bool(((mask > 0) & (mask < 1)).all())
    net2d = MaskNet2d(64, hidden_width(64, 2, 3), 3)  # C=64 2-d -> 0.13M
    assert round(sum(p.numel() for p in net2d.parameters()) / 1e6, 2) == 0.13
    assert net2d(torch.randn(2, 64, 9, 7)).shape == (2, 64)
    assert [n for n, _ in net2d.named_children()] == ["spatial_reduce", "embed", "mha", "fc"]  # reference names
    assert GateNet(10, 4)(torch.randn(3, 10)).shape == (3, 4)


def test_gather_topk_classification():
    experts = [torch.tensor([[0.0, 1.0], [2.0, 3.0]]), torch.tensor([[10.0, 11.0], [12.0, 13.0]]),
               torch.tensor([[20.0, 21.0], [22.0, 23.0]])]
    indices = torch.tensor([[2, 0], [1, 2]])
    expected = torch.tensor([[[20.0, 21.0], [0.0, 1.0]], [[12.0, 13.0], [22.0, 23.0]]])
    assert torch.equal(gather_topk(experts, indices), expected)
    # the reference's stack + gather gives the same
    stacked = torch.stack(experts, dim=1)
    reference = torch.gather(stacked, 1, indices.unsqueeze(-1).expand(-1, -1, 2))
    assert torch.equal(gather_topk(experts, indices), reference)


def test_gather_topk_dense():
    experts = [torch.arange(8.0).view(2, 2, 2, 1) + 100 * e for e in range(4)]  # [B=2, C=2, H=2, W=1]
    indices = torch.tensor([[3], [1]])
    out = gather_topk(experts, indices)
    assert out.shape == (2, 1, 2, 2, 1)
    assert torch.equal(out[0, 0], experts[3][0]) and torch.equal(out[1, 0], experts[1][1])


def test_load_balancing_by_hand():
    g = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    # KL: p = (0.75, 0.25), u = 0.5: (0.5 ln(0.5/0.75) + 0.5 ln(0.5/0.25)) / 2 = ln(4/3) / 4
    assert load_balancing_loss(g, "KL").item() == pytest.approx(math.log(4 / 3) / 4, rel=1e-6)
    # CV: importance (1.5, 0.5), mean 1, unbiased std sqrt(0.5)
    assert load_balancing_loss(g, "CV").item() == pytest.approx(math.sqrt(0.5), rel=1e-6)
    uniform = torch.full((3, 4), 0.25)
    assert load_balancing_loss(uniform, "KL").item() == pytest.approx(0.0, abs=1e-7)
    assert load_balancing_loss(uniform, "CV").item() == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError):
        load_balancing_loss(g, "L2")


def test_weight_schedule():
    expected = {0: (1.0, 1.0), 1: (0.5, 0.9), 10: (0.5, 0.9), 11: (0.5, 0.81), 30: (0.5, 0.9 ** 3),
                31: (0.25, 0.9 ** 4)}
    for epoch, (w_kl, w_lb) in expected.items():
        assert loss_weights(epoch, 1.0, 1.0) == pytest.approx((w_kl, w_lb), rel=1e-12), epoch
    assert loss_weights(31, 2.0, 3.0) == pytest.approx((0.5, 3.0 * 0.9 ** 4))


def test_kd_per_sample_matches_batch_kd():
    from kd_methods.base import kd_loss

    pred, target = torch.randn(3, 5, 4, 2), torch.randn(3, 5, 4, 2)
    assert kd_per_sample(pred, target, per_pixel=True).mean().item() == pytest.approx(
        kd_loss(pred, target, per_pixel=True).item(), rel=1e-5)


def test_router_kd_grad_keeps_the_value_and_trains_the_router():
    ctx = offline_context(["--database", "Synthetic-MVD", "--mvd_samples", "40", "--k", "2"])
    method = with_writable_options(MSTDistill(ctx))
    batch = next(iter(ctx.make_loader("train")))
    method.eval()
    results = {}
    for flag in (False, True):
        method.args.router_kd_grad = flag
        method.gate.zero_grad(set_to_none=True)
        experts = method.expert_logits(batch)
        z_s = method.student(batch.m1)
        probs = torch.softmax(method.gate(z_s), dim=1)
        loss, indices = method.topk_distillation(z_s, experts, probs)
        loss.backward()
        grad = method.gate.fc2.weight.grad
        results[flag] = (loss.item(), indices, 0.0 if grad is None else grad.abs().sum().item())
    assert results[True][0] == pytest.approx(results[False][0], rel=1e-6)
    assert torch.equal(results[True][1], results[False][1])
    assert results[False][2] == 0.0 and results[True][2] > 0.0


# --------------------------------------------------------------------------------------------------------------
# Fast path == reference (hook) path, per model family
# --------------------------------------------------------------------------------------------------------------
BOTH = ("cumulative", "independent")
FAMILIES = {  # name: (database, extra argv, input shapes, expert-mask modes)
    "Synthetic-MVD": ("Synthetic-MVD", ["--mvd_samples", "20"], None, BOTH),
    "Synthetic-MVD-1-layer": ("Synthetic-MVD", ["--mvd_samples", "20", "--mask_layer_num", "1"], None, BOTH),
    "AV-MNIST-m1": ("AV-MNIST", ["--hidden_dim_factor", "8"], None, BOTH),
    "AV-MNIST-m2": ("AV-MNIST", ["--mode", "m2", "--hidden_dim_factor", "8"], None, BOTH),
    "RAVDESS": ("RAVDESS", ["--hidden_dim_factor", "16"], None, ("cumulative",)),
    "VGGSound-50k": ("VGGSound-50k", ["--mode", "m2", "--hidden_dim_factor", "16"], None, BOTH),
    "CMMD-V2": ("CMMD-V2", ["--hidden_dim_factor", "64"], None, BOTH),
    # 32x64 is the smallest size whose fused FuseNet code is still a map (1x2), i.e. still a 2-d MaskNet
    "NYU-Depth-V2": ("NYU-Depth-V2", ["--hidden_dim_factor", "32"], {"m1": (3, 32, 64), "m2": (1, 32, 64)},
                     ("cumulative",)),
}


def _stage2_and_3(method, batch, masks_modes):
    """Stage-2 losses and MaskNet gradients, then the stage-3 terms per expert-mask mode, on one batch."""
    hooks = active_hook_count(method)  # a caller's own hooks (tests/tolerances.py perturbed_outputs) stay
    method.eval()
    method.masknets.train()
    method.masknets.zero_grad(set_to_none=True)
    with torch.no_grad():
        target = method.student(batch.get(method.mode))
    losses = method.masknet_losses(batch, target)
    torch.stack(losses).sum().backward()
    grads = [torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None]) for net in method.masknets]
    assert active_hook_count(method) == hooks
    method.eval()
    stage3 = {}
    for masks in masks_modes:
        method.args.expert_masks = masks
        with torch.no_grad():
            terms = method.stage3_losses(batch)
        stage3[masks] = terms
        assert active_hook_count(method) == hooks
    return [loss.detach() for loss in losses], grads, stage3


@pytest.mark.parametrize("family", list(FAMILIES))
def test_fast_path_equals_reference_path(family):
    database, extra, shapes, masks_modes = FAMILIES[family]
    if not _models_registered(database):
        pytest.skip(f"the {database} models are not registered yet")
    argv = ["--database", database, "--batch_size", "2", "--k", "1" if "1-layer" in family else "2", *extra]
    ctx = offline_context(argv, samples=2, input_shapes=shapes)
    torch.manual_seed(0)
    method = with_writable_options(MSTDistill(ctx))
    if database == "NYU-Depth-V2":  # FuseNet's 0.02-gain init gives near-constant logits: make them informative
        for net in (method.teacher, method.aux, method.student):
            for module in net.modules():
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight)
    batch = next(iter(ctx.make_loader("train", shuffle=False)))
    saved = copy.deepcopy(method.state_dict())
    runs = {}
    for impl in ("fast", "reference"):
        method.load_state_dict(saved)
        method.args.mst_impl = impl
        for group in method.groups:
            group.split_tried, group.segmented = False, None
        runs[impl] = _stage2_and_3(method, batch, masks_modes)
        if impl == "fast":  # the fast path really ran: every network was cut into segments
            assert all(group.segmented is not None for group in method.groups)
    (fast_losses, fast_grads, fast3), (ref_losses, ref_grads, ref3) = runs["fast"], runs["reference"]
    assert all(loss.item() > 0 for loss in ref_losses)

    # The two paths run the same operations in another order: equal up to the rounding of a reordered float32
    # computation, bounded by how far each reference value moves when the teachers' hooked outputs (where the paths
    # part ways) move by a few ulps (tests/tolerances.py). Routing must be identical.
    def reference_values(stage2, stage3):
        losses, grads = stage2[:2]
        return [*losses, *grads, *[stage3[m][key] for m in masks_modes for key in ("topk", "lb", "task")],
                *[x for m in masks_modes for x in stage3[m]["experts"]]]

    method.load_state_dict(saved)
    with perturbed_outputs(method.teacher, method.t_layers), perturbed_outputs(method.aux, method.a_layers, seed=7):
        moved = _stage2_and_3(method, batch, masks_modes)
    floors = iter(floor_between(reference_values(runs["reference"], ref3), reference_values(moved, moved[2])))
    for a, b in zip(fast_losses, ref_losses):
        assert_reordered_close(a, b, next(floors), what="MaskNet loss")
    for a, b in zip(fast_grads, ref_grads):
        assert_reordered_close(a, b, next(floors), what="MaskNet gradient")
    for masks in masks_modes:
        a, b = fast3[masks], ref3[masks]
        assert torch.equal(a["indices"], b["indices"]), masks  # same routing
        for key in ("topk", "lb", "task"):
            assert_reordered_close(a[key], b[key], next(floors), what=f"stage-3 {key} ({masks})")
    for masks in masks_modes:
        for x, y in zip(fast3[masks]["experts"], ref3[masks]["experts"]):
            assert_reordered_close(x, y, next(floors), what=f"expert logits ({masks})")
    if len(masks_modes) == 2 and method.args.mask_layer_num == 2:  # the modes differ in each second expert only
        n = method.args.mask_layer_num
        c, i = fast3["cumulative"]["experts"], fast3["independent"]["experts"]
        assert torch.equal(c[0], i[0]) and torch.equal(c[n], i[n])
        assert not torch.equal(c[1], i[1])


# --------------------------------------------------------------------------------------------------------------
# The per-sample cache of frozen outputs (stages 2-3) equals the per-batch computation
# --------------------------------------------------------------------------------------------------------------
CACHE_FAMILIES = ["Synthetic-MVD", "AV-MNIST-m1", "AV-MNIST-m2", "RAVDESS", "VGGSound-50k", "CMMD-V2"]


def _shuffled_batch(ctx):
    loader = ctx.make_loader("train", shuffle=True)
    loader.set_epoch(3)
    batch = next(iter(loader))
    assert not torch.equal(batch.index, torch.arange(len(batch)))  # rows come back by position, not by order
    return batch


@pytest.mark.parametrize("family", CACHE_FAMILIES)
def test_cached_frozen_outputs_equal_the_per_batch_computation(family):
    from utils.engine import set_modes

    database, extra, shapes, _ = FAMILIES[family]
    if not _models_registered(database):
        pytest.skip(f"the {database} models are not registered yet")
    logs = []
    ctx = offline_context(["--database", database, "--batch_size", "2", "--k", "2", *extra], samples=6,
                          input_shapes=shapes, log=logs.append)
    torch.manual_seed(0)
    method = with_writable_options(MSTDistill(ctx))
    stages = method.stages()
    batch = _shuffled_batch(ctx)

    # The cache computes the same per-sample values in other batches: equal up to the rounding of a reordered
    # float32 computation, bounded by how far each value moves when the data moves by a few ulps (tests/tolerances.py)
    set_modes(method, stages[1], training=True)

    def live_stage2(m1, m2):
        method.args.mst_cache_mb = 0
        method._caches.clear()
        terms, _, _ = method._stage2_terms(Batch(m1, m2, batch.y, batch.index), "train")
        return list(terms.values())

    method.args.mst_cache_mb = 0
    live, _, _ = method._stage2_terms(batch, "train")
    assert method._caches == {(2, "train"): None}
    floors = perturbation_floor(live_stage2, [batch.m1, batch.m2])
    method.args.mst_cache_mb = 2048
    method._caches.clear()
    cached, _, _ = method._stage2_terms(batch, "train")
    assert set(method._caches[(2, "train")].items) == {"student", "T", "A"}
    for key, floor in zip(live, floors):
        assert_reordered_close(cached[key], live[key], floor, what=key)
    size = len(ctx.splits["train"])
    assert any(f"stage 2: cached student, T, A for the {size} train samples" in line for line in logs)

    stages[1].on_stage_end()
    assert method._caches == {}
    set_modes(method, stages[2], training=True)
    with torch.no_grad():
        expert_floors = perturbation_floor(lambda m1, m2: method.expert_logits(Batch(m1, m2, batch.y, batch.index)),
                                           [batch.m1, batch.m2])
        live_terms = method.stage3_losses(batch)
        rows = method._cache(3, "train").rows("experts", batch.index)
        cached_terms = method.stage3_losses(batch, rows)
        keys = ("topk", "lb", "task")
        term_floors = perturbation_floor(lambda *experts: [method.stage3_losses(batch, list(experts))[key]
                                                           for key in keys], live_terms["experts"])
    for x, y, floor in zip(rows, live_terms["experts"], expert_floors):
        assert_reordered_close(x, y, floor, what="expert logits")
    assert torch.equal(cached_terms["indices"], live_terms["indices"])
    for key, floor in zip(keys, term_floors):
        assert_reordered_close(cached_terms[key], live_terms[key], floor, what=key)


def test_cache_budget_and_when_it_is_off():
    from utils.engine import set_modes

    logs = []
    ctx = offline_context(["--database", "AV-MNIST", "--batch_size", "2", "--hidden_dim_factor", "8",
                           "--mst_cache_mb", "1"], samples=4, log=logs.append)
    torch.manual_seed(0)
    method = with_writable_options(MSTDistill(ctx))
    set_modes(method, method.stages()[1], training=True)
    # student targets (40 B a sample) and T's features (a few KB) fit in 1 MB, A's conv2+conv3 maps (1.2 MB a
    # sample) do not: A's prefix then runs per batch
    assert set(method._cache(2, "train").items) == {"student", "T"}
    assert any("caching A for the 4 train samples would take 5 MB, over --mst_cache_mb" in line for line in logs)
    for option, value in (("mst_impl", "reference"), ("max_steps", 2), ("mst_cache_mb", 0)):
        method._caches.clear()
        saved = getattr(method.args, option)
        setattr(method.args, option, value)
        assert method._cache(2, "val") is None, option
        setattr(method.args, option, saved)


def test_segment_states_that_are_not_per_sample_are_not_cacheable():
    class ScaledAfterCut(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(3, 3), nn.Linear(3, 3)
            self.scale = nn.Parameter(torch.ones(3))

        def forward(self, x):
            scale = self.scale * 2  # read before the cut, used after it: carried, but the same for every sample
            return self.fc2(self.fc1(x)) * scale

    class Plain(ScaledAfterCut):
        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x)))

    assert not SegmentedForward(ScaledAfterCut(), ["fc1"]).states_from_inputs
    assert SegmentedForward(Plain(), ["fc1", "fc2"]).states_from_inputs
    assert per_sample_bytes([torch.zeros(4, 3), torch.zeros(4, 2, dtype=torch.float64)], 4) == 3 * 4 + 2 * 8
    assert per_sample_bytes([torch.zeros(4, 3), 4], 4) is None
    assert per_sample_bytes([torch.zeros(3)], 4) is None


# A literal port of the reference's per-batch code (main-MST-Distill.py, KD_methods/MST.py),
# written independently of kd_methods/mst.py: it pins the stage losses (which KL terms, what is detached, loss
# direction, KD_4 with NYU's 1/(H·W), load balancing, stack+gather top-k, cumulative hooks, weights decayed by
# repeated multiplication after each epoch) against the method's stage steps under the engine's train/eval modes.
def _ref_kd(database, pred, target, detach):
    target = target.detach() if detach else target
    loss = nn.functional.kl_div(torch.log_softmax(pred / 4.0, dim=1), torch.softmax(target / 4.0, dim=1),
                                reduction="batchmean") * (4.0 * 4.0)
    return loss * 1 / (pred.shape[2] * pred.shape[3]) if database == "NYU-Depth-V2" else loss


def _ref_hook(masknet):
    def hook(module, inputs, output):
        if len(output.shape) == 4 and output.shape[-1] == 1 and output.shape[-2] == 1:
            output = output.squeeze(-1).squeeze(-1)
        mask = masknet(output)
        for _ in range(len(output.shape) - len(mask.shape)):
            mask = mask.unsqueeze(-1)
        return mask * output
    return hook


def _ref_load_balancing(gate_probs, mode):
    if mode == "KL":
        mean = gate_probs.mean(dim=0)
        return nn.KLDivLoss(reduction="batchmean")(torch.log(mean), torch.ones_like(mean) / mean.size(0))
    importance = gate_probs.sum(dim=0)
    return importance.std() / importance.mean()


def _grads(*modules):
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for m in modules for p in m.parameters()]


REF_CASES = {  # AV-MNIST m1: 2-d aux MaskNets (BatchNorm); m2: LeNet5 conv3 [B,120,1,1] squeezed by the hook
    "AV-MNIST-m1": ("AV-MNIST", ["--hidden_dim_factor", "8", "--k", "2"], None),
    "AV-MNIST-m2-CV-k4": ("AV-MNIST", ["--mode", "m2", "--hidden_dim_factor", "8", "--k", "4", "--lb_mode", "CV",
                                       "--w_task", "0.7", "--w_kl", "1.5", "--w_lb", "0.3"], None),
    "AV-MNIST-m2-1-layer": ("AV-MNIST", ["--mode", "m2", "--hidden_dim_factor", "8", "--mask_layer_num", "1"], None),
    "NYU-Depth-V2": ("NYU-Depth-V2", ["--hidden_dim_factor", "32", "--k", "2"], {"m1": (3, 32, 64), "m2": (1, 32, 64)}),
}


@pytest.mark.parametrize("case", list(REF_CASES))
def test_one_batch_of_each_stage_equals_a_literal_port_of_the_reference(case):
    from utils.engine import set_modes

    database, extra, shapes = REF_CASES[case]
    if not _models_registered(database):
        pytest.skip(f"the {database} models are not registered yet")
    ctx = offline_context(["--database", database, "--batch_size", "3", *extra], samples=3, input_shapes=shapes)
    torch.manual_seed(0)
    method = MSTDistill(ctx)
    if database == "NYU-Depth-V2":  # informative logits (see test_fast_path_equals_reference_path)
        for net in (method.teacher, method.aux, method.student):
            for module in net.modules():
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight)
    args, n, ce = method.args, method.args.mask_layer_num, method.task_loss
    batch = next(iter(ctx.make_loader("train", shuffle=False)))
    x, x2, y = batch.m1, batch.m2, batch.y
    x_s, x_a = (x, x2) if args.mode == "m1" else (x2, x)
    t_model, a_model, s_model = method.teacher, method.aux, method.student
    t_nets, a_nets = list(method.masknets[:n]), list(method.masknets[n:])
    stages = method.stages()
    saved = copy.deepcopy(method.state_dict())

    def ours(index, epoch):
        method.load_state_dict(saved)
        method.zero_grad(set_to_none=True)
        stage = stages[index]
        stage.start()
        set_modes(method, stage, training=True)
        torch.manual_seed(5)
        losses = stage.train_step(batch, epoch)
        total = sum(losses.values())
        total.backward()
        return losses, total

    def reference_start():
        method.load_state_dict(saved)
        method.requires_grad_(True)  # the reference never freezes anything
        method.zero_grad(set_to_none=True)
        method.eval()

    # Stage 1: T, A, S train(); every KL target undetached; one backward of L_t + L_s + L_a.
    reference_start()
    t_model.train(), a_model.train(), s_model.train()
    torch.manual_seed(5)
    z_t, z_a, z_s = t_model(x, x2), a_model(x_a), s_model(x_s)
    ce_t, ce_a, ce_s = ce(z_t, y), ce(z_a, y), ce(z_s, y)
    def kl(pred, target):
        return _ref_kd(database, pred, target, detach=False)

    kl_ts, kl_as, kl_ta, kl_sa, kl_st, kl_at = kl(z_s, z_t), kl(z_s, z_a), kl(z_a, z_t), kl(z_a, z_s), kl(z_t, z_s), \
        kl(z_t, z_a)
    loss = (ce_t + kl_st + kl_at) + (ce_s + kl_ts + kl_as) + (ce_a + kl_ta + kl_sa)
    loss.backward()
    expected = _grads(t_model, s_model, a_model)
    _, total = ours(0, 0)
    assert total.item() == loss.item()
    assert all(torch.equal(a, b) for a, b in zip(_grads(t_model, s_model, a_model), expected))  # bit-identical

    # Stage 2: T, A, S eval(), MaskNets train(); one hooked forward per MaskNet; KD_4(masked teacher, detached S).
    # From here on our code computes the same operations in another order (segmented teachers): equal up to the
    # rounding of a reordered float32 computation, bounded by how far each reference value moves when it is moved
    # by a few ulps where the two part ways: the hooked layers' outputs, the experts (tests/tolerances.py).
    def reference_stage2(moved=False):
        reference_start()
        for net in method.masknets:
            net.train()
        z_s = s_model(x_s)
        ref_losses = []
        for model, inputs, nets, layers in ((t_model, (x, x2), t_nets, method.t_layers),
                                            (a_model, (x_a,), a_nets, method.a_layers)):
            with perturbed_outputs(model, layers if moved else []):
                for net, layer in zip(nets, layers):
                    handle = model.get_submodule(layer).register_forward_hook(_ref_hook(net))
                    loss_j = _ref_kd(database, model(*inputs), z_s, detach=True)
                    loss_j.backward()
                    handle.remove()
                    ref_losses.append(loss_j.detach())
        return [*ref_losses, *_grads(method.masknets)]

    expected = reference_stage2()
    expected_buffers = [b.clone() for b in method.masknets.buffers()]
    floors = floor_between(expected, reference_stage2(moved=True))
    losses, _ = ours(1, 0)
    for a, b, floor in zip([*losses.values(), *_grads(method.masknets)], expected, floors):
        assert_reordered_close(a, b, floor, what="stage 2")
    for a, b in zip(method.masknets.buffers(), expected_buffers):  # MaskNet-2d BatchNorm ran in train mode
        assert torch.equal(a, b)

    # Stage 3 at epoch 31: hooks accumulate within a teacher (cumulative experts), stack + gather top-k, the weights
    # decayed by the reference's in-place updates after epochs 0..30.
    epoch = 31
    w_lb, w_kl = args.w_lb, args.w_kl
    for e in range(epoch):
        w_lb *= 0.9 if e % 10 == 0 else 1
        w_kl *= 0.5 if e % 30 == 0 else 1

    reference_start()
    handles, experts = [], []
    for model, inputs, nets, layers in ((t_model, (x, x2), t_nets, method.t_layers),
                                        (a_model, (x_a,), a_nets, method.a_layers)):
        for net, layer in zip(nets, layers):
            handles.append(model.get_submodule(layer).register_forward_hook(_ref_hook(net)))
            experts.append(model(*[t.clone() for t in inputs]))
    for handle in handles:
        handle.remove()

    def reference_stage3(*experts):
        reference_start()
        s_model.train(), method.gate.train()
        torch.manual_seed(5)
        z_s = s_model(x_s)
        gate_probs = nn.Softmax(dim=1)(method.gate(z_s))
        lb = _ref_load_balancing(gate_probs, args.lb_mode)
        stacked = torch.stack(experts, dim=0).transpose(0, 1)
        _, indices = torch.topk(gate_probs, k=args.k, dim=1)
        index = indices.view(*indices.shape, *[1] * (stacked.dim() - 2)).expand(-1, -1, *stacked.shape[2:])
        selected = torch.gather(stacked, 1, index)
        topk = 0
        for r in range(args.k):
            topk += _ref_kd(database, z_s, selected[:, r], detach=True)
        loss = args.w_task * ce(z_s, y) + w_kl * (topk / args.k) + w_lb * lb
        loss.backward()
        return [loss.detach(), *_grads(s_model, method.gate)], indices

    expected, indices = reference_stage3(*experts)
    floors = perturbation_floor(lambda *moved: reference_stage3(*moved)[0], experts)
    _, total = ours(2, epoch)
    for a, b, floor in zip([total, *_grads(s_model, method.gate)], expected, floors):
        assert_reordered_close(a, b, floor, what="stage 3")
    # the routing counts are the bincount of the same B·k selected ids
    assert torch.equal(method._routing, torch.bincount(indices.flatten(), minlength=method.ways).double())


def test_hooks_are_removed_after_every_stage_step():
    for impl in ("fast", "reference"):
        ctx = offline_context(["--database", "Synthetic-MVD", "--mvd_samples", "40", "--mst_impl", impl,
                               "--compare_baseline"])
        method = MSTDistill(ctx)
        batch = next(iter(ctx.make_loader("train")))
        for stage in method.stages():
            optimizer = stage.start()
            method.eval()
            for module in stage.train_modules:
                module.train()
            losses = stage.train_step(batch, 0)
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
            assert active_hook_count(method) == 0, (impl, stage.name)
            if stage.val_step is not None:
                method.eval()
                with torch.no_grad():
                    stage.val_step(batch, 0)
                assert active_hook_count(method) == 0, (impl, stage.name)
            if stage.epoch_logs is not None:
                logs = stage.epoch_logs()
                if stage.name == "distillation":
                    assert sum(logs[f"routing/{n}"] for n in method.expert_names) == pytest.approx(1.0)
                    assert {"expert_ce/T0", "expert_ce/A1", "s3/topk_kd", "s3/lb"} <= set(logs)


# --------------------------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["--k", "5"], "--k must be between 1 and the number of experts 4"),
    (["--k", "0"], "--k must be >= 1"),  # the shared numeric check (utils/cli.py) answers first
    (["--mask_layer_num", "1", "--k", "3"], "number of experts 2"),
    (["--mask_layer_num", "3"], "--mask_layer_num must be 1 or 2"),
    (["--lb_mode", "L2"], "--lb_mode must be KL or CV"),
    (["--AUXmodel", "MVD-LR-m2"], "supports --AUXmodel MVD-MLP-m1, MVD-MLP-m2"),
    (["--AUXmodel", "MVD-MLP-m1"], "needs a Synthetic-MVD model on m2"),
    (["--Tmodel", "MVD-MLP-m1"], "supports --Tmodel MVD-MLP-I"),
    (["--start_stage", "3"], "needs --init_from"),
])
def test_bad_options_are_one_line_errors(argv, message):
    with pytest.raises(UserError, match=message.replace("-", r"\-").replace("+", r"\+")):
        cli.parse_args(MSTDistill, argv)


def test_defaults_per_database():
    args = cli.parse_args(MSTDistill, [])
    assert (args.epochs_s1, args.epochs_s2, args.compare_baseline) == (5, 5, True)
    assert (args.Tmodel, args.Smodel, args.AUXmodel) == ("MVD-MLP-I", "MVD-MLP-m1", "MVD-MLP-m2")
    if _models_registered("RAVDESS"):
        args = cli.parse_args(MSTDistill, ["--database", "RAVDESS"])
        assert (args.Tmodel, args.Smodel, args.AUXmodel) == ("DSCNN-I", "VisualBranchNet", "AudioBranchNet")
        assert (args.epochs_s1, args.epochs_s2, args.epochs, args.s1_lr, args.compare_baseline) == (
            100, 100, 100, 1e-4, False)
        args = cli.parse_args(MSTDistill, ["--database", "RAVDESS", "--mode", "m2"])
        assert (args.Smodel, args.AUXmodel) == ("AudioBranchNet", "VisualBranchNet")


def test_epochs_s2_zero_warns_and_keeps_untrained_masknets():
    messages = []
    ctx = offline_context(["--database", "Synthetic-MVD", "--mvd_samples", "40", "--epochs_s2", "0"],
                          log=messages.append)
    method = MSTDistill(ctx)
    assert any("--epochs_s2 0" in m for m in messages)
    assert [s.epochs for s in method.stages()[:3]] == [5, 0, 20]


# --------------------------------------------------------------------------------------------------------------
# Whole runs
# --------------------------------------------------------------------------------------------------------------
SMOKE = ["--database", "Synthetic-MVD", "--epochs_s1", "1", "--epochs_s2", "1", "--epochs", "1", "--mvd_samples",
         "400", "--no-record"]


def _run(argv):
    from utils.engine import main

    results = main("MST-Distill", argv)
    return results


def _run_dirs(out: Path) -> list[Path]:
    return sorted((out / "MST-Distill" / "Synthetic-MVD").iterdir())


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("mst_smoke")
    results = _run(SMOKE + ["--out_dir", str(out)])
    return results, _run_dirs(out)[-1]


def test_smoke_run_writes_results_plot_and_metrics(smoke_run):
    results, run_dir = smoke_run
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["method"] == "MST-Distill"
    assert saved["models"] == {"teacher": "MVD-MLP-I", "student": "MVD-MLP-m1", "aux": "MVD-MLP-m2"}
    extra = saved["extra"]
    assert extra["experts"] == ["T0", "T1", "A0", "A1"]
    assert sum(extra["routing"]["last_epoch"].values()) == pytest.approx(1.0)
    assert extra["routing_plot"] == "routing.png" and (run_dir / "routing.png").stat().st_size > 1000
    assert 0.0 <= extra["baseline"]["metrics"]["test"]["accuracy"] <= 1.0
    assert 0.0 <= saved["metrics"]["test"]["accuracy"] <= 1.0
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    by_stage = {row["stage"]: row for row in rows}
    assert {"train/loss_t", "train/loss_s", "train/loss_a", "s1/ce_t"} <= set(by_stage["co-training"])
    assert {"train/mn/T0", "s2/loss_all", "s2/loss_mn_t", "val/loss_all", "val/mn/A1"} <= set(by_stage["masknets"])
    assert {"train/task", "train/kd", "train/lb", "s3/topk_kd", "routing/T0", "routing/A1", "expert_ce/T1",
            "expert_ce/A1", "val/ce"} <= set(by_stage["distillation"])
    assert {"val/ce"} <= set(by_stage["baseline"])
    for name in ("stage1-co-training.pth", "stage2-masknets.pth", "stage3-distillation.pth", "stage4-baseline.pth",
                 "best.pth", "checkpoint.pth"):
        assert (run_dir / name).is_file(), name


def test_comparison_baseline_is_exactly_a_standalone_main_s_run(tmp_path):
    """The no-KD baseline beside the MST student is the run main-S.py makes with the same seed and budget."""
    from utils.engine import main

    argv = ["--database", "Synthetic-MVD", "--epochs", "3", "--mvd_samples", "400", "--no-record",
            "--out_dir", str(tmp_path)]
    mst = _run(argv + ["--epochs_s1", "1", "--epochs_s2", "1", "--compare_baseline"])
    plain = main("S", argv)
    assert json.dumps(mst["extra"]["baseline"]["metrics"]["test"]) == json.dumps(plain["metrics"]["test"])
    assert mst["extra"]["baseline"]["best_epoch"] == plain["best_epoch"]


def test_resume_inside_stage2_reproduces_the_run(tmp_path, monkeypatch):
    from utils.rundir import RunDir

    argv = SMOKE[:-1] + ["--epochs_s2", "2", "--no-compare_baseline", "--no-record"]
    straight = _run(argv + ["--out_dir", str(tmp_path / "straight")])

    class Killed(Exception):
        pass

    original = RunDir.save_checkpoint

    def save_then_die(self, state):
        original(self, state)
        if state["stage"] == 1 and state["epoch"] == 1:  # stage 2 ("masknets"), after its first epoch
            raise Killed

    monkeypatch.setattr(RunDir, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        _run(argv + ["--out_dir", str(tmp_path / "killed")])
    monkeypatch.setattr(RunDir, "save_checkpoint", original)
    run_dir = _run_dirs(tmp_path / "killed")[-1]
    resumed = _run(["--resume", str(run_dir)])
    assert resumed["metrics"] == straight["metrics"]
    assert resumed["best_epoch"] == straight["best_epoch"]
    stages = [json.loads(line)["stage"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert stages == ["co-training", "masknets", "masknets", "distillation"]


def test_start_stage_3_from_a_stage_file(smoke_run, tmp_path):
    _, source = smoke_run
    results = _run(SMOKE + ["--start_stage", "3", "--init_from", str(source / "stage2-masknets.pth"),
                            "--no-compare_baseline", "--out_dir", str(tmp_path)])
    run_dir = _run_dirs(tmp_path)[-1]
    stages = [json.loads(line)["stage"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert stages == ["distillation"]
    before = torch.load(source / "stage2-masknets.pth", weights_only=True)["method"]
    after = torch.load(run_dir / "stage3-distillation.pth", weights_only=True)["method"]
    for key in before:
        if key.startswith(("teacher.", "aux.", "masknets.")):
            assert torch.equal(before[key], after[key]), key
    assert "baseline" not in results["extra"]
    with pytest.raises(SystemExit):  # a mismatching configuration is a one-line error
        _run(SMOKE + ["--start_stage", "2", "--init_from", str(source), "--mask_layer_num", "1", "--out_dir",
                      str(tmp_path)])


def test_init_from_a_run_on_other_data_is_refused(smoke_run, tmp_path, capsys):
    """Networks trained on other samples would carry this run's test samples into its training."""
    _, source = smoke_run
    other = [*SMOKE, "--start_stage", "3", "--init_from", str(source / "stage2-masknets.pth"), "--no-compare_baseline",
             "--out_dir", str(tmp_path)]
    at = other.index("--mvd_samples")
    other[at + 1] = "500"
    with pytest.raises(SystemExit) as stop:
        _run(other)
    assert stop.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("error: --init_from") and "--mvd_samples 400" in line and "--mvd_samples 500" in line
    assert not (tmp_path / "MST-Distill").exists()  # refused before any run directory exists


# Paper datasets on the tiny on-disk fixtures of tests/fixtures.py (NYU: three FuseNets at 64x96, ~35 s on 2 cores).
FIXTURE_FACTOR = {"CMMD-V2": "64", "NYU-Depth-V2": "32"}


@pytest.mark.parametrize("database", ["AV-MNIST", "RAVDESS", "VGGSound-50k", "CMMD-V2", "NYU-Depth-V2"])
def test_whole_method_on_the_fixtures(database, tmp_path, request):
    pytest.importorskip("fixtures", reason="tests/fixtures.py is not there yet")
    if not _models_registered(database):
        pytest.skip(f"the {database} models are not registered yet")
    root = request.getfixturevalue("fixture_root")(database)
    out = tmp_path / "runs"
    results = _run(["--database", database, "--data_root", str(root), "--metadata_dir", str(tmp_path / "metadata"),
                    "--batch_size", "2", "--epochs_s1", "1", "--epochs_s2", "1", "--epochs", "1", "--max_steps", "1",
                    "--hidden_dim_factor", FIXTURE_FACTOR.get(database, "16"), "--out_dir", str(out), "--no-record"])
    assert results["models"]["teacher"] == next(iter(TEACHER_LAYERS[database]))
    run_dir = next((out / "MST-Distill" / database).iterdir())
    assert (run_dir / "routing.png").is_file() and (run_dir / "results.json").is_file()
    assert set(results["extra"]["routing"]["last_epoch"]) == {"T0", "T1", "A0", "A1"}
