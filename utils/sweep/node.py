"""Run one sweep node: the real ``main-<METHOD>.py`` in a subprocess, exactly as a user would type it.

``python -m utils.sweep.node NODE_DIR [RUNTIME FLAGS]`` (the local launcher) or :func:`run_node` inside a SLURM job
(the submitit launcher). The node directory ``DIR/runs/<id>/`` holds ``node.json`` (the node), ``node.log`` (every
attempt's output), ``status.json`` (state, exit code, error line, attempts) and the run directories the script
creates under it (``--out_dir`` is the node directory). Under an exclusive lock on ``.lock``:

* a run directory with ``results.json`` -> the node is finished, nothing is started;
* a run directory with ``checkpoint.pth`` but no ``results.json`` (the run died) -> ``--resume <run dir>``;
* otherwise a fresh run.

Tuning (``reproduce.py --tune``): a study node runs ``python -m utils.sweep.tuning NODE_DIR`` as its script (the
study, resumed where it stopped, is done once it has written :data:`TUNING_FILE`), and each of its trials is a node
directory of its own run through :func:`run_node`; an evaluation node adds the values its study chose and
``--tuning_record`` to its command (:func:`tuned_flags`).

Each attempt records its wall time and its peak memory: the maximum resident set size of the script's process
(``ru_maxrss``, host memory; GPU memory is not included); under the warm start also ``script_s``, the seconds the
script's own code ran (:mod:`utils.sweep.script_process`). This module imports only the standard library (and the
project's equally light :mod:`utils.core.atomic` and :mod:`utils.sweep.script_process`), so the wrapper process
costs no torch import.

Warm start (the local launcher's default on Linux, ``reproduce.py --warm_start``): the wrapper is forked from an
interpreter that has already imported torch and the project (:data:`WARM_PRELOAD`), and it forks the script's
process from itself instead of starting a new interpreter; the child runs the script file as ``__main__`` with the
same ``sys.argv`` (:mod:`utils.sweep.script_process`). Same command, same process boundary, same files; what it saves is the 3-4 s of
imports every run otherwise pays (torch, and the ``torch._dynamo`` that torch's optimisers import on first use),
which is most of a small run's time on a CPU.
"""
from __future__ import annotations

import fcntl
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from utils.core.atomic import atomic_write_text  # the standard library only, as this module
from utils.sweep import script_process

REPO = script_process.REPO
RUN_DIR_PREFIX = "Run directory: "
#: what a study node writes when its trials are done (utils/sweep/tuning.py); its evaluation node reads the chosen
#: values from it and passes it to the run as ``--tuning_record``
TUNING_FILE = "tuning.json"
#: what a warm interpreter imports before it forks runs: what every script imports (torch's optimisers import
#: torch._dynamo on first construction), the TensorBoard writer and the registries
WARM_PRELOAD = ["torch", "torch._dynamo", "torch.utils.tensorboard", "utils.engine", "kd_methods", "models",
                "datasets"]
#: the script process of the attempt in progress (so a preemption handler can stop it)
CURRENT: dict[str, subprocess.Popen] = {}


