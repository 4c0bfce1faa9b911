"""The tables of a sweep from hand-written run directories: a sweep without tuned runs keeps its outputs byte for
byte; a tuned sweep groups by tuned cell, tests two Holm families, writes ``tuned_params.csv`` and the tuned
sections of ``table.md`` (docs/sweep.md, "Tables of a tuned sweep")."""
from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from utils.sweep import stats as sweep_stats
from utils.sweep.aggregate import build_table, collect_runs, write_all

GOLDEN = Path(__file__).resolve().parent / "golden"
#: the outputs of the untuned fixture sweep as the tables' code wrote them before tuned runs existed
UNTUNED = GOLDEN / "untuned_sweep"
TEXT_OUTPUTS = ("runs.csv", "table.csv", "table.md", "table.tex")


def write_run(sweep: Path, method: str, mode: str | None, seed: int, acc: float, *, database: str = "Synthetic-MVD",
              config: str = "cfg-a", digest: str | None = None, data: str = "d0", own: list[str] = (),
              epochs: int = 3, steps: int = 30, commit: str = "c0ffee1234", node: str | None = None,
              arguments: dict | None = None, tuning: dict | None = None, wall: float = 10.0) -> Path:
    """One finished run as the scripts and the sweep's nodes write it: ``runs/<node>/<method>/<database>/<tag>/``
    with ``results.json``, ``args.json`` and ``sweep.json``, and the node's ``node.json``."""
    node = node or f"{database}_{mode or 'mm'}_seed{seed}_{method}-{config}-{digest or 'x'}"
    run = sweep / "runs" / node / method / database / f"tag_{mode}_seed{seed}"
    run.mkdir(parents=True)
    (run / "args.json").write_text("{}")
    test = {"accuracy": acc, "f1_weighted": round(acc - 0.01, 4), "average_accuracy": acc, "kappa": 0.1,
            "mIoU": round(acc / 2, 4), "loss": 0.5, "precision_per_class": [0.5, 0.5]}
    results = {"method": method, "database": database, "mode": mode, "seed": seed, "best_epoch": 2,
               "wall_time_s": wall + seed, "metrics": {"val": test, "test": test},
               "config": {"method": method, "database": database, "arguments": arguments or {"lr": 0.001}},
               "config_digest": digest or f"{method}-{database}-{mode}-{config}", "data_digest": data,
               "split_sizes": {"train": 120, "val": 40, "test": 40}, "budget": {"epochs": {"train": epochs},
                                                                                 "steps": steps},
               "code": {"commit": commit, "dirty": False, "torch": "2"}}
    if tuning is not None:
        results["tuning"] = tuning
    (run / "results.json").write_text(json.dumps(results))
    (run / "sweep.json").write_text(json.dumps({"peak_mem_mb": 100.0 + seed}))
    (sweep / "runs" / node / "node.json").write_text(json.dumps(
        {"id": node, "method": method, "database": database, "mode": mode, "seed": seed, "configs": [config],
         "own": list(own), "config_text": f"flags of {config}"}))
    return run


def untuned_sweep(sweep: Path) -> None:
    """Every path of today's tables: teachers, no-KD of both modes, methods of several groups, two configurations
    of one method, two sweep configurations, a cell from two commits, unequal budgets, a method whose no-KD runs saw
    other data, a segmentation dataset (mIoU, OA and AA), an unreadable run and a node without a finished run."""
    base = [0.70, 0.7125, 0.695, 0.72]
    kd = [0.721, 0.7125, 0.73, 0.718]
    for seed, acc in enumerate(base):
        write_run(sweep, "T", None, seed, acc + 0.1)
        write_run(sweep, "S", "m1", seed, acc)
        write_run(sweep, "S", "m2", seed, acc - 0.1)
        write_run(sweep, "KD", "m1", seed, kd[seed], own=["--alpha", "0.5"], commit="c0ffee1234" if seed else "beef")
        write_run(sweep, "KD", "m1", seed, kd[seed] + 0.005 * (seed % 2), digest="kd-alpha", own=["--alpha", "0.9"])
        write_run(sweep, "MST-Distill", "m1", seed, acc + 0.01 * (seed + 1), epochs=5, steps=50)
        write_run(sweep, "DML", "m2", seed, acc - 0.09 - 0.003 * seed)
        write_run(sweep, "FitNets", "m1", seed, acc + 0.002, data="d1")  # no-KD saw other data
    for seed in range(2):
        write_run(sweep, "S", "m1", seed, 0.6 + 0.01 * seed, config="cfg-b")
        write_run(sweep, "KD", "m1", seed, 0.62 + 0.02 * seed, config="cfg-b")
    for seed in range(3):
        write_run(sweep, "S", "m1", seed, 0.30 + 0.01 * seed, database="NYU-Depth-V2")
        write_run(sweep, "RKD", "m1", seed, 0.31 + 0.012 * seed, database="NYU-Depth-V2")
    broken = write_run(sweep, "RKD", "m1", 3, 0.5, database="NYU-Depth-V2")
    (broken / "results.json").write_text("{ not json")
    (sweep / "graph.json").write_text(json.dumps([{"id": "never-ran", "method": "CRD", "database": "Synthetic-MVD"}]))


