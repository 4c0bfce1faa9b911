"""``reproduce.py``: parse the sweep's flags, build the graph, run it in dependency order, aggregate.

Execution: at most ``--jobs`` nodes at once, a node starts when its teacher has finished; a failed node's
dependents are marked skipped with the reason and the rest go on. ``--launcher local`` runs each node as
``python -m utils.sweep.node`` (its own process, which runs the real script: killing the harness, even with
SIGKILL, loses nothing, and a re-run waits for a node still running); ``--launcher submitit`` submits each node as
a job through submitit (SLURM), requeued and resumed from its checkpoint when preempted or timed out.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

from tqdm import tqdm

from utils.core import names
from utils.core.atomic import atomic_write_bytes, check_writable, make_dirs
from utils.core.errors import UserError
from utils.sweep import node as node_mod
from utils.sweep.graph import Node, build_graph, write_graph
from utils.sweep.tuning_plan import TRIAL_SEED_STRIDE, load_optuna, tuning_plan


#: fork without exec is safe on Linux; macOS's system frameworks may abort a forked child (why Python's own
#: multiprocessing stopped forking there)
WARM_START_DEFAULT = sys.platform.startswith("linux")


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UserError(f"{message} (see reproduce.py --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="reproduce.py", description=(
        "Run the comparison sweep (teachers, no-KD baselines, every method, modes, seeds) as a dependency graph "
        "and aggregate it into tables with paired statistics. Flags after -- go to every run whose script "
        "accepts them; -- --epochs N gives every training stage of every method N epochs (MST-Distill's "
        "--epochs_s1 and --epochs_s2, FitNets' --hint_epochs, MGDFR's --co_epochs and any other --epochs_* / "
        "--*_epochs flag) unless that flag is given itself or by the method's --set. A table cell holds runs of "
        "one configuration only, paired with the no-KD runs of the same flags and data (docs/sweep.md)."))
    parser.add_argument("--database", nargs="+", default=["Synthetic-MVD"], metavar="NAME",
                        help=f"datasets, of {', '.join(names.database_names())} (default: %(default)s)")
    parser.add_argument("--modes", nargs="+", default=["m1", "m2"], help="student modalities (default: m1 m2)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="seeds (default: 0 1 2 3 4)")
    parser.add_argument("--methods", nargs="+", default=None, metavar="NAME",
                        help=f"methods, of {', '.join(names.comparison_method_names())} (default: all of them)")
    parser.add_argument("--jobs", type=int, default=1, help="nodes run at once (default: %(default)s)")
    parser.add_argument("--out_dir", default=None,
                        help="sweep directory; runs live under DIR/runs (default: runs/sweeps/<databases>)")
    parser.add_argument("--devices", nargs="+", default=None, metavar="DEVICE",
                        help="devices given to the running nodes, one each (e.g. cuda:0 cuda:1; default: the "
                             "scripts' --device auto)")
    parser.add_argument("--launcher", choices=["local", "submitit"], default="local",
                        help="local processes, or SLURM jobs through submitit (default: %(default)s)")
    parser.add_argument("--dry_run", action="store_true", help="print the graph and the commands, run nothing")
    parser.add_argument("--aggregate", action="store_true",
                        help="only rebuild runs.csv, table.* from the run directories under --out_dir")
    parser.add_argument("--set", action="append", default=[], metavar="METHOD:--flag=value", dest="sets",
                        help="a flag for one method's runs only (repeatable; METHOD may be T or S)")
    parser.add_argument("--tune", type=int, default=None, metavar="N",
                        help="also tune every method of the comparison and the no-KD student on validation: one "
                             "Optuna study of N trials per (database, mode, method, seed), each trial a run that "
                             "never reads the test split, then an evaluation run of the chosen values; the default "
                             "runs stay (docs/tuning.md; needs the optional package optuna)")
    parser.add_argument("--tune_prune", action=argparse.BooleanOptionalAction, default=False,
                        help="with --tune: stop trials whose validation headline metric falls below the median of "
                             "the earlier trials at the same epoch (default: off)")
    parser.add_argument("--warm_start", action=argparse.BooleanOptionalAction, default=WARM_START_DEFAULT,
                        help="local launcher: fork each run from one interpreter that has torch and the project "
                             "imported, saving the 3-4 s of imports per run; --no-warm_start starts a fresh python "
                             "per run (default: on for Linux, off elsewhere, where forking a process that has "
                             "loaded system frameworks is not safe)")
    slurm = parser.add_argument_group("submitit launcher")
    slurm.add_argument("--partition", default=None, help="SLURM partition (default: the cluster's)")
    slurm.add_argument("--time", type=int, default=240, help="time limit per job in minutes (default: %(default)s)")
    slurm.add_argument("--gpus_per_job", type=int, default=0,
                       help="GPUs per job; runs get --device cuda when > 0 (default: %(default)s)")
    slurm.add_argument("--cpus_per_job", type=int, default=None,
                       help="CPUs per job, also the runs' --threads (default: cores / --jobs)")
    slurm.add_argument("--cluster", choices=["auto", "slurm", "local"], default="auto",
                       help="submitit executor: auto-detected, SLURM, or local processes (default: %(default)s)")
    return parser


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    if "--" in argv:
        at = argv.index("--")
        argv, run_flags = argv[:at], argv[at + 1:]
    else:
        run_flags = []
    args = build_parser().parse_args(argv)
    check_names(args)
    if args.jobs < 1:
        raise UserError("--jobs must be >= 1")
    if args.tune is not None and not 1 <= args.tune < TRIAL_SEED_STRIDE:
        raise UserError(f"--tune must be between 1 and {TRIAL_SEED_STRIDE - 1} trials, got {args.tune}")
    if args.tune_prune and args.tune is None:
        raise UserError("--tune_prune prunes the trials of --tune N; pass --tune N too")
    if args.out_dir is not None and not args.out_dir.strip():
        raise UserError("--out_dir is empty; pass the sweep's folder (default: runs/sweeps/<databases>)")
    if args.out_dir is None:
        args.out_dir = os.path.join("runs", "sweeps", "+".join(args.database))
    args.out_dir = str(Path(os.path.expanduser(args.out_dir)).resolve())
    return args, run_flags


def check_names(args) -> None:
    """Refuse an unknown database or method from the torch-free name lists, before anything heavy is imported."""
    for name in args.database:
        if name not in names.database_names():
            raise UserError(f"unknown database '{name}'; valid databases: {', '.join(names.database_names())}")
    compared = names.comparison_method_names()
    for name in args.methods or []:
        if name not in compared:
            raise UserError(f"unknown method '{name}'; valid methods: {', '.join(compared)}")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args, run_flags = parse(argv)
        if args.aggregate:
            from utils.sweep.aggregate import write_all

            problems: list[str] = []
            write_all(Path(args.out_dir), log=print, problems=problems)
            print(f"Sweep directory: {args.out_dir}")
            return 1 if problems else 0
        return run_sweep(args, run_flags)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(UserError.exit_code)
    except OSError as error:  # a file the sweep reads or creates outside the guarded writes (utils/core/atomic.py)
        where = f"{error.filename}: " if error.filename else ""
        print(f"error: {where}{error.strerror or error}; check the free space and permissions of --out_dir",
              file=sys.stderr)
        sys.exit(UserError.exit_code)
    except KeyboardInterrupt:  # the nodes got the same Ctrl-C; their checkpoints are complete
        print("interrupted; run the same command again to resume the sweep", file=sys.stderr)
        sys.exit(130)


# -- the sweep --------------------------------------------------------------------------------------------------
def prepare(args, run_flags) -> tuple[Path, list[Node]]:
    """Build the graph, write ``graph.json``, ``node.json`` files and ``commands.sh``."""
    if args.devices and any(f.split("=")[0] in ("--device", "--cuda_id") for f in run_flags):
        raise UserError("--devices and a --device flag after -- conflict; pass one of them")
    jobs = args.jobs
    if args.launcher == "submitit" and args.cpus_per_job:
        run_flags = [*run_flags, "--threads", str(args.cpus_per_job)] if "--threads" not in run_flags else run_flags
    if args.launcher == "submitit" and args.gpus_per_job > 0 and "--device" not in run_flags:
        run_flags = [*run_flags, "--device", "cuda"]
    nodes = build_graph(args.database, args.modes, args.seeds, args.methods, run_flags, args.sets, jobs,
                        tune=args.tune, prune=args.tune_prune)
    sweep = Path(args.out_dir)
    return sweep, nodes


def write_node_files(sweep: Path, nodes: list[Node]) -> None:
    runs = make_dirs(sweep / "runs")
    write_graph(nodes, sweep / "graph.json")
    for node in nodes:
        node_dir = make_dirs(runs / node.id)
        old = node_mod.read_json(node_dir / "node.json") or {}
        # a node shared by sweeps of several configurations (e.g. the no-KD runs of two method sets) belongs to each
        data = {**node.to_dict(), "configs": list(dict.fromkeys([*old.get("configs", []), node.config]))}
        if old != data:
            node_mod.write_json(node_dir / "node.json", data)
    write_commands(sweep, nodes)


def display_command(sweep: Path, node: Node, for_shell: bool = True) -> str:
    """The command a user would type for the node (``--ckpt_name`` resolved when its teacher has finished). A study
    is its tuner's command (``python -m utils.sweep.tuning DIR``: N trials, resumed where it stopped); an evaluation
    run gets the values its study chose (``tuned`` in commands.sh reads them from the study's tuning.json)."""
    runs = sweep / "runs"
    if node.tune:
        return shlex.join(node_mod.study_command(runs / node.id, node.runtime, "python", warm=True))
    ckpt = node_mod.teacher_checkpoint(runs, node.to_dict()) if node.teacher else None
    tuned = ["@TUNED@"] if node.study else []
    cmd = node_mod.fresh_command(node.to_dict(), runs / node.id, "@CKPT@", node.runtime, "python", tuned)
    text = shlex.join(cmd)
    if node.study:
        text = text.replace("@TUNED@", f"$(tuned {shlex.quote(str(runs))} {shlex.quote(node.study)})" if for_shell
                            else f"<the values {node.study} chose>")
    if node.teacher:
        lookup = (shlex.quote(str(ckpt)) if ckpt is not None
                  else f'"$(best {shlex.quote(str(runs / node.teacher))})"' if for_shell
                  else f"<best.pth of {node.teacher}>")
        text = text.replace("@CKPT@", lookup)
    return text


def write_commands(sweep: Path, nodes: list[Node]) -> None:
    lines = ["#!/usr/bin/env bash",
             "# The sweep's runs in dependency order, as reproduce.py runs them (from the repository root).",
             "# A teacher's best.pth is looked up in its node directory where it had not finished when this",
             "# file was written. reproduce.py also resumes killed runs and skips finished ones; this file does not.",
             "set -euo pipefail",
             'best() { ls -t "$1"/*/*/*/results.json | head -n 1 | sed "s/results.json$/best.pth/"; }',
             "tuned() { python -c 'import shlex, sys; from utils.sweep.node import tuned_flags; "
             "print(shlex.join(tuned_flags(sys.argv[1], {\"study\": sys.argv[2]})))' \"$1\" \"$2\"; }", ""]
    for node in nodes:
        lines.append(f"# {node.id}")
        lines.append(display_command(sweep, node))
    atomic_write_bytes(sweep / "commands.sh", lambda handle: (handle.write(("\n".join(lines) + "\n").encode()),
                                                              os.fchmod(handle.fileno(), 0o755)))


def run_sweep(args, run_flags) -> int:
    if args.tune is not None:
        load_optuna()  # before any node runs: one line if the optional package is missing
    sweep, nodes = prepare(args, run_flags)
    if args.dry_run:
        by_id = {n.id: n for n in nodes}
        print(f"{len(nodes)} nodes:")
        for node in nodes:
            after = f"  <- {by_id[node.teacher].label}" if node.teacher else ""
            print(f"  {node.label} [{node.role}]{after}")
        if args.tune is not None:
            print("\n".join(tuning_plan(nodes)))
        print("Commands (dependency order):")
        for node in nodes:
            print(display_command(sweep, node, for_shell=False))
        print(f"Sweep directory: {sweep}")
        return 0
    check_writable(sweep)
    # the launcher first: a launcher that cannot start (no SLURM) leaves no sweep directory behind
    launcher = (SubmititLauncher(sweep, args) if args.launcher == "submitit"
                else LocalLauncher(sweep, args.devices, warm=args.warm_start))
    write_node_files(sweep, nodes)
    # commands.sh is rewritten as teachers finish, so it names their real checkpoint paths
    ok = Scheduler(sweep, nodes, launcher, args.jobs, on_done=lambda: write_commands(sweep, nodes)).run()
    write_commands(sweep, nodes)
    from utils.sweep.aggregate import write_all

    write_all(sweep, log=print)
    print(f"Sweep directory: {sweep}")
    return 0 if ok else 1


class Scheduler:
    """Dependency-ordered execution with at most ``jobs`` nodes in flight."""

    def __init__(self, sweep: Path, nodes: list[Node], launcher, jobs: int, poll_s: float = 0.2, on_done=None):
        self.sweep, self.nodes, self.launcher, self.jobs, self.poll_s = sweep, nodes, launcher, jobs, poll_s
        self.on_done = on_done
        self.state: dict[str, str] = {}
        self.reason: dict[str, str] = {}
        self.children: dict[str, list[str]] = {n.id: [] for n in nodes}
        for node in nodes:
            for dep in node.deps:
                self.children[dep].append(node.id)

    def _skip_dependents(self, node_id: str, why: str, bar) -> None:
        for child in self.children[node_id]:
            if self.state.get(child) in (None, "pending"):
                self.state[child] = "skipped"
                self.reason[child] = why
                self._line(bar, "skipped", self._node(child), why)
                self._skip_dependents(child, why, bar)

    def _node(self, node_id: str) -> Node:
        return next(n for n in self.nodes if n.id == node_id)

    @staticmethod
    def _line(bar, what: str, node: Node, detail: str = "") -> None:
        tqdm.write(f"{what:8s} {node.label}" + (f": {detail}" if detail else ""), file=sys.stdout)

    def run(self) -> bool:
        runs = self.sweep / "runs"
        earlier = 0
        for node in self.nodes:
            state, _ = node_mod.node_state(runs / node.id, node.method, node.database)
            self.state[node.id] = "done" if state == "done" else "pending"
            earlier += state == "done"
        if earlier:
            print(f"{earlier} of {len(self.nodes)} nodes finished earlier (skipped)")
        running: dict[str, object] = {}
        # redrawn on a terminal only: redirected to a file, the lines of finished nodes are the progress
        bar = tqdm(total=len(self.nodes), initial=earlier, desc="sweep", unit="run", dynamic_ncols=True,
                   file=sys.stderr, disable=not sys.stderr.isatty())

        def counts():
            values = list(self.state.values())
            return dict(done=values.count("done"), running=len(running), failed=values.count("failed"),
                        skipped=values.count("skipped"))

        bar.set_postfix(counts())
        try:
            while True:
                for node in self.nodes:
                    if len(running) >= self.jobs:
                        break
                    if self.state[node.id] != "pending":
                        continue
                    if all(self.state[d] == "done" for d in node.deps):
                        running[node.id] = self.launcher.start(node)
                        self.state[node.id] = "running"
                        bar.set_postfix(counts())
                for node_id, handle in list(running.items()):
                    status = self.launcher.poll(handle)
                    if status is None:
                        continue
                    del running[node_id]
                    self.launcher.release(handle)
                    node = self._node(node_id)
                    if status.get("state") == "done":
                        self.state[node_id] = "done"
                        self._line(bar, "done", node, _summary(status))
                        if self.on_done is not None and self.children[node_id]:
                            self.on_done()
                    else:
                        self.state[node_id] = "failed"
                        self.reason[node_id] = status.get("error", "")
                        self._line(bar, "FAILED", node, f"{status.get('error', '')} (log: "
                                   f"{runs / node_id / 'node.log'})")
                        self._skip_dependents(node_id, f"teacher {node.label} failed", bar)
                    bar.n = sum(1 for v in self.state.values() if v in ("done", "failed", "skipped"))
                    bar.set_postfix(counts())
                    bar.refresh()
                if not running and not any(v == "pending" for v in self.state.values()):
                    break
                time.sleep(self.poll_s)
        finally:
            bar.close()
        final = counts()
        print(f"Nodes: {final['done']} done, {final['failed']} failed, {final['skipped']} skipped "
              f"(of {len(self.nodes)})")
        return final["done"] == len(self.nodes)


def _summary(status: dict) -> str:
    attempts = status.get("attempts") or []
    if not attempts or status.get("rc") is None:
        return "finished"
    last = attempts[-1]
    return f"{last['wall_s']:.1f} s, {last['peak_mem_mb']:.0f} MB" + (" (resumed)" if last.get("resumed") else "")


# -- launchers --------------------------------------------------------------------------------------------------
class LocalLauncher:
    """Each node in its own process running :mod:`utils.sweep.node`; ``devices`` handed out least-used first.

    ``warm``: the node processes are forked by the standard library's ``multiprocessing`` forkserver, started once
    with :data:`~utils.sweep.node.WARM_PRELOAD` imported (it imports nothing else and starts no CUDA context), and
    each node forks its script from itself; otherwise each node is ``python -m utils.sweep.node`` and runs
    ``python main-X.py ...``. Either way a node outlives a killed harness and writes its own ``status.json``.
    """

    def __init__(self, sweep: Path, devices: list[str] | None, warm: bool = False):
        self.sweep = sweep
        self.devices = {d: 0 for d in (devices or [])}
        self.context = None
        if warm:
            if "forkserver" in multiprocessing.get_all_start_methods():
                self.context = multiprocessing.get_context("forkserver")
                self.context.set_forkserver_preload(node_mod.WARM_PRELOAD)

    def start(self, node: Node):
        extra, device = [], None
        if self.devices:
            device = min(self.devices, key=lambda d: self.devices[d])
            self.devices[device] += 1
            extra = ["--device", device]
        token = uuid.uuid4().hex
        argv = ["--token", token, str(self.sweep / "runs" / node.id), *extra]
        proc = None
        if self.context is not None:
            try:
                proc = self.context.Process(target=node_mod.warm_main, args=(argv,), name=node.id)
                proc.start()
            except Exception as error:  # noqa: BLE001 - e.g. the warm interpreter failed to import the project
                print(f"warning: warm start unavailable ({type(error).__name__}: {error}); starting a fresh "
                      "python per run", file=sys.stderr)
                self.context, proc = None, None
        if proc is None:
            proc = subprocess.Popen([sys.executable, "-m", "utils.sweep.node", *argv], cwd=node_mod.REPO,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return {"proc": proc, "node": node, "token": token, "device": device}

    def poll(self, handle) -> dict | None:
        proc = handle["proc"]
        rc = proc.poll() if isinstance(proc, subprocess.Popen) else proc.exitcode
        if rc is None:
            return None
        node = handle["node"]
        node_dir = self.sweep / "runs" / node.id
        status = node_mod.read_json(node_dir / "status.json", {}) or {}
        if status.get("token") != handle["token"]:
            # another reproduce.py on this sweep directory ran, resumed or skipped the node under the same per-node
            # lock and wrote status.json after this one's wrapper: what counts is the node's state on disk
            state, run_dir = node_mod.node_state(node_dir, node.method, node.database)
            if state == "done":
                return {"state": "done", "rc": 0, "error": "", "run_dir": str(run_dir), "token": handle["token"],
                        "attempts": status.get("attempts", [])}
            if status.get("state") == "failed" and status.get("token"):
                return status
            return {"state": "failed", "rc": rc, "error": f"node process ended with code {rc} before recording"}
        return status

    def release(self, handle) -> None:
        if handle["device"] is not None:
            self.devices[handle["device"]] -= 1
        if not isinstance(handle["proc"], subprocess.Popen):
            handle["proc"].join()
            handle["proc"].close()


class NodeJob:
    """The callable of one submitit job: runs the node (fresh, resumed or skipped) and returns its status.

    On preemption or time-out submitit calls :meth:`checkpoint`: the script is stopped (its last
    ``checkpoint.pth`` is complete, files are written atomically) and the same job is requeued; the requeued job
    finds the checkpoint and continues with ``--resume``.
    """

    def __init__(self, node_dir: str, extra: list[str], token: str, warm: bool = False):
        self.node_dir, self.extra, self.token, self.warm = node_dir, extra, token, warm

    def __call__(self) -> dict:
        return node_mod.run_node(self.node_dir, self.extra, self.token, warm=self.warm)

    def checkpoint(self, *args, **kwargs):
        import submitit

        proc = node_mod.CURRENT.get("proc")
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        return submitit.helpers.DelayedSubmission(NodeJob(self.node_dir, self.extra, self.token, self.warm))


class SubmititLauncher:
    """Every node as one job of a submitit executor (SLURM, or local processes with ``--cluster local``)."""

    def __init__(self, sweep: Path, args):
        try:
            import submitit
        except ImportError:
            raise UserError("--launcher submitit needs the optional package submitit: pip install submitit") from None
        cluster = None if args.cluster == "auto" else args.cluster
        try:
            self.executor = submitit.AutoExecutor(folder=str(sweep / "submitit" / "%j"), cluster=cluster)
        except (RuntimeError, ValueError) as error:  # e.g. 'Could not detect "srun", are you indeed on a slurm...'
            raise UserError(f"--launcher submitit --cluster {args.cluster}: no such cluster here ("
                            f"{str(error).splitlines()[0].rstrip('.?')}); run reproduce.py on a SLURM login node, or "
                            f"pass --cluster local or --launcher local") from None
        params = {"timeout_min": args.time, "name": "mstd-sweep", "gpus_per_node": args.gpus_per_job or None,
                  "cpus_per_task": args.cpus_per_job}
        if args.partition:
            params["slurm_partition"] = args.partition
        self.executor.update_parameters(**params)
        self.sweep = sweep
        self.warm = args.warm_start

    def start(self, node: Node):
        token = uuid.uuid4().hex
        # a study job forks its trials from its own interpreter, which imports torch and the project once
        job = self.executor.submit(NodeJob(str(self.sweep / "runs" / node.id), [], token,
                                           warm=self.warm and bool(node.tune)))
        return {"job": job, "node": node, "token": token}

    def poll(self, handle) -> dict | None:
        job = handle["job"]
        if not job.done():
            return None
        try:
            return job.result()
        except Exception as error:  # noqa: BLE001 - a job that died is a failed node, reported with its line
            lines = [line for line in str(error).splitlines() if line.strip()]
            return {"state": "failed", "rc": 1, "error": f"submitit job {job.job_id}: {lines[-1] if lines else error}"}

    def release(self, handle) -> None:
        pass
