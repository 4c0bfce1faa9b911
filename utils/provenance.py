"""Where a checkpoint came from, and the checks that use it.

Every ``best.pth``, ``checkpoint.pth`` and stage file of a run carries a ``provenance`` record: the method, the
database and every option of its dataset (all flags the dataset's ``add_arguments`` defines, e.g. Synthetic-MVD's
``--mvd_*``), ``--mode``, the model names, ``--seed`` and the SHA-256 of the train/val/test index arrays (and of
the sample groups when the split keeps groups together, so a changed ``groups.npy`` refuses checkpoints of the old
split).
``best.pth`` adds the name of the saved model and the modalities it takes. Loading a model checkpoint
(``--ckpt_name``) compares that record with the current run, so a teacher that saw this run's test samples, or a
model of another name whose tensor shapes happen to fit, is refused instead of silently used (docs/checkpoints.md).

The record also carries the run's configuration (:func:`run_config`): every argument that can change its result, the
identity of its data (:func:`data_digest`) and the configuration digests of the checkpoints it starts from, with its
SHA-256 (:func:`config_digest`), the one definition of "the same experiment" that ``results.json``, the sweep and
its table use (docs/sweep.md).
"""
from __future__ import annotations

import argparse
import hashlib
import subprocess
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from datasets import get_spec
from datasets.groups import group_codes
from kd_methods.checkpoints import record_of
from models import MODELS, get_entry
from utils.core.checkpoints import load_checkpoint
from utils.core.data_digest import canonical_digest, file_sha256, files_sha256
from utils.core.errors import UserError
from utils.description import CHECKPOINT_INPUTS, RunDescription, dataset_options

RECORD_VERSION = 2


def split_digest(splits: dict, groups: np.ndarray | None = None) -> str:
    """SHA-256 of the train, val and test index arrays (as int64, in order, with their lengths), then of the
    sample groups, if any, as each sample's rank among the sorted group ids (runs without groups keep their
    digest)."""
    digest = hashlib.sha256()
    for name in ("train", "val", "test"):
        indices = np.ascontiguousarray(np.asarray(splits[name]).astype(np.int64, copy=False))
        digest.update(f"{name}:{len(indices)}:".encode())
        digest.update(indices.tobytes())
    if groups is not None:
        codes = group_codes(np.asarray(groups))[1]
        digest.update(f"groups:{len(codes)}:".encode())
        digest.update(np.ascontiguousarray(codes).tobytes())
    return digest.hexdigest()


def split_groups(spec_name: str, args, n: int) -> np.ndarray | None:
    """The group per sample of the run's split (``DatasetSpec.groups``), ``None`` for a per-sample split."""
    hook = get_spec(spec_name).groups
    return hook(args, n) if hook is not None else None


def data_digest(spec, args) -> str:
    """SHA-256 identifying a run's data: of the data files' contents for file-backed databases
    (``spec.data_files``, hashed once and cached: utils/core/data_digest.py), of the options that generate it otherwise
    (with ``spec.data_identity``, e.g. the digest of an embedded file). Paths do not count: moved data keeps its
    digest, other data in the same folder gets another."""
    if spec.data_files is not None:
        files = [Path(f) for f in spec.data_files(args)]
        root = Path(getattr(args, "data_root", ".")).resolve()
        hashes = files_sha256(files)
        named = {}
        for path in files:
            resolved = path.resolve()
            name = str(resolved.relative_to(root)) if resolved.is_relative_to(root) else path.name
            named[name] = hashes[str(path)]
        return canonical_digest({"files": named})
    identity = {"options": dataset_options(spec.name, args)}
    if spec.data_identity is not None:
        identity.update(spec.data_identity(args))
    return canonical_digest({"generated": spec.name, **identity})


def checkpoint_inputs(args) -> dict:
    """``{flag: {"sha256", "config_digest"}}`` of every checkpoint the run starts from: the file's SHA-256 and the
    configuration digest its record names (``None`` for a bare state dict)."""
    out = {}
    for flag in CHECKPOINT_INPUTS:
        path = getattr(args, flag, None)
        if not path or not Path(path).is_file():
            continue
        record = record_of(load_checkpoint(path)) or {}
        out[flag] = {"sha256": file_sha256(Path(path)), "config_digest": record.get("config_digest")}
    return out


def run_config(method: str | None, options: Mapping, spec_name: str, data: str, checkpoints: dict) -> dict:
    """What defines a run's result, seed aside: the method, database, the run's result-defining options
    (:attr:`RunDescription.options <utils.description.RunDescription.options>`: every argument but those of
    :data:`~utils.description.NOT_IN_CONFIG`, the model names included), the data digest and, per checkpoint it starts from, that
    checkpoint's configuration digest (its file's SHA-256 where it has no record). Equal across the seeds of one
    experiment, different for anything else."""
    starts_from = {flag: entry.get("config_digest") or f"file:{entry['sha256']}" for flag, entry in
                   sorted(checkpoints.items())}
    return {"method": method, "database": spec_name, "arguments": dict(sorted(options.items())), "data_digest": data,
            "starts_from": starts_from}


