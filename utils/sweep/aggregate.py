"""Collect a sweep's run directories into ``runs.csv`` and ``table.csv`` (paired statistics against no-KD).

Works on whatever has finished (``results.json`` present) under ``DIR/runs/``, so partial sweeps aggregate too.

* ``runs.csv``: one row per run, ``database,mode,seed,method,role,<every scalar test metric>,best_epoch,
  wall_time_s,peak_mem_mb,run_dir``. ``role``: ``teacher-mm`` (``main-T.py``, ``mode`` ``m1+m2``), ``no-kd``
  (``main-S.py``, also the other mode's cross-modal teacher) or ``method``. ``wall_time_s`` is the script's own
  ``results.json`` figure plus the wall time of earlier attempts of the node that ended without results (a run
  resumed after a crash); ``peak_mem_mb`` the largest resident set size of the script's process over its attempts,
  measured by the harness (host memory, not GPU memory; empty where the measuring node process was killed after
  its run had finished).
* ``table.csv``: one row per (database, mode, method) with the headline metric in percent (test accuracy; mIoU for
  segmentation datasets): ``n, mean, std`` (ddof=1), the paired difference against the no-KD run of the same seed
  (``delta_mean, delta_std``), ``scipy.stats.ttest_rel`` and ``scipy.stats.wilcoxon`` p-values (empty below two
  paired seeds), ``wins, losses, ties`` over the paired seeds, mean ``wall_time_s`` and ``peak_mem_mb``. Rows
  ``T`` (multimodal teacher) and ``S-<other mode>`` (cross-modal teacher) come first, group ``teacher``.
  When every paired difference is zero, both tests are undefined (scipy returns NaN or raises): the p-values are
  reported as 1.0, no evidence of a difference.
"""
from __future__ import annotations

import csv
import io
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

from utils.sweep.graph import BASELINE, TEACHER
from utils.sweep.node import atomic_write_text

GROUP_ORDER = ("teacher", "no-kd", "multimodal-teacher", "crossmodal-teacher", "teacher-free", "MST-Distill", "other")
METRIC_ORDER = ("accuracy", "f1_weighted", "average_accuracy", "kappa", "mIoU", "loss")
TABLE_COLUMNS = ("database", "mode", "method", "group", "n", "mean", "std", "delta_mean", "delta_std", "p_ttest",
                 "p_wilcoxon", "wins", "losses", "ties", "wall_time_s", "peak_mem_mb")
TEACHER_MODES = "m1+m2"


def headline_metric(database: str) -> str:
    """Test accuracy, or mIoU where the dataset is a segmentation task (NYU-Depth-V2)."""
    try:
        from datasets import get_spec

        return "mIoU" if get_spec(database).is_segmentation else "accuracy"
    except Exception:  # noqa: BLE001 - a database no longer registered: its runs still aggregate
        return "accuracy"


def collect_runs(sweep: Path) -> list[dict]:
    """One row per finished run under ``sweep/runs`` (the newest when a node holds several)."""
    rows = {}
    for results_path in sorted(Path(sweep, "runs").glob("*/*/*/*/results.json")):
        run_dir = results_path.parent
        try:
            results = json.loads(results_path.read_text())
        except ValueError:
            continue
        method = results.get("method")
        role = {TEACHER: "teacher-mm", BASELINE: "no-kd"}.get(method, "method")
        mode = TEACHER_MODES if role == "teacher-mm" else results.get("mode")
        test = results.get("metrics", {}).get("test", {})
        sweep_info = _read(run_dir / "sweep.json")
        row = {"database": results.get("database"), "mode": mode, "seed": results.get("seed"), "method": method,
               "role": role, **{k: v for k, v in test.items() if isinstance(v, (int, float)) and not
                                isinstance(v, bool)},
               "best_epoch": results.get("best_epoch"),
               "wall_time_s": round(float(results.get("wall_time_s") or 0.0)
                                    + float(sweep_info.get("killed_attempts_wall_s") or 0.0), 2),
               "peak_mem_mb": results.get("peak_mem_mb", sweep_info.get("peak_mem_mb")),
               "run_dir": str(run_dir), "_mtime": results_path.stat().st_mtime}
        key = (row["database"], row["mode"], row["seed"], method)
        if key not in rows or rows[key]["_mtime"] < row["_mtime"]:
            rows[key] = row
    out = sorted(rows.values(), key=lambda r: (r["database"], r["mode"], _method_rank(r["method"]), r["seed"]))
    for row in out:
        row.pop("_mtime")
    return out


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _registry() -> dict[str, type]:
    try:
        from utils.sweep.graph import comparison_methods

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
    return cls.comparison_group() if cls is not None else "other"