def write_json(path: Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")


def read_json(path: Path, default=None):
    """The JSON in ``path``; ``default`` when it is missing, unreadable or of another kind than ``default`` (an
    object unless ``default`` is a list): a file changed by hand must not end the sweep in a traceback."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default
    return data if isinstance(data, list if isinstance(default, list) else dict) else default


def run_dirs(node_dir: Path, method: str, database: str) -> list[Path]:
    """Run directories the node's script created (``<out_dir>/<method>/<database>/<tag>/``), oldest first."""
    root = Path(node_dir) / method / database
    found = [p.parent for p in root.glob("*/args.json")]
    return sorted(found, key=lambda p: (p.stat().st_mtime, p.name))


def node_state(node_dir: Path, method: str, database: str) -> tuple[str, Path | None]:
    """``("done", run dir)``, ``("resume", run dir)`` or ``("new", None)`` from the files on disk (a study node is
    done, its directory standing for the run directory, once its :data:`TUNING_FILE` is written)."""
    if isinstance(read_json(Path(node_dir) / TUNING_FILE), dict):
        return "done", Path(node_dir)
    dirs = run_dirs(node_dir, method, database)
    done = [d for d in dirs if isinstance(read_json(d / "results.json"), dict)]
    if done:
        return "done", done[-1]
    # a results.json that cannot be read is no finished run, and its directory cannot be resumed (--resume would
    # call it finished): the node runs afresh
    resumable = [d for d in dirs if (d / "checkpoint.pth").is_file() and not (d / "results.json").exists()]
    if resumable:
        return "resume", resumable[-1]
    return "new", None


def load_node(node_dir: Path) -> dict:
    return json.loads((Path(node_dir) / "node.json").read_text())


def teacher_checkpoint(sweep_runs: Path, node: dict) -> Path | None:
    """The ``best.pth`` of the node's teacher (None when the teacher has not finished)."""
    if not node.get("teacher"):
        return None
    teacher_dir = Path(sweep_runs) / node["teacher"]
    teacher = read_json(teacher_dir / "node.json")
    if not teacher:
        return None
    state, run_dir = node_state(teacher_dir, teacher["method"], teacher["database"])
    return run_dir / "best.pth" if state == "done" else None


def param_flags(params: dict) -> list[str]:
    """Searched values as flags: ``{"lr": 0.003, "amp": True}`` -> ``["--lr", "0.003", "--amp"]`` (a boolean
    is ``--x`` or ``--no-x``; a float is written exactly, ``repr``)."""
    flags: list[str] = []
    for name, value in params.items():
        if isinstance(value, bool):
            flags.append(f"--{name}" if value else f"--no-{name}")
        else:
            flags += [f"--{name}", repr(value) if isinstance(value, float) else str(value)]
    return flags


def tuned_flags(sweep_runs: Path, node: dict) -> list[str] | None:
    """An evaluation node's flags from its study: the chosen values and ``--tuning_record`` (None while the study
    has not finished)."""
    path = Path(sweep_runs) / node["study"] / TUNING_FILE
    record = read_json(path)
    if record is None or not isinstance(record.get("params"), dict):
        return None
    return [*param_flags(record["params"]), "--tuning_record", str(path)]


def fresh_command(node: dict, node_dir: Path, ckpt: str | None, runtime: list[str],
                  python: str = "python", tuned: list[str] = ()) -> list[str]:
    cmd = [python, *node["script"].split(), *node["args"], *tuned]
    if node.get("teacher"):
        cmd += ["--ckpt_name", str(ckpt)]
    return cmd + ["--out_dir", str(node_dir), *runtime]


def study_command(node_dir: Path, runtime: list[str], python: str = "python", warm: bool = False) -> list[str]:
    """The process of a study node (utils/sweep/tuning.py); ``warm``: it forks its trials from itself."""
    return [python, "-m", "utils.sweep.tuning", str(node_dir), *(["--warm"] if warm else []), *runtime]


def resume_command(node: dict, run_dir: Path, runtime: list[str], python: str = "python") -> list[str]:
    return [python, *node["script"].split(), "--resume", str(run_dir), *runtime]


def _error_line(text: str, rc: int) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    if errors:
        return errors[-1]
    if rc < 0:
        return f"killed by signal {signal.Signals(-rc).name}"
    return lines[-1] if lines else f"exit code {rc}"


def run_node(node_dir: str | Path, extra: list[str] | None = None, token: str | None = None,
             warm: bool = False, watch=None) -> dict:
    """Run (or skip, or resume) the node in ``node_dir``; returns and writes its ``status.json``. A study node
    (``node.json`` has ``tune``) runs :func:`study_command`, whose trials run through this function again.

    ``warm``: fork the script's process from this one (which has the project imported) instead of starting a
    fresh interpreter. ``watch``: called every :data:`~utils.sweep.script_process.WATCH_INTERVAL_S` while the script runs; when it returns
    True the script is stopped (SIGTERM) and the attempt ends as failed."""
    node_dir = Path(node_dir).resolve()
    node = load_node(node_dir)
    runtime = list(node.get("runtime", [])) + list(extra or [])
    with open(node_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one process per node, even across harness restarts
        status = read_json(node_dir / "status.json", {}) or {}
        attempts = list(status.get("attempts", []))
        state, run_dir = node_state(node_dir, node["method"], node["database"])
        if state == "done":
            return _finish(node_dir, node, token, "done", 0, "", run_dir, attempts)
        if node.get("tune"):  # a study runs (and resumes) as its own process, which runs the trials
            cmd = study_command(node_dir, runtime, sys.executable, warm)
        elif state == "resume":
            cmd = resume_command(node, run_dir, runtime, sys.executable)
        else:
            ckpt = teacher_checkpoint(node_dir.parent, node)
            if node.get("teacher") and ckpt is None:
                return _finish(node_dir, node, token, "failed", 1, f"teacher {node['teacher']} has not finished",
                               None, attempts)
            tuned = tuned_flags(node_dir.parent, node) if node.get("study") else []
            if tuned is None:
                return _finish(node_dir, node, token, "failed", 1, f"study {node['study']} has not finished", None,
                               attempts)
            cmd = fresh_command(node, node_dir, str(ckpt), runtime, sys.executable, tuned)
        log_path = node_dir / "node.log"
        with open(log_path, "a") as log:
            how = "  [warm start: forked from an interpreter with the project imported]" if warm else ""
            log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}{how}\n")
            log.flush()
            offset = log.tell()
            started = time.time()
            if warm:
                proc = script_process.ForkedScript(cmd, log.fileno())
            else:
                env = dict(os.environ, PYTHONUNBUFFERED="1")
                proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
            CURRENT["proc"] = proc
            try:
                ended = script_process.wait_for(proc, watch)
            finally:
                CURRENT.pop("proc", None)
            rc = ended.rc
        wall = time.time() - started
        with open(log_path) as handle:
            handle.seek(offset)
            output = handle.read()
        attempts.append({"started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
                         "resumed": state == "resume", "rc": rc, "wall_s": round(wall, 2),
                         "peak_mem_mb": round(ended.peak_kb / 1024.0, 1), "command": shlex.join(cmd),
                         **({"script_s": round(ended.script_s, 3)} if ended.script_s is not None else {})})
        state, run_dir = node_state(node_dir, node["method"], node["database"])
        if rc == 0 and state == "done":
            return _finish(node_dir, node, token, "done", 0, "", run_dir, attempts)
        return _finish(node_dir, node, token, "failed", rc or 1, _error_line(output, rc), run_dir, attempts)


def _finish(node_dir, node, token, state, rc, error, run_dir, attempts) -> dict:
    status = {"id": node["id"], "state": state, "rc": rc, "error": error,
              "run_dir": str(run_dir) if run_dir else None, "token": token, "attempts": attempts}
    # before status.json: a kill in between loses no measurement (a study's measurements are in its tuning.json)
    if state == "done" and run_dir is not None and not node.get("tune"):
        # the harness's measurements beside the run's own files (read by the aggregation)
        mine = [a for a in attempts if a.get("rc") is not None]
        write_json(Path(run_dir) / "sweep.json", {
            "node": node["id"], "attempts": attempts,
            "peak_mem_mb": max((a["peak_mem_mb"] for a in mine), default=None),
            "killed_attempts_wall_s": round(sum(a["wall_s"] for a in mine if a["rc"] != 0), 2)})
    write_json(Path(node_dir) / "status.json", status)
    return status


def main(argv=None, warm: bool = False) -> int:
    argv = sys.argv[1:] if argv is None else argv
    token = None
    if len(argv) >= 2 and argv[0] == "--token":
        token, argv = argv[1], argv[2:]
    node_dir, extra = argv[0], argv[1:]
    forward_termination()
    status = run_node(node_dir, extra, token, warm=warm)
    script_process.reap_all()  # the warm wrapper is a multiprocessing child: it ends without its exit handlers
    return 0 if status["state"] == "done" else 1


def forward_termination() -> None:
    """On SIGTERM (a preempted job, a stopped harness), pass the signal on to the script running now, then leave."""
    def stop(signum, frame):
        proc = CURRENT.get("proc")
        if proc is not None and proc.poll() is None:
            proc.send_signal(signum)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def warm_main(argv: list[str]) -> None:
    """The node wrapper as a process forked by the launcher's warm interpreter (``multiprocessing`` forkserver)."""
    devnull = os.open(os.devnull, os.O_WRONLY)  # as the cold wrapper: its own output goes nowhere, the log has it all
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)
    sys.exit(main(argv, warm=True))


if __name__ == "__main__":
    sys.exit(main())
