"""MST-Distill: Mixture of Specialized Teachers for cross-modal knowledge distillation.

Li, Yang, Chen, Dong, Chen and Wang, "MST-Distill: Mixture of Specialized Teachers for Cross-Modal Knowledge
Distillation", ACM Multimedia 2025 (arXiv 2507.07015); reference code Gray-OREO/MST-Distill. The
default behaviour is the reference's, every deliberate deviation is a named switch.

Participants: a multimodal teacher T (``--Tmodel``, on m1+m2), an auxiliary cross-modal teacher A
(``--AUXmodel``, on the modality the student does not see) and the student S (``--Smodel``, on ``--mode``). None
is pre-trained. One MaskNet per hooked layer of T and of A (tables below) turns a teacher into a "specialised
teacher" (expert): the teacher with that layer's output replaced by ``mask(o) * o``. Experts, in routing-id order:
``T0, T1, A0, A1`` (``--mask_layer_num`` per teacher). A GateNet on the student's logits routes each sample to
its top-``k`` experts.

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
4. ``baseline`` (only with ``--compare_baseline``, default on for Synthetic-MVD): a plain student of the same
   architecture, initialised from ``--seed`` like ``main-S.py``, trained on CE for ``--epochs`` with ``--lr``; its
   metrics go to ``results.json`` ``extra.baseline``. It does not change the MST student (it runs last and its
   selection is kept out of ``best_epoch``).

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

Fast path (``--mst_impl fast``, default). Frozen backbones never hold an autograd graph, the student runs once per
batch, inputs are not cloned, and each teacher's computation up to a hooked layer is done once per batch and
shared by every expert/MaskNet that branches from it. To resume a forward in the middle, the frozen network is cut
after each hooked layer (:class:`~kd_methods.segments.SegmentedForward`); replacing the hooked value in the carried
state and running the next segments is exactly what the reference's forward hook does. Work per batch with two
layers per teacher:
* stage 2: ``seg0 → f0 → seg1 → f1`` once under ``no_grad``; then ``seg1∘seg2(mask0(f0)·f0)`` and
  ``seg2(mask1(f1)·f1)`` with autograd through the suffix activations only (reference: two full forwards, and a
  backward through the whole teacher);
* stage 3, cumulative: ``seg0 → mask0 → seg1 → (seg2 → T0) and (mask1 → seg2 → T1)``: one prefix, each MaskNet
  once, only the last segment twice (reference: one full forward per expert, MaskNet 0 evaluated twice);
  independent: clean ``seg0 → seg1`` shared, then each expert's suffix.
Across epochs, the frozen networks (eval mode, fixed weights) give a sample the same output every time: stage 2's
student targets and teacher states at the cuts, and stage 3's expert logits, are computed by one pass over the
split when the stage starts and then read back per batch from a :class:`~kd_methods.sample_cache.SampleCache`
(``--mst_cache_mb``; items that do not fit run per batch).
A network that cannot be traced or split (a hooked module called twice, data-dependent Python control flow) falls
back to the hook path for that network, with one log line. ``--mst_impl reference`` forces the hook path
everywhere (one full forward per expert/MaskNet with the hooks attached as the reference does); the parity test and
``benchmarks/bench_mst.py`` compare the two. Tracing happens while the network is in eval mode (it is frozen
whenever segments are used), so a forward that branched on ``self.training`` would be traced in its eval branch.
"""
from __future__ import annotations

import argparse
import contextlib
import time
from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from datasets.base import Batch, DatasetSpec
from kd_methods import register_method
from kd_methods.base import Method, RunContext, Stage
from kd_methods.checkpoints import check_same_data
from kd_methods.features import feature_shapes, usable_models
from kd_methods.mst_losses import (TEMPERATURE, apply_mask, gather_topk, kd_per_sample,  # noqa: F401 (tests)
                                   load_balancing_loss, loss_weights, pick_experts)
from kd_methods.reporting import plot_series
from kd_methods.sample_cache import Compute, SampleCache, within_budget
from kd_methods.segments import SegmentedForward, SplitError
from kd_methods.taps import layers
from models import MODELS, get_entry
from models.mst_modules import GateNet, GateNetDense, build_masknet, hidden_width, masknet_kind
from utils.core.checkpoints import full_method_state, load_checkpoint
from utils.core.errors import UserError
from utils.core.hooks import replace_outputs

# Hooked layers: the last two taps each model declares (``kd_methods.taps``, slot ``mst``: the reference's layers for
# the paper models). A teacher or auxiliary model of any database (generic ones included) works if it declares two taps.
LAYER_SLOT = "mst"


