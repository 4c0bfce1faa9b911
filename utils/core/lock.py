"""``run.lock``: the lock a process holds while it works in a run directory (its pid, host and start time); a lock
whose process is gone is taken over."""
from __future__ import annotations

import os
import socket
from pathlib import Path

from utils.core.errors import UserError

LOCK_NAME = "run.lock"


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux ``/proc``), so a reused pid is not mistaken for the holder."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    now = _process_start(pid)
    return started is None or now is None or now == started


class RunLock:
    """``run.lock`` in a run directory: ``pid host start-time`` of the process working there."""

    def __init__(self, directory: Path):
        self.path = Path(directory) / LOCK_NAME
        self.held = False
        self.took_over: str | None = None

    def acquire(self) -> "RunLock":
        me = f"{os.getpid()} {socket.gethostname()} {_process_start(os.getpid()) or '-'}\n"
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is not None:
                    raise UserError(holder) from None
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(me)
            self.held = True
            return self
        raise UserError(f"cannot take the lock {self.path}; another process keeps creating it")

    def _holder(self) -> str | None:
        """A message naming the live holder; ``None`` after removing a stale lock (dead process)."""
        try:
            fields = self.path.read_text().split()
        except FileNotFoundError:
            return None
        pid = int(fields[0]) if fields and fields[0].isdigit() else None
        host = fields[1] if len(fields) > 1 else None
        started = fields[2] if len(fields) > 2 and fields[2] != "-" else None
        if pid is not None and host not in (None, socket.gethostname()):
            return (f"{self.path.parent} is in use by process {pid} on {host} (lock file {self.path}); "
                    f"delete the lock only if that run has ended")
        if pid is not None and _alive(pid, started):
            return (f"{self.path.parent} is in use by the running process {pid} (lock file {self.path}); wait for "
                    f"it to end, or stop it, before resuming")
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass
        self.took_over = f"process {pid}" if pid is not None else "an unreadable lock"
        return None

    def release(self) -> None:
        if self.held:
            self.held = False
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass
