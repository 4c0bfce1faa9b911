"""``table.md``, ``table.tex`` (booktabs) and ``table.png`` from the rows of ``table.csv``, in the paper's layout.

One column per (database, student modality); rows grouped as the paper: teachers, no-KD, methods with a multimodal
teacher, with a cross-modal teacher, teacher-free, MST-Distill. Cells are ``mean ± std`` of the headline metric in
percent; per column and configuration the best student row is bold and the second underlined (teachers are not
ranked); ``*`` marks a gain over no-KD whose paired t-test p-value, Holm-adjusted over the method rows of the column
and configuration, is below 0.05 (with five seeds the two-sided Wilcoxon test cannot go below 0.0625, so the t-test
is the marker; every p-value is in the difference table and ``table.csv``). Then the paired differences against
no-KD with their 95 % t-interval (unadjusted), the cost (mean wall time and peak memory per run) and, for
segmentation datasets, overall and average accuracy (OA, AA). A missing cell (a run that has not finished) is shown
as ``–``. Rows of several sweep configurations (``config``) are labelled with it. docs/statistics.md explains the
tests.

A tuned sweep (``reproduce.py --tune``) has a tuned row beside each method's default one (``KD tuned``): its
differences are against the tuned no-KD (``*``), and ``†`` marks a tuned gain over the method's default setting
(each comparison its own Holm family); then the tuned-against-default differences, the chosen trial's validation
score beside the test score, the chosen values (median and range over seeds) and, in the cost table, the tuning
cost (docs/sweep.md, "Tables of a tuned sweep").
"""
from __future__ import annotations

import math
from pathlib import Path

from utils.core.atomic import atomic_write_bytes, atomic_write_text
from utils.sweep.graph import BASELINE, GROUP_ORDER, TEACHER
from utils.sweep.tuned import TUNED, TUNED_VS_DEFAULT, chosen_values

GROUP_TITLES = {"teacher": "Teachers", "no-kd": "Without KD", "multimodal-teacher": "Multimodal teacher",
                "crossmodal-teacher": "Cross-modal teacher", "teacher-free": "Teacher-free",
                "MST-Distill": "MST-Distill", "other": "Other"}
METRIC_NAMES = {"accuracy": "test accuracy", "mIoU": "test mIoU"}
MISSING = "–"


def row_key(method: str) -> str:
    return f"{BASELINE}-other" if method.startswith(f"{BASELINE}-") else method


def key_of(row: dict) -> str:
    """The table row a ``table.csv`` row belongs to: the method, with its configuration where several are shown
    (``KD [cfg-1a2b3c4d]``)."""
    return row.get("row") or row_key(row["method"])


def base_of(key: str) -> str:
    return key.split(" ", 1)[0]


def row_label(key: str) -> str:
    base, _, rest = key.partition(" ")
    label = {TEACHER: "Teacher, multimodal (T)", f"{BASELINE}-other": "Teacher, cross-modal (S of the other mode)",
             BASELINE: "w/o KD (S)"}.get(base, base)
    return f"{label} {rest}" if rest else label


def _layout(table: list[dict]):
    columns = list(dict.fromkeys((r["database"], r["mode"]) for r in table))
    cells = {(key_of(r), r["database"], r["mode"]): r for r in table}
    groups: dict[str, list[str]] = {}
    for r in table:
        keys = groups.setdefault(r["group"], [])
        if key_of(r) not in keys:
            keys.append(key_of(r))
    ordered = [(g, groups[g]) for g in GROUP_ORDER if g in groups] + [(g, k) for g, k in groups.items()
                                                                       if g not in GROUP_ORDER]
    return columns, cells, ordered


def _ranks(table, columns, cells, groups) -> dict:
    """(row key, column) -> 1 (best) or 2 (second) among the student rows of each column, sweep configuration and
    setting (rows of different configurations, or default and tuned rows, are not ranked against each other)."""
    ranks = {}
    for column in columns:
        by_config: dict[str, list] = {}
        for g, keys in groups:
            for k in keys:
                cell = cells.get((k, *column))
                if g != "teacher" and cell is not None and not math.isnan(cell["mean"]):
                    by_config.setdefault((cell.get("config", ""), cell.get("setting")), []).append((cell["mean"], k))
        for scored in by_config.values():
            values = sorted({v for v, _ in scored}, reverse=True)
            for value, key in scored:
                if value == values[0]:
                    ranks[(key, column)] = 1
                elif len(values) > 1 and value == values[1]:
                    ranks[(key, column)] = 2
    return ranks


def _pm(mean, std, signed=False) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return MISSING
    text = f"{mean:+.2f}" if signed else f"{mean:.2f}"
    return text + (f" ± {std:.2f}" if std is not None and not math.isnan(std) else "")


def _p(value) -> str:
    return MISSING if value is None or math.isnan(value) else (f"{value:.3f}" if value >= 0.001 else f"{value:.1e}")


def _interval(row) -> str:
    low, high = row.get("ci_low", math.nan), row.get("ci_high", math.nan)
    return MISSING if math.isnan(low) or math.isnan(high) else f"[{low:+.2f}, {high:+.2f}]"


def _significant(row) -> bool:
    p = row.get("p_ttest_holm")
    return p is not None and not math.isnan(p) and p < 0.05 and row.get("delta_mean", 0) > 0


def _seed_note(table) -> str:
    ns = sorted({r["n"] for r in table})
    if not ns:
        return "no finished runs"
    return f"n = {ns[0]} seeds" if len(ns) == 1 else f"n = {ns[0]}–{ns[-1]} seeds per cell (table.csv)"


def _metric_note(table) -> str:
    metrics = sorted({r.get("metric", "accuracy") for r in table})
    return " / ".join(METRIC_NAMES.get(m, m) for m in metrics) + " (%)"


def _difference(r) -> str:
    """A difference cell: mean ± std [interval] (every p-value; wins/losses/ties)."""
    if not r.get("n_paired", 1):
        return MISSING
    return (f"{_pm(r['delta_mean'], r['delta_std'], signed=True)} {_interval(r)} "
            f"({_p(r['p_ttest'])}, {_p(r.get('p_ttest_holm'))}; {_p(r['p_wilcoxon'])}, "
            f"{_p(r.get('p_wilcoxon_holm'))}; {_p(r.get('p_nb'))}; {r['wins']}/{r['losses']}/{r['ties']})")


DIFFERENCE_FIGURES = ("mean ± std [95 % t-interval of the mean, unadjusted] (t-test p, Holm-adjusted p; Wilcoxon p, "
                      "Holm-adjusted p; corrected resampled t-test p (Nadeau & Bengio); wins/losses/ties)")


def split_comparisons(table: list[dict]) -> tuple[list[dict], list[dict]]:
    """(one row per cell, the ``tuned vs default`` rows): a tuned cell's second row holds its other comparison."""
    return ([r for r in table if r.get("comparison") != TUNED_VS_DEFAULT],
            [r for r in table if r.get("comparison") == TUNED_VS_DEFAULT])


