"""The one atomic file writer (temporary file, fsync, rename) and how a failed write is reported.

Imports only the standard library, so light processes (the sweep's per-node wrapper) write through it as the
training scripts do (:mod:`utils.rundir` re-exports it). A failed write removes its temporary file and becomes one
:class:`~utils.core.errors.UserError` line naming the file, why (no space left, read-only file system, permission
denied, not a directory) and what to do; the previous version of the file, if any, is kept.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import threading
from pathlib import Path

from utils.core.errors import UserError

OUT_DIR_FIX = "check the free space and permissions there, or pass another --out_dir"
#: what torch's zip stream writer (``torch.save``) says when the file system refuses a write, e.g. a full disk:
#: ``[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0`` or ``PytorchStreamWriter failed writing
#: file data/0: file write failed``
TORCH_WRITER_FAILURES = ("unexpected pos", "file write failed", "failed writing", "inline_container")


def atomic_write_bytes(path: Path, writer, fix: str = OUT_DIR_FIX, make_parents: bool = False) -> None:
    """Write through ``writer(handle)`` into a temporary file, then rename it over ``path``. On any failure the
    temporary file is removed (a full disk must not keep a half-written checkpoint of a gigabyte), and a failed
    write is one :class:`UserError` line naming the file and ``fix``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        if make_parents:
            path.parent.mkdir(parents=True, exist_ok=True)
        with interrupts_deferred():
            with open(tmp, "wb") as handle:
                writer(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            tmp.unlink()
        reason = write_failure(error, path)
        if reason is None:
            raise
        raise UserError(f"cannot write {path}: {reason}; {fix}") from None


def atomic_write_text(path: Path, text: str, fix: str = OUT_DIR_FIX) -> None:
    atomic_write_bytes(path, lambda handle: handle.write(text.encode()), fix)


@contextlib.contextmanager
def interrupts_deferred():
    """Ctrl-C during the block takes effect when it ends (as KeyboardInterrupt), so a file is never left half-written.

    An interrupted ``torch.save`` also leaves its C++ stream writer behind, whose destructor later writes to the
    closed file and aborts the interpreter (``terminate called after throwing ... write to closed file``). Only the
    main thread receives signals; elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN:  # the process ignores Ctrl-C (e.g. started in the background): nothing to defer
        yield
        return
    received = []
    signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
    if received:  # delivered again to whatever handled it before: KeyboardInterrupt for Python's default
        signal.raise_signal(signal.SIGINT)


def write_failure(error: BaseException, path: Path | None = None) -> str | None:
    """Why a write failed, for an error the user can fix (no space, no permission, not a directory), else None.

    ``torch.save`` reports a refused write as a RuntimeError of its C++ stream writer, without the OS's reason;
    it is named as a full disk when the file system has no space left (asked afterwards), else as a refused write."""
    if isinstance(error, OSError):
        return error.strerror or str(error)
    if isinstance(error, RuntimeError):
        text = str(error).strip()
        if not any(marker in text for marker in TORCH_WRITER_FAILURES) and "write" not in text.lower():
            return None
        if path is not None and _disk_full(Path(path).parent):
            return os.strerror(errno.ENOSPC)
        detail = re.sub(r"^\[enforce fail at [^\]]*\][\s.]*", "", text.splitlines()[0]) if text else ""
        return f"the file system refused the write (torch.save: {detail or type(error).__name__}); the disk may be full"
    return None


def _disk_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free == 0
    except OSError:
        return False


def make_dirs(path: Path, fix: str = OUT_DIR_FIX) -> Path:
    """``mkdir -p``, a failure being one :class:`UserError` line."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create the folder {path}: {error.strerror or error}; {fix}") from None
    return Path(path)


def check_writable(folder: str | Path) -> None:
    """Fail at once, with one line, when run directories cannot be created under ``folder`` (a regular file in
    the way, no permission, a read-only file system), rather than after the data has loaded."""
    if not str(folder).strip():  # Path("") would be the current directory
        raise UserError("--out_dir is empty; pass a folder (default: ./runs)")
    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe.parent != probe:  # mkdir -p writes into the first existing ancestor
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"--out_dir {folder} cannot be created: {probe} is not a directory; pass another --out_dir")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"--out_dir {folder} is not writable ({probe}: permission denied or a read-only file "
                        f"system); pass another --out_dir")
