"""``--resume``: continue the run of a run directory exactly as it was started (docs/checkpoints.md).

The run's own arguments are used. Flags given beside ``--resume`` must agree with them, except where and how the
run executes (:data:`RUNTIME_OPTIONS`) and ``--epochs`` raised to extend the run; those are applied and logged.
A finished run (``results.json`` present) is reported and left untouched; a best.pth, a stage file or a run of
another method gets one line saying what to pass instead.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from kd_methods import METHODS
from utils.core.checkpoints import jsonable as plain, load_checkpoint
from utils.core.errors import FinishedRun, UserError
from utils.core.names import script_of

#: options that may differ when a run is resumed (where and how it runs, not what it computes)
RUNTIME_OPTIONS = ("device", "cuda_id", "num_workers", "resume", "record", "data_root", "data_on_device", "threads")
#: options that may grow when a run is resumed: more epochs continue a run (fewer would cut what it selected)
EXTENDABLE = ("epochs",)


def _method_of(saved: dict, run_path: Path) -> str | None:
    record = saved.get("provenance")
    if isinstance(record, dict) and record.get("method"):
        return record["method"]
    name = run_path.parent.parent.name  # <out_dir>/<method>/<database>/<run>
    return name if name in METHODS else None


def _jsonable(value):
    return json.loads(json.dumps(plain(value)))


def _same_path(a: str, b: str) -> bool:
    """``runs`` and ``./runs/`` name the same folder (values that are not paths compare equal only when equal)."""
    return ("/" in a or "/" in b) and os.path.normpath(os.path.expanduser(a)) == os.path.normpath(os.path.expanduser(b))


def resume_args(method_cls, parser: argparse.ArgumentParser, args: argparse.Namespace,
                given: dict) -> tuple[argparse.Namespace, list[str]]:
    """The arguments of the run ``args.resume`` names, with the applicable ``given`` flags applied, and those
    flags as ``--flag value (was old)``."""
    path = Path(args.resume)
    run_path = path if path.is_dir() else path.parent
    saved = load_checkpoint(path)
    if not isinstance(saved, dict) or not isinstance(saved.get("args"), dict):
        raise UserError(f"--resume {path} is not a checkpoint of this framework; pass the run directory that holds "
                        f"checkpoint.pth")
    kind = saved.get("kind")
    if kind == "best":
        raise UserError(f"--resume {path} is a best.pth (the selected model), not a checkpoint: to continue its run "
                        f"pass --resume {run_path}; to use the model, pass it as --ckpt_name")
    if kind == "stage":
        raise UserError(f"--resume {path} is a stage file: to start a new run from it pass --start_stage N "
                        f"--init_from {path} (MST-Distill); to continue its run pass --resume {run_path}")
    if kind != "checkpoint":
        raise UserError(f"--resume {path} is not a checkpoint.pth; to continue its run pass --resume {run_path}")
    method = _method_of(saved, run_path)
    if method is not None and method != method_cls.name:
        raise UserError(f"--resume {run_path} is a run of {method}, not {method_cls.name}; resume it with "
                        f"{script_of(method)} --resume {run_path}")
    if (run_path / "results.json").is_file():
        raise FinishedRun(run_path, json.loads((run_path / "results.json").read_text()))

    run_args = saved["args"]
    applied, differ = [], []
    for key, value in given.items():
        if key == "resume":
            continue
        value, old = _jsonable(value), run_args.get(key)
        if value == old or (isinstance(value, str) and isinstance(old, str) and _same_path(value, old)):
            continue
        shown = f"--{key} {value}"
        if key in RUNTIME_OPTIONS or (key in EXTENDABLE and isinstance(old, int) and value >= old):
            applied.append(f"{shown} (was {old})")
        else:
            differ.append(f"{shown} (run: {old})")
    if differ:
        raise UserError(f"--resume continues {run_path} with its own arguments (args.json), but {', '.join(differ)}; "
                        f"drop {'it' if len(differ) == 1 else 'them'} or start a new run (only --epochs, raised, and "
                        f"{', '.join('--' + k for k in RUNTIME_OPTIONS if k != 'resume')} may change)")
    defaults = {action.dest: action.default for action in parser._actions if action.dest != "help"}
    resumed = argparse.Namespace(**{**defaults, **run_args})
    for key, value in given.items():
        setattr(resumed, key, value)
    if "cuda_id" in given and "device" not in given:
        resumed.device = f"cuda:{given['cuda_id']}"
    resumed.resume = args.resume
    return resumed, applied