def tables(table: list[dict]) -> list[dict]:
    """The report's tables as plain data: title, header, grouped rows of (label, cells, styles)."""
    primary, versus = split_comparisons(table)
    columns, cells, groups = _layout(primary)
    header = [f"{d} {m}" for d, m in columns]
    ranks = _ranks(primary, columns, cells, groups)
    over_default = {(key_of(r), r["database"], r["mode"]) for r in versus if _significant(r)}
    out = []

    def grid(title, cell_of, style=False, skip=(), rows_of=None):
        """One table of ``cell_of(row)`` per row key and column; ``rows_of``: other rows than the main ones."""
        own_cells, own_groups = (cells, groups) if rows_of is None else _layout(rows_of)[1:]
        body = []
        for group, keys in own_groups:
            rows = []
            for key in keys:
                if base_of(key) in skip:
                    continue
                row_cells, styles = [], []
                for column in columns:
                    r = own_cells.get((key, *column))
                    row_cells.append(cell_of(r) if r is not None else MISSING)
                    styles.append(ranks.get((key, column), 0) if style and r is not None else 0)
                rows.append((row_label(key), row_cells, styles))
            if rows:
                body.append((GROUP_TITLES.get(group, group), rows))
        out.append({"title": title, "header": header, "groups": body})

    def marks(r) -> str:
        gain = " *" if _significant(r) and r["group"] != "teacher" else ""
        return gain + (" †" if (key_of(r), r["database"], r["mode"]) in over_default else "")

    if not versus:
        grid(f"Comparison: {_metric_note(primary)}, mean ± std over seeds, {_seed_note(primary)}; best bold, second "
             f"underlined; * gain over w/o KD with paired t-test p < 0.05 after Holm-Bonferroni adjustment over the "
             f"methods of the column", lambda r: _pm(r["mean"], r["std"]) + marks(r), style=True)
        grid(f"Paired difference against w/o KD (same seed), percentage points: {DIFFERENCE_FIGURES}", _difference,
             skip=(BASELINE,))
    else:
        tuned = [r for r in primary if r.get("setting") == TUNED]
        grid(f"Comparison: {_metric_note(primary)}, mean ± std over seeds, {_seed_note(primary)}; best bold, second "
             f"underlined among the default rows and among the tuned rows; * gain over w/o KD of the same setting "
             f"(a tuned row: over w/o KD tuned) with paired t-test p < 0.05 after Holm-Bonferroni adjustment over the "
             f"methods of the column; † tuned gain over the method's default setting, the same test adjusted over "
             f"its own family", lambda r: _pm(r["mean"], r["std"]) + marks(r), style=True)
        grid(f"Paired difference against w/o KD of the same setting (same seed; a tuned row against w/o KD tuned), "
             f"percentage points: {DIFFERENCE_FIGURES}", _difference, skip=(BASELINE,))
        grid(f"Tuned against default, the same method and seed (w/o KD included; its own Holm family), percentage "
             f"points: {DIFFERENCE_FIGURES}", _difference, rows_of=versus)
        grid("Chosen trial: its validation score (the best of the study's trials: optimistic) / the test score of "
             "the evaluation run (from an initialisation no trial used), %, mean ± std over seeds",
             lambda r: f"{_pm(r.get('validation_mean'), r.get('validation_std'))} / {_pm(r['mean'], r['std'])}",
             rows_of=tuned)
        out.append(_chosen_values_table(tuned, columns, header))
    if len({(r.get("epochs"), r.get("steps")) for r in primary}) > 1:  # budgets differ: on the page, per cell
        grid("Budget per run: epochs per training stage (optimiser steps in all; the steps are the budget)",
             lambda r: f"{r.get('epochs') or MISSING} ({_steps(r.get('steps'))})")
    grid("Cost per run: mean wall time (s) / peak memory of the run's process (MB, host RSS)"
         + ("; a tuned row's tuning: trials per seed × seeds, the trials' summed wall time (s), per trial" if versus
            else ""),
         lambda r: f"{r['wall_time_s']:.1f} s / " + (MISSING if math.isnan(r["peak_mem_mb"]) else
                                                      f"{r['peak_mem_mb']:.0f} MB") + _tuning_cost(r))
    for extra, name in (("accuracy", "OA: overall accuracy"), ("average_accuracy", "AA: average accuracy")):
        if any(r.get("metric") not in (None, "accuracy") for r in primary):
            grid(f"{name} (%), datasets whose headline is mIoU",
                 lambda r, e=extra: _pm(*r[f"_{e}"]) if r.get("metric") != "accuracy" and f"_{e}" in r else MISSING)
    return out


def _tuning_cost(r) -> str:
    """``; tuning 20 × 5: 1234 s, 12.3 s per trial`` for a tuned row (nothing for a default one)."""
    if r.get("setting") != TUNED:
        return ""
    trials, seconds, per = r.get("tuning_trials"), r.get("tuning_seconds"), r.get("tuning_seconds_per_trial")
    shown = f"{trials:.0f}" if isinstance(trials, (int, float)) else MISSING
    cost = MISSING if seconds is None else f"{seconds:.0f} s, {per:.1f} s per trial" if per is not None else \
        f"{seconds:.0f} s"
    return f"; tuning {shown} × {r['n']}: {cost}"


def _chosen_values_table(tuned: list[dict], columns, header) -> dict:
    """Per tuned row and searched parameter, the values its seeds' studies chose (median [min, max]) and the
    default (trial 0), per column."""
    _, cells, groups = _layout(tuned)
    body = []
    for group, keys in groups:
        rows = []
        for key in keys:
            chosen = {column: chosen_values(cells[(key, *column)]["_runs"]) for column in columns
                      if (key, *column) in cells}
            for name in dict.fromkeys(name for values in chosen.values() for name in values):
                rows.append((f"{row_label(key)}: {name}", [chosen.get(column, {}).get(name, MISSING)
                                                          for column in columns], [0] * len(columns)))
        if rows:
            body.append((GROUP_TITLES.get(group, group), rows))
    return {"title": "Chosen values: per searched flag, the value each seed's study chose, median [min, max] over "
                     "seeds (default: trial 0's value); every seed's in tuned_params.csv",
            "header": header, "groups": body}


def _steps(steps) -> str:
    return MISSING if steps is None or (isinstance(steps, float) and math.isnan(steps)) else f"{steps:.0f} steps"