def _layer_tables(multimodal: bool) -> dict[str, dict[str, tuple[str, ...]]]:
    """database -> {model: hooked layers} for the models of each database (generic ones excluded), as the
    reference's tables listed them: for the documentation, the tests and the error messages."""
    tables: dict[str, dict[str, tuple[str, ...]]] = {}
    for name, entry in MODELS.items():
        if entry.database is not None and entry.is_multimodal == multimodal and layers(LAYER_SLOT, name) is not None:
            tables.setdefault(entry.database, {})[name] = layers(LAYER_SLOT, name)
    return tables


TEACHER_LAYERS = _layer_tables(multimodal=True)
# Auxiliary layers keyed on --AUXmodel (the reference keyed them on --Smodel and required the complementary AUXmodel).
AUX_LAYERS = _layer_tables(multimodal=False)


def stage_defaults(spec: DatasetSpec) -> dict:
    """Defaults of the stage-1/2 options: the dataset's own (``spec.method_defaults["MST-Distill"]``, the one place
    a dataset states them), else generic ones: the reference's stage learning rates (1e-4) and one ``--epochs``
    budget of the dataset per stage (100/100 on the paper datasets: the reference's first release), no baseline."""
    generic = {"epochs_s1": spec.epochs, "epochs_s2": spec.epochs, "s1_lr": 1e-4, "s2_lr": 1e-4,
               "compare_baseline": False}
    return {**generic, **spec.method_defaults.get("MST-Distill", {})}


STAGE_NAMES = ("co-training", "masknets", "distillation", "baseline")


