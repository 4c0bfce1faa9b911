"""Collect a sweep's run directories into ``runs.csv`` and ``table.csv`` (paired statistics against no-KD).

Works on whatever has finished (``results.json`` present) under ``DIR/runs/``, so partial sweeps aggregate too
(utils/sweep/collect.py reads the runs; docs/sweep.md says how runs are grouped).

* ``runs.csv``: one row per run and configuration, ``database,mode,seed,method,role,<every scalar test metric>,
  best_epoch,config,config_digest,n_train,n_val,n_test,epochs,steps,commit,wall_time_s,peak_mem_mb,run_dir``.
  ``role``: ``teacher-mm`` (``main-T.py``, ``mode`` ``m1+m2``), ``no-kd`` (``main-S.py``, also the other mode's
  cross-modal teacher) or ``method``. ``config``: the sweep configuration(s) of the run's node; ``config_digest``:
  the run's configuration (results.json), equal across seeds; ``epochs``: per stage (``20+5+3``); ``steps``:
  optimiser steps in all; ``commit``: the code's git commit (``+dirty`` with uncommitted changes).
  ``wall_time_s`` is the script's own ``results.json`` figure plus the wall time of earlier attempts of the node
  that ended without results (a run resumed after a crash); ``peak_mem_mb`` the largest resident set size of the
  script's process over its attempts, measured by the harness (host memory, not GPU memory; empty where the
  measuring node process was killed after its run had finished).
* ``table.csv``: one row per (database, mode, sweep configuration, method configuration) with the headline metric
  in percent (test accuracy; mIoU for segmentation datasets): ``n, mean, std`` (ddof=1), the paired difference
  against the no-KD run of the same seed, sweep configuration and data (``delta_mean, delta_std``) with the 95 %
  t-interval of its mean (``ci_low, ci_high``, unadjusted), ``scipy.stats.ttest_rel`` and ``scipy.stats.wilcoxon``
  p-values (``p_ttest``, ``p_wilcoxon``; empty below two paired seeds) and their Holm-Bonferroni adjusted values
  (``p_ttest_holm``, ``p_wilcoxon_holm``), the corrected resampled t-test of Nadeau & Bengio (``p_nb``; empty where
  the runs do not share recorded split sizes), ``wins, losses, ties`` over the paired seeds, the budget (``epochs``
  per stage, optimiser ``steps``), the split sizes ``n_train`` and ``n_test``, mean ``wall_time_s`` and
  ``peak_mem_mb``. Rows ``T`` (multimodal teacher) and ``S-<other mode>`` (cross-modal teacher) come first, group
  ``teacher``.
  When every paired difference is zero, both tests are undefined (scipy returns NaN or raises): the p-values are
  reported as 1.0, no evidence of a difference.
* The Holm family: the method rows of one column (database, mode) and one sweep configuration (``config``; rows
  without one are one configuration), teachers and the no-KD row excluded, NaN p-values excluded
  (:func:`adjust_for_multiple_comparisons`; the formulas are in :mod:`utils.sweep.stats`, the reasons in
  docs/statistics.md).
* A tuned sweep (runs with a ``tuning`` record: utils/sweep/collect.py): ``runs.csv`` gains ``setting``
  (``default`` or ``tuned``) and ``tuned_params`` (the chosen values, ``alpha=0.42 lr=0.0031``), and a tuned run's
  ``config_digest`` is its tuned cell. ``table.csv`` gains ``setting`` and ``comparison``: a default cell's
  differences are against no-KD (``default vs S``, as without tuning), a tuned cell's against the tuned no-KD of
  the same tuning budget (``tuned vs S tuned``) and, on a second row, against the method's own default cell
  (``tuned vs default``, the tuned no-KD included); each comparison is its own Holm family. Tuned rows also have
  the chosen trials' validation score (``validation_mean``, ``validation_std``, percent) and the tuning cost
  (``tuning_trials`` per seed, ``tuning_seconds``: the trials' summed wall time over the seeds,
  ``tuning_seconds_per_trial``). ``tuned_params.csv``: one row per tuned run (:mod:`utils.sweep.tuned`).
"""
from __future__ import annotations

import csv
import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

