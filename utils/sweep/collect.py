"""Read a sweep's run directories: one row per finished run, and what could not be read (docs/sweep.md).

A row is one run of one configuration: runs are told apart by ``(database, mode, seed, method, setting,
config_digest)``, so a second sweep with other flags or other data on the same directory adds rows instead of
replacing (or silently joining) the first one's; of the runs of one configuration and seed the newest counts. Each
row names the sweep configurations its node belongs to (``configs``, from ``node.json``), its budget and code
version. A ``results.json`` that cannot be read, and a node of the last sweep (``graph.json``) without a finished
run, are returned as problems: the tables are written from the readable runs and ``--aggregate`` exits 1.

A run whose ``results.json`` holds a ``tuning`` object (the record of the study that chose its flags, written by
``reproduce.py --tune``: docs/sweep.md, section "Tables of a tuned sweep") is a tuned run: its ``setting`` is
``tuned`` and its configuration is the tuned cell (``tuning["cell"]``: the method tuned with N trials over one
space), since its chosen values, and so its own configuration digest, differ from seed to seed; every other run's
``setting`` is ``default``. A run without test metrics (``--no_test``: a tuning trial) has nothing to tabulate and
is passed over.
"""
from __future__ import annotations

import json
from pathlib import Path

from utils.description import dataset_options
from utils.sweep.graph import BASELINE, TEACHER
from utils.sweep.node import node_state, read_json
from utils.sweep.tuned import DEFAULT, TUNED

TEACHER_MODES = "m1+m2"


def _budget(results: dict) -> tuple[str | None, int | None]:
    budget = results.get("budget") or {}
    epochs = budget.get("epochs") or {}
    return ("+".join(str(e) for e in epochs.values()) if epochs else results.get("epochs")), budget.get("steps")


def _commit(results: dict) -> str | None:
    code = results.get("code") or {}
    if not code.get("commit"):
        return None
    return code["commit"][:10] + ("+dirty" if code.get("dirty") else "")


def _data_key(results: dict) -> str:
    """What "the same data" means for pairing: the data digest and the dataset's options (preprocessing)."""
    config = results.get("config") or {}
    arguments = config.get("arguments") or {}
    try:
        options = dataset_options(results.get("database"), arguments)
    except Exception:  # noqa: BLE001 - a database no longer registered: its digest alone
        options = {}
    return json.dumps([results.get("data_digest"), options], sort_keys=True, default=str)


def readable_params(params: dict) -> str:
    """``alpha=0.42 lr=0.0031``: chosen values in one readable cell (4 significant digits, sorted by name)."""
    return " ".join(f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}"
                    for name, value in sorted(params.items()))


def run_row(results: dict, run_dir: Path, node: dict) -> dict:
    """The ``runs.csv`` row of a run (plus private fields for the table, which start with ``_``)."""
    method = results.get("method")
    tuning = results.get("tuning")
    role = {TEACHER: "teacher-mm", BASELINE: "no-kd"}.get(method, "method")
    sizes = results.get("split_sizes") or {}
    sweep_info = read_json(run_dir / "sweep.json", {}) or {}
    test = results.get("metrics", {}).get("test", {})
    epochs, steps = _budget(results)
    configs = node.get("configs") or ([node["config"]] if node.get("config") else [""])
    return {"database": results.get("database"), "mode": TEACHER_MODES if role == "teacher-mm" else results.get("mode"),
            "seed": results.get("seed"), "method": method, "role": role,
            **{k: v for k, v in test.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
            "best_epoch": results.get("best_epoch"),
            "wall_time_s": round(float(results.get("wall_time_s") or 0.0)
                                 + float(sweep_info.get("killed_attempts_wall_s") or 0.0), 2),
            "peak_mem_mb": results.get("peak_mem_mb", sweep_info.get("peak_mem_mb")),
            "config": ";".join(configs),
            "config_digest": tuning["cell"] if tuning else results.get("config_digest") or "",
            "setting": TUNED if tuning else DEFAULT,
            "tuned_params": readable_params(tuning.get("params") or {}) if tuning else "",
            "n_train": sizes.get("train"), "n_val": sizes.get("val"), "n_test": sizes.get("test"),
            "epochs": epochs, "steps": steps, "commit": _commit(results), "run_dir": str(run_dir),
            "_configs": configs, "_data": _data_key(results), "_own": " ".join(node.get("own") or []),
            "_config_text": node.get("config_text", ""), "_tuning": tuning,
            "_arguments": (results.get("config") or {}).get("arguments") or {}}


def results_problem(results) -> str | None:
    """Why a ``results.json`` is not what the scripts write (None when it is): not a JSON object, or fields of the
    wrong type (``method``/``database``/``mode`` strings, ``seed`` an integer, ``metrics.test`` an object or null,
    the timings numbers, a ``tuning`` record as :func:`tuning_problem` says), which would otherwise end the
    aggregation in a traceback."""
    if not isinstance(results, dict):
        return f"a JSON {type(results).__name__}, not an object"
    for key in ("method", "database"):
        if not isinstance(results.get(key), str):
            return f"'{key}' is {json.dumps(results.get(key))[:40]}, not a string"
    seed = results.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int):
        return f"'seed' is {json.dumps(seed)[:40]}, not an integer"
    if results.get("mode") is not None and not isinstance(results.get("mode"), str):
        return f"'mode' is {json.dumps(results.get('mode'))[:40]}, not a string"
    metrics = results.get("metrics", {})
    if not isinstance(metrics, dict) or not isinstance(metrics.get("test", {}), (dict, type(None))):
        return "'metrics' is not an object with a 'test' object (or null)"
    for key in ("wall_time_s", "peak_mem_mb", "best_epoch"):
        if not _number_or_none(results.get(key)):
            return f"'{key}' is {json.dumps(results.get(key))[:40]}, not a number"
    return None if results.get("tuning") is None else tuning_problem(results["tuning"])