def test_a_sweep_without_tuned_runs_keeps_its_outputs_byte_for_byte(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # run directories are named relative to the sweep as given
    untuned_sweep(Path("sw"))
    problems: list[str] = []
    write_all(Path("sw"), log=lambda line: None, problems=problems)
    assert len(problems) == 2
    for name in TEXT_OUTPUTS:
        assert (tmp_path / "sw" / name).read_bytes() == (UNTUNED / name).read_bytes(), name
    assert not (tmp_path / "sw" / "tuned_params.csv").exists()


# -- a tuned sweep ----------------------------------------------------------------------------------------------------
SEEDS = range(4)
NO_KD = [0.700, 0.710, 0.695, 0.720]
NO_KD_TUNED = [0.705, 0.712, 0.700, 0.730]
KD_DEFAULT = [0.721, 0.712, 0.730, 0.718]
KD_TUNED = [0.731, 0.725, 0.738, 0.735]
DML_DEFAULT = [0.702, 0.715, 0.690, 0.725]
DML_TUNED = [0.709, 0.716, 0.705, 0.731]
KD_LR = [0.002, 0.0005, 0.004, 0.001]
KD_ALPHA = [0.4, 0.6, 0.5, 0.8]


def tuning_record(method: str, seed: int, params: dict, defaults: dict, cell: str, trials: int = 20,
                  validation: float = 80.0, seconds: float = 100.0, complete: int | None = None) -> dict:
    """The record a tuned evaluation run holds under ``tuning`` (utils/sweep/collect.py)."""
    return {"method": method, "database": "Synthetic-MVD", "mode": "m1", "seed": seed, "trials": trials,
            "complete": trials if complete is None else complete,
            "space": {name: f"--{name} in a range" for name in params}, "params": params, "defaults": defaults,
            "chosen_trial": 3 + seed, "validation": validation, "trial_seconds": seconds,
            "sampler": f"TPE(seed={seed}, n_startup_trials=10)", "pruning": False, "cell": cell}


def tuned_sweep(sweep: Path) -> None:
    """Synthetic-MVD m1, four seeds: the teacher, no-KD, KD (two default configurations, --alpha 0.5 and 0.9) and
    DML at their defaults and tuned with 20 trials, a second tuned KD cell (10 trials, another temperature: no
    tuned no-KD and no default cell to pair with) and a tuning trial's run (no test metrics) in a study node."""
    for seed in SEEDS:
        write_run(sweep, "T", None, seed, NO_KD[seed] + 0.1)
        write_run(sweep, "S", "m2", seed, NO_KD[seed] - 0.1)
        write_run(sweep, "S", "m1", seed, NO_KD[seed], arguments={"lr": 0.001})
        write_run(sweep, "KD", "m1", seed, KD_DEFAULT[seed], arguments={"lr": 0.001, "alpha": 0.5, "T": 4.0})
        write_run(sweep, "KD", "m1", seed, KD_DEFAULT[seed] - 0.01, digest="kd-alpha-0.9", own=["--alpha", "0.9"],
                  arguments={"lr": 0.001, "alpha": 0.9, "T": 4.0})
        write_run(sweep, "DML", "m1", seed, DML_DEFAULT[seed], arguments={"lr": 0.001})
        s_params = {"lr": 0.001 * (seed + 1)}
        write_run(sweep, "S", "m1", seed, NO_KD_TUNED[seed], digest=f"s-tuned-{seed}", node=f"S-tuned-{seed}",
                  arguments={"lr": s_params["lr"]}, wall=20.0,
                  tuning=tuning_record("S", seed, s_params, {"lr": 0.001}, "cell-s-20", validation=75.0 + seed,
                                       seconds=200.0 + seed))
        kd_params = {"lr": KD_LR[seed], "alpha": KD_ALPHA[seed]}
        write_run(sweep, "KD", "m1", seed, KD_TUNED[seed], digest=f"kd-tuned-{seed}", node=f"KD-tuned-{seed}",
                  arguments={**kd_params, "T": 4.0}, commit="c0ffee1234",
                  tuning=tuning_record("KD", seed, kd_params, {"lr": 0.001, "alpha": 0.5}, "cell-kd-20",
                                       validation=76.0 + seed, seconds=400.0 + 10 * seed))
        write_run(sweep, "DML", "m1", seed, DML_TUNED[seed], digest=f"dml-tuned-{seed}", node=f"DML-tuned-{seed}",
                  arguments={"lr": 0.002},
                  tuning=tuning_record("DML", seed, {"lr": 0.002}, {"lr": 0.001}, "cell-dml-20", seconds=300.0,
                                       complete=18 if seed == 3 else None))  # two trials of seed 3 failed
    for seed in range(2):  # another tuned setting of KD: 10 trials
        write_run(sweep, "KD", "m1", seed, 0.74, digest=f"kd-tuned10-{seed}", node=f"KD-tuned10-{seed}",
                  arguments={"lr": 0.003, "alpha": 0.5, "T": 2.0},  # another temperature: no default cell has it
                  tuning=tuning_record("KD", seed, {"lr": 0.003, "alpha": 0.5}, {"lr": 0.001, "alpha": 0.5},
                                       "cell-kd-10", trials=10, seconds=50.0))
    trial = write_run(sweep, "KD", "m1", 0, 0.5, node="KD-tune-study-0")  # a trial: --no_test, test: null
    results = json.loads((trial / "results.json").read_text())
    results["metrics"]["test"] = None
    (trial / "results.json").write_text(json.dumps(results))


def read_csv(path: Path) -> list[dict]:
    return list(csv.DictReader(path.open()))


@pytest.fixture
def tuned(tmp_path, monkeypatch) -> Path:
    """The tuned fixture sweep, aggregated (relative run directories, as the untuned one)."""
    monkeypatch.chdir(tmp_path)
    tuned_sweep(Path("sw"))
    problems: list[str] = []
    write_all(Path("sw"), log=lambda line: None, problems=problems)
    assert problems == []  # the trial's run (test: null) is passed over, not reported
    return Path("sw")


def test_tuned_runs_form_cells_of_their_own(tuned):
    runs = read_csv(tuned / "runs.csv")
    assert len(runs) == 4 * 9 + 2  # T, S m2, S, KD twice, DML; S, KD, DML tuned; the 10-trial KD twice; no trial
    header = list(runs[0])
    assert header[4:6] == ["role", "setting"] and header[header.index("config_digest") + 1] == "tuned_params"
    kd_tuned = [r for r in runs if r["method"] == "KD" and r["setting"] == "tuned"]
    assert {r["config_digest"] for r in kd_tuned} == {"cell-kd-20", "cell-kd-10"}  # the cell, not the run's digest
    seed1 = next(r for r in kd_tuned if r["seed"] == "1" and r["config_digest"] == "cell-kd-20")
    assert seed1["tuned_params"] == "alpha=0.6 lr=0.0005"
    assert {(r["setting"], r["tuned_params"]) for r in runs if r["method"] == "T"} == {("default", "")}

    table = read_csv(tuned / "table.csv")
    assert list(table[0])[3:6] == ["method", "setting", "comparison"]
    assert list(table[0])[-5:] == ["validation_mean", "validation_std", "tuning_trials", "tuning_seconds",
                                   "tuning_seconds_per_trial"]
    kd = [(r["setting"], r["comparison"], r["n"]) for r in table if r["method"] == "KD"]
    assert kd == [("default", "default vs S", "4"), ("default", "default vs S", "4"),
                  ("tuned", "tuned vs S tuned", "2"), ("tuned", "tuned vs default", "2"),
                  ("tuned", "tuned vs S tuned", "4"), ("tuned", "tuned vs default", "4")]
    teachers = [r for r in table if r["group"] == "teacher"]
    assert teachers and {r["setting"] for r in teachers} == {"default"}  # teachers are never tuned
    s_other = next(r for r in table if r["method"] == "S-m1")  # the cross-modal teacher: default no-KD only
    assert float(s_other["mean"]) == pytest.approx(100 * np.mean(NO_KD), rel=1e-6)


def _rows(table: list[dict], comparison: str) -> dict:
    return {(r["method"], r["row"]): r for r in table if r["comparison"] == comparison and r["mode"] == "m1"}


def test_the_two_comparisons_are_two_holm_families(tuned):
    table = build_table(collect_runs(tuned))
    pct = lambda values: 100 * np.array(values)  # noqa: E731 - the tables' percentages
    # (a) tuned against tuned no-KD: KD (20 trials) and DML; the 10-trial KD has no tuned no-KD of its budget
    against_s = _rows(table, "tuned vs S tuned")
    kd, dml, kd10 = (against_s[("KD", "KD tuned (20 trials, cell cell-kd-)")], against_s[("DML", "DML tuned")],
                     against_s[("KD", "KD tuned (10 trials, cell cell-kd-)")])
    p_kd = stats.ttest_rel(pct(KD_TUNED), pct(NO_KD_TUNED)).pvalue
    p_dml = stats.ttest_rel(pct(DML_TUNED), pct(NO_KD_TUNED)).pvalue
    assert kd["p_ttest"] == pytest.approx(p_kd, rel=1e-9) and dml["p_ttest"] == pytest.approx(p_dml, rel=1e-9)
    assert math.isnan(kd10["p_ttest"]) and math.isnan(kd10["p_ttest_holm"])
    assert [kd["p_ttest_holm"], dml["p_ttest_holm"]] == pytest.approx(sweep_stats.holm([p_kd, p_dml]), rel=1e-9)
    assert math.isnan(against_s[("S", "S tuned")]["p_ttest_holm"])  # the baseline of (a) is not in (a)
    # (b) tuned against default: no-KD, KD (paired with its --alpha 0.5 cell: trial 0's flags) and DML
    against_default = _rows(table, "tuned vs default")
    p_b = [stats.ttest_rel(pct(a), pct(b)).pvalue for a, b in
           ((NO_KD_TUNED, NO_KD), (KD_TUNED, KD_DEFAULT), (DML_TUNED, DML_DEFAULT))]
    rows_b = [against_default[key] for key in (("S", "S tuned"), ("KD", "KD tuned (20 trials, cell cell-kd-)"),
                                               ("DML", "DML tuned"))]
    assert [r["p_ttest"] for r in rows_b] == pytest.approx(p_b, rel=1e-9)
    assert [r["p_ttest_holm"] for r in rows_b] == pytest.approx(sweep_stats.holm(p_b), rel=1e-9)
    wilcoxon = [stats.wilcoxon(pct(a), pct(b)).pvalue for a, b in
                ((NO_KD_TUNED, NO_KD), (KD_TUNED, KD_DEFAULT), (DML_TUNED, DML_DEFAULT))]
    assert [r["p_wilcoxon_holm"] for r in rows_b] == pytest.approx(sweep_stats.holm(wilcoxon), rel=1e-9)
    assert rows_b[1]["delta_mean"] == pytest.approx(np.mean(pct(KD_TUNED) - pct(KD_DEFAULT)), rel=1e-9)
    # the default comparison is today's: the same figures as the default runs alone give
    default_only = build_table([r for r in collect_runs(tuned) if r["setting"] == "default"])
    by_row = {(r["method"], r["row"]): r for r in default_only if r["mode"] == "m1"}
    for key, row in _rows(table, "default vs S").items():
        for column in ("mean", "delta_mean", "p_ttest", "p_ttest_holm", "p_wilcoxon_holm", "p_nb"):
            assert row[column] == pytest.approx(by_row[key][column], rel=1e-12, nan_ok=True), (key, column)


def test_tuned_params_csv_has_every_seeds_chosen_values(tuned):
    rows = read_csv(tuned / "tuned_params.csv")
    assert list(rows[0]) == ["database", "mode", "method", "seed", "config", "cell", "metric", "lr", "alpha",
                             "chosen_trial", "validation", "test", "trials", "complete", "trial_seconds", "run_dir"]
    assert [(r["method"], r["cell"]) for r in rows] == ([("S", "cell-s-20")] * 4 + [("KD", "cell-kd-20")] * 4
                                                        + [("KD", "cell-kd-10")] * 2 + [("DML", "cell-dml-20")] * 4)
    for seed, row in enumerate(rows[4:8]):
        assert row["seed"] == str(seed) and row["metric"] == "accuracy"
        assert float(row["lr"]) == KD_LR[seed] and float(row["alpha"]) == KD_ALPHA[seed]
        assert (row["chosen_trial"], float(row["validation"])) == (str(3 + seed), 76.0 + seed)
        assert float(row["test"]) == pytest.approx(100 * KD_TUNED[seed], rel=1e-6)
        assert (row["trials"], row["complete"], float(row["trial_seconds"])) == ("20", "20", 400.0 + 10 * seed)
        assert Path(row["run_dir"], "results.json").is_file()
    assert rows[0]["alpha"] == ""  # no-KD searches no alpha


def test_table_md_shows_both_comparisons_the_chosen_values_and_the_tuning_cost(tuned):
    md = (tuned / "table.md").read_text()
    titles = [line for line in md.splitlines() if line.startswith("**")]
    assert [t.split(":")[0] for t in titles] == ["**Comparison", "**Paired difference against w/o KD of the same "
                                                 "setting (same seed; a tuned row against w/o KD tuned), percentage "
                                                 "points", "**Tuned against default, the same method and seed (w/o KD "
                                                 "included; its own Holm family), percentage points",
                                                 "**Chosen trial", "**Chosen values", "**Cost per run", "**Notes**"]
    comparison = md.split("\n\n**")[0]  # the first table
    cells = {line.split(" | ")[0][2:]: line.split(" | ")[1] for line in comparison.splitlines()
             if line.startswith("| ")}
    kd = "KD tuned (20 trials, cell cell-kd-)"
    kd_default = next(r for r in build_table(collect_runs(tuned)) if r["row"] == kd and r["comparison"] ==
                      "tuned vs default")
    assert kd_default["p_ttest_holm"] < 0.05 and kd_default["delta_mean"] > 0
    assert cells[kd] == f"<u>{100 * np.mean(KD_TUNED):.2f} ± {100 * np.std(KD_TUNED, ddof=1):.2f} †</u>"
    assert "†" not in cells["DML tuned"] and "*" not in cells[kd]  # no gain marked where Holm's p is above 0.05
    validation = [76.0 + seed for seed in SEEDS]
    test = 100 * np.array(KD_TUNED)
    assert f"{np.mean(validation):.2f} ± {np.std(validation, ddof=1):.2f} / {test.mean():.2f} ± " \
           f"{test.std(ddof=1):.2f}" in md  # the chosen trial's validation score beside the test score
    alpha = f"{statistics.median(KD_ALPHA):.3g} [{min(KD_ALPHA):.3g}, {max(KD_ALPHA):.3g}] (default 0.5)"
    lr = f"{statistics.median(KD_LR):.3g} [{min(KD_LR):.3g}, {max(KD_LR):.3g}] (default 0.001)"
    assert f"| {kd}: alpha | {alpha} |" in md and f"| {kd}: lr | {lr} |" in md
    assert "| DML tuned: lr | 0.002 (default 0.001) |" in md
    seconds = sum(400.0 + 10 * seed for seed in SEEDS)
    assert f"; tuning 20 × 4: {seconds:.0f} s, {seconds / 80:.1f} s per trial |" in md
    assert "KD (--alpha 0.9) | 11.5 s / 102 MB |" in md  # default rows: no tuning cost
    assert "Tuning budgets differ" in md
    assert "fewer trials finished than they ran (failed trials; tuned_params.csv, complete): Synthetic-MVD m1 " \
           "DML tuned seed 3\n" in md
    assert f"{kd.replace('20', '10')}: no paired figures against w/o KD tuned, no tuned no-KD runs of 10 trials" in md
    assert "2 default configurations of the method and none with trial 0's flags" in md
    tex = (tuned / "table.tex").read_text()
    assert r"\dag{}" in tex and r"20 $\times$ 4" in tex and "†" not in tex


def test_a_malformed_tuning_record_is_one_problem_line(tmp_path):
    sweep = tmp_path / "sw"
    write_run(sweep, "S", "m1", 0, 0.7)
    write_run(sweep, "KD", "m1", 0, 0.7, node="KD-tuned", tuning={"cell": 3})
    write_run(sweep, "DML", "m1", 0, 0.7, node="DML-tuned", tuning={"cell": "c", "trial_seconds": "many"})
    problems: list[str] = []
    assert [r["method"] for r in collect_runs(sweep, problems)] == ["S"]
    # the sweep's node counts a results.json it can parse as finished: the line says how to redo the run
    assert [p.split("(", 1)[1].split(": delete ")[0] for p in problems] == [
        "ValueError: 'tuning.trial_seconds' is \"many\", not a number); left out; the sweep counts that run as "
        "finished", "ValueError: 'tuning' is not an object with a 'cell' string); left out; the sweep counts that run "
        "as finished"]
    assert problems[1].endswith(f"delete {sweep / 'runs/KD-tuned/KD/Synthetic-MVD/tag_m1_seed0'} and run the sweep "
                                f"again to redo it")
