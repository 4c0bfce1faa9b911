"""One directory per run: ``args.json``, ``log.txt``, ``metrics.jsonl``, TensorBoard events, ``checkpoint.pth``,
``best.pth`` and ``results.json``. Everything is written atomically (temporary file, then rename), so a run
killed at any instant leaves either the previous or the new version of each file, never a torn one.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import torch

from utils.errors import UserError


def atomic_write_bytes(path: Path, writer) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as handle:
        writer(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def atomic_save(obj, path: Path) -> None:
    atomic_write_bytes(path, lambda handle: torch.save(obj, handle))


def atomic_write_json(obj, path: Path) -> None:
    text = json.dumps(_jsonable(obj), indent=2, allow_nan=True) + "\n"
    atomic_write_bytes(path, lambda handle: handle.write(text.encode()))


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _jsonable(value.tolist())
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
        raise UserError(f"cannot read checkpoint {path}: {str(error).splitlines()[0]}") from None


class RunDir:
    """Owns the files of one run. Create with :meth:`create` (new run) or :meth:`reopen` (``--resume``)."""

    def __init__(self, path: Path, record: bool = True):
        self.path = Path(path)
        self.record = record
        self._writer = None
        self.logger = self._make_logger()

    # -- construction -------------------------------------------------------------------------------------
    @classmethod
    def create(cls, out_dir: str, method: str, database: str, tag: str, args_dict: dict, record: bool = True):
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = Path(out_dir) / method / database / f"{tag}_{stamp}"
        path, suffix = base, 1
        while path.exists():  # two runs started in the same second
            suffix += 1
            path = base.with_name(f"{base.name}-{suffix}")
        path.mkdir(parents=True)
        run = cls(path, record)
        atomic_write_json(args_dict, path / "args.json")
        return run

    @classmethod
    def reopen(cls, path: Path, record: bool = True, keep_metrics=lambda row: True):
        """Reopen a run directory, dropping ``metrics.jsonl`` rows newer than the checkpoint being resumed."""
        run = cls(path, record)
        metrics = path / "metrics.jsonl"
        if metrics.is_file():
            rows = [line for line in metrics.read_text().splitlines() if line.strip()]
            kept = [line for line in rows if keep_metrics(json.loads(line))]
            atomic_write_bytes(metrics, lambda handle: handle.write("".join(r + "\n" for r in kept).encode()))
        return run

    def _make_logger(self) -> logging.Logger:
        logger = logging.getLogger(f"mstd.run.{self.path}")
        logger.setLevel(logging.INFO)
        logger.propagate = False
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        file_handler = logging.FileHandler(self.path / "log.txt")
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        console = logging.StreamHandler(sys.stdout)
        console.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(file_handler)
        logger.addHandler(console)
        return logger

    # -- logging ------------------------------------------------------------------------------------------
    def log(self, message: str) -> None:
        self.logger.info(message)

    @property
    def writer(self):
        if self._writer is None and self.record:
            from torch.utils.tensorboard import SummaryWriter  # heavy import, only when recording

            self._writer = SummaryWriter(log_dir=str(self.path))
        return self._writer

    def log_metrics(self, row: dict, step: int) -> None:
        """Append one JSON line to ``metrics.jsonl`` and mirror every number to TensorBoard."""
        with open(self.path / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(_jsonable(row), allow_nan=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        if self.writer is not None:
            stage = row.get("stage", "train")
            for key, value in row.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("epoch",):
                    self.writer.add_scalar(f"{stage}/{key}", value, step)
            self.writer.flush()

    # -- files --------------------------------------------------------------------------------------------
    def save_checkpoint(self, state: dict) -> None:
        atomic_save(state, self.path / "checkpoint.pth")

    def save_best(self, state: dict) -> None:
        atomic_save(state, self.path / "best.pth")

    def save_file(self, name: str, state: dict) -> Path:
        atomic_save(state, self.path / name)
        return self.path / name

    def write_results(self, results: dict) -> None:
        atomic_write_json(results, self.path / "results.json")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        for handler in list(self.logger.handlers):
            handler.close()
            self.logger.removeHandler(handler)
