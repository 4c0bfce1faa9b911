"""Checkpoint and JSON files: written atomically, read with ``weights_only=True`` (plain data only), and a
failure to read one said in words that name the real problem."""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from utils.core.atomic import atomic_write_bytes
from utils.core.errors import UserError


def atomic_save(obj, path: Path) -> None:
    atomic_write_bytes(path, lambda handle: torch.save(obj, handle))


def atomic_write_json(obj, path: Path) -> None:
    text = json.dumps(jsonable(obj), indent=2, allow_nan=True) + "\n"
    atomic_write_bytes(path, lambda handle: handle.write(text.encode()))


def jsonable(value):
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else value
    if isinstance(value, Path):
        return str(value)
    return value


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint of ours or a bare state dict, always with ``weights_only=True``."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pth"
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        raise UserError(f"cannot read checkpoint {path}: {torch_load_failure(error)}") from None


#: what torch's zip reader says about a file cut short or not a zip archive at all
_TRUNCATED = ("failed finding central directory", "failed reading zip archive", "invalid header",
              "unexpected eof", "ran out of input", "file not found", "truncated")


def torch_load_failure(error: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in words that name the real problem: a file cut short (an
    interrupted copy) or not a checkpoint, or content the safe loader refuses (Python objects beyond tensors and
    plain data). torch's own advice to retry with ``weights_only=False`` is not passed on: that runs any code the
    file holds."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    text = " ".join(lines).lower()
    if "weights only load failed" in text or "weights_only" in text:
        unsupported = next((line for line in lines if "unsupported" in line.lower()), None)
        detail = f" ({unsupported.rstrip('.')})" if unsupported else ""
        return (f"it holds Python objects beyond tensors and plain data{detail}, which the safe loader "
                f"(weights_only=True) refuses; only checkpoints of plain data are read")
    if isinstance(error, (OSError, EOFError)) or any(marker in text for marker in _TRUNCATED):
        detail = lines[0].split(". ")[0].rstrip(".") if lines else "the file ended early"
        return f"the file is truncated or not a torch checkpoint ({detail}); copy it again or use another file"
    return lines[0] if lines else type(error).__name__


def full_method_state(saved: dict, path: str | Path) -> dict | None:
    """The complete method state of a loaded checkpoint: a stage file's ``method``, or a
    per-epoch ``checkpoint.pth``'s part laid over the stage file it names. ``None`` for a per-epoch checkpoint of
    the first stage, whose untrained networks are not stored (they are the run's initial state)."""
    state = saved.get("method")
    base = saved.get("base")
    if base is None:
        return None if saved.get("partial") else state
    base_path = Path(path).parent / base if not Path(path).is_dir() else Path(path) / base
    if not base_path.is_file():
        raise UserError(f"{path} builds on the stage file {base_path}, which is missing; restore it from the run "
                        f"directory (checkpoint.pth stores only what the current stage trains)")
    full = dict(load_checkpoint(base_path).get("method") or {})
    full.update(state or {})
    return full