def budget_note(table: list[dict]) -> list[str]:
    """One line when every run had the same budget (else the budget table shows each)."""
    budgets = {(r.get("epochs"), r.get("steps")) for r in table}
    if len(budgets) != 1:
        return []
    epochs, steps = budgets.pop()
    return [f"Budget: every run trained {epochs or MISSING} epochs per stage, {_steps(steps)} in all"]


def tuning_note(table: list[dict]) -> list[str]:
    """The tuned rows' budget: the trials per seed, equal for every tuned row or not, and the studies of which
    fewer trials finished (a failed trial counts against N)."""
    tuned = [r for r in table if r.get("setting") == TUNED]
    budgets = sorted({(r.get("tuning_trials"), row_label(key_of(r))) for r in tuned}, key=lambda b: (str(b[0]), b[1]))
    if not budgets:
        return []
    trials = {b[0] for b in budgets}
    if len(trials) == 1:
        lines = [f"Tuning: every tuned row had {_count(trials.pop())} trials per seed, each seed's study on that "
                 f"seed's training and validation splits; its evaluation run trained anew from the seed's own "
                 f"initialisation (docs/sweep.md, section 'Tables of a tuned sweep')"]
    else:
        lines = ["Tuning budgets differ, compare tuned rows with care: "
                 + "; ".join(f"{key} {_count(n)} trials per seed" for n, key in budgets)]
    short = [f"{r['database']} {r['mode']} {row_label(key_of(r))} seed {run['seed']}" for r in tuned
             for run in r.get("_runs", ()) if _unfinished(run.get("_tuning") or {})]
    if short:
        lines.append("Studies of which fewer trials finished than they ran (failed trials; tuned_params.csv, "
                     "complete): " + ", ".join(short))
    return lines


def _unfinished(record: dict) -> bool:
    """Whether fewer of a study's trials finished than it ran (both recorded)."""
    complete, trials = record.get("complete"), record.get("trials")
    return complete is not None and trials is not None and complete < trials


def _count(value) -> str:
    return MISSING if not isinstance(value, (int, float)) or math.isnan(value) else f"{value:.0f}"


def to_markdown(report: list[dict]) -> str:
    parts = []
    for t in report:
        lines = [f"**{t['title']}**", "", "| method | " + " | ".join(t["header"]) + " |",
                 "|---|" + "---|" * len(t["header"])]
        for group, rows in t["groups"]:
            lines.append(f"| *{group}* |" + " |" * len(t["header"]))
            for label, cells, styles in rows:
                shown = [f"**{c}**" if s == 1 else f"<u>{c}</u>" if s == 2 else c for c, s in zip(cells, styles)]
                lines.append(f"| {label} | " + " | ".join(shown) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def _tex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("±", r"$\pm$"), ("–", "--"), ("<", r"$<$"), (">", r"$>$"), ("†", r"\dag{}"),
                 ("×", r"$\times$")):
        text = text.replace(a, b)
    return text


