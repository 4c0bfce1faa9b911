"""The process of a node's script (utils/sweep/script_process.py): a forked script reports how it ended, its
exit handlers run but the warm interpreter's inherited finalizers do not, a child that dies without a report is
told from its exit status, and a reported child is reaped later."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import weakref

import pytest

from utils.sweep import runner
from utils.sweep import node as node_mod
from utils.sweep import script_process


def _fork(tmp_path, body: str, watch=None) -> tuple[script_process.Ended, str]:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(body))
    log = tmp_path / "log.txt"
    with open(log, "a") as handle:
        proc = script_process.ForkedScript(["python", str(script), "--flag", "value"], handle.fileno())
        ended = script_process.wait_for(proc, watch)
    assert proc.returncode == ended.rc
    return ended, log.read_text()


@pytest.mark.parametrize("body, rc", [("print('hello', sys.argv[1:])", 0), ("sys.exit(3)", 3),
                                      ("raise ValueError('broken')", 1), ("sys.exit('a message')", 1)])
def test_a_forked_script_reports_its_exit_code_time_and_memory(tmp_path, body, rc):
    ended, log = _fork(tmp_path, f"import sys\n{body}\n")
    assert ended.rc == rc
    assert ended.script_s is not None and 0.0 <= ended.script_s < 60.0
    assert ended.peak_kb > 1024  # an interpreter's resident set is megabytes, never zero
    if rc == 0:
        assert "hello ['--flag', 'value']" in log  # the script saw its own argv, its output went to the log
    if body.startswith("raise"):
        assert "ValueError: broken" in log
    if "message" in body:
        assert "a message" in log


def test_the_scripts_exit_handlers_run_but_not_the_warm_interpreters_finalizers(tmp_path):
    class Held:
        pass

    inherited, mine = tmp_path / "inherited", tmp_path / "mine"
    held = Held()
    finalizer = weakref.finalize(held, inherited.write_text, "ran")  # the warm interpreter's own (e.g. torch's)
    ended, log = _fork(tmp_path, f"""
        import atexit, weakref
        class Held:
            pass
        kept = Held()
        weakref.finalize(kept, open({str(mine)!r} + ".finalizer", "w").write, "ran")
        atexit.register(open({str(mine)!r} + ".atexit", "w").write, "ran")
        """)
    assert ended.rc == 0, log
    assert (tmp_path / "mine.finalizer").exists() and (tmp_path / "mine.atexit").exists()
    assert not inherited.exists()
    assert finalizer.alive and finalizer.atexit  # this process still runs its own at its exit
    finalizer.detach()


def test_a_child_killed_by_a_signal_is_told_from_its_exit_status(tmp_path):
    ended, _ = _fork(tmp_path, "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    assert ended.rc == -signal.SIGKILL and ended.script_s is None


def test_a_watcher_stops_the_script(tmp_path):
    calls = []

    def watch():
        calls.append(time.monotonic())
        return True

    ended, _ = _fork(tmp_path, "import time\ntime.sleep(120)\n", watch=watch)
    assert ended.rc == -signal.SIGTERM and len(calls) == 1


def test_a_fresh_interpreter_is_waited_for_with_its_memory(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(4)"])
    ended = script_process.wait_for(proc)
    assert (ended.rc, proc.returncode, ended.script_s) == (4, 4, None) and ended.peak_kb > 1024


def test_a_reported_child_is_reaped_later(tmp_path):
    script = tmp_path / "script.py"
    script.write_text("pass\n")
    with open(tmp_path / "log.txt", "a") as handle:
        proc = script_process.ForkedScript(["python", str(script)], handle.fileno())
        assert script_process.wait_for(proc).rc == 0
    deadline = time.monotonic() + 60
    while proc.pid in script_process._UNREAPED and time.monotonic() < deadline:
        script_process.reap_ended()
        time.sleep(0.01)
    assert proc.pid not in script_process._UNREAPED
    with pytest.raises(ChildProcessError):  # reaped: no zombie is left behind
        os.waitpid(proc.pid, os.WNOHANG)


def test_no_reported_child_is_left_when_the_harness_exits(tmp_path):
    script = tmp_path / "script.py"
    script.write_text("pass\n")
    with open(tmp_path / "log.txt", "a") as handle:
        procs = [script_process.ForkedScript(["python", str(script)], handle.fileno()) for _ in range(2)]
        for proc in procs:
            assert script_process.wait_for(proc).rc == 0
    script_process.reap_all()  # what this interpreter runs at its exit, and the node wrapper before it ends
    assert not script_process._UNREAPED
    for proc in procs:
        with pytest.raises(ChildProcessError):
            os.waitpid(proc.pid, os.WNOHANG)


def test_a_preempted_submitit_job_stops_a_forked_script(tmp_path):
    """NodeJob.checkpoint (SLURM preemption) stops the script of the attempt in progress, forked ones included."""
    import submitit  # requirements-dev.txt
    script = tmp_path / "script.py"
    script.write_text("import time\ntime.sleep(120)\n")
    with open(tmp_path / "log.txt", "a") as handle:
        proc = script_process.ForkedScript(["python", str(script)], handle.fileno())
    node_mod.CURRENT["proc"] = proc
    try:
        delayed = runner.NodeJob(str(tmp_path), [], "token", warm=True).checkpoint()
    finally:
        node_mod.CURRENT.pop("proc", None)
    assert proc.poll() == -signal.SIGTERM
    assert isinstance(delayed, submitit.helpers.DelayedSubmission) and delayed.function.warm
