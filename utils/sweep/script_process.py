"""The process of a node's script, and waiting for it to end (:func:`utils.sweep.node.run_node`).

Two kinds, with the part of ``subprocess.Popen`` the harness uses (``pid``, ``returncode``, ``poll``, ``wait``,
``send_signal``, ``terminate``, ``kill``):

* a fresh interpreter: ``subprocess.Popen`` of ``python main-X.py ...``;
* the warm start (:class:`ForkedScript`): a child forked from an interpreter that has imported torch and the
  project, which runs the script file as ``__main__`` with the same ``sys.argv`` (:func:`run_script`).

:func:`wait_for` waits for either and says how it ended (:class:`Ended`: exit code, peak memory, and for a forked
script the seconds its own code ran). A forked child reports its end through a pipe before it exits, so the
harness goes on while the kernel still releases the child's copy of the warm interpreter (about 15-20 ms per run
on a 2-core CPU); the child is reaped later (:func:`reap_ended` before the next fork, and at this interpreter's exit
in any case (:func:`reap_all`), so no child is left to ``init``, which may not reap it in a container). A child that dies without a
report (a signal) is waited for as any process. Waiting watches the process through a pidfd where Linux offers
one, so a watcher (the study's median pruning) never delays the end of a run.

Imports only the standard library: the per-node wrapper that uses it costs no torch import.
"""
from __future__ import annotations

import atexit
import io
import os
import resource
import runpy
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
import weakref
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[2]
#: seconds between two looks at a running script by a watcher (a study's median pruning)
WATCH_INTERVAL_S = 0.5
#: forked children that reported their end and are not reaped yet
_UNREAPED: list[int] = []


class Ended(NamedTuple):
    """How a script's process ended: its exit code (negative: killed by that signal), its peak resident set size
    (``ru_maxrss``, KiB, host memory) and, for a forked script, the seconds from the script's first statement to the
    end of its exit handlers (None for a fresh interpreter, whose start-up cannot be told apart from the outside)."""
    rc: int
    peak_kb: float
    script_s: float | None = None


