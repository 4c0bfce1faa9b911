"""The command-line contract shared by every script (docs/scripts.md): registries feed ``choices``, help
strings state defaults, booleans are ``--x/--no-x``, and defaults left open (batch size, lr, epochs, model
names) are filled from the dataset spec and ``--mode`` after parsing.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from datasets import DATASETS, dataset_names, get_spec
from datasets.base import DatasetSpec
from models import MODELS
from utils.core.cards import MethodCard, fill_unset
from utils.core.errors import UserError
from utils.provenance import adopt_checkpoint_settings
from utils.description import RunDescription
from utils.resume import resume_args


#: the first line of the ``--help`` epilog listing a method's search space
SEARCH_SPACE_TITLE = "search space (reproduce.py --tune):"


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, except that the search-space epilog keeps one option a line (argparse rewraps text)."""

    def _format_text(self, text):
        if text.startswith(SEARCH_SPACE_TITLE):
            return text + "\n\n"
        return super()._format_text(text)


def search_space_epilog(card: MethodCard) -> str | None:
    """The ``--help`` epilog of a method with a search space: :data:`SEARCH_SPACE_TITLE`, then one option a line."""
    if not card.search_params:
        return None
    return "\n".join([SEARCH_SPACE_TITLE, *(f"  {param.describe()}" for param in card.search_params)])


class _Parser(argparse.ArgumentParser):
    """Every parsed value is checked here, so each script (and each flag a method adds) gets the same rules."""

    def error(self, message):  # one line and exit code 2, as every other bad input
        raise UserError(f"{message} (see {self.prog} --help)")

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        for action in self._actions:
            value = getattr(namespace, action.dest, None)
            if value is None or action.dest == argparse.SUPPRESS:
                continue
            if action.type in (int, float):
                for item in value if isinstance(value, list) else [value]:
                    check_number(flag_name(action), item, action.dest)
            elif isinstance(value, str) and is_path_flag(action.dest):
                setattr(namespace, action.dest, checked_path(flag_name(action), os.path.expanduser(value)))
        for dest in CHECKPOINT_FLAGS:
            check_checkpoint_path(namespace, dest)
        return namespace, extras


#: numeric flags by name (shell-style patterns, first match wins): (lowest value, whether it is allowed). Every
#: float must also be finite. Integers not listed are counts and must be >= 1; learning rates must be > 0.
#: ``--epochs 0`` would test an untrained model; a stage's own epoch count (MST-Distill's ``--epochs_s2 0``,
#: FitNets' ``--hint_epochs 0``) may be 0 to skip that stage.
NUMBER_RULES = (
    ("cuda_id", 0, True), ("num_workers", 0, True), ("seed", 0, True), ("*_seed", 0, True),
    ("epochs", 1, True), ("epochs_*", 0, True), ("*_epochs", 0, True),
    ("mvd_decisive_*", 0, True), ("mvd_shared", 0, True),
    ("lr", 0, False), ("*_lr", 0, False), ("*_mb", 0, True), ("w_*", 0, True), ("*_weight", 0, True),
    ("*temperature", 0, False), ("*_T", 0, False), ("*_t", 0, False),
)
#: string flags holding paths: ``~`` is expanded (the shell does not expand it in ``--out_dir=~/x``)
PATH_FLAG_PATTERNS = ("*_dir", "*_root", "resume", "ckpt_*", "init_from", "tuning_record")
#: flags that take a model checkpoint file (a run directory is a mistake: its best.pth is meant)
CHECKPOINT_FLAGS = ("ckpt_name", "ckpt_a", "ckpt_b")


def flag_name(action) -> str:
    return next((s for s in action.option_strings if s.startswith("--")), action.dest)


def is_path_flag(dest: str) -> bool:
    return any(fnmatch.fnmatchcase(dest, pattern) for pattern in PATH_FLAG_PATTERNS)


def check_number(flag: str, value, dest: str) -> None:
    """Raise :class:`UserError` when ``value`` is NaN, infinite, or below what ``--flag`` can mean."""
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{flag} must be a finite number, got {value}")
    rule = next((r for r in NUMBER_RULES if fnmatch.fnmatchcase(dest, r[0])), None)
    if rule is None:
        if isinstance(value, float):
            return
        rule = (dest, 1, True)  # a count: batches, samples, heads, workers per step, ...
    _, low, inclusive = rule
    if value < low or (value == low and not inclusive):
        bound = f">= {low}" if inclusive else f"> {low}"
        hint = "; leave it out for no cap" if dest == "max_steps" else ""
        raise UserError(f"{flag} must be {bound}, got {value}{hint}")


