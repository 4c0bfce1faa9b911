"""reproduce.py: the sweep graph from the method registry, skip/resume (a harness and its nodes SIGKILLed mid-run),
failure propagation, the aggregation maths against scipy, the submitit LocalExecutor path and a small end-to-end
sweep on Synthetic-MVD (tiny epochs, CPU).
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

import kd_methods
from kd_methods.kd import KD
from utils.core.errors import UserError
from utils.sweep import graph as sweep_graph
from utils.sweep import runner
from utils.sweep.aggregate import build_table, collect_runs, paired_stats

REPO = Path(__file__).resolve().parents[1]
BASE = ["--epochs", "1", "--max_steps", "2", "--device", "cpu", "--no-record"]
TINY = [*BASE, "--epochs_s1", "1", "--epochs_s2", "1"]  # MST-Distill's stages too


def reproduce(*args, check=True, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "reproduce.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=1800, **kwargs)  # generous: a loaded shared CPU
    if check and proc.returncode != 0:
        raise AssertionError(f"reproduce.py {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def by_method(nodes):
    out = {}
    for node in nodes:
        out.setdefault(node.method, []).append(node)
    return out


# -- the graph ---------------------------------------------------------------------------------------------------
@pytest.fixture
def dummy_method():
    """A cross-modal KD variant registered for one test only (the registry is restored afterwards)."""

    class DummyUU(KD):
        card = replace(KD.card, name="Dummy-UU", teacher_kind="crossmodal")

    methods = kd_methods.all_methods()
    methods[DummyUU.name] = DummyUU
    try:
        yield DummyUU
    finally:
        methods.pop(DummyUU.name, None)
    assert "Dummy-UU" not in kd_methods.METHODS


def test_graph_from_registry_includes_a_new_method(dummy_method):
    nodes = sweep_graph.build_graph(["Synthetic-MVD"], ["m1", "m2"], [0, 1], None, TINY, jobs=2)
    ids = {n.id: n for n in nodes}
    groups = by_method(nodes)
    assert len(groups["T"]) == 2 and len(groups["S"]) == 4  # T per seed, S per (mode, seed)
    assert len(ids) == len(nodes)  # each distinct run once
    expected = set(sweep_graph.comparison_methods())
    assert "Dummy-UU" in expected and {"T", "S", "test-T", "test-S"}.isdisjoint(expected)
    assert set(groups) == expected | {"T", "S"}
    assert dummy_method.card.group == "crossmodal-teacher"
    for node in groups["Dummy-UU"]:  # its teacher: main-S.py of the other mode, same seed
        teacher = ids[node.teacher]
        assert teacher.method == "S" and teacher.mode != node.mode and teacher.seed == node.seed
        assert node.deps == [teacher.id]
    for node in groups["KD"]:
        assert ids[node.teacher].method == "T" and ids[node.teacher].seed == node.seed
    for node in groups["DML"] + groups["MST-Distill"] + groups["MGDFR"]:
        assert node.teacher is None and node.deps == []
    mst = groups["MST-Distill"][0]
    assert "--no-compare_baseline" in mst.args and "--epochs_s1" in mst.args
    assert "--epochs_s1" not in groups["KD"][0].args  # a flag goes only to the scripts that accept it
    assert groups["KD"][0].runtime[:2] == ["--threads", str(sweep_graph.default_threads(2))]
    assert "--device" in groups["KD"][0].runtime and "--device" not in groups["KD"][0].args
    order = [n.id for n in nodes]
    assert all(order.index(n.teacher) < order.index(n.id) for n in nodes if n.teacher)
    # the node's identity follows its defining flags: another --epochs is another node
    other = sweep_graph.build_graph(["Synthetic-MVD"], ["m1"], [0], ["KD"], ["--epochs", "2"])
    assert not {n.id for n in other} & set(ids)


def test_graph_crossmodal_teacher_outside_modes_and_user_threads():
    nodes = sweep_graph.build_graph(["Synthetic-MVD"], ["m1"], [3], ["KD-UU"], ["--threads", "3"])
    assert sorted((n.method, n.mode) for n in nodes) == [("KD-UU", "m1"), ("S", "m1"), ("S", "m2"), ("T", None)]
    assert all(n.runtime == ["--threads", "3"] for n in nodes)


@pytest.mark.parametrize("argv, message", [
    (["--methods", "Nope"], "unknown method 'Nope'; valid methods: KD"),
    (["--database", "Nope"], "unknown database 'Nope'; valid databases:"),
    (["--modes", "m3"], "unknown mode 'm3'; valid modes: m1, m2"),
    (["--", "--no_such_flag", "1"], "flag --no_such_flag is accepted by no script of this sweep"),
    (["--set", "KD:--epochs_s1=1"], "main-KD.py has no flag --epochs_s1"),
    (["--", "--seed", "1"], "--seed is set by the sweep"),
])
def test_bad_names_one_line_exit_2(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        runner.main([*argv, "--dry_run", "--out_dir", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_dry_run_prints_graph_and_commands_and_runs_nothing(capsys, tmp_path):
    assert runner.main(["--methods", "KD", "--modes", "m1", "--seeds", "0", "--dry_run", "--out_dir",
                        str(tmp_path / "sw"), "--", "--epochs", "1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out.splitlines()
    commands = [line for line in out if line.startswith("python main-")]
    assert [c.split()[1] for c in commands] == ["main-T.py", "main-S.py", "main-KD.py"]
    assert "--ckpt_name <best.pth of Synthetic-MVD_seed0_T-" in commands[2]
    assert out[-1] == f"Sweep directory: {tmp_path / 'sw'}" and not (tmp_path / "sw").exists()


# -- aggregation on hand-written results ------------------------------------------------------------------------
def _write_run(sweep: Path, method: str, mode: str, seed: int, acc: float, database="Synthetic-MVD", **extra):
    run = sweep / "runs" / f"{database}_{mode}_seed{seed}_{method}-0" / method / database / f"tag_{mode}_seed{seed}"
    run.mkdir(parents=True)
    (run / "args.json").write_text("{}")
    test = {"accuracy": acc, "f1_weighted": acc - 0.01, "average_accuracy": acc, "kappa": 0.1, "mIoU": acc / 2,
            "loss": 0.5, "precision_per_class": [0.5, 0.5]}
    (run / "results.json").write_text(json.dumps({"method": method, "database": database, "mode": mode,
                                                  "seed": seed, "best_epoch": 3, "wall_time_s": 10.0 + seed,
                                                  "metrics": {"test": test}}))
    (run / "sweep.json").write_text(json.dumps({"peak_mem_mb": 100.0 + seed, **extra}))
    return run


def test_aggregation_maths_equal_scipy(tmp_path, capsys):
    sweep = tmp_path / "sw"
    base = {0: 0.7000, 1: 0.7125, 2: 0.6950, 3: 0.7200}
    kd = {0: 0.7210, 1: 0.7125, 2: 0.7300, 3: 0.7180}  # one tie, one loss
    for seed, acc in base.items():
        _write_run(sweep, "S", "m1", seed, acc)
        _write_run(sweep, "S", "m2", seed, acc - 0.1)
        _write_run(sweep, "T", "m1", seed, acc + 0.1)
        _write_run(sweep, "KD", "m1", seed, kd[seed], killed_attempts_wall_s=5.0 if seed == 0 else 0.0)
        _write_run(sweep, "MST-Distill", "m1", seed, acc)  # identical to no-KD on every seed
    _write_run(sweep, "DML", "m1", 0, 0.8)  # one seed only

    assert runner.main(["--aggregate", "--out_dir", str(sweep)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"Sweep directory: {sweep}"
    table = list(csv.DictReader((sweep / "table.csv").open()))
    assert [(r["mode"], r["method"]) for r in table if r["mode"] == "m2"] == [("m2", "T"), ("m2", "S-m1"), ("m2", "S")]
    rows = {r["method"]: r for r in table if r["mode"] == "m1"}
    assert list(rows) == ["T", "S-m2", "S", "KD", "DML", "MST-Distill"]  # paper order of the groups
    assert [rows[m]["group"] for m in rows] == ["teacher", "teacher", "no-kd", "multimodal-teacher",
                                                "teacher-free", "MST-Distill"]
    a = np.array([100 * kd[s] for s in range(4)])
    b = np.array([100 * base[s] for s in range(4)])
    r = rows["KD"]
    scale = 100.0  # percentages: tolerances relative to their magnitude (csv keeps 6 significant digits)
    assert int(r["n"]) == 4
    assert math.isclose(float(r["mean"]), a.mean(), rel_tol=1e-5, abs_tol=1e-5 * scale)
    assert math.isclose(float(r["std"]), a.std(ddof=1), rel_tol=1e-5, abs_tol=1e-5 * scale)
    assert math.isclose(float(r["delta_mean"]), (a - b).mean(), rel_tol=1e-5, abs_tol=1e-5 * scale)
    assert math.isclose(float(r["delta_std"]), (a - b).std(ddof=1), rel_tol=1e-5, abs_tol=1e-5 * scale)
    assert math.isclose(float(r["p_ttest"]), stats.ttest_rel(a, b).pvalue, rel_tol=1e-5)
    assert math.isclose(float(r["p_wilcoxon"]), stats.wilcoxon(a, b).pvalue, rel_tol=1e-5)
    assert (r["wins"], r["losses"], r["ties"]) == ("2", "1", "1")
    assert math.isclose(float(r["wall_time_s"]), np.mean([10, 11, 12, 13]) + 5.0 / 4, rel_tol=1e-6)
    assert math.isclose(float(r["peak_mem_mb"]), 101.5, rel_tol=1e-6)
    # all differences zero: both tests undefined in scipy, reported as p = 1
    assert rows["MST-Distill"]["p_ttest"] == "1" and rows["MST-Distill"]["p_wilcoxon"] == "1"
    assert rows["MST-Distill"]["ties"] == "4"
    # below two paired seeds: no p-values
    assert rows["DML"]["p_ttest"] == "" and rows["DML"]["p_wilcoxon"] == "" and rows["DML"]["std"] == ""
    # Holm over the method rows of the column (KD, MST-Distill with p = 1; DML has none): m = 2, KD first
    p_kd = stats.ttest_rel(a, b).pvalue
    assert math.isclose(float(r["p_ttest_holm"]), min(1.0, 2 * p_kd), rel_tol=1e-5)
    assert rows["S"]["p_ttest_holm"] == "" and rows["T"]["p_ttest_holm"] == "" and rows["DML"]["p_ttest_holm"] == ""
    half = stats.t.ppf(0.975, 3) * (a - b).std(ddof=1) / 2
    assert math.isclose(float(r["ci_low"]), (a - b).mean() - half, rel_tol=1e-5, abs_tol=1e-5 * scale)
    assert math.isclose(float(r["ci_high"]), (a - b).mean() + half, rel_tol=1e-5, abs_tol=1e-5 * scale)
    assert r["p_nb"] == ""  # the hand-written runs record no split sizes
    assert math.isclose(float(rows["S-m2"]["mean"]), (b - 10).mean(), rel_tol=1e-5)

    runs = list(csv.DictReader((sweep / "runs.csv").open()))
    assert len(runs) == 5 * 4 + 1  # T, S m1, S m2, KD, MST-Distill per seed; DML once
    assert list(runs[0])[:11] == ["database", "mode", "seed", "method", "role", "accuracy", "f1_weighted",
                                  "average_accuracy", "kappa", "mIoU", "loss"]
    assert {r["role"] for r in runs if r["method"] == "T"} == {"teacher-mm"}
    assert {r["mode"] for r in runs if r["method"] == "T"} == {"m1+m2"}

    md = (sweep / "table.md").read_text()
    assert "| KD | " in md and "n = 1–4 seeds" in md and "**" in md and "<u>" in md
    assert "p < 0.05 after Holm-Bonferroni adjustment" in md and "t-interval of the mean, unadjusted" in md
    assert "| Teacher, cross-modal (S of the other mode) |" in md
    tex = (sweep / "table.tex").read_text()
    assert r"\toprule" in tex and r"\bottomrule" in tex and r"\textbf{" in tex and r"\underline{" in tex
    assert (sweep / "table.png").stat().st_size > 1000


def test_paired_stats_partial_pairs_and_missing_cells(tmp_path):
    stats_ = paired_stats({0: 0.5, 1: 0.6, 2: 0.7}, {1: 0.55, 2: 0.65})  # seed 0 has no baseline
    assert stats_["n"] == 3 and stats_["n_paired"] == 2 and stats_["wins"] == 2
    assert math.isclose(stats_["delta_mean"], 5.0, rel_tol=1e-9)
    a, b = [100 * 0.6, 100 * 0.7], [100 * 0.55, 100 * 0.65]  # the paired seeds 1 and 2 only
    assert stats_["p_ttest"] == stats.ttest_rel(a, b).pvalue and stats_["p_wilcoxon"] == stats.wilcoxon(a, b).pvalue
    sweep = tmp_path / "sw"
    _write_run(sweep, "S", "m1", 0, 0.7)
    _write_run(sweep, "S", "m2", 0, 0.6)
    _write_run(sweep, "KD", "m2", 0, 0.65)
    table = build_table(collect_runs(sweep))
    assert [(r["mode"], r["method"]) for r in table] == [("m1", "S-m2"), ("m1", "S"), ("m2", "S-m1"), ("m2", "S"),
                                                          ("m2", "KD")]
    from utils.sweep.report import tables, to_markdown

    md = to_markdown(tables(table))
    kd_line = next(line for line in md.splitlines() if line.startswith("| KD |"))
    assert kd_line.split("|")[2].strip() == "–"  # KD has no m1 run: a missing cell


# -- running: end to end, skip and resume, failures, submitit ---------------------------------------------------
def _checkpoints(sweep: Path, pattern: str):
    return list((sweep / "runs").glob(f"{pattern}/*/*/*/checkpoint.pth"))


def test_end_to_end_sweep_killed_resumed_and_skipped(tmp_path):
    """2 methods x 2 seeds on Synthetic-MVD; the harness and its running nodes are SIGKILLed while the teacher of
    seed 0 is mid-run; the re-run resumes it from its checkpoint; a third run starts nothing."""
    sweep = tmp_path / "sw"
    args = ["--methods", "KD", "MST-Distill", "--modes", "m1", "--seeds", "0", "1", "--jobs", "2", "--out_dir",
            str(sweep), "--set", "T:--epochs=40", "--", *TINY]
    first = subprocess.Popen([sys.executable, "reproduce.py", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not _checkpoints(sweep, "*seed0_T-*") and time.time() < deadline and first.poll() is None:
        time.sleep(0.02)
    os.killpg(first.pid, signal.SIGKILL)  # harness, node wrappers and scripts at once
    first.wait()
    teacher_dirs = list((sweep / "runs").glob("*seed0_T-*"))
    assert teacher_dirs and _checkpoints(sweep, "*seed0_T-*"), "the teacher never wrote a checkpoint"
    assert not list(teacher_dirs[0].glob("*/*/*/results.json")), "the teacher finished before it was killed"

    second = reproduce(*args)
    out = second.stdout.splitlines()
    assert out[-1] == f"Sweep directory: {sweep}"
    assert "Nodes: 8 done, 0 failed, 0 skipped (of 8)" in second.stdout
    log = (teacher_dirs[0] / "node.log").read_text()
    assert "--resume" in log and "Resuming" in log
    status = json.loads((teacher_dirs[0] / "status.json").read_text())
    assert status["state"] == "done" and status["attempts"][-1]["resumed"]
    assert len(list(teacher_dirs[0].glob("*/*/*/args.json"))) == 1  # resumed in place, no second run

    commands = (sweep / "commands.sh").read_text().splitlines()
    scripts = [line.split()[1] for line in commands if line.startswith("python ")]
    assert len(scripts) == 8 and scripts.index("main-KD.py") > scripts.index("main-T.py")
    kd_line = next(line for line in commands if line.startswith("python main-KD.py"))
    assert "--ckpt_name" in kd_line and "best.pth" in kd_line
    runs = list(csv.DictReader((sweep / "runs.csv").open()))
    assert len(runs) == 8 and {r["role"] for r in runs} == {"teacher-mm", "no-kd", "method"}
    for r in runs:  # measured by the node wrapper; lost only where the wrapper was killed with its run done
        status = Path(r["run_dir"]).parents[2] / "status.json"
        attempts = json.loads(status.read_text())["attempts"] if status.is_file() else []
        if any(a["rc"] == 0 for a in attempts):
            assert float(r["peak_mem_mb"]) > 10
    assert sum(r["peak_mem_mb"] != "" for r in runs) >= 6
    table = {r["method"]: r for r in csv.DictReader((sweep / "table.csv").open())}
    assert set(table) == {"T", "S", "KD", "MST-Distill"} and table["KD"]["n"] == "2"
    assert table["KD"]["p_ttest"] != "" or table["KD"]["ties"] == "2"
    for name in ("table.md", "table.tex", "table.png", "graph.json"):
        assert (sweep / name).is_file()

    before = sorted(str(p) for p in (sweep / "runs").glob("*/*/*/*/args.json"))
    third = reproduce(*args)
    assert "8 of 8 nodes finished earlier (skipped)" in third.stdout
    assert not [line for line in third.stdout.splitlines() if line.startswith("done ")]
    assert sorted(str(p) for p in (sweep / "runs").glob("*/*/*/*/args.json")) == before


def test_submitit_local_executor_failure_propagates(tmp_path):
    """Nodes as submitit jobs (LocalExecutor): a failing teacher's dependents are skipped, the rest runs."""
    sweep = tmp_path / "sw"
    proc = reproduce("--launcher", "submitit", "--cluster", "local", "--time", "10", "--jobs", "2", "--methods",
                     "KD", "--modes", "m1", "--seeds", "0", "--out_dir", str(sweep), "--set", "T:--Tmodel=CNN-I", "--",
                     *BASE, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    assert "FAILED   T seed 0 (Synthetic-MVD): error: " in out and "CNN-I" in out
    assert "skipped  KD m1 seed 0 (Synthetic-MVD): teacher T seed 0 (Synthetic-MVD) failed" in out
    assert "done     S m1 seed 0 (Synthetic-MVD)" in out
    assert "Nodes: 1 done, 1 failed, 1 skipped (of 3)" in out
    assert out.splitlines()[-1] == f"Sweep directory: {sweep}"
    assert list((sweep / "submitit").iterdir())  # the jobs really went through submitit
    runs = list(csv.DictReader((sweep / "runs.csv").open()))
    assert [r["method"] for r in runs] == ["S"]


def test_submitit_checkpoint_stops_the_script_and_requeues_itself(tmp_path):
    import submitit  # requirements-dev.txt

    from utils.sweep import node as node_mod

    job = runner.NodeJob(str(tmp_path), ["--device", "cpu"], "token")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    node_mod.CURRENT["proc"] = proc
    try:
        delayed = job.checkpoint()
    finally:
        node_mod.CURRENT.pop("proc", None)
    assert proc.poll() is not None  # the script was stopped before the requeue
    assert isinstance(delayed, submitit.helpers.DelayedSubmission)
    assert isinstance(delayed.function, runner.NodeJob) and delayed.function.node_dir == str(tmp_path)
    assert delayed.function.extra == ["--device", "cpu"]


def test_user_error_is_raised_for_conflicting_devices():
    args, flags = runner.parse(["--devices", "cuda:0", "--", "--device", "cpu"])
    with pytest.raises(UserError, match="--devices and a --device flag"):
        runner.prepare(args, flags)


# -- warm start --------------------------------------------------------------------------------------------------
def _best_state(run_dir: str) -> dict:
    import torch

    return torch.load(Path(run_dir) / "best.pth", map_location="cpu", weights_only=True)


def test_warm_start_gives_the_runs_of_a_fresh_interpreter(tmp_path):
    """The same sweep forked from the warm interpreter and with a fresh python per run: equal metrics and
    bit-equal best checkpoints; only the warm one's logs carry the marker; the fresh one paid the imports."""
    args = ["--methods", "KD", "--modes", "m1", "--seeds", "0", "--jobs", "2", "--", *BASE]
    sweeps = {}
    for name, flag in (("warm", "--warm_start"), ("cold", "--no-warm_start")):
        sweeps[name] = tmp_path / name
        reproduce("--out_dir", str(sweeps[name]), flag, *args)
    rows = {name: {r["method"]: r for r in csv.DictReader((sweep / "runs.csv").open())}
            for name, sweep in sweeps.items()}
    assert set(rows["warm"]) == set(rows["cold"]) == {"T", "S", "KD"}
    skip = {"wall_time_s", "peak_mem_mb", "run_dir"}
    for method, warm in rows["warm"].items():
        cold = rows["cold"][method]
        assert {k: v for k, v in warm.items() if k not in skip} == {k: v for k, v in cold.items() if k not in skip}
        warm_state, cold_state = _best_state(warm["run_dir"]), _best_state(cold["run_dir"])
        models = [k for k, v in warm_state.items() if isinstance(v, dict) and v and all(
            hasattr(t, "dtype") for t in v.values())]
        assert models, sorted(warm_state)
        for key in models:
            for name, tensor in warm_state[key].items():
                assert tensor.equal(cold_state[key][name]), (method, key, name)
        warm_log = (Path(warm["run_dir"]).parents[2] / "node.log").read_text()
        cold_log = (Path(cold["run_dir"]).parents[2] / "node.log").read_text()
        assert "[warm start" in warm_log and "[warm start" not in cold_log
        assert "Run directory: " in warm_log  # the script's own output reaches the node's log


def test_warm_start_failure_is_recorded_and_dependents_skipped(tmp_path):
    sweep = tmp_path / "sw"
    proc = reproduce("--methods", "KD", "--modes", "m1", "--seeds", "0", "--jobs", "2", "--out_dir", str(sweep),
                     "--set", "T:--Tmodel=CNN-I", "--", *BASE, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAILED   T seed 0 (Synthetic-MVD): error: " in proc.stdout and "CNN-I" in proc.stdout
    assert "skipped  KD m1 seed 0 (Synthetic-MVD): teacher T seed 0 (Synthetic-MVD) failed" in proc.stdout
    status = json.loads(next((sweep / "runs").glob("*seed0_T-*/status.json")).read_text())
    assert status["state"] == "failed" and status["rc"] == 2 and "CNN-I" in status["error"]


def test_warm_start_default_follows_the_platform():
    args, _ = runner.parse([])
    assert args.warm_start is sys.platform.startswith("linux")
    assert runner.parse(["--no-warm_start"])[0].warm_start is False


class _InstantLauncher:
    """Every node finishes at its first poll."""

    def start(self, node):
        return node

    def poll(self, handle):
        return {"state": "done"}

    def release(self, handle):
        pass


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("terminal", [False, True])
def test_sweep_bar_redraws_on_a_terminal_only(terminal, tmp_path, capsys, monkeypatch):
    nodes = sweep_graph.build_graph(["Synthetic-MVD"], ["m1", "m2"], [0, 1], ["KD", "DML"])
    if terminal:
        monkeypatch.setattr(sys, "stderr", _Terminal())
    assert runner.Scheduler(tmp_path, nodes, _InstantLauncher(), jobs=3, poll_s=0.0).run()
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == ["done"] * len(nodes) + ["Nodes:"]  # one plain line per node
    if terminal:
        assert "sweep: 100%" in sys.stderr.getvalue() and "\r" in sys.stderr.getvalue()
    else:
        assert err == "" and "\r" not in out
