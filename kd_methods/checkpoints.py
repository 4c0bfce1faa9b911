"""Loading a network a method starts from (a teacher, the model test-T/test-S evaluate, MFH's networks), and the
checks that a checkpoint fits the run: its provenance record (utils/provenance.py writes it) is compared with the
run's, so a teacher that saw this run's test samples, or a model of another name whose tensor shapes happen to fit,
is refused instead of silently used.
"""
from __future__ import annotations

import torch.nn as nn

from utils.core.checkpoints import load_checkpoint
from utils.core.errors import UserError


def load_model_checkpoint(model: nn.Module, path: str, ctx, role: str = "model", check_provenance: bool = True,
                          contents=None) -> nn.Module:
    """Load a model (a teacher, or the network test-T/test-S evaluate) from our ``best.pth`` or a reference-style
    bare state dict (strict).

    Once the tensors fit, a ``best.pth`` trained on other data, another split or as another model (of the same
    shapes) is refused (:func:`check_model_checkpoint`; ``--allow_teacher_mismatch`` makes it
    a warning; ``check_provenance=False`` skips it); a checkpoint.pth or stage file is not a model. The
    project's one checkpoint-to-model loader (methods, test scripts, the MFH tools). ``contents``: the file's contents
    when the caller has read it already (it is not read twice).
    """
    state = load_checkpoint(path) if contents is None else contents
    if isinstance(state, dict) and state.get("kind") in ("checkpoint", "stage", "snapshot"):
        what = {"checkpoint": "per-epoch checkpoint", "stage": "stage file", "snapshot": "best snapshot"}
        raise UserError(f"{path} is a {what[state['kind']]} of a whole run, not a model; pass the best.pth of "
                        f"that run directory")
    saved = state if isinstance(state, dict) and isinstance(state.get("model"), dict) else None
    if saved is not None:
        state = saved["model"]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError:
        ours = set(model.state_dict())
        theirs = set(state) if isinstance(state, dict) else set()
        detail = (f"{len(ours - theirs)} missing and {len(theirs - ours)} unexpected keys"
                  if ours != theirs else "tensor shapes differ")
        held = f" (it holds {saved['model_name']})" if saved is not None and saved.get("model_name") else ""
        note = mismatch_note(saved, ctx, model.model_name)
        fix = ("pass a checkpoint trained on this run's data" if note and "model " not in note else
               f"pass a checkpoint of {model.model_name}, or the model name the checkpoint was trained with")
        raise UserError(f"checkpoint {path} does not fit {role} '{model.model_name}' ({detail}){held}{note}; "
                        f"{fix}") from None
    # the tensors fit; refuse one trained on other data, another split or as another model of the same shapes
    if check_provenance:
        check_model_checkpoint(saved, path, ctx, model.model_name, role)
    return model


def record_of(saved) -> dict | None:
    """The provenance record of a loaded checkpoint; ``None`` for a reference-style bare state dict."""
    record = saved.get("provenance") if isinstance(saved, dict) else None
    return record if isinstance(record, dict) else None


def describe(record: dict, keys) -> str:
    parts = []
    for key in keys:
        if key == "database":
            parts.append(str(record.get("database")))
        elif key == "model":
            parts.append(f"model {record.get('model_name')}")
        elif key == "data":
            digest = record.get("data_digest") or "?"
            parts.append(f"the data in {record.get('data_root')} (sha256 {digest[:12]})")
        elif key == "split":
            digest = record.get("split_sha256") or "?"
            parts.append(f"the --seed {record.get('seed')} split (sha256 {digest[:12]})")
        else:
            parts.append(f"--{key} {record.get('dataset_options', {}).get(key)}")
    return ", ".join(parts)


def differences(saved: dict, current: dict, model_name: str | None) -> list[str]:
    """What differs between a checkpoint's record and the current run: keys for :func:`describe`."""
    if saved.get("database") != current["database"]:
        keys = ["database"]
    else:
        mine, theirs = current.get("dataset_options", {}), saved.get("dataset_options", {})
        keys = [k for k in mine if k in theirs and theirs[k] != mine[k]]
        if not keys and saved.get("data_digest") and current.get("data_digest") \
                and saved["data_digest"] != current["data_digest"]:
            keys.append("data")
        if saved.get("split_sha256") and saved["split_sha256"] != current["split_sha256"]:
            keys.append("split")
    if model_name is not None and saved.get("model_name") and saved["model_name"] != model_name:
        keys.append("model")
    return keys


def mismatch_note(saved, ctx, model_name: str) -> str:
    """``"; it was trained on ..., this run uses ..."`` when the record explains why a checkpoint does not fit."""
    record = record_of(saved)
    if record is None:
        return ""
    current = {**ctx.record(), "model_name": model_name}
    keys = differences(record, current, model_name)
    return f"; it was trained on {describe(record, keys)}, this run uses {describe(current, keys)}" if keys else ""


def check_model_checkpoint(saved, path, ctx, model_name: str, role: str = "teacher") -> None:
    """Refuse (one line) a model checkpoint trained on other data, another split or as another model.

    ``--allow_teacher_mismatch`` turns the refusal into a warning in the run's log; a checkpoint without a record
    (a reference-style bare state dict) loads with a warning.
    """
    record = record_of(saved)
    log = ctx.log
    if record is None:
        log(f"warning: {path} is a bare state dict without a record of its training data, split or model: "
            f"it cannot be checked against this run (a best.pth of this framework can)")
        return
    current = {**ctx.record(), "model_name": model_name}
    keys = differences(record, current, model_name)
    if not keys:
        return
    message = (f"{role} checkpoint {path} was trained on {describe(record, keys)}, but this run uses "
               f"{describe(current, keys)}")
    if getattr(ctx.args, "allow_teacher_mismatch", False):
        log(f"warning: {message}; used anyway (--allow_teacher_mismatch)")
        return
    raise UserError(f"{message}; pass a checkpoint trained on this run's data, split and model, or "
                    f"--allow_teacher_mismatch to use it anyway")


def check_same_data(saved, path, ctx, flag: str, fix: str) -> None:
    """Refuse (one line) networks trained on other data or another split than this run's: they would carry this
    run's test samples into its training (MST-Distill's ``--init_from``). A file without a record is not checked."""
    record = record_of(saved)
    if record is None:
        return
    current = ctx.record()
    keys = differences(record, current, None)
    if keys:
        raise UserError(f"{flag} {path} was trained on {describe(record, keys)}, but this run uses "
                        f"{describe(current, keys)}; pass {fix}")