def _number_or_none(value) -> bool:
    return value is None or (not isinstance(value, bool) and isinstance(value, (int, float)))


def tuning_problem(tuning) -> str | None:
    """Why a ``tuning`` record is not what the tuner writes (None when it is): an object with a string ``cell``,
    an object ``params`` and numbers (or nulls) for the figures the tables show."""
    if not isinstance(tuning, dict) or not isinstance(tuning.get("cell"), str) or not tuning["cell"]:
        return "'tuning' is not an object with a 'cell' string"
    for key in ("params", "defaults"):
        if not isinstance(tuning.get(key, {}), dict):
            return f"'tuning.{key}' is {json.dumps(tuning.get(key))[:40]}, not an object"
    for key in ("trials", "complete", "chosen_trial", "validation", "trial_seconds"):
        if not _number_or_none(tuning.get(key)):
            return f"'tuning.{key}' is {json.dumps(tuning.get(key))[:40]}, not a number"
    return None


def collect_runs(sweep: Path, problems: list[str] | None = None) -> list[dict]:
    """One row per finished run and configuration under ``sweep/runs`` (the newest of one configuration and seed);
    what cannot be read is appended to ``problems``."""
    problems = [] if problems is None else problems
    rows: dict[tuple, tuple[float, dict]] = {}
    for results_path in sorted(Path(sweep, "runs").glob("*/*/*/*/results.json")):
        run_dir = results_path.parent
        try:
            results = json.loads(results_path.read_text())
            problem = results_problem(results)
            if problem is not None:
                raise ValueError(problem)
            if results.get("metrics", {}).get("test", {}) is None:
                continue  # a --no_test run (a tuning trial): no test metrics to tabulate
        except (OSError, ValueError) as error:
            node = read_json(run_dir.parents[2] / "node.json", {}) or {}
            state, done = node_state(run_dir.parents[2], node.get("method"), node.get("database")) if node else \
                ("new", None)
            if state == "done" and done != run_dir:
                continue  # the node was run again since: its readable run counts
            why = str(error).splitlines()[0][:80] if str(error) else ""
            redo = (f"the sweep counts that run as finished: delete {run_dir} and run the sweep again to redo it"
                    if state == "done" else "running the sweep again redoes that run")
            problems.append(f"{results_path} cannot be read ({type(error).__name__}{': ' + why if why else ''}); "
                            f"left out; {redo}")
            continue
        row = run_row(results, run_dir, read_json(run_dir.parents[2] / "node.json", {}) or {})
        key = (row["database"], row["mode"], row["seed"], row["method"], row["setting"], row["config_digest"])
        mtime = results_path.stat().st_mtime
        if key not in rows or rows[key][0] < mtime:
            rows[key] = (mtime, row)
    missing_nodes(Path(sweep), problems)
    return [row for _, row in rows.values()]


def missing_nodes(sweep: Path, problems: list[str]) -> None:
    """Nodes of the last sweep (``graph.json``) without a finished run."""
    graph = read_json(sweep / "graph.json", []) or []
    missing = [node for node in graph if isinstance(node, dict) and
               node_state(sweep / "runs" / node.get("id", ""), node.get("method"), node.get("database"))[0] != "done"]
    if missing:
        shown = ", ".join(node["id"] for node in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5
                                                                 else "")
        problems.append(f"{len(missing)} node(s) of the last sweep have no finished run ({shown}); their cells are "
                        f"missing or have fewer seeds; running the sweep again runs them")