def _sd(values: list[float]) -> float:
    if len(values) < 2:
        return math.nan
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def paired_stats(values: dict[int, float], baseline: dict[int, float]) -> dict:
    """Statistics of ``values`` (seed -> fraction) and of its paired difference against ``baseline``, in percent.

    Wins/losses/ties compare the stored fractions exactly (they are rounded to 4 decimals by the scripts).
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
           "wins": sum(values[s] > baseline[s] for s in paired), "losses": sum(values[s] < baseline[s] for s in paired),
           "ties": sum(values[s] == baseline[s] for s in paired), "n_paired": len(paired)}
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


def build_table(runs: list[dict], metric_for=headline_metric) -> list[dict]:
    """``table.csv`` rows: per (database, student mode) the teachers, no-KD and every method present."""
    table = []
    by = {}
    for row in runs:
        by.setdefault((row["database"], row["mode"], row["method"]), {})[row["seed"]] = row
    databases = list(dict.fromkeys(r["database"] for r in runs))
    for database in databases:
        metric = metric_for(database)
        modes = sorted({r["mode"] for r in runs if r["database"] == database and r["mode"] != TEACHER_MODES})
        for mode in modes:
            other = "m2" if mode == "m1" else "m1"
            baseline = {s: r[metric] for s, r in by.get((database, mode, BASELINE), {}).items() if metric in r}
            entries = [(TEACHER, by.get((database, TEACHER_MODES, TEACHER), {})),
                       (f"{BASELINE}-{other}", by.get((database, other, BASELINE), {}))]
            methods = [m for (d, mo, m) in by if d == database and mo == mode]
            for method in sorted(methods, key=_method_rank):
                entries.append((method, by[(database, mode, method)]))
            for method, seeds in entries:
                values = {s: r[metric] for s, r in seeds.items() if r.get(metric) is not None}
                if not values:
                    continue
                row = {"database": database, "mode": mode, "method": method, "group": group_of(method),
                       **paired_stats(values, baseline), "metric": metric,
                       "wall_time_s": _mean([r["wall_time_s"] for r in seeds.values()]),
                       "peak_mem_mb": _mean([r["peak_mem_mb"] for r in seeds.values()])}
                for extra in METRIC_ORDER:  # secondary metrics for the report (OA and AA on segmentation data)
                    vals = {s: r[extra] for s, r in seeds.items() if r.get(extra) is not None}
                    if vals:
                        pct = [100.0 * v for v in vals.values()]
                        row[f"_{extra}"] = (sum(pct) / len(pct), _sd(pct))
                table.append(row)
    table.sort(key=lambda r: (databases.index(r["database"]), r["mode"], GROUP_ORDER.index(r["group"])
                              if r["group"] in GROUP_ORDER else 99, _method_rank(r["method"])))
    return table


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


def runs_columns(runs: list[dict]) -> list[str]:
    metrics = list(dict.fromkeys(k for r in runs for k in r if k not in (
        "database", "mode", "seed", "method", "role", "best_epoch", "wall_time_s", "peak_mem_mb", "run_dir")))
    metrics.sort(key=lambda m: METRIC_ORDER.index(m) if m in METRIC_ORDER else len(METRIC_ORDER))
    return ["database", "mode", "seed", "method", "role", *metrics, "best_epoch", "wall_time_s", "peak_mem_mb",
            "run_dir"]


def write_all(sweep: Path, log=print) -> list[dict]:
    """Write ``runs.csv``, ``table.csv``, ``table.md``, ``table.tex`` and ``table.png`` into ``sweep``."""
    from utils.errors import UserError
    from utils.sweep.report import write_reports

    sweep = Path(sweep)
    if not (sweep / "runs").is_dir():
        raise UserError(f"{sweep} is not a sweep directory (no runs/ folder); pass the --out_dir of a sweep")
    runs = collect_runs(sweep)
    atomic_write_text(sweep / "runs.csv", _csv(runs, runs_columns(runs)))
    table = build_table(runs)
    atomic_write_text(sweep / "table.csv", _csv(table, list(TABLE_COLUMNS)))
    write_reports(sweep, table)
    log(f"Aggregated {len(runs)} runs into {sweep}/runs.csv, table.csv, table.md, table.tex, table.png")
    return table