def to_latex(report: list[dict]) -> str:
    parts = ["% booktabs tables written by reproduce.py; \\usepackage{booktabs}"]
    for t in report:
        ncol = len(t["header"])
        lines = [r"\begin{table}[t]", r"\centering", r"\small", f"\\caption{{{_tex_escape(t['title'])}}}",
                 r"\begin{tabular}{l" + "c" * ncol + "}", r"\toprule",
                 "Method & " + " & ".join(_tex_escape(h) for h in t["header"]) + r" \\", r"\midrule"]
        for index, (group, rows) in enumerate(t["groups"]):
            if index:
                lines.append(r"\midrule")
            lines.append(f"\\multicolumn{{{ncol + 1}}}{{l}}{{\\textit{{{_tex_escape(group)}}}}} \\\\")
            for label, cells, styles in rows:
                shown = [f"\\textbf{{{_tex_escape(c)}}}" if s == 1 else f"\\underline{{{_tex_escape(c)}}}" if s == 2
                         else _tex_escape(c) for c, s in zip(cells, styles)]
                lines.append(f"{_tex_escape(label)} & " + " & ".join(shown) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def _n_note(rows: list[dict]) -> str:
    ns = sorted({r["n"] for r in rows})
    return "n = –" if not ns else f"n = {ns[0]}" if len(ns) == 1 else f"n = {ns[0]}–{ns[-1]}"


def plot(table: list[dict], path: Path) -> None:
    """Per column two panels: every student row's mean ± std with no-KD's mean as a dashed line, and its paired
    difference against no-KD with the 95 % t-interval (filled where the Holm-adjusted t-test marks a gain)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    columns, cells, groups = _layout(table)
    keys = [k for g, ks in groups if g != "teacher" for k in ks]
    tuned = any(r.get("setting") == TUNED for r in table)
    if not columns or not keys:
        fig, ax = plt.subplots(figsize=(4, 2))
        ax.text(0.5, 0.5, "no finished runs", ha="center", va="center")
        ax.axis("off")
    else:
        fig, axes = plt.subplots(2, len(columns), figsize=(3.8 * len(columns) + 1.5, 0.6 * len(keys) + 2.6),
                                 sharey=True, squeeze=False)
        ys = list(range(len(keys)))[::-1]
        for index, column in enumerate(columns):
            top, bottom = axes[0][index], axes[1][index]
            for y, key in zip(ys, keys):
                r = cells.get((key, *column))
                if r is None:
                    continue
                color = "C3" if key.startswith("MST-Distill") else "C0"
                marker = "D" if key.startswith("MST-Distill") else "o"
                top.errorbar(r["mean"], y, xerr=0.0 if math.isnan(r["std"]) else r["std"], fmt=marker, color=color,
                             capsize=3)
                if base_of(key) != BASELINE and not math.isnan(r.get("delta_mean", math.nan)):
                    low, high = r.get("ci_low", math.nan), r.get("ci_high", math.nan)
                    xerr = None if math.isnan(low) else [[r["delta_mean"] - low], [high - r["delta_mean"]]]
                    bottom.errorbar(r["delta_mean"], y, xerr=xerr, fmt=marker, capsize=3, color=color,
                                    markerfacecolor=color if _significant(r) else "white")
            for key in keys:  # one no-KD row per sweep configuration
                base = cells.get((key, *column)) if base_of(key) == BASELINE else None
                if base is not None:
                    top.axvline(base["mean"], color="0.4", linestyle="--", linewidth=1)
            bottom.axvline(0.0, color="0.4", linestyle="--", linewidth=1)
            rows = [r for r in table if (r["database"], r["mode"]) == column]
            top.set_title(f"{column[0]} {column[1]} ({_n_note(rows)} seeds)")
            top.set_xlabel(_metric_note(rows))
            bottom.set_xlabel("paired difference vs w/o KD" + (" of the same setting" if tuned else "") + " (points)")
            for ax in (top, bottom):
                ax.set_yticks(ys)
                ax.set_yticklabels([row_label(k) if k != BASELINE else "w/o KD" for k in keys])
                ax.grid(axis="x", alpha=0.3)
        handles = [Line2D([], [], marker="o", color="C0", linestyle="none", label="top: mean ± std over seeds"),
                   Line2D([], [], marker="D", color="C3", linestyle="none", label="MST-Distill"),
                   Line2D([], [], color="0.4", linestyle="--", label="w/o KD mean (top) / no difference (bottom)"),
                   Line2D([], [], marker="o", color="C0", markerfacecolor="white", linestyle="none",
                          label="bottom: paired difference, 95 % t-interval (unadjusted)"),
                   Line2D([], [], marker="o", color="C0", linestyle="none",
                          label="bottom, filled: gain at Holm-adjusted t-test p < 0.05")]
        fig.legend(handles=handles, loc="lower center", ncol=min(2, len(handles)), fontsize="small", frameon=False)
        fig.tight_layout(rect=(0, 0.09 if len(columns) > 1 else 0.14, 1, 1))
    try:
        atomic_write_bytes(path, lambda handle: fig.savefig(handle, format="png", dpi=110))
    finally:
        plt.close(fig)


def notes_markdown(notes: list[str]) -> str:
    return "\n**Notes**\n\n" + "".join(f"- {line}\n" for line in notes) if notes else ""


def notes_latex(notes: list[str]) -> str:
    if not notes:
        return ""
    items = "".join(f"  \\item {_tex_escape(line)}\n" for line in notes)
    return f"\n\\paragraph{{Notes}}\n\\begin{{itemize}}\n{items}\\end{{itemize}}\n"


def write_reports(sweep: Path, table: list[dict], notes: list[str] = ()) -> None:
    """``table.md``, ``table.tex`` (the tables, then ``notes``: what was left out, what is not paired and why,
    budgets) and ``table.png``."""
    report = tables(table)
    primary = split_comparisons(table)[0]
    notes = [*budget_note(primary), *tuning_note(primary), *notes]
    atomic_write_text(Path(sweep) / "table.md", to_markdown(report) + notes_markdown(notes))
    atomic_write_text(Path(sweep) / "table.tex", to_latex(report) + notes_latex(notes))
    plot(primary, Path(sweep) / "table.png")