def config_digest(config: dict) -> str:
    """SHA-256 hex of the canonical JSON of a :func:`run_config`."""
    return canonical_digest(config)


def code_version() -> dict:
    """``{"commit", "dirty", "torch"}``: the git commit of the checkout the code runs from and whether tracked files
    differ from it (``None`` for both outside a checkout or without git), and the torch version."""
    repo = Path(__file__).resolve().parents[1]
    commit, dirty = None, None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
        if commit:
            status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                                    capture_output=True, text=True, timeout=30)
            dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {"commit": commit, "dirty": dirty, "torch": torch.__version__}


def run_record(description: RunDescription, splits: dict) -> dict:
    """The record of a run: what every checkpoint it writes was trained on, and the run's configuration."""
    args, spec, spec_name = description.args, description.spec, description.spec.name
    data = data_digest(spec, args)
    checkpoints = checkpoint_inputs(args)
    config = run_config(description.method, description.options, spec_name, data, checkpoints)
    data_root = getattr(args, "data_root", None)
    return {
        "version": RECORD_VERSION, "method": description.method, "database": spec_name,
        "mode": getattr(args, "mode", None), "models": description.models,
        "dataset_options": dataset_options(spec_name, args), "seed": getattr(args, "seed", None),
        "split_sha256": split_digest(splits, split_groups(spec_name, args, sum(len(splits[k]) for k in splits))),
        "split_sizes": {k: int(len(splits[k])) for k in ("train", "val", "test")},
        "data_digest": data, "data_root": str(Path(data_root).resolve()) if data_root else None,
        "checkpoints": checkpoints, "config": config, "config_digest": config_digest(config),
        "batch_size": getattr(args, "batch_size", None),
    }


def context_record(ctx) -> dict:
    """The record of the run behind ``ctx`` without its method name (a context's ``make_record``)."""
    return run_record(RunDescription(None, ctx.spec, ctx.args), ctx.splits)


def adopt_checkpoint_settings(method_cls, args, given: dict) -> None:
    """test-T / test-S: take the database, ``--mode``, dataset options, ``--seed`` and model name of the checkpoint
    being tested unless given; a given value that contradicts the checkpoint is refused (one line), since testing
    on another split would count samples the model was trained on (``--allow_teacher_mismatch`` overrides)."""
    path = getattr(args, "ckpt_name", None)
    if not path or not Path(path).is_file():
        return  # a missing file is reported when the model is loaded
    saved = load_checkpoint(path)
    record = record_of(saved)
    if record is None:
        return
    allow = getattr(args, "allow_teacher_mismatch", False)
    flag = {"student": "Smodel", "teacher": "Tmodel"}.get(method_cls.card.roles[0])
    conflicts = []

    def adopt(key, value, same=lambda a, b: a == b):
        if value is None:
            return True
        if key in given:
            if not same(getattr(args, key), value):
                conflicts.append(f"--{key} {getattr(args, key)} (checkpoint: {value})")
                return False
            return True
        setattr(args, key, value)
        return True

    try:
        same_database = adopt("database", record.get("database"), lambda a, b: get_spec(a).name == get_spec(b).name)
    except UserError:
        same_database = False
    for key in ("mode", "seed"):
        adopt(key, record.get(key))
    # its own data where it still is (other data given is compared by content when the model loads) and the batch
    # size it trained with, which fits; both may be given
    if "data_root" not in given and record.get("data_root") and Path(record["data_root"]).exists():
        args.data_root = record["data_root"]
    batch_size = record.get("batch_size") or (saved.get("args") or {}).get("batch_size")
    if "batch_size" not in given and batch_size:  # the size it trained with fits; any other may be given
        args.batch_size = batch_size
    if same_database:
        for key, value in (record.get("dataset_options") or {}).items():
            adopt(key, value)
    name = record.get("model_name") or record.get("models", {}).get(flag)
    if flag is not None and name and _fits_role(name, method_cls.card.roles[0]):  # else the load names the misfit
        adopt(flag, name)
    if conflicts and not allow:
        one = len(conflicts) == 1
        raise UserError(f"{', '.join(conflicts)} contradict{'s' if one else ''} the checkpoint {path}: a test on other "
                        f"data, another split (it holds samples the model was trained on) or another model gives wrong "
                        f"numbers; leave {'it' if one else 'them'} out to use the checkpoint's own, or pass "
                        f"--allow_teacher_mismatch")


def _fits_role(model_name: str, role: str) -> bool:
    """Whether a model of that name can be tested as ``role`` (student: one modality; teacher: both)."""
    if model_name not in MODELS:
        return False
    return len(get_entry(model_name).inputs) == (1 if role == "student" else 2)