def checked_path(flag: str, value: str) -> str:
    """``value`` unless it is a symbolic link that never reaches a file or folder (a loop, or a dangling link)."""
    if value and os.path.islink(value) and not os.path.exists(value):
        try:
            os.stat(value)
        except OSError as error:
            raise UserError(f"{flag} {value} is a symbolic link that leads nowhere ({error.strerror}); point it at "
                            f"an existing file or folder") from None
    return value


def dataset_options() -> dict[str, str]:
    """Option destination -> the database whose ``add_arguments`` defines it (e.g. ``mfeat_m1`` -> UCI-MFeat)."""
    owners = {}
    for spec in DATASETS.values():
        if spec.add_arguments is not None:
            probe = argparse.ArgumentParser(add_help=False)
            spec.add_arguments(probe)
            owners.update({action.dest: spec.name for action in probe._actions})
    return owners


def check_dataset_options(args: argparse.Namespace, given: dict) -> None:
    """A dataset's options given for another database are refused: they would be silently ignored (``--mfeat_m1
    kar`` with ``--database Synthetic-MVD`` trains on Synthetic-MVD)."""
    database = get_spec(args.database).name
    for dest, owner in dataset_options().items():
        if dest in given and owner != database:
            flag = "--" + dest
            raise UserError(f"{flag} is an option of --database {owner}, but this run uses {database}; pass "
                            f"--database {owner}, or drop {flag}")


def check_checkpoint_path(namespace, dest: str) -> None:
    value = getattr(namespace, dest, None)
    if isinstance(value, str) and os.path.isdir(value):
        flag = "--" + dest
        best = os.path.join(value, "best.pth")
        if os.path.isfile(best):
            raise UserError(f"{flag} {value} is a run directory; pass the model inside it: {flag} {best}")
        raise UserError(f"{flag} {value} is a directory; pass a model file (the best.pth of a main-T.py / "
                        f"main-S.py run)")


@dataclass(frozen=True)
class Command:
    """A command line that is not one method's (main-MFH.py runs experiments, not one training run): what
    :func:`build_parser`, :func:`given_flags` and :func:`described` read of a method class, given directly: the
    card (name, ``--help`` summary, model roles, defaults), the hook adding the command's own flags and the one
    checking them once the dataset's defaults are filled."""

    card: MethodCard
    add_arguments: Callable[[argparse.ArgumentParser], None] = lambda group: None
    check_args: Callable[[argparse.Namespace, DatasetSpec], None] = lambda args, spec: None

    @property
    def name(self) -> str:
        return self.card.name

    def fill_defaults(self, args: argparse.Namespace, spec: DatasetSpec) -> None:
        fill_unset(args, self.card.dataset_defaults(spec))

    def default_models(self, spec: DatasetSpec, mode: str) -> dict[str, str]:
        return self.card.default_models(spec, mode)


