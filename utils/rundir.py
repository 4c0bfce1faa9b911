"""One directory per run: ``args.json``, ``log.txt``, ``metrics.jsonl``, TensorBoard events, ``checkpoint.pth``,
``best.pth`` and ``results.json``. Everything is written atomically (temporary file, then rename), so a run
killed at any instant leaves either the previous or the new version of each file, never a torn one; a write that
fails (full disk, no permission) removes its temporary file and ends the run with one line. A new run's directory
is created only once its data and models have loaded (:meth:`RunDir.deferred`), so a run refused before its first
epoch leaves nothing behind; the lines logged until then open its ``log.txt``.

Checkpoint files (docs/checkpoints.md): each one says what it is (``kind``: ``checkpoint``,
``best`` or ``stage``) and carries the run's provenance record (:mod:`utils.provenance`). A stage file
``stageN-<name>.pth`` holds the whole method state at the end of stage N; the per-epoch ``checkpoint.pth`` holds
only what the current stage changes (the parameters its optimiser updates and every buffer) and names the stage
file it builds on (``base``), so frozen networks are written once per stage, not after every epoch. While a
process works in a run directory it holds ``run.lock`` there (its pid); a lock whose process is gone is taken over.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path


from utils.core.atomic import atomic_write_bytes, check_writable
from utils.core.checkpoints import atomic_save, atomic_write_json, jsonable
from utils.core.errors import UserError
from utils.core.lock import RunLock


def _make_run_path(out_dir, method: str, database: str, tag: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(out_dir) / method / database / f"{tag}_{stamp}"
    path, suffix = base, 1
    while path.exists():  # two runs started in the same second
        suffix += 1
        path = base.with_name(f"{base.name}-{suffix}")
    try:
        path.mkdir(parents=True)
    except OSError as error:
        raise UserError(f"cannot create the run directory {path}: {error.strerror or error}; pass a writable "
                        f"--out_dir") from None
    return path


def _remove_run_path(path: Path) -> None:
    """Delete a run directory and its ``<method>/<database>`` folders when that leaves them empty."""
    shutil.rmtree(path, ignore_errors=True)
    for folder in (path.parent, path.parent.parent):
        with contextlib.suppress(OSError):  # not empty: other runs live there
            folder.rmdir()


class _NotLocked:
    """The lock of a deferred run: nothing is held until its directory exists (:meth:`RunDir.materialize`)."""

    held, took_over = False, None

    def release(self) -> None:
        pass


class _Console(logging.StreamHandler):
    """stdout; a closed pipe (``| head``) is no logging error: it ends the script quietly (utils.engine.main)."""

    def handleError(self, record):
        if isinstance(sys.exc_info()[1], BrokenPipeError):
            raise  # noqa: PLE0704 - re-raises what emit() just caught
        super().handleError(record)


class _LogFile(logging.FileHandler):
    """``log.txt``; a failed write (full disk) ends the run with one line instead of a logging traceback."""

    def handleError(self, record):
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            raise UserError(f"cannot write {self.baseFilename}: {error.strerror or error}; check the free space "
                            f"there, or pass another --out_dir") from None
        super().handleError(record)


class RunDir:
    """Owns the files of one run. Create with :meth:`create` (new run) or :meth:`reopen` (``--resume``)."""

    def __init__(self, path: Path, record: bool = True, lock: RunLock | None = None):
        self.path = Path(path)
        self.record = record
        self._writer = None
        self.lock = lock if lock is not None else RunLock(self.path).acquire()
        #: the run's provenance record, stamped into every checkpoint file (set by the engine)
        self.provenance: dict | None = None
        self.logger = self._make_logger()

    # -- construction -------------------------------------------------------------------------------------
    @classmethod
    def create(cls, out_dir: str, method: str, database: str, tag: str, args_dict: dict, record: bool = True):
        check_writable(out_dir)
        path = _make_run_path(out_dir, method, database, tag)
        run = cls(path, record)
        atomic_write_json(args_dict, path / "args.json")
        return run

    @classmethod
    def deferred(cls, out_dir: str, method: str, database: str, tag: str, args_dict: dict, record: bool = True):
        """A new run whose directory :meth:`materialize` creates; until then :meth:`log` prints the lines and
        keeps them for ``log.txt``. ``--out_dir`` is checked now, so an unwritable one fails before the data
        loads."""
        check_writable(out_dir)
        run = cls.__new__(cls)
        run.path, run.record, run._writer, run.logger, run.lock = None, record, None, None, _NotLocked()
        run._pending, run._early = (out_dir, method, database, tag, args_dict), []
        return run

    def materialize(self) -> Path:
        """Create a deferred run's directory, ``args.json``, and ``log.txt`` opening with the lines logged so far
        (no-op for a run that exists)."""
        pending = getattr(self, "_pending", None)
        if pending is None:
            return self.path
        out_dir, method, database, tag, args_dict = pending
        path = _make_run_path(out_dir, method, database, tag)
        early = "".join(f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(t))} {m}\n" for t, m in self._early)
        try:
            atomic_write_bytes(path / "log.txt", lambda handle: handle.write(early.encode()))
            kept = {k: v for k, v in vars(self).items() if v is not None and k not in ("path", "logger", "_writer")}
            self.__init__(path, self.record)
            for key, value in kept.items():  # attributes set while deferred (e.g. by the engine)
                if getattr(self, key, None) is None:
                    setattr(self, key, value)
            self._pending, self._early = None, []
            atomic_write_json(args_dict, path / "args.json")
        except BaseException:  # e.g. a full disk: the directory just created holds nothing to resume
            if self.logger is not None:
                self.close()
            _remove_run_path(path)
            self.path = None
            raise
        return path

    @property
    def exists(self) -> bool:
        return self.path is not None and self.path.is_dir()

    @property
    def has_checkpoint(self) -> bool:
        return self.path is not None and (self.path / "checkpoint.pth").is_file()

    def remove(self) -> None:
        """Delete the run directory (a new run that failed before it saved a checkpoint), and its
        ``<method>/<database>`` folders when that leaves them empty."""
        self.close()
        if self.path is not None:
            _remove_run_path(self.path)

    @classmethod
    def reopen(cls, path: Path, record: bool = True, keep_metrics=lambda row: True):
        """Reopen a run directory, dropping ``metrics.jsonl`` rows newer than the checkpoint being resumed.

        Refused (one line) while another live process holds the run's lock."""
        run = cls(path, record, RunLock(path).acquire())
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
        try:
            file_handler = _LogFile(self.path / "log.txt")
        except OSError as error:
            raise UserError(f"cannot write {self.path / 'log.txt'}: {error.strerror or error}; pass a writable "
                            f"--out_dir") from None
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        console = _Console(sys.stdout)
        console.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(file_handler)
        logger.addHandler(console)
        return logger

    # -- logging ------------------------------------------------------------------------------------------
    def log(self, message: str) -> None:
        if self.logger is None:  # deferred run: print now, write into log.txt at materialize()
            self._early.append((time.time(), message))
            print(message, flush=True)
            return
        self.logger.info(message)

    def log_file_only(self, message: str) -> None:
        """Append ``message`` to ``log.txt`` alone (scripts print errors on stderr themselves); never raises, as
        it records why a run ended, possibly a full disk."""
        if not self.exists:
            return
        with contextlib.suppress(OSError), open(self.path / "log.txt", "a") as handle:
            handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")

    @property
    def writer(self):
        if self._writer is None and self.record:
            from torch.utils.tensorboard import SummaryWriter  # heavy import, only when recording

            self._writer = SummaryWriter(log_dir=str(self.path))
        return self._writer

    def log_metrics(self, row: dict, step: int) -> None:
        """Append one JSON line to ``metrics.jsonl`` and mirror every number to TensorBoard."""
        try:
            with open(self.path / "metrics.jsonl", "a") as handle:
                handle.write(json.dumps(jsonable(row), allow_nan=True) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as error:
            raise UserError(f"cannot write {self.path / 'metrics.jsonl'}: {error.strerror or error}; check the free "
                            f"space there, or pass another --out_dir") from None
        if self.writer is not None:
            stage = row.get("stage", "train")
            for key, value in row.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("epoch",):
                    self.writer.add_scalar(f"{stage}/{key}", value, step)
            self.writer.flush()

    # -- files --------------------------------------------------------------------------------------------
    def _stamped(self, state: dict, kind: str, **extra) -> dict:
        record = {**self.provenance, **extra} if self.provenance is not None else None
        return {**state, "kind": kind, "provenance": record}

    def save_checkpoint(self, state: dict) -> None:
        atomic_save(self._stamped(state, "checkpoint"), self.path / "checkpoint.pth")

    def save_best(self, state: dict) -> None:
        extra = {"model_name": state.get("model_name"), "inputs": state.get("inputs")}
        atomic_save(self._stamped(state, "best", **extra), self.path / "best.pth")

    def save_file(self, name: str, state: dict, kind: str = "stage") -> Path:
        atomic_save(self._stamped(state, kind), self.path / name)
        return self.path / name

    def write_results(self, results: dict) -> None:
        atomic_write_json(results, self.path / "results.json")

    def close(self) -> None:
        if self.logger is None:  # a deferred run that never materialised holds nothing
            return
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        for handler in list(self.logger.handlers):
            handler.close()
            self.logger.removeHandler(handler)
        self.lock.release()
