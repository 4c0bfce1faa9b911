"""MST-Distill: Mixture of Specialized Teachers for cross-modal knowledge distillation.

Li, Yang, Chen, Dong, Chen and Wang, "MST-Distill: Mixture of Specialized Teachers for Cross-Modal Knowledge
Distillation", ACM Multimedia 2025 (arXiv 2507.07015); reference code Gray-OREO/MST-Distill. The
default behaviour is the reference's, every deliberate deviation is a named switch.

Participants: a multimodal teacher T (``--Tmodel``, on m1+m2), an auxiliary cross-modal teacher A
(``--AUXmodel``, on the modality the student does not see) and the student S (``--Smodel``, on ``--mode``). None
is pre-trained. One MaskNet per hooked layer of T and of A (the models' last two taps) turns a teacher into a
"specialised teacher" (expert): the teacher with that layer's output replaced by ``mask(o) * o``. Experts, in
routing-id order: ``T0, T1, A0, A1`` (``--mask_layer_num`` per teacher). A GateNet on the student's logits routes
each sample to its top-``k`` experts.

Stages (each one an engine :class:`Stage`, saved as ``stageN-<name>.pth``):
1. ``co-training``: T, A and S trained together, each on CE + KD_4 towards the two others; the KL targets are
   not detached (reference; ``--detach_s1`` detaches them, DML-style). One Adam over T ∪ S ∪ A (``--s1_lr``).
   No validation; the last epoch is kept.
2. ``masknets``: backbones frozen; every MaskNet is trained alone (only its own mask active) so that its masked
   teacher's prediction matches the student's (KD_4, the detached student prediction is the target). One Adam over
   all MaskNets (``--s2_lr``); since each MaskNet only affects its own loss and Adam is per parameter, this equals
   the reference's one Adam per MaskNet. Validation: mean over batches of (mean T-MaskNet loss + mean A-MaskNet
   loss); one joint selection of all MaskNets. With ``--epochs_s2 0`` (the reference crashes) the untrained
   MaskNets are used and a warning is logged.
3. ``distillation``: router ``g = softmax(GateNet(z_s))`` on the student's raw, undetached logits; per sample the
   top-``k`` experts' detached logits are the KD_4 targets. Loss ``w_task·CE + w_kl·L_topk + w_lb·L_lb`` with
   ``w_kl = w_kl0·0.5^ceil(e/30)``, ``w_lb = w_lb0·0.9^ceil(e/10)`` (the reference's decays fire after epoch 0).
   One Adam over S ∪ GateNet (``--lr``); selection by the student's validation CE.
4. ``baseline`` (only with ``--compare_baseline``, default on for Synthetic-MVD): the no-KD student ``main-S.py``
   would train, reported beside the MST student (:mod:`kd_methods.mst_baseline`).

Reference quirks kept by default, with switches:
* ``--expert_masks cumulative``: in stage 3 the reference leaves each hook attached while the next expert of the
  same teacher runs, so expert T1 is T with masks 0 AND 1 (mask 1 computed on features already masked at layer 0).
  ``independent`` gives every expert only its own mask, as in stage 2.
* ``--no-router_kd_grad``: the top-k choice is not differentiable and the KD term is not gate-weighted, so the
  GateNet only learns from the load-balancing loss (which also reaches the student through its logits).
  ``--router_kd_grad`` weights each selected expert's per-sample KD by ``g / stopgrad(g)`` of that expert:
  ``L_topk = (1/k)·Σ_r (1/B)·Σ_b [g_b,e(b,r) / sg(g_b,e(b,r))]·KD_4,b(z_s, E_e(b,r))`` - the same value and the same
  student-side KD gradient as the reference, plus a router gradient ``∂L/∂g_b,e = KD_4,b / (B·k·g_b,e)`` for each
  selected expert, which lowers the probability of experts the student disagrees with most.
* KL load balancing is ``KL(u ‖ mean_b g) / ways`` (the reference's "batchmean" on a 1-d tensor); CV is the
  unbiased std over mean of the per-expert importance ``Σ_b g``.
* The reference keyed the auxiliary-layer table on ``--Smodel``; ours is keyed on ``--AUXmodel`` (a fix).
* MaskNets are built for both listed layers of T, then both of A, and only then truncated to
  ``--mask_layer_num`` (the discarded ones consume the RNG exactly as in the reference).

Where the machinery lives: the flags, defaults and checks in :mod:`kd_methods.mst_options`; the losses in
:mod:`kd_methods.mst_losses`; MaskNets and GateNet in :mod:`models.mst_modules`; the experts' forwards (hooks, or the
fast path's shared teacher prefixes, ``--mst_impl``) in :mod:`kd_methods.mst_experts`; the per-sample cache of the
frozen networks' outputs (``--mst_cache_mb``) in :mod:`kd_methods.mst_cache`; ``--init_from`` in
:mod:`kd_methods.mst_init`; the logs and the routing report in :mod:`kd_methods.mst_report`.
"""
from __future__ import annotations