from datasets import get_spec
from utils.core.atomic import atomic_write_text
from utils.core.errors import UserError
from utils.sweep import stats as sweep_stats
from utils.sweep.collect import TEACHER_MODES, collect_runs
from utils.sweep.graph import BASELINE, GROUP_ORDER, TEACHER, comparison_methods
from utils.sweep.report import write_reports
from utils.sweep.tuned import (COMPARISONS, DEFAULT, DEFAULT_VS_S, TUNED, TUNED_VS_DEFAULT, TUNED_VS_S,
                               tuned_params_table)

METRIC_ORDER = ("accuracy", "f1_weighted", "average_accuracy", "kappa", "mIoU", "loss")
TABLE_COLUMNS = ("database", "mode", "config", "method", "group", "n", "mean", "std", "delta_mean", "delta_std",
                 "ci_low", "ci_high", "p_ttest", "p_ttest_holm", "p_wilcoxon", "p_wilcoxon_holm", "p_nb", "wins",
                 "losses", "ties", "epochs", "steps", "n_train", "n_test", "wall_time_s", "peak_mem_mb")
#: a tuned sweep's table.csv: where its extra columns go (after ``method``; at the end)
TUNED_TABLE_COLUMNS = (*TABLE_COLUMNS[:4], "setting", "comparison", *TABLE_COLUMNS[4:], "validation_mean",
                       "validation_std", "tuning_trials", "tuning_seconds", "tuning_seconds_per_trial")
#: arguments of a tuned evaluation run that its default run lacks: not flags of the method's setting
TUNING_RUN_OPTIONS = ("init_seed", "tuning_record")
#: table rows that are not compared methods: outside the Holm family (no-KD is compared in ``tuned vs default``)
NOT_COMPARED = ("teacher", "no-kd")
#: runs.csv columns besides the metrics, in order
RUN_COLUMNS = ("database", "mode", "seed", "method", "role")
RUN_TAIL = ("best_epoch", "config", "config_digest", "n_train", "n_val", "n_test", "epochs", "steps", "commit",
            "wall_time_s", "peak_mem_mb", "run_dir")
#: runs.csv columns of a tuned sweep only: after ``role``, and after ``config_digest``
RUN_SETTING, RUN_PARAMS = "setting", "tuned_params"


def headline_metric(database: str) -> str:
    """Test accuracy, or mIoU where the dataset is a segmentation task (NYU-Depth-V2)."""
    try:
        return "mIoU" if get_spec(database).is_segmentation else "accuracy"
    except Exception:  # noqa: BLE001 - a database no longer registered: its runs still aggregate
        return "accuracy"


def _registry() -> dict[str, type]:
    try:
        return comparison_methods()
    except Exception:  # noqa: BLE001 - aggregation must not depend on every method module importing
        return {}


def _method_rank(name: str) -> tuple:
    names = list(_REGISTRY_CACHE.setdefault("r", _registry()))
    return (0 if name == TEACHER else 1 if name == BASELINE else 2, names.index(name) if name in names else 99, name)


_REGISTRY_CACHE: dict = {}


def group_of(method: str) -> str:
    if method == BASELINE:
        return "no-kd"
    if method == TEACHER or method.startswith(f"{BASELINE}-"):
        return "teacher"
    cls = _REGISTRY_CACHE.setdefault("r", _registry()).get(method)
    return cls.card.group if cls is not None else "other"


