"""What the studies of a tuned sweep chose, for the tables (docs/sweep.md, "Tables of a tuned sweep").

Read from the ``tuning`` record that ``reproduce.py --tune`` writes into each tuned evaluation run's
``results.json``; utils/sweep/collect.py keeps it on the run's row as ``_tuning``.

* ``setting`` and ``comparison``: the two settings of a run, the three comparisons of the tables' rows.
* :func:`tuned_params_table`: ``tuned_params.csv``, one row per tuned run.
* :func:`chosen_values`: per searched parameter, the values one tuned cell chose, summarised over its seeds.
"""
from __future__ import annotations

import statistics
from collections import Counter

#: a run's (and a table row's) ``setting``: the method's flags as given, or the values its study chose
DEFAULT, TUNED = "default", "tuned"
#: what a table row's paired figures compare (its ``comparison``): a default cell with no-KD's (the only comparison
#: of a sweep without tuned runs), a tuned cell with the tuned no-KD's (same tuning budget) and with its own default
#: cell's; each is its own Holm family
DEFAULT_VS_S, TUNED_VS_S, TUNED_VS_DEFAULT = "default vs S", "tuned vs S tuned", "tuned vs default"
COMPARISONS = (DEFAULT_VS_S, TUNED_VS_S, TUNED_VS_DEFAULT)
#: tuned_params.csv: the columns before and after the one column per searched parameter
TUNED_PARAMS_HEAD = ("database", "mode", "method", "seed", "config", "cell", "metric")
TUNED_PARAMS_TAIL = ("chosen_trial", "validation", "test", "trials", "complete", "trial_seconds", "run_dir")


def _param_column(name: str) -> str:
    """A parameter's column: its name, ``param_<name>`` where that is a fixed column's."""
    return f"param_{name}" if name in TUNED_PARAMS_HEAD or name in TUNED_PARAMS_TAIL else name


def tuned_params_table(runs: list[dict], metric_for) -> tuple[list[dict], list[str]]:
    """The rows and columns of ``tuned_params.csv``: one row per tuned run, by cell (in the order of ``runs``),
    then seed.

    A row holds the run's database, mode, method and seed, its sweep configuration (``config``) and tuned cell
    (``cell``), the headline ``metric``, the value its study chose for each searched parameter (one column per
    parameter name, empty for a method that does not search it), the chosen trial's number, its ``validation``
    score (the trial's own run) beside the ``test`` score of the evaluation run (both the headline metric in
    percent), the ``trials`` (N), those that finished (``complete``) and their summed wall time
    (``trial_seconds``: the tuning cost of that seed).
    """
    rows, names = [], []
    tuned = [run for run in runs if run.get("_tuning")]
    cell_order: dict[tuple, int] = {}
    for run in tuned:
        cell_order.setdefault((run["database"], run["mode"], run["method"], run["config"], run["config_digest"]),
                              len(cell_order))
    for run in sorted(tuned, key=lambda r: (cell_order[(r["database"], r["mode"], r["method"], r["config"],
                                                         r["config_digest"])], r["seed"])):
        record = run["_tuning"]
        metric = metric_for(run["database"])
        params = {_param_column(name): value for name, value in (record.get("params") or {}).items()}
        names += [name for name in params if name not in names]
        test = run.get(metric)
        rows.append({"database": run["database"], "mode": run["mode"], "method": run["method"], "seed": run["seed"],
                     "config": run["config"], "cell": run["config_digest"], "metric": metric, **params,
                     "chosen_trial": record.get("chosen_trial"), "validation": record.get("validation"),
                     "test": None if test is None else 100.0 * test, "trials": record.get("trials"),
                     "complete": record.get("complete"), "trial_seconds": record.get("trial_seconds"),
                     "run_dir": run["run_dir"]})
    return rows, [*TUNED_PARAMS_HEAD, *names, *TUNED_PARAMS_TAIL]


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _summary(values: list) -> str:
    """Numbers: ``median [min, max]`` (one value where all are equal); other values: each with its count."""
    if all(_number(v) for v in values):
        low, high = min(values), max(values)
        if low == high:
            return f"{low:.3g}"
        return f"{statistics.median(values):.3g} [{low:.3g}, {high:.3g}]"
    return ", ".join(f"{value} ×{count}" for value, count in Counter(map(str, values)).most_common())


def chosen_values(runs: list[dict]) -> dict[str, str]:
    """Per searched parameter of one tuned cell (its runs, one per seed): the values chosen over the seeds
    (:func:`_summary`) and trial 0's value, the method's default (``0.42 [0.31, 0.55] (default 0.5)``)."""
    chosen: dict[str, list] = {}
    defaults: dict[str, list] = {}
    for run in runs:
        record = run.get("_tuning") or {}
        for name, value in (record.get("params") or {}).items():
            chosen.setdefault(name, []).append(value)
        for name, value in (record.get("defaults") or {}).items():
            defaults.setdefault(name, []).append(value)
    out = {}
    for name, values in chosen.items():
        default = defaults.get(name)
        out[name] = _summary(values) + (f" (default {_summary(default)})" if default else "")
    return out