# --------------------------------------------------------------------------------------------------------------
# The method
# --------------------------------------------------------------------------------------------------------------
class _Meter:
    """Sums of per-batch figures kept on the device (no sync per batch); ``means()`` reads and resets them."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.steps = 0

    def add(self, **values: torch.Tensor) -> None:
        for key, value in values.items():
            value = value.detach().float()
            self.sums[key] = self.sums[key] + value if key in self.sums else value.clone()

    def step(self) -> None:
        self.steps += 1

    def means(self) -> dict[str, torch.Tensor]:
        out = {key: value / self.steps for key, value in self.sums.items()} if self.steps else {}
        self.sums, self.steps = {}, 0
        return out


class _Group:
    """One teacher and its experts: the network, its hooked layers, the indices of its MaskNets, its inputs."""

    def __init__(self, tag: str, model: nn.Module, layers: tuple[str, ...], first: int, modalities: tuple[str, ...]):
        self.tag, self.model, self.layers, self.modalities = tag, model, layers, modalities
        self.masknet_ids = list(range(first, first + len(layers)))
        self.segmented: SegmentedForward | None = None
        self.split_tried = False


@register_method
class MSTDistill(Method):
    """MST-Distill (Li et al., ACM MM 2025): three stages, see the module docstring."""

    name = "MST-Distill"
    summary = ("MST-Distill (Li et al., ACM MM 2025): co-train a multimodal teacher, a cross-modal auxiliary teacher "
               "and the student; train MaskNets that specialise the teachers; distil into the student from a routed "
               "mixture of the specialised teachers.")
    roles = ("teacher", "student", "aux")
    teacher_kind = "multimodal"
    needs_checkpoint = False
    table_group = "MST-Distill"
    sweep_flags = ("--no-compare_baseline",)  # in a sweep the no-KD node is the baseline
    epochs_help = ("stage-3 (distillation) epochs, and the comparison baseline's; it does not shorten stages 1-2, "
                   "which run --epochs_s1 and --epochs_s2 epochs (default: per dataset)")

    @classmethod
    def epoch_plan(cls, args: argparse.Namespace) -> str:
        """First log line: --epochs alone does not shorten stages 1-2."""
        skip = getattr(args, "start_stage", 1) - 1
        s1, s2 = (0 if skip >= 1 else args.epochs_s1), (0 if skip >= 2 else args.epochs_s2)
        baseline = f" + {args.epochs} baseline" if getattr(args, "compare_baseline", False) else ""
        return (f"{s1} co-training (--epochs_s1) + {s2} masknets (--epochs_s2) + {args.epochs} distillation "
                f"(--epochs){baseline} epochs; --epochs sets stage 3 only")

    # -- CLI ---------------------------------------------------------------------------------------------------
    @classmethod
    def default_models(cls, spec: DatasetSpec, mode: str) -> dict[str, str]:
        """Teacher = the fusion model, student = ``--mode``'s unimodal model, aux = the other modality's one."""
        return {"teacher": spec.teacher, "student": spec.students[mode],
                "aux": spec.students[spec.other_modality(mode)]}

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        bool_flag = argparse.BooleanOptionalAction
        add = parser.add_argument
        add("--hidden_dim_factor", type=int, default=2, metavar="F",
            help="MaskNet width divisor f: token width hd = floor(C/(f·h))·h (default: %(default)s). The embedding has "
                 "C²·hd weights (CMMD-V2's auxiliary fc1 MaskNet: ~536M at f=2); raise f to shrink the MaskNets")
        add("--mask_layer_num", type=int, default=2,
            help="hooked layers (experts) per teacher, 1 or 2 (default: %(default)s)")
        add("--mask_head_num", type=int, default=3, metavar="H",
            help="attention heads h per MaskNet (default: %(default)s)")
        add("--k", type=int, default=1, help="experts selected per sample, 1..2·mask_layer_num (default: %(default)s)")
        add("--lb_mode", default="KL", metavar="KL|CV",
            help="load-balancing loss: KL (KL(uniform ‖ mean gate)/ways) or CV (coefficient of variation of the "
                 "expert importance) (default: %(default)s)")
        add("--w_task", type=float, default=1.0, help="stage-3 student CE weight, constant (default: %(default)s)")
        add("--w_kl", type=float, default=1.0,
            help="stage-3 top-k distillation weight w0; epoch e uses w0·0.5^ceil(e/30) (default: %(default)s)")
        add("--w_lb", type=float, default=1.0,
            help="stage-3 load-balancing weight w0; epoch e uses w0·0.9^ceil(e/10) (default: %(default)s)")
        add("--epochs_s1", type=int, default=None,
            help="stage-1 (co-training) epochs (default: 100 for the paper datasets, as the reference's first "
                 "release; its later code defaults to 1. 5 for Synthetic-MVD)")
        add("--epochs_s2", type=int, default=None,
            help="stage-2 (MaskNet) epochs (default: 100 for the paper datasets, as the reference's first release; "
                 "its later code defaults to 1. 5 for Synthetic-MVD). 0 keeps the MaskNets untrained (warning)")
        add("--s1_lr", type=float, default=None,
            help="stage-1 Adam learning rate (default: 1e-4 as the reference; 1e-3 for Synthetic-MVD). "
                 "--lr is the stage-3 one, --epochs the stage-3 epochs")
        add("--s2_lr", type=float, default=None,
            help="stage-2 Adam learning rate (default: 1e-4 as the reference; 1e-3 for Synthetic-MVD)")
        add("--expert_masks", default="cumulative", choices=["cumulative", "independent"],
            help="stage-3 experts: cumulative = the reference (expert T1 runs with masks 0 AND 1 attached, its hooks "
                 "stay on between expert forwards); independent = each expert with its own mask only, as trained in "
                 "stage 2 (default: %(default)s)")
        add("--router_kd_grad", action=bool_flag, default=False,
            help="weight each selected expert's per-sample KD by g/stopgrad(g) so the router also learns from the "
                 "distillation term (same loss value and student gradient); off = the reference, where the router "
                 "only learns from load balancing (default: off)")
        add("--detach_s1", action=bool_flag, default=False,
            help="detach the KL targets of stage 1 (DML-style); off = the reference, where every pairwise KL sends "
                 "gradient into both networks (default: off)")
        add("--mst_impl", default="fast", choices=["fast", "reference"],
            help="fast = shared teacher prefixes cut with torch.fx, no autograd through frozen networks; reference = "
                 "one full hooked forward per expert/MaskNet as the reference (same numbers, slower) (default: fast)")
        add("--mst_cache_mb", type=float, default=2048, metavar="MB",
            help="memory for caching what the frozen networks compute per sample in stages 2-3 (student targets and "
                 "teacher features at the hooked layers; the experts' logits), filled by one pass over the split when "
                 "the stage starts, so later epochs skip those forwards; equal to computing them per batch up to "
                 "float rounding. What does not fit is computed per batch. Used with --mst_impl fast and without "
                 "--max_steps; 0 = off (default: %(default)s)")
        add("--compare_baseline", action=bool_flag, default=None,
            help="after stage 3, train a no-KD student of the same architecture with the same epochs, lr and seed and "
                 "report it beside the MST student (default: on for Synthetic-MVD, off for the paper datasets)")
        add("--start_stage", type=int, default=1, choices=[1, 2, 3],
            help="first stage to run; earlier stages get 0 epochs and the networks come from --init_from "
                 "(default: %(default)s)")
        add("--init_from", default=None, metavar="PATH",
            help="a stageN-*.pth or checkpoint.pth (or run directory) of an earlier MST-Distill run whose networks "
                 "start this run; required with --start_stage 2 or 3")

    @classmethod
    def dataset_defaults(cls, spec: DatasetSpec) -> dict:
        """The shared per-dataset defaults and the stage options' (:func:`stage_defaults`)."""
        return {**stage_defaults(spec), **super().dataset_defaults(spec)}

    @classmethod
    def check_args(cls, args: argparse.Namespace, spec: DatasetSpec) -> None:
        if args.mask_layer_num not in (1, 2):
            raise UserError(f"--mask_layer_num must be 1 or 2 (each teacher has two hooked layers), "
                            f"not {args.mask_layer_num}")
        ways = 2 * args.mask_layer_num
        if not 1 <= args.k <= ways:
            raise UserError(f"--k must be between 1 and the number of experts {ways} (2·--mask_layer_num), "
                            f"not {args.k}")
        if args.lb_mode not in ("KL", "CV"):
            raise UserError(f"--lb_mode must be KL or CV, not '{args.lb_mode}'")
        if args.mask_head_num < 1 or args.hidden_dim_factor < 1:
            raise UserError("--mask_head_num and --hidden_dim_factor must be >= 1")
        if args.epochs_s1 < 0 or args.epochs_s2 < 0:
            raise UserError("--epochs_s1 and --epochs_s2 must be >= 0")
        if args.s1_lr <= 0 or args.s2_lr <= 0:
            raise UserError("--s1_lr and --s2_lr must be > 0")
        if min(args.w_task, args.w_kl, args.w_lb) < 0:
            raise UserError("--w_task, --w_kl and --w_lb must be >= 0")
        teachers = usable_models(LAYER_SLOT, spec.name, ("m1", "m2"))
        if args.Tmodel not in teachers:
            raise UserError(f"MST-Distill on {spec.name} supports --Tmodel {', '.join(teachers)} (fusion models "
                            f"declaring two feature taps), not '{args.Tmodel}'")
        auxes = [n for n in usable_models(LAYER_SLOT, spec.name) if not get_entry(n).is_multimodal]
        if layers(LAYER_SLOT, args.AUXmodel) is None or get_entry(args.AUXmodel).is_multimodal:
            raise UserError(f"MST-Distill on {spec.name} supports --AUXmodel {', '.join(auxes)} (unimodal models "
                            f"declaring two feature taps), not '{args.AUXmodel}'")
        other = spec.other_modality(args.mode)
        for flag, name, wanted in (("--Tmodel", args.Tmodel, ("m1", "m2")), ("--AUXmodel", args.AUXmodel, (other,)),
                                   ("--Smodel", args.Smodel, (args.mode,))):
            entry = get_entry(name)
            if tuple(entry.inputs) != wanted:  # whether its input shapes fit is checked when it is built
                raise UserError(f"{flag} {name} takes {'+'.join(entry.inputs)}, but MST-Distill "
                                f"with --mode {args.mode} needs a {spec.name} model on {'+'.join(wanted)} "
                                f"(default {cls.default_models(spec, args.mode)[_ROLE_OF[flag]]})")
        if args.start_stage > 1 and not args.init_from:
            raise UserError(f"--start_stage {args.start_stage} needs --init_from PATH (a stageN-*.pth or "
                            f"checkpoint.pth of an earlier MST-Distill run)")
        if args.init_from and args.start_stage == 1:
            raise UserError("--init_from is used with --start_stage 2 or 3")
        if args.init_from and not Path(args.init_from).exists():
            raise UserError(f"--init_from: {args.init_from} does not exist")

    # -- construction ------------------------------------------------------------------------------------------
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
        for layer, shape in zip((*t_layers, *a_layers), (*t_shapes, *a_shapes)):
            try:
                masknet_kind(shape)
            except ValueError as error:
                raise UserError(f"hooked layer {layer}: {error}") from None
            if hidden_width(shape[0], args.hidden_dim_factor, args.mask_head_num) < args.mask_head_num:
                raise UserError(f"--hidden_dim_factor {args.hidden_dim_factor} with --mask_head_num "
                                f"{args.mask_head_num} leaves no MaskNet width for {layer} ({shape[0]} channels)")
        t_nets = [build_masknet(s, args.hidden_dim_factor, args.mask_head_num) for s in t_shapes]
        a_nets = [build_masknet(s, args.hidden_dim_factor, args.mask_head_num) for s in a_shapes]
        self.masknets = nn.ModuleList(t_nets[:n] + a_nets[:n])
        self.ways = 2 * n
        self.gate = (GateNetDense if self.dense else GateNet)(spec.num_classes, self.ways)
        self.t_layers, self.a_layers = tuple(t_layers[:n]), tuple(a_layers[:n])
        self.feature_shapes = {"T": t_shapes[:n], "A": a_shapes[:n]}
        self.expert_names = [f"T{j}" for j in range(n)] + [f"A{j}" for j in range(n)]
        self.groups = [_Group("T", self.teacher, self.t_layers, 0, ("m1", "m2")),
                       _Group("A", self.aux, self.a_layers, n, (self.other,))]

        self.baseline = None
        if args.compare_baseline:
            # Initialised from the seed alone, as main-S.py's student, without touching the RNG stream of the run.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(args.seed)
                self.baseline = self.build(args.Smodel, (self.mode,), "baseline student")
            self.register_buffer("baseline_best_epoch", torch.tensor(-1))

        self._meter = _Meter()
        #: one row per finished stage-3 epoch (routing frequencies, per-expert CE), for results.json and
        #: routing.png; part of the state dict (get_extra_state), so a resumed run keeps its earlier epochs
        self._stage3_history: list[dict] = []
        self._caches: dict[tuple[int, str], SampleCache | None] = {}
        self._describe()
        if args.init_from and not getattr(args, "resume", None):
            self._load_init(args.init_from)

    def _describe(self) -> None:
        args, log = self.args, self.ctx.log
        for name, layer, shape, net in zip(self.expert_names, (*self.t_layers, *self.a_layers),
                                           (*self.feature_shapes["T"], *self.feature_shapes["A"]), self.masknets):
            params = sum(p.numel() for p in net.parameters())
            log(f"MST-Distill expert {name}: {layer} {list(shape)} -> MaskNet-{masknet_kind(shape)} "
                f"hd {net.hidden_dim} ({params / 1e6:.2f}M parameters)")
        total = sum(p.numel() for p in self.masknets.parameters())
        if total > 200e6:
            log(f"warning: the MaskNets hold {total / 1e6:.0f}M parameters (x4 with gradients and Adam state); "
                f"--hidden_dim_factor shrinks them")
        if args.epochs_s2 == 0 and args.start_stage <= 2 and args.epochs > 0:
            log("warning: --epochs_s2 0: stage 3 uses untrained MaskNets (the reference crashes here)")

    def _load_init(self, path: str) -> None:
        saved = load_checkpoint(path)
        state = full_method_state(saved, path) if isinstance(saved, dict) else None
        if isinstance(saved, dict) and saved.get("partial") and state is None:
            raise UserError(f"--init_from {path}: a checkpoint taken during stage 1 holds only what that stage trains; "
                            f"pass a stage file (stage1-co-training.pth or later) of that run")
        if not isinstance(state, dict):
            raise UserError(f"--init_from {path}: not a checkpoint of this framework (no method state)")
        saved_args = saved.get("args") or {}
        keys = ("database", "Tmodel", "AUXmodel", "Smodel", "mode", "mask_layer_num", "hidden_dim_factor",
                "mask_head_num")
        differ = [f"--{k} {saved_args[k]} (now {getattr(self.args, k)})" for k in keys
                  if k in saved_args and saved_args[k] != getattr(self.args, k)]
        if differ:
            raise UserError(f"--init_from {path} was trained with {', '.join(differ)}")
        check_same_data(saved, path, self.ctx, "--init_from", "a stage file of a run on this data and split")
        own = {k: v for k, v in state.items() if not k.startswith("baseline")}
        mine = self.state_dict()
        missing = [k for k in mine if not k.startswith("baseline") and k not in own]
        unexpected = [k for k in own if k not in mine]
        if missing or unexpected:
            raise UserError(f"--init_from {path} does not fit this MST-Distill configuration "
                            f"({len(missing)} missing, {len(unexpected)} unexpected tensors)")
        self.load_state_dict(own, strict=False)
        self.ctx.log(f"MST-Distill: networks loaded from {path}; starting at stage {self.args.start_stage}")

    # -- helpers -----------------------------------------------------------------------------------------------
    def _trainable(self, *modules: nn.Module) -> None:
        """``requires_grad`` for the stage: only ``modules`` train. Frozen networks hold no autograd graph (unless
        :attr:`keep_teacher_graph`, the benchmarks' imitation of the reference, which never froze anything)."""
        for module in (self.teacher, self.aux, self.student, self.masknets, self.gate):
            module.requires_grad_(any(module is m for m in modules) or self.keep_teacher_graph)
        if self.baseline is not None:
            self.baseline.requires_grad_(any(self.baseline is m for m in modules))

    def _frozen(self):
        """Grad mode for frozen networks' forwards: none, except when imitating the reference."""
        return torch.set_grad_enabled(self.keep_teacher_graph and torch.is_grad_enabled())

    def _segments(self, group: _Group) -> SegmentedForward | None:
        if self.args.mst_impl != "fast":
            return None
        if not group.split_tried:
            group.split_tried = True
            try:
                group.segmented = SegmentedForward(group.model, group.layers)
            except SplitError as error:
                self.ctx.log(f"MST-Distill: {error}; {group.model.model_name} uses forward hooks instead")
        return group.segmented

    def _masker(self, j: int):
        return partial(apply_mask, self.masknets[j])

    def _inputs(self, batch: Batch, group: _Group) -> tuple[torch.Tensor, ...]:
        return batch.inputs(group.modalities)

    # -- stage 2: one loss per MaskNet, each with only its own mask active ------------------------------------------
    def masknet_losses(self, batch: Batch, target: torch.Tensor,
                       clean: dict[str, list[list]] | None = None) -> list[torch.Tensor]:
        """KD_4(pred = teacher with MaskNet j only, target = student) for every MaskNet j, in expert order.

        ``clean`` may give a teacher's unmasked states at its cuts (by group tag), e.g. read from a cache.
        """
        losses = []
        for group in self.groups:
            inputs = self._inputs(batch, group)
            seg = self._segments(group)
            if seg is None:
                # One full hooked forward per MaskNet, as the reference. The frozen part before the hooked layer is
                # not recorded by autograd because its parameters do not require grad (unless keep_teacher_graph).
                for j, layer in zip(group.masknet_ids, group.layers):
                    with replace_outputs(group.model, {layer: self._masker(j)}):
                        losses.append(self.kd(group.model(*inputs), target))
                continue
            states = (clean or {}).get(group.tag)
            if states is None:
                with torch.no_grad():  # the clean features at every hooked layer, computed once
                    states = seg.clean_states(*inputs)
            for i, j in enumerate(group.masknet_ids):
                state = seg.replace(i, states[i], apply_mask(self.masknets[j], seg.feature(i, states[i])))
                losses.append(self.kd(seg.finish(i, state), target))
        return losses

    # -- stage 3: the experts' logits ------------------------------------------------------------------------------
    def expert_logits(self, batch: Batch) -> list[torch.Tensor]:
        """Logits of every expert ``[T0, T1, A0, A1]`` (cumulative or independent masks), without autograd."""
        cumulative = self.args.expert_masks == "cumulative"
        experts = []
        with self._frozen():
            for group in self.groups:
                inputs = self._inputs(batch, group)
                seg = self._segments(group)
                if seg is None:
                    experts += self._hooked_experts(group, inputs, cumulative)
                elif cumulative:
                    experts += self._cumulative_experts(group, seg, inputs)
                else:
                    experts += self._independent_experts(group, seg, inputs)
        return experts

    def _hooked_experts(self, group: _Group, inputs, cumulative: bool) -> list[torch.Tensor]:
        outs = []
        with contextlib.ExitStack() as attached:
            for j, layer in zip(group.masknet_ids, group.layers):
                if cumulative:  # the reference: hooks stay attached while the next experts run
                    attached.enter_context(replace_outputs(group.model, {layer: self._masker(j)}))
                    outs.append(group.model(*inputs))
                else:
                    with replace_outputs(group.model, {layer: self._masker(j)}):
                        outs.append(group.model(*inputs))
        return outs

    def _cumulative_experts(self, group: _Group, seg: SegmentedForward, inputs) -> list[torch.Tensor]:
        # prefix -> mask0 -> (next segment) shared; expert i stops adding masks after layer i.
        outs, state = [], seg.start(*inputs)
        last = len(group.layers) - 1
        for i, j in enumerate(group.masknet_ids):
            state = seg.replace(i, state, apply_mask(self.masknets[j], seg.feature(i, state)))
            if i == last:
                outs.append(seg.advance(i, state))
            else:
                state = seg.advance(i, state)
                outs.append(seg.finish(i + 1, state))
        return outs

    def _independent_experts(self, group: _Group, seg: SegmentedForward, inputs) -> list[torch.Tensor]:
        clean = seg.clean_states(*inputs)
        return [seg.finish(i, seg.replace(i, clean[i], apply_mask(self.masknets[j], seg.feature(i, clean[i]))))
                for i, j in enumerate(group.masknet_ids)]

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

    # -- per-sample cache of the frozen networks' outputs (stages 2-3) ---------------------------------------------
    def _cache_computations(self, stage: int) -> dict[str, Compute]:
        """What stage 2 or 3 computes per batch with frozen networks only, by cache item, most useful first."""
        if stage == 3:  # T, A and the (restored best) MaskNets are all frozen in stage 3
            return {"experts": self.expert_logits}
        computations: dict[str, Compute] = {"student": lambda batch: [self._student_target(batch)]}
        for group in self.groups:
            seg = self._segments(group)
            if seg is not None and seg.states_from_inputs:
                computations[group.tag] = partial(self._flat_clean_states, group, seg)
        return computations

    def _flat_clean_states(self, group: _Group, seg: SegmentedForward, batch: Batch) -> list:
        with torch.no_grad():
            return seg.flatten(seg.clean_states(*self._inputs(batch, group)))

    def _cache(self, stage: int, split: str) -> SampleCache | None:
        """The stage's cache for ``split``, filled on first use; ``None`` when caching is off or nothing fits."""
        key = (stage, split)
        if key not in self._caches:
            self._caches[key] = self._fill_cache(stage, split)
        return self._caches[key]

    def _fill_cache(self, stage: int, split: str) -> SampleCache | None:
        args, log = self.args, self.ctx.log
        if args.mst_impl != "fast" or args.mst_cache_mb <= 0 or args.max_steps or self.keep_teacher_graph:
            return None
        loader = self.ctx.make_loader(split, shuffle=False, max_steps=None)
        size = len(loader.indices)
        used = sum(c.nbytes for (s, _), c in self._caches.items() if s == stage and c is not None)
        budget = args.mst_cache_mb * 2 ** 20 - used
        with self._frozen():
            chosen = within_budget(self._cache_computations(stage), next(iter(loader)), size, budget, log,
                                   f"MST-Distill stage {stage}", split)
            if not chosen:
                return None
            started = time.perf_counter()
            cache = SampleCache.fill(loader, chosen, size)
        log(f"MST-Distill stage {stage}: cached {', '.join(chosen)} for the {size} {split} samples "
            f"({cache.nbytes / 2 ** 20:,.1f} MB, {time.perf_counter() - started:.1f} s)")
        return cache

    # -- the engine's view ---------------------------------------------------------------------------------------
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
            # Same batches as a standalone main-S.py run (shuffles restart at 0); its selection is its own.
            baseline = Stage(STAGE_NAMES[3], args.epochs, self._baseline_optimizer, self._baseline_step,
                             [self.baseline], val_step=self._baseline_step, select_key="ce", selected=self.baseline,
                             loader_epoch_start=0, reports_best_epoch=False,
                             on_stage_start=partial(self._trainable, self.baseline))
            baseline.on_stage_end = lambda: self.baseline_best_epoch.fill_(
                -1 if baseline.best_epoch is None else baseline.best_epoch)
            stages.append(baseline)
        return stages

    def _adam(self, params, lr: float) -> torch.optim.Optimizer:
        # PyTorch-default Adam as the reference, fused unless --no-fused_adam. Without it, the multi-tensor (foreach)
        # loop: bit-identical updates, and faster on CPU, where it is not PyTorch's default.
        return self.make_adam(params, lr, foreach=True)

    # stage 1 ------------------------------------------------------------------------------------------------------
    def _start_stage(self, *modules: nn.Module) -> None:
        """A stage starts: only ``modules`` require gradients, the per-epoch counters restart."""
        self._trainable(*modules)
        self._meter.means()
        self._routing = torch.zeros(self.ways, dtype=torch.float64, device=self.ctx.device)

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

    # stage 2 ------------------------------------------------------------------------------------------------------
    def _stage2_optimizer(self):
        return self._adam(self.masknets.parameters(), self.args.s2_lr)

    def _student_target(self, batch: Batch) -> torch.Tensor:
        with self._frozen():
            return self.student(batch.get(self.mode)).detach()

    def _stage2_terms(self, batch: Batch, split: str) -> tuple[dict, torch.Tensor, torch.Tensor]:
        cache = self._cache(2, split)
        if cache is not None and "student" in cache:
            target = cache.rows("student", batch.index)[0]
        else:
            target = self._student_target(batch)
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

    # stage 3 ------------------------------------------------------------------------------------------------------
    def _stage3_optimizer(self):
        return self._adam([*self.student.parameters(), *self.gate.parameters()], self.args.lr)

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

    # baseline -----------------------------------------------------------------------------------------------------
    def _baseline_optimizer(self):
        return self._adam(self.baseline.parameters(), self.args.lr)

    def _baseline_step(self, batch: Batch, epoch: int):
        return {"ce": self.task_loss(self.baseline(batch.get(self.mode)), batch.y)}

    # logs ---------------------------------------------------------------------------------------------------------
    def _epoch_logs(self) -> dict:
        return {key: float(value) for key, value in self._meter.means().items()}

    def _stage3_logs(self) -> dict:
        row = self._epoch_logs()
        total = float(self._routing.sum())
        for name, count in zip(self.expert_names, self._routing.tolist()):
            row[f"routing/{name}"] = count / total if total else 0.0
        self._routing.zero_()
        kept = {key: value for key, value in row.items() if key.startswith(("routing/", "expert_ce/"))}
        self._stage3_history.append({"epoch": len(self._stage3_history), **kept})
        return row

    def get_extra_state(self) -> dict:
        return {"stage3_history": [dict(row) for row in self._stage3_history]}

    def set_extra_state(self, state: dict) -> None:
        self._stage3_history = [dict(row) for row in (state or {}).get("stage3_history", [])]

    # -- results -----------------------------------------------------------------------------------------------
    def model_names(self) -> dict[str, str]:
        return {"teacher": self.args.Tmodel, "student": self.args.Smodel, "aux": self.args.AUXmodel}

    def _stage3_rows(self) -> list[dict]:
        return self._stage3_history

    def extra_results(self) -> dict:
        args = self.args
        extra = {
            "experts": self.expert_names,
            "hooked_layers": {"teacher": list(self.t_layers), "aux": list(self.a_layers)},
            "masknet_hidden_dims": {n: m.hidden_dim for n, m in zip(self.expert_names, self.masknets)},
            "options": {key: getattr(args, key) for key in ("k", "lb_mode", "expert_masks", "router_kd_grad",
                                                             "detach_s1", "mst_impl", "fused_adam", "epochs_s1",
                                                             "epochs_s2")},
        }
        rows = self._stage3_rows()
        if rows:
            per_epoch = [[row.get(f"routing/{name}", 0.0) for name in self.expert_names] for row in rows]
            mean = np.mean(np.asarray(per_epoch), axis=0).tolist()
            extra["routing"] = {"epochs": [row["epoch"] for row in rows], "per_epoch": per_epoch,
                                "last_epoch": dict(zip(self.expert_names, per_epoch[-1])),
                                "mean": dict(zip(self.expert_names, mean))}
            extra["expert_ce_last_epoch"] = {name: rows[-1].get(f"expert_ce/{name}") for name in self.expert_names}
            plot = self._plot_routing(rows)
            if plot is not None:
                extra["routing_plot"] = plot
        return extra

    def _plot_routing(self, rows: list[dict]) -> str | None:
        series = {name: [row.get(f"routing/{name}", 0.0) for row in rows] for name in self.expert_names}
        return plot_series(self.ctx, "routing.png", [row["epoch"] for row in rows], series, "stage-3 epoch",
                           "routing frequency", f"MST-Distill routing ({self.args.database}, k={self.args.k})", (0, 1))

    def side_models(self) -> dict[str, tuple[nn.Module, tuple[str, ...]]]:
        return {"baseline": (self.baseline, (self.mode,))} if self.baseline is not None else {}

    def side_model_results(self, name: str, metrics: dict, run_metrics: dict) -> dict:
        """The no-KD baseline's report, and its test metrics beside the MST student's in the log."""
        report = {"model": self.args.Smodel, "epochs": self.args.epochs, "lr": self.args.lr,
                  "best_epoch": int(self.baseline_best_epoch), "metrics": metrics}
        student, base = run_metrics["test"], metrics["test"]
        keys = [k for k in ("accuracy", "f1_weighted", "average_accuracy", "kappa", "mIoU") if k in base]
        self.ctx.log(f"Test, MST-Distill student vs no-KD baseline ({self.args.Smodel}, {self.args.epochs} epochs, "
                     f"lr {self.args.lr:g}, seed {self.args.seed}):")
        for key in ["loss", *keys]:
            self.ctx.log(f"  {key:<17} {student[key]:.4f}  vs  {base[key]:.4f}  ({student[key] - base[key]:+.4f})")
        return report


_ROLE_OF = {"--Tmodel": "teacher", "--AUXmodel": "aux", "--Smodel": "student"}