def build_parser(method_cls) -> argparse.ArgumentParser:
    """The command line of ``method_cls``, a method class or a :class:`Command`: the framework's options (data, the
    models of its card's roles, training, output), its own (``add_arguments``) and every dataset's."""
    parser = _Parser(
        prog=os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else method_cls.name,
        description=method_cls.card.summary or getattr(method_cls, "__doc__", None),
        epilog=search_space_epilog(method_cls.card),
        formatter_class=_HelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument("--database", default="Synthetic-MVD", choices=dataset_names(), metavar="NAME",
                      help=f"dataset, one of {', '.join(dataset_names())} (default: %(default)s)")
    data.add_argument("--data_root", default=os.environ.get("MSTD_DATA_ROOT", "./data"),
                      help="folder holding the datasets (default: $MSTD_DATA_ROOT, else ./data)")
    data.add_argument("--metadata_dir", default="metadata",
                      help="folder of the split files <database>_indices.csv (default: %(default)s)")
    data.add_argument("--mode", default="m1", choices=["m1", "m2"],
                      help="the student's modality (default: %(default)s)")
    data.add_argument("--data_on_device", action=argparse.BooleanOptionalAction, default=False,
                      help="keep in-memory datasets on the GPU (default: off)")
    data.add_argument("--num_workers", type=int, default=0,
                      help="loader worker processes for file-backed datasets (default: %(default)s)")

    models = parser.add_argument_group("models")
    names = sorted(MODELS)
    flags = {"teacher": ("--Tmodel", "teacher"), "student": ("--Smodel", "student"),
             "aux": ("--AUXmodel", "auxiliary cross-modal teacher")}
    for role in method_cls.card.roles:
        flag, what = flags[role]
        models.add_argument(flag, default=None, choices=names, metavar="NAME",
                            help=f"{what} model (default: from the dataset and --mode); one of {', '.join(names)}")
    if method_cls.card.needs_checkpoint:
        models.add_argument("--ckpt_name", default=None, help=method_cls.card.checkpoint_text + " (required)")
        models.add_argument("--allow_teacher_mismatch", action=argparse.BooleanOptionalAction, default=False,
                            help="use a --ckpt_name trained on other data, another split or as another model anyway, "
                                 "with a warning in the log (default: off: refused)")

    train = parser.add_argument_group("training")
    train.add_argument("--seed", type=int, default=0,
                       help="seed; also selects split column group_<seed> (default: %(default)s)")
    train.add_argument("--init_seed", type=int, default=None,
                       help="seed of the model initialisation and of the training data order, apart from the split "
                            "--seed selects (default: --seed; reproduce.py --tune gives each trial its own)")
    train.add_argument("--batch_size", type=int, default=None, 
                       help="batch size (default: per dataset, docs/scripts.md)")
    train.add_argument("--lr", type=float, default=None,
                       help="learning rate (default: the method's, else per dataset, docs/scripts.md)")
    train.add_argument("--epochs", type=int, default=None, help=method_cls.card.epochs_help)
    train.add_argument("--max_steps", type=int, default=None,
                       help="cap on batches per epoch, for smoke runs (default: none)")
    train.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    train.add_argument("--cuda_id", type=int, default=None, help="alias of --device cuda:N (reference flag)")
    train.add_argument("--threads", type=int, default=None,
                       help="torch CPU threads (default: the CPUs of this process's affinity mask that are not already "
                            "busy, from the load average and the running tasks, at least 1 and at most torch's own "
                            "choice; OMP_NUM_THREADS, if set, is left to torch; the first log lines say what was "
                            "chosen)")
    train.add_argument("--amp", action=argparse.BooleanOptionalAction, default=False,
                       help="bfloat16 autocast on CUDA (default: off, fp32 as the reference)")
    train.add_argument("--fused_adam", action=argparse.BooleanOptionalAction, default=True,
                       help="fused Adam kernels where torch has them (CPU and CUDA): one kernel per step instead of a "
                            "loop over tensors; updates differ from PyTorch's default Adam (the reference's) by about "
                            "1 ulp. --no-fused_adam: the for-loop Adam, bit-identical to the reference's (default: on)")
    train.add_argument("--test_phase", action=argparse.BooleanOptionalAction, default=False,
                       help="also evaluate the current model on the test split every epoch (default: off)")
    train.add_argument("--val_phase", action=argparse.BooleanOptionalAction, default=False,
                       help="also evaluate the current model's headline metric on the validation split every epoch, "
                            "as val_phase/<metric> in metrics.jsonl (median pruning of reproduce.py --tune_prune "
                            "reads it; default: off)")
    train.add_argument("--no_test", action="store_true",
                       help="never build nor read the test split: no test loader, no test metrics (results.json "
                            "metrics.test is null), the data checks and training statistics see train and val "
                            "only; reproduce.py --tune runs its trials with it (docs/tuning.md)")

    output = parser.add_argument_group("output")
    output.add_argument("--out_dir", default="./runs", help="root of run directories (default: %(default)s)")
    output.add_argument("--resume", default=None, metavar="PATH",
                        help="continue a killed run from its directory or checkpoint.pth, with its own arguments (only "
                             "--epochs, raised, and runtime options such as --device may be given; "
                             "docs/checkpoints.md)")
    output.add_argument("--record", action=argparse.BooleanOptionalAction, default=True,
                        help="write TensorBoard events (default: on)")
    output.add_argument("--tuning_record", default=None, metavar="PATH",
                        help="a JSON object copied into results.json under \"tuning\": the tuning.json of the "
                             "search that chose this run's flags (reproduce.py --tune writes and passes it)")

    method_group = parser.add_argument_group(f"{method_cls.name} options")
    method_cls.add_arguments(method_group)
    for spec in DATASETS.values():
        if spec.add_arguments is not None:
            spec.add_arguments(parser)
    return parser


def given_flags(method_cls, argv=None) -> dict:
    """The options present on the command line (not defaulted), by destination."""
    parser = build_parser(method_cls)
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return vars(parser.parse_args(sys.argv[1:] if argv is None else argv))


def describe(method_cls, argv=None) -> RunDescription:
    """The run the command line ``argv`` asks for, resolved once (:class:`~utils.description.RunDescription`)."""
    parser = build_parser(method_cls)
    args = parser.parse_args(argv)
    if args.resume:  # continue that run with its own arguments (utils/resume.py)
        resumed, changes = resume_args(method_cls, parser, args, given_flags(method_cls, argv))
        return RunDescription(method_cls.name, get_spec(resumed.database).configured(resumed), resumed,
                              tuple(changes))
    given = given_flags(method_cls, argv)
    if method_cls.card.evaluates_checkpoint:  # test-T / test-S: the checkpoint's data and split by default
        adopt_checkpoint_settings(method_cls, args, given)
    check_dataset_options(args, given)
    return described(method_cls, args)


def parse_args(method_cls, argv=None) -> argparse.Namespace:
    """The options of :func:`describe`."""
    return describe(method_cls, argv).args


def described(method_cls, args: argparse.Namespace) -> RunDescription:
    """The description of a run whose options are parsed: the spec configured once, the options finalized."""
    spec = get_spec(args.database).configured(args)
    return RunDescription(method_cls.name, spec, finalize_args(method_cls, args, spec))


def finalize_args(method_cls, args: argparse.Namespace, spec: DatasetSpec) -> argparse.Namespace:
    """Fill defaults that depend on the dataset (as configured by its options, e.g. Paired's data shapes) and the
    mode, then let the method check its options. ``spec``: the database's spec configured by ``args``."""
    args.database = spec.name
    if args.cuda_id is not None and args.device == "auto":
        args.device = f"cuda:{args.cuda_id}"
    method_cls.fill_defaults(args, spec)  # batch size, lr, epochs and method options such as MST's epochs_s1
    defaults = method_cls.default_models(spec, args.mode)
    for role, flag in (("teacher", "Tmodel"), ("student", "Smodel"), ("aux", "AUXmodel")):
        if role in method_cls.card.roles and getattr(args, flag, None) is None:
            setattr(args, flag, defaults[role])
    if method_cls.card.needs_checkpoint and not getattr(args, "ckpt_name", None):
        raise UserError(f"{method_cls.name} needs a pre-trained teacher: pass --ckpt_name PATH "
                        f"(a best.pth from main-T.py / main-S.py, or a reference state dict)")
    if args.batch_size < 1 or args.epochs < 1 or args.lr <= 0:
        raise UserError("--batch_size must be >= 1, --epochs >= 1 and --lr > 0")
    if args.threads is not None and args.threads < 1:
        raise UserError("--threads must be >= 1")
    if args.no_test and args.test_phase:
        raise UserError("--test_phase evaluates the test split every epoch, which --no_test never reads; drop one")
    if args.tuning_record is not None:
        read_tuning_record(args.tuning_record)
    method_cls.check_args(args, spec)
    return args


def read_tuning_record(path: str) -> dict:
    """The JSON object of ``--tuning_record`` (checked when the run starts, copied into results.json at its end)."""
    try:
        record = json.loads(Path(path).read_text())
    except OSError as error:
        raise UserError(f"--tuning_record {path}: {error.strerror or error}; pass the tuning.json of a finished "
                        f"search") from None
    except ValueError:
        raise UserError(f"--tuning_record {path} is not JSON; pass the tuning.json of a finished search") from None
    if not isinstance(record, dict):
        raise UserError(f"--tuning_record {path} holds a JSON {type(record).__name__}, not an object; pass the "
                        f"tuning.json of a finished search")
    return record