def _sd(values: list[float]) -> float:
    if len(values) < 2:
        return math.nan
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def paired_stats(values: dict[int, float], baseline: dict[int, float], n_train: int | None = None,
                 n_test: int | None = None) -> dict:
    """Statistics of ``values`` (seed -> fraction) and of its paired difference against ``baseline``, in percent.

    Wins/losses/ties compare the stored fractions exactly (they are rounded to 4 decimals by the scripts).
    ``n_train`` / ``n_test``: the split sizes of the runs, for the corrected resampled t-test (NaN without them).
    """
    from scipy import stats

    seeds = sorted(values)
    pct = [100.0 * values[s] for s in seeds]
    paired = [s for s in seeds if s in baseline]
    a = [100.0 * values[s] for s in paired]
    b = [100.0 * baseline[s] for s in paired]
    diffs = [x - y for x, y in zip(a, b)]
    out = {"n": len(pct), "mean": sum(pct) / len(pct) if pct else math.nan, "std": _sd(pct),
           "delta_mean": sum(diffs) / len(diffs) if diffs else math.nan, "delta_std": _sd(diffs),
           "p_ttest": math.nan, "p_wilcoxon": math.nan,
           "p_nb": sweep_stats.corrected_resampled_ttest(diffs, n_train, n_test),
           "wins": sum(values[s] > baseline[s] for s in paired), "losses": sum(values[s] < baseline[s] for s in paired),
           "ties": sum(values[s] == baseline[s] for s in paired), "n_paired": len(paired)}
    out["ci_low"], out["ci_high"] = sweep_stats.t_interval(diffs)
    if len(paired) >= 2:
        if all(values[s] == baseline[s] for s in paired):
            out["p_ttest"] = out["p_wilcoxon"] = 1.0
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # small-sample notes of scipy; the p-values are what we report
                out["p_ttest"] = float(stats.ttest_rel(a, b).pvalue)
                out["p_wilcoxon"] = float(stats.wilcoxon(a, b).pvalue)
    return out


@dataclass
class Column:
    database: str
    mode: str
    metric: str


def build_table(runs: list[dict], metric_for=headline_metric, notes: list[str] | None = None) -> list[dict]:
    """``table.csv`` rows: per (database, sweep configuration, student mode) the teachers, no-KD and every method
    present, one row per configuration of a method (seed aside: the runs of one row differ only by their seed).

    A method's paired differences use the no-KD run of the same seed, sweep configuration and data; a run whose
    no-KD run saw other data (a ``--set S:`` view change) has none, and ``notes`` says so. With several sweep
    configurations in the directory each row's key carries its label (``KD [cfg-…]``); with several
    configurations of one method in one sweep configuration (another ``--set`` of that method), its own flags.
    """
    notes = [] if notes is None else notes
    blocks: dict[tuple, list[dict]] = {}
    for row in runs:
        for label in row.get("_configs") or [row.get("config", "")]:
            blocks.setdefault((row["database"], label), []).append(row)
    databases = list(dict.fromkeys(r["database"] for r in runs))
    labels = sorted({label for _, label in blocks})
    several = len(labels) > 1
    if several:
        texts = {label: next((r["_config_text"] for (_, lb), rs in blocks.items() if lb == label for r in rs
                              if r.get("_config_text")), "") for label in labels}
        notes.append(f"{len(labels)} sweep configurations in this directory, each with its own rows [label]: "
                     + "; ".join(f"{label or 'unlabelled runs'}: {texts[label] or 'runs without a sweep node'}"
                                 for label in labels))
    table = []
    for (database, label), rows in blocks.items():
        table += _block_rows(database, label, rows, metric_for(database), several, notes)
    table.sort(key=lambda r: (databases.index(r["database"]), r["mode"], labels.index(r["config"]),
                              GROUP_ORDER.index(r["group"]) if r["group"] in GROUP_ORDER else 99,
                              _method_rank(r["method"]), r["row"], COMPARISONS.index(r["comparison"])))
    adjust_for_multiple_comparisons(table)
    return table


def _newest_per_seed(rows: list[dict]) -> dict:
    out = {}
    for row in sorted(rows, key=lambda r: r["run_dir"]):
        out[row["seed"]] = row
    return out