class ForkedScript:
    """The script's process forked from this (warm) interpreter: ``python argv...`` without the start-up."""

    def __init__(self, cmd: list[str], log_fd: int):
        reap_ended()
        for stream in (sys.stdout, sys.stderr):  # nothing buffered here may be written twice by the child
            stream.flush()
        self.returncode = None
        read_end, write_end = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            code = 1
            try:
                _UNREAPED.clear()  # the parent's children, not this process's
                os.close(read_end)
                forget_inherited_finalizers()
                code, seconds = run_script(cmd[1:], log_fd)
                peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                os.write(write_end, f"{code} {peak_kb} {seconds!r}\n".encode())
            finally:
                os._exit(code)
        os.close(write_end)
        self.reports = read_end  # the child's one line, "<exit code> <peak KiB> <script seconds>", then EOF

    def poll(self):
        if self.returncode is None:
            pid, wait_status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(wait_status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired([str(self.pid)], timeout)
            time.sleep(0.05)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def wait_for(proc, watch=None) -> Ended:
    """Wait until ``proc`` (a :class:`ForkedScript` or a ``subprocess.Popen``) ends; ``watch()`` is called every
    :data:`WATCH_INTERVAL_S` meanwhile, and a True answer stops the script (SIGTERM) once."""
    pidfd = _pidfd(proc.pid)
    reports = getattr(proc, "reports", None)
    ready_on = [fd for fd in (reports, pidfd) if fd is not None]
    # without a pidfd, a child that dies with no report is found by polling (a worker process of the script may
    # still hold the pipe open)
    timeout = WATCH_INTERVAL_S if watch is not None or pidfd is None else None
    received, stopped = b"", False
    try:
        while True:
            try:
                ready = select.select(ready_on, [], [], timeout)[0] if ready_on else []
            except InterruptedError:  # a signal arrived (e.g. a preemption handler ran): keep waiting
                continue
            if reports is not None and reports in ready:
                chunk = os.read(reports, 4096)
                received += chunk
                if b"\n" in received:
                    ended = _reported(received)
                    proc.returncode = ended.rc
                    _UNREAPED.append(proc.pid)
                    return ended
                if not chunk:  # EOF without a report: the child died; its exit status says how
                    ready_on.remove(reports)
                    reports = None
            if pidfd in ready or (pidfd is None and not ready_on):
                return _reaped(proc, *_wait4(proc.pid, 0))
            if pidfd is None and not ready:
                pid, wait_status, usage = _wait4(proc.pid, os.WNOHANG)
                if pid:
                    return _reaped(proc, pid, wait_status, usage)
            if watch is not None and not ready and not stopped and watch():
                proc.send_signal(signal.SIGTERM)
                stopped = True
    finally:
        for fd in (getattr(proc, "reports", None), pidfd):
            if fd is not None:
                os.close(fd)
        if hasattr(proc, "reports"):
            proc.reports = None


def reap_ended() -> None:
    """Collect the exit status of forked children that reported their end (their processes are gone or going)."""
    for pid in list(_UNREAPED):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            _UNREAPED.remove(pid)


@atexit.register
def reap_all() -> None:
    """Wait for the forked children that reported their end (their exit is nearly done): at this interpreter's exit,
    and where a process may end without its exit handlers (a ``multiprocessing`` child, the warm node wrapper)."""
    for pid in list(_UNREAPED):
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    _UNREAPED.clear()


def forget_inherited_finalizers() -> None:
    """In the forked child: the ``weakref.finalize`` callbacks of the warm interpreter's objects are not run at the
    child's exit (torch registers one per operator library it loads, about 160, which take 30 ms to undo): they
    release state the child inherited and discards with its address space; the parent still runs its own.
    Finalizers the script creates run as in any interpreter."""
    for info in getattr(weakref.finalize, "_registry", {}).values():  # CPython's registry of live finalizers
        info.atexit = False


def run_script(argv: list[str], log_fd: int) -> tuple[int, float]:
    """In the forked child: run ``argv[0]`` (a script path relative to the repository, or ``-m`` and a module) as
    ``__main__``, as ``python argv...`` would, with stdout and stderr on ``log_fd``; returns the exit code and the
    seconds from the script's first statement to the end of the exit handlers."""
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    os.chdir(REPO)
    os.environ["PYTHONUNBUFFERED"] = "1"
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=True, write_through=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), line_buffering=True, write_through=True)
    sys.stdin = open(os.devnull)
    # the signal dispositions a fresh interpreter would start with: Ctrl-C ignored if it was ignored when the
    # harness started (nohup, &), else Python's KeyboardInterrupt; SIGTERM (the wrapper's forwarder) the default
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    module = argv[1] if argv[0] == "-m" else None
    sys.argv = [module, *argv[2:]] if module else list(argv)
    sys.path[0] = str(REPO)  # as for `python main-X.py` run from the repository root
    code = 0
    started = time.perf_counter()
    try:
        if module:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as stop:
        if stop.code is None:
            code = 0
        elif isinstance(stop.code, int):
            code = stop.code
        else:
            print(stop.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        traceback.print_exc()
        code = 128 + signal.SIGINT
    except BaseException:  # noqa: BLE001 - what the interpreter does with an uncaught exception
        traceback.print_exc()
        code = 1
    # the interpreter's own shutdown: join non-daemon threads, then the atexit handlers
    try:
        threading._shutdown()
    except Exception:  # noqa: BLE001 - a private hook; shutting down must not fail the run
        pass
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass
    return code, time.perf_counter() - started


def _reported(line: bytes) -> Ended:
    code, peak_kb, seconds = line.split(b"\n", 1)[0].split()
    return Ended(int(code), float(peak_kb), float(seconds))


def _reaped(proc, pid: int, wait_status: int, usage) -> Ended:
    proc.returncode = rc = os.waitstatus_to_exitcode(wait_status)
    return Ended(rc, float(usage.ru_maxrss))


def _pidfd(pid: int) -> int | None:
    """A file descriptor that becomes readable when ``pid`` ends (Linux 5.3 and later), else None."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _wait4(pid: int, options: int):
    while True:
        try:
            return os.wait4(pid, options)
        except InterruptedError:  # a signal arrived: keep waiting
            continue