from functools import partial
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from datasets.base import Batch
from kd_methods import register_method
from kd_methods.base import Method, RunContext, Stage
from kd_methods.features import feature_shapes
from kd_methods.mst_baseline import NoKDBaseline
from kd_methods.mst_cache import FrozenOutputs
from kd_methods.mst_experts import ExpertForwards, ExpertGroup
from kd_methods.mst_init import load_init
from kd_methods.mst_losses import TEMPERATURE, kd_per_sample, load_balancing_loss, loss_weights, pick_experts
from kd_methods.mst_options import LAYER_SLOT, MSTOptions
from kd_methods.mst_report import EpochMeter, describe, routing_results, routing_row
from kd_methods.sample_cache import SampleCache
from kd_methods.taps import layers
from models.mst_modules import GateNet, GateNetDense, build_masknet, hidden_width, masknet_kind
from utils.core.cards import MethodCard
from utils.core.errors import UserError
from utils.core.runtime import init_seed

STAGE_NAMES = ("co-training", "masknets", "distillation", "baseline")


@register_method
class MSTDistill(MSTOptions, Method):
    """MST-Distill (Li et al., ACM MM 2025): three stages, see the module docstring."""

    card = MethodCard(
        name="MST-Distill",
        position=100,
        summary=("MST-Distill (Li et al., ACM MM 2025): co-train a multimodal teacher, a cross-modal auxiliary "
                 "teacher and the student; train MaskNets that specialise the teachers; distil into the student from "
                 "a routed mixture of the specialised teachers."),
        roles=("teacher", "student", "aux"),
        teacher_kind="multimodal",
        epochs_help=("stage-3 (distillation) epochs, and the comparison baseline's; it does not shorten stages 1-2, "
                     "which run --epochs_s1 and --epochs_s2 epochs (default: per dataset)"),
        table_group="MST-Distill",
        # in a sweep the no-KD node is the baseline
        sweep_flags=("--no-compare_baseline",),
        # w_task stays 1: Adam is nearly blind to the loss's scale, so w_kl and w_lb against it cover the mixes
        search_space={"lr": ("log", 0.1, 10.0, "relative"), "s1_lr": ("log", 0.1, 10.0, "relative"),
                      "s2_lr": ("log", 0.1, 10.0, "relative"), "w_kl": ("log", 0.1, 10.0),
                      "w_lb": ("log", 0.1, 10.0), "k": ("int", 1, 4)},
    )

    # -- the participants: T, A, S, one MaskNet per hooked layer, the GateNet ---------------------------------------
    def __init__(self, ctx: RunContext):
        super().__init__(ctx)
        args, spec = self.args, self.spec
        self.fill_defaults(args, spec)  # contexts built without the CLI
        n = args.mask_layer_num
        t_layers, a_layers = layers(LAYER_SLOT, args.Tmodel), layers(LAYER_SLOT, args.AUXmodel)
        # Build order = the reference's RNG order: T, A, S, MaskNets (every listed layer of T then of A, truncated
        # afterwards), GateNet.
        self.teacher = self.build(args.Tmodel, ("m1", "m2"), "teacher")
        self.aux = self.build(args.AUXmodel, (self.other,), "auxiliary teacher")
        self.student = self.build(args.Smodel, (self.mode,), "student")
        shapes = ctx.input_shapes
        t_shapes = list(feature_shapes(self.teacher, t_layers, (shapes["m1"], shapes["m2"])).values())
        a_shapes = list(feature_shapes(self.aux, a_layers, (shapes[self.other],)).values())
        t_nets, a_nets = self._masknets(t_layers, t_shapes), self._masknets(a_layers, a_shapes)
        self.masknets = nn.ModuleList(t_nets[:n] + a_nets[:n])
        self.ways = 2 * n
        self.gate = (GateNetDense if self.dense else GateNet)(spec.num_classes, self.ways)
        self.t_layers, self.a_layers = tuple(t_layers[:n]), tuple(a_layers[:n])
        self.feature_shapes = {"T": t_shapes[:n], "A": a_shapes[:n]}
        # the experts, in routing-id order: T0, T1, A0, A1
        self.expert_names = [f"T{j}" for j in range(n)] + [f"A{j}" for j in range(n)]
        self.groups = [ExpertGroup("T", self.teacher, self.t_layers, 0, ("m1", "m2")),
                       ExpertGroup("A", self.aux, self.a_layers, n, (self.other,))]
        self.experts = ExpertForwards(args, self.groups, self.masknets, self.kd, self.frozen, self._log)
        self.baseline = None
        if args.compare_baseline:
            self.baseline = NoKDBaseline(partial(self.build, args.Smodel, (self.mode,), "baseline student"),
                                         init_seed(args))

        self._meter = EpochMeter()
        #: one row per finished stage-3 epoch (routing frequencies, per-expert CE), for results.json and
        #: routing.png; part of the state dict (get_extra_state), so a resumed run keeps its earlier epochs
        self._stage3_history: list[dict] = []
        self.cached = FrozenOutputs(self)
        self._caches = self.cached.caches
        describe(self)
        if args.init_from and not getattr(args, "resume", None):
            load_init(self, args.init_from)

    def _masknets(self, layers: Sequence[str], shapes: list[tuple[int, ...]]) -> list[nn.Module]:
        args = self.args
        for layer, shape in zip(layers, shapes):
            try:
                masknet_kind(shape)
            except ValueError as error:
                raise UserError(f"hooked layer {layer}: {error}") from None
            if hidden_width(shape[0], args.hidden_dim_factor, args.mask_head_num) < args.mask_head_num:
                raise UserError(f"--hidden_dim_factor {args.hidden_dim_factor} with --mask_head_num "
                                f"{args.mask_head_num} leaves no MaskNet width for {layer} ({shape[0]} channels)")
        return [build_masknet(shape, args.hidden_dim_factor, args.mask_head_num) for shape in shapes]

    # -- the stages --------------------------------------------------------------------------------------------------
    def stages(self) -> list[Stage]:
        args = self.args
        skip = args.start_stage - 1
        epochs = [0 if skip >= 1 else args.epochs_s1, 0 if skip >= 2 else args.epochs_s2, args.epochs]
        stages = [
            Stage(STAGE_NAMES[0], epochs[0], self._stage1_optimizer, self._stage1_step,
                  [self.teacher, self.aux, self.student], select_key=None, epoch_logs=self._epoch_logs,
                  on_stage_start=partial(self._start_stage, self.teacher, self.aux, self.student)),
            Stage(STAGE_NAMES[1], epochs[1], self._stage2_optimizer, self._stage2_step, [self.masknets],
                  val_step=self._stage2_val, select_key="loss_all", selected=self.masknets,
                  epoch_logs=self._epoch_logs, on_stage_end=self._caches.clear,
                  on_stage_start=partial(self._start_stage, self.masknets)),
            Stage(STAGE_NAMES[2], epochs[2], self._stage3_optimizer, self._stage3_step, [self.student, self.gate],
                  val_step=self.student_val_step_ce, select_key="ce", selected=self.student,
                  epoch_logs=self._stage3_logs, on_stage_end=self._caches.clear,
                  on_stage_start=partial(self._start_stage, self.student, self.gate)),
        ]
        if self.baseline is not None:
            stages.append(self.baseline.stage(STAGE_NAMES[3], self.ctx, self._baseline_optimizer,
                                              partial(self._trainable, self.baseline)))
        return stages

    def _start_stage(self, *modules: nn.Module) -> None:
        """A stage starts: only ``modules`` require gradients, the per-epoch counters restart."""
        self._trainable(*modules)
        self._meter.means()
        self._routing = torch.zeros(self.ways, dtype=torch.float64, device=self.ctx.device)

    def _trainable(self, *modules: nn.Module) -> None:
        """``requires_grad`` for the stage: only ``modules`` train. Frozen networks hold no autograd graph (unless
        :attr:`keep_teacher_graph`, the benchmarks' imitation of the reference, which never froze anything)."""
        for module in (self.teacher, self.aux, self.student, self.masknets, self.gate):
            module.requires_grad_(any(module is m for m in modules) or self.keep_teacher_graph)
        if self.baseline is not None:
            self.baseline.requires_grad_(any(self.baseline is m for m in modules))

    def _log(self, message: str) -> None:  # through the context, which deep copies of the method leave out
        self.ctx.log(message)

    def frozen(self):
        """Grad mode for frozen networks' forwards: none, except when imitating the reference."""
        return torch.set_grad_enabled(self.keep_teacher_graph and torch.is_grad_enabled())

    def _adam(self, params, lr: float) -> torch.optim.Optimizer:
        # PyTorch-default Adam as the reference, fused unless --no-fused_adam. Without it, the multi-tensor (foreach)
        # loop: bit-identical updates, and faster on CPU, where it is not PyTorch's default.
        return self.make_adam(params, lr, foreach=True)

    # stage 1: T, A and S co-trained, each on CE + KD_4 towards the two others ------------------------------------
    def _stage1_optimizer(self):
        # Parameter order as the reference's list: T, S, A.
        return self._adam([*self.teacher.parameters(), *self.student.parameters(), *self.aux.parameters()],
                          self.args.s1_lr)

    def _stage1_step(self, batch: Batch, epoch: int):
        z_t = self.teacher(batch.m1, batch.m2)
        z_a = self.aux(batch.get(self.other))
        z_s = self.student(batch.get(self.mode))
        target = (lambda z: z.detach()) if self.args.detach_s1 else (lambda z: z)
        ce_t, ce_a, ce_s = (self.task_loss(z, batch.y) for z in (z_t, z_a, z_s))
        # The six KL terms are built in the reference's order (S's, then A's, then T's): autograd then sums the
        # gradients reaching each logit tensor in the same order, so a step is bit-identical to the reference's.
        kl_s_t, kl_s_a = self.kd(z_s, target(z_t)), self.kd(z_s, target(z_a))
        kl_a_t, kl_a_s = self.kd(z_a, target(z_t)), self.kd(z_a, target(z_s))
        kl_t_s, kl_t_a = self.kd(z_t, target(z_s)), self.kd(z_t, target(z_a))
        loss_t = ce_t + kl_t_s + kl_t_a
        loss_s = ce_s + kl_s_t + kl_s_a
        loss_a = ce_a + kl_a_t + kl_a_s
        self._meter.add(**{"s1/ce_t": ce_t, "s1/ce_s": ce_s, "s1/ce_a": ce_a})
        self._meter.step()
        return {"loss_t": loss_t, "loss_s": loss_s, "loss_a": loss_a}

    # stage 2: each MaskNet alone makes its teacher's prediction match the student's -------------------------------
    def _stage2_optimizer(self):
        return self._adam(self.masknets.parameters(), self.args.s2_lr)

    def student_target(self, batch: Batch) -> torch.Tensor:
        with self.frozen():
            return self.student(batch.get(self.mode)).detach()

    def masknet_losses(self, batch: Batch, target: torch.Tensor, clean: dict | None = None) -> list[torch.Tensor]:
        """KD_4(teacher with MaskNet j only, ``target``) for every MaskNet j, in expert order (``ExpertForwards``)."""
        return self.experts.masknet_losses(batch, target, clean)

    def _stage2_terms(self, batch: Batch, split: str) -> tuple[dict, torch.Tensor, torch.Tensor]:
        cache = self._cache(2, split)
        if cache is not None and "student" in cache:
            target = cache.rows("student", batch.index)[0]
        else:
            target = self.student_target(batch)
        clean = {}
        for group in self.groups:
            if cache is not None and group.tag in cache:
                clean[group.tag] = group.segmented.unflatten(cache.rows(group.tag, batch.index))
        losses = self.masknet_losses(batch, target, clean)
        n = self.args.mask_layer_num
        per_net = {f"mn/{name}": loss for name, loss in zip(self.expert_names, losses)}
        return per_net, torch.stack(losses[:n]).mean(), torch.stack(losses[n:]).mean()

    def _stage2_step(self, batch: Batch, epoch: int):
        # The sum of the per-MaskNet losses: each MaskNet gets exactly the gradient of its own loss, as with the
        # reference's one optimiser per MaskNet. The reference's logged means go through epoch_logs.
        per_net, loss_t, loss_a = self._stage2_terms(batch, "train")
        self._meter.add(**{"s2/loss_all": loss_t + loss_a, "s2/loss_mn_t": loss_t, "s2/loss_mn_a": loss_a})
        self._meter.step()
        return per_net

    def _stage2_val(self, batch: Batch, epoch: int):
        per_net, loss_t, loss_a = self._stage2_terms(batch, "val")
        return {**per_net, "loss_mn_t": loss_t, "loss_mn_a": loss_a, "loss_all": loss_t + loss_a}

    # stage 3: the student distils from its routed top-k experts ---------------------------------------------------
    def _stage3_optimizer(self):
        return self._adam([*self.student.parameters(), *self.gate.parameters()], self.args.lr)

    def expert_logits(self, batch: Batch) -> list[torch.Tensor]:
        """Logits of every expert ``[T0, T1, A0, A1]`` (cumulative or independent masks), without autograd."""
        return self.experts.logits(batch)

    def stage3_losses(self, batch: Batch, experts: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The unweighted stage-3 terms and diagnostics of one batch (``task``, ``topk``, ``lb``, ``indices``...).

        ``experts`` may give the experts' logits (e.g. read from a cache); by default they are computed.
        """
        if experts is None:
            experts = self.expert_logits(batch)
        z_s = self.student(batch.get(self.mode))
        gate_probs = F.softmax(self.gate(z_s), dim=1)
        lb = load_balancing_loss(gate_probs, self.args.lb_mode)
        topk, indices = self.topk_distillation(z_s, experts, gate_probs)
        return {"task": self.task_loss(z_s, batch.y), "topk": topk, "lb": lb, "indices": indices,
                "experts": experts, "gate_probs": gate_probs}

    def topk_distillation(self, student_logits: torch.Tensor, experts: Sequence[torch.Tensor],
                          gate_probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(L_topk, indices [B, k])``: mean over the k ranks of KD_4(student, detached selected expert)."""
        indices = torch.topk(gate_probs, self.args.k, dim=1).indices
        total = 0.0
        for r in range(self.args.k):
            target = pick_experts(experts, indices[:, r]).detach()
            if self.args.router_kd_grad:
                chosen = gate_probs.gather(1, indices[:, r:r + 1]).squeeze(1)
                per_sample = kd_per_sample(student_logits, target, TEMPERATURE, per_pixel=self.dense)
                total = total + (chosen / chosen.detach() * per_sample).mean()
            else:
                total = total + self.kd(student_logits, target, TEMPERATURE)
        return total / self.args.k, indices

    def _stage3_step(self, batch: Batch, epoch: int):
        cache = self._cache(3, "train")
        experts = cache.rows("experts", batch.index) if cache is not None else None
        terms = self.stage3_losses(batch, experts)
        w_kl, w_lb = loss_weights(epoch, self.args.w_kl, self.args.w_lb)
        with torch.no_grad():  # diagnostics: per-expert CE and routing counts, one device sync per epoch
            expert_ce = {f"expert_ce/{name}": self.task_loss(z.float(), batch.y)
                         for name, z in zip(self.expert_names, terms["experts"])}
            self._meter.add(**{"s3/task": terms["task"], "s3/topk_kd": terms["topk"], "s3/lb": terms["lb"],
                               "s3/expert_ce_mean": torch.stack(list(expert_ce.values())).mean()}, **expert_ce)
            self._meter.step()
            self._routing += torch.bincount(terms["indices"].flatten(), minlength=self.ways).double()
        return {"task": self.args.w_task * terms["task"], "kd": w_kl * terms["topk"], "lb": w_lb * terms["lb"]}

    def student_val_step_ce(self, batch: Batch, epoch: int):
        return {"ce": self.task_loss(self.student(batch.get(self.mode)), batch.y)}

    def _baseline_optimizer(self):
        return self._adam(self.baseline.parameters(), self.args.lr)

    def _cache(self, stage: int, split: str) -> SampleCache | None:
        """What the frozen networks compute per sample in ``stage``, for ``split`` (:mod:`kd_methods.mst_cache`)."""
        return self.cached.get(stage, split)

    # -- logs and results --------------------------------------------------------------------------------------------
    def _epoch_logs(self) -> dict:
        return {key: float(value) for key, value in self._meter.means().items()}

    def _stage3_logs(self) -> dict:
        row = {**self._epoch_logs(), **routing_row(self.expert_names, self._routing)}
        self._routing.zero_()
        kept = {key: value for key, value in row.items() if key.startswith(("routing/", "expert_ce/"))}
        self._stage3_history.append({"epoch": len(self._stage3_history), **kept})
        return row

    def get_extra_state(self) -> dict:
        return {"stage3_history": [dict(row) for row in self._stage3_history]}

    def set_extra_state(self, state: dict) -> None:
        self._stage3_history = [dict(row) for row in (state or {}).get("stage3_history", [])]

    def model_names(self) -> dict[str, str]:
        return {"teacher": self.args.Tmodel, "student": self.args.Smodel, "aux": self.args.AUXmodel}

    def extra_results(self) -> dict:
        args = self.args
        extra = {
            "experts": self.expert_names,
            "hooked_layers": {"teacher": list(self.t_layers), "aux": list(self.a_layers)},
            "masknet_hidden_dims": {n: m.hidden_dim for n, m in zip(self.expert_names, self.masknets)},
            "options": {key: getattr(args, key) for key in ("k", "lb_mode", "expert_masks", "router_kd_grad",
                                                             "detach_s1", "mst_impl", "fused_adam", "epochs_s1",
                                                             "epochs_s2")},
            **routing_results(self, self._stage3_history),
        }
        if self.baseline is not None:
            extra["baseline"] = self.baseline.report(self.ctx, self.student)
        return extra