def _block_rows(database, label, rows, metric, several, notes) -> list[dict]:
    """The rows of one sweep configuration of one database: per student mode the teachers, then every method's
    cells of the default setting against no-KD (``default vs S``) and, in a tuned sweep, its tuned cells against
    the tuned no-KD (``tuned vs S tuned``) and against its own default cell (``tuned vs default``)."""
    suffix = f" [{label}]" if several else ""
    by: dict[tuple, dict[str, dict[str, list[dict]]]] = {}
    for row in rows:
        by.setdefault((row["mode"], row["method"]), {}).setdefault(row.get("setting", DEFAULT), {}) \
            .setdefault(row["config_digest"], []).append(row)

    def cells(mode, method, setting=DEFAULT) -> dict[str, list[dict]]:
        return by.get((mode, method), {}).get(setting, {})

    out = []
    modes = sorted({r["mode"] for r in rows if r["mode"] != TEACHER_MODES})
    for mode in modes:
        other = "m2" if mode == "m1" else "m1"
        where = f"{database} {mode}"
        baseline_runs = _newest_per_seed([r for runs in cells(mode, BASELINE).values() for r in runs])
        entries = [(TEACHER, f"{TEACHER}", cells(TEACHER_MODES, TEACHER)),
                   (f"{BASELINE}-{other}", f"{BASELINE}-other", cells(other, BASELINE))]
        methods = sorted({m for (mo, m) in by if mo == mode}, key=_method_rank)
        entries += [(method, method, cells(mode, method)) for method in methods]
        for method, key, variants in entries:
            for digest, runs in variants.items():
                seeds = _newest_per_seed(runs)
                if not _has_values(seeds, metric):
                    continue
                own = f" ({runs[0]['_own'] or digest[:8]})" if len(variants) > 1 else ""
                baseline = _paired(baseline_runs, seeds, metric)
                if method not in (TEACHER, BASELINE) and not method.startswith(f"{BASELINE}-") and not baseline \
                        and baseline_runs:
                    notes.append(f"{where} {method}{own}{suffix}: no paired figures, its no-KD runs were "
                                 f"trained on other data or data options (a --set S: changed them)")
                out += _cell_row(database, mode, label, method, key + own + suffix, seeds, baseline, metric,
                                 DEFAULT_VS_S, notes)
        for method in methods:
            tuned = cells(mode, method, TUNED)
            for digest, runs in tuned.items():
                seeds = _newest_per_seed(runs)
                if not _has_values(seeds, metric):
                    continue
                budget = _tuning_budget(runs[0])
                own = f" ({budget[0]} trials, cell {digest[:8]})" if len(tuned) > 1 else ""
                key = f"{method} tuned{own}{suffix}"
                tuned_baseline = _newest_per_seed([r for rs in cells(mode, BASELINE, TUNED).values() for r in rs
                                                   if _tuning_budget(r) == budget])
                baseline = _paired(tuned_baseline, seeds, metric)
                if method != BASELINE and not baseline:
                    notes.append(f"{where} {key}: no paired figures against w/o KD tuned, " + (
                        "its tuned no-KD runs were trained on other data or data options" if tuned_baseline else
                        f"no tuned no-KD runs of {budget[0]} trials{' with pruning' if budget[1] else ''}"))
                out += _cell_row(database, mode, label, method, key, seeds, baseline, metric, TUNED_VS_S, notes)
                default_runs, why = _default_cell(runs, cells(mode, method))
                default = _paired(_newest_per_seed(default_runs), seeds, metric)
                if not default:
                    notes.append(f"{where} {key}: no paired figures against its default setting, "
                                 + (why or "its default runs were trained on other data or data options"))
                out += _cell_row(database, mode, label, method, key, seeds, default, metric, TUNED_VS_DEFAULT,
                                 notes)
    return out


def _has_values(seeds: dict, metric: str) -> bool:
    return any(r.get(metric) is not None for r in seeds.values())


def _paired(baseline_runs: dict, seeds: dict, metric: str) -> dict:
    """The baseline's values on the seeds of ``seeds`` whose runs saw the same data."""
    return {s: b[metric] for s, b in baseline_runs.items() if metric in b
            and s in seeds and b["_data"] == seeds[s]["_data"]}


def _tuning_budget(run: dict) -> tuple:
    """What makes two tuned cells comparable: the trials per study and whether they were pruned."""
    record = run.get("_tuning") or {}
    return record.get("trials"), bool(record.get("pruning"))


