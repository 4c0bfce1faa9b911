"""What a sweep node costs besides its training: fresh interpreters against the warm start of ``reproduce.py``.

Runs the same small sweep twice into temporary directories, once with ``--no-warm_start`` (a fresh ``python`` per
node, which imports torch and the project, and ``torch._dynamo`` when the first optimiser is built) and once with
``--warm_start`` (each node forked from one interpreter that imported them once). For each node it prints the
node's wall time as the harness measured it (process start to exit, ``status.json``) and the script's own
``wall_time_s`` (``results.json``: from the script's start to its results, so it excludes the start-up imports
but includes ``torch._dynamo``'s); the bound is the sum of the scripts' own times with no import at all, which the
warm start approaches from above. The runs' test metrics are checked equal.

Then the cost of the tuning harness (``reproduce.py --tune``, docs/tuning.md): the same sweep with ``--tune N``
(warm start), and per study (S and each method) the trial's span as its study saw it (Optuna's start to end: the
fork, the script, reading its results, the sampler and the journal) against the trial script's own run (its first
statement to its exit, as the forked child measures it: ``script_s`` in the trial's status.json); the difference is
what the harness costs per trial. Also shown against the run's training time alone (``wall_time_s``).

    python benchmarks/bench_sweep.py                          # UCI-MFeat: T, S m1, KD m1, seed 0, 1 job; 4 trials
    python benchmarks/bench_sweep.py --methods KD RKD --jobs 2
    python benchmarks/bench_sweep.py --parts tuning --tune 8
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_sweep(out_dir: Path, warm: bool, args, tune: list[str] = ()) -> float:
    cmd = [sys.executable, "reproduce.py", "--database", args.database, "--methods", *args.methods, "--modes",
           args.mode, "--seeds", "0", "--jobs", str(args.jobs), "--out_dir", str(out_dir),
           "--warm_start" if warm else "--no-warm_start", *tune, "--", "--device", "cpu", *args.run_flags]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"sweep failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return wall


def node_times(out_dir: Path) -> dict[str, tuple[float, float, dict]]:
    """node label -> (harness wall s of the last attempt, script wall_time_s, test metrics)."""
    times = {}
    for row in csv.DictReader((out_dir / "runs.csv").open()):
        run_dir = Path(row["run_dir"])
        status = json.loads((run_dir.parents[2] / "status.json").read_text())
        results = json.loads((run_dir / "results.json").read_text())
        label = f"{row['method']} {row['mode']}"
        times[label] = (status["attempts"][-1]["wall_s"], results["wall_time_s"], results["metrics"]["test"])
    return times


def trial_costs(out_dir: Path) -> dict[str, list[tuple[float, float, float, float]]]:
    """study label -> per finished trial (span as the study saw it, the node's attempt wall s, the script's own wall s as the
    forked child measured it, the run's ``wall_time_s``)."""
    import optuna  # requirements-dev.txt

    costs = {}
    for study_dir in sorted((out_dir / "runs").glob("*_tune-*")):
        node = json.loads((study_dir / "node.json").read_text())
        storage = optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(study_dir / "study.journal")))
        rows = []
        for trial in optuna.load_study(study_name=node["id"], storage=storage).trials:
            if trial.state != optuna.trial.TrialState.COMPLETE:  # a pruned trial was stopped: no whole run to compare
                continue
            folder = study_dir / "trials" / f"{trial.number:04d}"
            attempt = json.loads((folder / "status.json").read_text())["attempts"][-1]
            results = json.loads(next(folder.glob("*/*/*/results.json")).read_text())
            span = (trial.datetime_complete - trial.datetime_start).total_seconds()
            rows.append((span, attempt["wall_s"], attempt["script_s"], results["wall_time_s"]))
        costs[f"{node['method']} {node['mode']}"] = rows
    return costs


