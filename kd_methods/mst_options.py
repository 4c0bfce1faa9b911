"""MST-Distill's command line: its flags, their per-dataset defaults, the checks of their combinations, the first log
line, and the tables of hooked layers (``kd_methods.taps`` slot ``mst``) the checks and error messages name. The method
itself is :mod:`kd_methods.mst`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from datasets.base import DatasetSpec
from kd_methods.features import usable_models
from kd_methods.taps import layers
from models import MODELS, get_entry
from utils.core.errors import UserError

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


class MSTOptions:
    """The command-line side of :class:`kd_methods.mst.MSTDistill` (a mixin before :class:`kd_methods.base.Method`)."""

    @classmethod
    def epoch_plan(cls, args: argparse.Namespace) -> str:
        """First log line: --epochs alone does not shorten stages 1-2."""
        skip = getattr(args, "start_stage", 1) - 1
        s1, s2 = (0 if skip >= 1 else args.epochs_s1), (0 if skip >= 2 else args.epochs_s2)
        baseline = f" + {args.epochs} baseline" if getattr(args, "compare_baseline", False) else ""
        return (f"{s1} co-training (--epochs_s1) + {s2} masknets (--epochs_s2) + {args.epochs} distillation "
                f"(--epochs){baseline} epochs; --epochs sets stage 3 only")

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


_ROLE_OF = {"--Tmodel": "teacher", "--AUXmodel": "aux", "--Smodel": "student"}