def _default_cell(tuned_runs: list[dict], defaults: dict[str, list[dict]]) -> tuple[list[dict], str]:
    """The default cell a tuned cell is compared with, and why there is none: the method's one default cell, or,
    where there are several (another ``--set`` of the method), the one whose flags are the tuned runs' with the
    searched parameters at trial 0's values (the method's defaults)."""
    if len(defaults) <= 1:
        return next(iter(defaults.values()), []), "" if defaults else "no default runs of the method"
    record = tuned_runs[0].get("_tuning") or {}
    searched = set(record.get("params") or {})
    expected = {k: v for k, v in (tuned_runs[0].get("_arguments") or {}).items() if k not in searched}
    expected.update(record.get("defaults") or {})
    matching = [runs for runs in defaults.values() if _flags(runs[0].get("_arguments")) == _flags(expected)]
    if len(matching) == 1:
        return matching[0], ""
    return [], (f"{len(defaults)} default configurations of the method and {len(matching) or 'none'} with trial "
                f"0's flags")


def _flags(arguments: dict | None) -> dict:
    """A run's result-defining arguments without those a tuned evaluation run adds (its initialisation seed,
    which equals its seed, and the record of its study)."""
    return {k: v for k, v in (arguments or {}).items() if k not in TUNING_RUN_OPTIONS}


def _cell_row(database, mode, label, method, key, seeds, baseline, metric, comparison, notes) -> list[dict]:
    """The table row of one cell (its runs by seed, with a value of ``metric``) and one comparison."""
    values = {s: r[metric] for s, r in seeds.items() if r.get(metric) is not None}
    row = {"database": database, "mode": mode, "config": label, "method": method, "row": key,
           "group": group_of(method), "setting": TUNED if comparison != DEFAULT_VS_S else DEFAULT,
           "comparison": comparison, **paired_stats(values, baseline, *_split_sizes(seeds.values())),
           "metric": metric,
           "wall_time_s": _mean([r["wall_time_s"] for r in seeds.values()]),
           "peak_mem_mb": _mean([r["peak_mem_mb"] for r in seeds.values()]),
           "epochs": "/".join(sorted({str(r["epochs"]) for r in seeds.values() if r.get("epochs")})),
           "steps": _same([r.get("steps") for r in seeds.values()]),
           "n_train": _same([r.get("n_train") for r in seeds.values()]),
           "n_test": _same([r.get("n_test") for r in seeds.values()]),
           "_runs": [seeds[s] for s in sorted(seeds)]}
    if row["setting"] == TUNED:
        row.update(_tuning_cost(row["_runs"]))
    commits = sorted({r["commit"] for r in seeds.values() if r.get("commit")})
    if len(commits) > 1 and comparison != TUNED_VS_DEFAULT:  # one note per cell
        notes.append(f"{database} {mode} {key}: its runs come from different code versions ({', '.join(commits)})")
    for extra in METRIC_ORDER:  # secondary metrics for the report (OA and AA on segmentation data)
        vals = {s: r[extra] for s, r in seeds.items() if r.get(extra) is not None}
        if vals:
            pct = [100.0 * v for v in vals.values()]
            row[f"_{extra}"] = (sum(pct) / len(pct), _sd(pct))
    return [row]


def _tuning_cost(runs: list[dict]) -> dict:
    """A tuned cell's chosen-trial validation score (mean, std over seeds) and its tuning cost: the trials per
    seed (N), the summed wall time of every seed's trials, and that time per trial."""
    records = [r.get("_tuning") or {} for r in runs]
    validation = [float(t["validation"]) for t in records if t.get("validation") is not None]
    timed = [(float(t["trial_seconds"]), t.get("trials") or 0) for t in records if t.get("trial_seconds") is not None]
    seconds, trials = sum(s for s, _ in timed), sum(n for _, n in timed)
    return {"validation_mean": _mean(validation), "validation_std": _sd(validation),
            "tuning_trials": _same([t.get("trials") for t in records]), "tuning_seconds": seconds if timed else None,
            "tuning_seconds_per_trial": seconds / trials if trials else None}