def tuning_part(args, tmp: Path) -> None:
    out = tmp / "tuning"
    total = run_sweep(out, True, args, ["--tune", str(args.tune), *(["--tune_prune"] if args.prune else [])])
    print(f"\nTuning harness on {args.database} ({', '.join(args.methods)} and S, seed 0, --tune {args.tune}"
          f"{' --tune_prune' if args.prune else ''}, --jobs {args.jobs}, warm start), CPU\n")
    print("| study | trials | training s / trial | script s / trial | node s / trial | trial span s | "
          "harness s / trial | harness share | share of training |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    spans, scripts = 0.0, 0.0
    for label, rows in trial_costs(out).items():
        span, node, script, training = (sum(column) / len(rows) for column in zip(*rows))
        spans, scripts = spans + span * len(rows), scripts + script * len(rows)
        print(f"| {label} | {len(rows)} | {training:.2f} | {script:.3f} | {node:.3f} | {span:.3f} | "
              f"{span - script:.3f} | {100 * (span - script) / script:.1f} % | "
              f"{100 * (span - training) / training:.1f} % |")
    print("\ntraining = the run's own wall_time_s (results.json: from the engine's start to the end of the last epoch); "
          "script = the trial script's whole run as the forked child measured it (its first statement to the end of "
          "its exit handlers: argument parsing, training, the final evaluation, best.pth and results.json "
          "included); node = the node wrapper's attempt (fork to the child's report); span = the trial in its study "
          "(Optuna's start to end: the sampler, the journal, node.json, reading results.json). harness = span - "
          "script; share = harness / script (the target: under 10 %); share of training = (span - training) / "
          "training, which also charges the script's own start and final evaluation to the harness. "
          f"All trials: harness {100 * (spans - scripts) / scripts:.1f} % of the scripts' time. "
          f"Whole command: {total:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", default="UCI-MFeat")
    parser.add_argument("--methods", nargs="+", default=["KD"])
    parser.add_argument("--mode", default="m1")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--run_flags", nargs="*", default=["--no-record"],
                        help="flags for every run (default: --no-record)")
    parser.add_argument("--parts", nargs="+", choices=["start-up", "tuning"], default=["start-up", "tuning"],
                        help="what to measure (default: both)")
    parser.add_argument("--tune", type=int, default=4, help="trials per study of the tuning part (default: 4)")
    parser.add_argument("--prune", action="store_true", help="the tuning part with --tune_prune (median pruning)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if "start-up" in args.parts:
            start_up_part(args, Path(tmp))
        if "tuning" in args.parts:
            tuning_part(args, Path(tmp))


def start_up_part(args, tmp: Path) -> None:
    totals, per_node = {}, {}
    for name, warm in (("fresh", False), ("warm", True)):
        out = tmp / name
        totals[name] = run_sweep(out, warm, args)
        per_node[name] = node_times(out)
    print(f"Sweep nodes on {args.database} ({', '.join(args.methods)}, seed 0, --jobs {args.jobs}), CPU\n")
    print("| node | fresh: node s | fresh: script s | warm: node s | warm: script s | fresh / warm (node) |")
    print("|---|---:|---:|---:|---:|---:|")
    for label in sorted(per_node["fresh"]):
        fresh, warm = per_node["fresh"][label], per_node["warm"][label]
        if fresh[2] != warm[2]:
            sys.exit(f"{label}: test metrics differ between fresh and warm runs: {fresh[2]} vs {warm[2]}")
        print(f"| {label} | {fresh[0]:.2f} | {fresh[1]:.2f} | {warm[0]:.2f} | {warm[1]:.2f} | "
              f"{fresh[0] / warm[0]:.2f}x |")
    fresh_nodes = sum(v[0] for v in per_node["fresh"].values())
    warm_nodes = sum(v[0] for v in per_node["warm"].values())
    bound = sum(v[1] for v in per_node["warm"].values())
    print(f"\nnodes, summed: fresh {fresh_nodes:.2f} s, warm {warm_nodes:.2f} s ({fresh_nodes / warm_nodes:.2f}x); "
          f"bound (the warm scripts' own times, no start-up) {bound:.2f} s, warm/bound {warm_nodes / bound:.2f}")
    print(f"whole sweep command: fresh {totals['fresh']:.1f} s, warm {totals['warm']:.1f} s (harness start-up, "
          "the warm interpreter's one-time imports and the aggregation included)")
    print("test metrics: equal for every node")


if __name__ == "__main__":
    main()