def _same(values):
    """The value all runs share; their mean where they differ (``None`` without values)."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    return values[0] if len(set(values)) == 1 else _mean(values)


def _split_sizes(runs) -> tuple[int | None, int | None]:
    """The (n_train, n_test) the runs share; (None, None) where a run lacks them or they differ."""
    sizes = {(r.get("n_train"), r.get("n_test")) for r in runs}
    if len(sizes) != 1:
        return None, None
    n_train, n_test = sizes.pop()
    return (int(n_train), int(n_test)) if n_train and n_test else (None, None)


def holm_family(row: dict) -> tuple:
    """The rows that form one Holm family: column, configuration and comparison (a sweep without tuned runs has
    one comparison; a tuned sweep's ``tuned vs S tuned`` and ``tuned vs default`` are families of their own)."""
    return row["database"], row["mode"], row.get("config") or "", row.get("comparison") or ""


def adjust_for_multiple_comparisons(table: list[dict]) -> None:
    """Add ``p_ttest_holm`` and ``p_wilcoxon_holm``: Holm over each family (:func:`holm_family`) of method rows.

    Teachers and the no-KD row are not compared methods against no-KD: their adjusted p-values stay NaN; in
    ``tuned vs default`` the tuned no-KD is a method like the others (does tuning help the baseline?).
    """
    families: dict[tuple, list[dict]] = {}
    for row in table:
        row["p_ttest_holm"] = row["p_wilcoxon_holm"] = math.nan
        if row["group"] not in NOT_COMPARED or row.get("comparison") == TUNED_VS_DEFAULT:
            families.setdefault(holm_family(row), []).append(row)
    for rows in families.values():
        for test in ("p_ttest", "p_wilcoxon"):
            for row, adjusted in zip(rows, sweep_stats.holm([row[test] for row in rows])):
                row[f"{test}_holm"] = adjusted


def _mean(values) -> float:
    values = [float(v) for v in values if v is not None]
    return sum(values) / len(values) if values else math.nan


def _csv(rows: list[dict], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if _missing(row.get(c)) else _fmt(row.get(c)) for c in columns])
    return buffer.getvalue()


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def is_tuned(rows: list[dict]) -> bool:
    """Whether ``rows`` (runs or table rows) hold a tuned run: the tables then show the tuned comparisons."""
    return any(r.get("setting") == TUNED for r in rows)


def runs_columns(runs: list[dict]) -> list[str]:
    fixed = set(RUN_COLUMNS) | set(RUN_TAIL) | {RUN_SETTING, RUN_PARAMS}
    metrics = list(dict.fromkeys(k for r in runs for k in r if k not in fixed and not k.startswith("_")))
    metrics.sort(key=lambda m: METRIC_ORDER.index(m) if m in METRIC_ORDER else len(METRIC_ORDER))
    if not is_tuned(runs):
        return [*RUN_COLUMNS, *metrics, *RUN_TAIL]
    digest = RUN_TAIL.index("config_digest") + 1
    return [*RUN_COLUMNS, RUN_SETTING, *metrics, *RUN_TAIL[:digest], RUN_PARAMS, *RUN_TAIL[digest:]]


def write_all(sweep: Path, log=print, problems: list[str] | None = None) -> list[dict]:
    """Write ``runs.csv``, ``table.csv``, ``table.md``, ``table.tex`` and ``table.png`` into ``sweep`` (and
    ``tuned_params.csv`` where it holds tuned runs); runs that cannot be read and nodes without a finished run are
    appended to ``problems`` (and the tables' notes)."""
    sweep = Path(sweep)
    if not (sweep / "runs").is_dir():
        raise UserError(f"{sweep} is not a sweep directory (no runs/ folder); pass the --out_dir of a sweep")
    problems = [] if problems is None else problems
    runs = collect_runs(sweep, problems)
    runs.sort(key=lambda r: (r["database"], r["mode"], _method_rank(r["method"]), r["config"], r["seed"]))
    atomic_write_text(sweep / "runs.csv", _csv(runs, runs_columns(runs)))
    notes: list[str] = []
    table = build_table(runs, notes=notes)
    tuned = is_tuned(runs)
    atomic_write_text(sweep / "table.csv", _csv(table, list(TUNED_TABLE_COLUMNS if tuned else TABLE_COLUMNS)))
    written = "runs.csv, table.csv, table.md, table.tex, table.png"
    if tuned:
        atomic_write_text(sweep / "tuned_params.csv", _csv(*tuned_params_table(runs, headline_metric)))
        written += ", tuned_params.csv"
    write_reports(sweep, table, problems + notes)
    log(f"Aggregated {len(runs)} runs into {sweep}/{written}")
    for line in problems:
        log(f"warning: {line}")
    return table
