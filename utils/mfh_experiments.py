"""The experiments of the Modality Focusing Hypothesis and their command line (``main-MFH.py``).

Xue, Gao, Ren, Zhao, "The Modality Focusing Hypothesis: Towards Understanding Crossmodal Knowledge Distillation",
ICLR 2023. Experiments (``--exp``):

* ``gamma`` - Fig. 2: Gaussian MVD data with a growing share of modality-general decisive features.
* ``alpha`` - Fig. 3: the teacher's modality holds more and more modality-specific decisive features.
* ``table2`` - Table 2: a regular teacher against a modality-general teacher trained on the modality-general
  columns only, those columns being known (``gt``), found by Algorithm 1 (``alg1``) or random (``random``).
* ``rank`` - Algorithm 1 on any framework dataset: saliences of the channels of one layer of a network on
  modality a, measured against a network on modality b (:mod:`kd_methods.feature_ranking`).
* ``nullify`` - Sec. 5.4 / Table 8: KD from teachers whose lowest (modality-general teacher), highest
  (modality-specific) or random ``r%`` channels are nullified, to a student of the other modality; the students
  are trained by the shared engine (:func:`utils.engine.run`) with the method ``MFH-KD``
  (:class:`kd_methods.mfh.NullifiedTeacherKD`).
* ``ntdh`` - the diagnostic of the Non-target Divergence Hypothesis (Chen et al., arXiv:2409.02438): per class, the
  teacher-student divergences over the non-target and the target classes, the teacher's errors, the logits' cosine
  similarity and the NTDH weight, from a teacher and a student checkpoint on one split
  (:func:`kd_methods.ntdh.class_divergences`).

The Gaussian computations are in :mod:`kd_methods.mfh_lab`, the ranking and the method in :mod:`kd_methods.mfh`;
this module reports them (CSV, Markdown, PNG, ``results.json``, all written atomically into the run directory).
"""
from __future__ import annotations

import argparse
import csv
import io
import time
from pathlib import Path

import numpy as np
import torch

from datasets.synthetic import config_from_args
from kd_methods.feature_ranking import SELECTION_KINDS, select_channels
from kd_methods.mfh import (NullifiedTeacherKD, add_kd_weight_arguments, check_kd_weights, check_layer,
                            default_layer, load_network, rank_channels, split_accuracy, train_joint_networks)
from kd_methods.mfh_lab import (JOINT_LR, JOINT_MOMENTUM, LR_LR, N_TEST, N_TRAIN, SWEEP_FIXED, TABLE2_ROWS,
                                TABLE2_TEACHERS, alpha_settings, gamma_settings, sweep_setting, table2_row)
from kd_methods.ntdh import THRESHOLD, class_divergences, paired_logits
from utils import cli, engine
from utils.core.atomic import atomic_write_bytes, atomic_write_text
from utils.core.cards import MethodCard
from utils.core.checkpoints import atomic_save, atomic_write_json
from utils.core.errors import NonFiniteLossError, UserError
from utils.core.runtime import configure_threads, resolve_device, seed_everything
from utils.core.script import exit_on_error
from utils.description import RunDescription
from utils.engine import build_context
from utils.rundir import RunDir

EXPERIMENTS = ("gamma", "alpha", "table2", "rank", "nullify", "ntdh")
#: the experiments that compare two given checkpoints (nothing is trained)
CHECKPOINT_EXPERIMENTS = ("ntdh",)
SPLITS = ("train", "val", "test")
LR_EXPERIMENTS = ("gamma", "alpha", "table2")
#: paper Table 2 (accuracy %): regular teacher, MG teacher, no-KD, regular KD, MG KD
PAPER_TABLE2 = {
    0.25: (89.70, 64.84, 59.29, 59.46, 61.01),
    0.33: (89.41, 68.42, 61.98, 62.16, 64.50),
    0.50: (89.62, 73.41, 67.64, 67.86, 70.25),
    0.66: (89.82, 77.98, 73.48, 73.60, 75.43),
    0.75: (89.70, 79.41, 76.46, 76.53, 77.70),
}
#: the quality target: every student column within this many points of the paper
PAPER_TOLERANCE = 2.0


# =============================================================================================================
# tables, CSV and figures
# =============================================================================================================
def _mean_std(values) -> tuple[float, float]:
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std())  # population std over runs, as the public code (np.std)


def _fmt(values) -> str:
    mean, std = _mean_std(values)
    return f"{mean:.2f} ± {std:.2f}"


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([f"{v:.4f}" if isinstance(v, float) else v for v in row])
    text = buffer.getvalue().encode()
    atomic_write_bytes(path, lambda handle: handle.write(text))


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _pyplot():
    import matplotlib  # heavy: only when a figure is written

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    atomic_write_bytes(path, lambda handle: fig.savefig(handle, format="png", dpi=120, bbox_inches="tight"))




def plot_sweep(results: list[dict], xlabel: str, title: str, path: Path) -> None:
    """Fig. 2 / Fig. 3: mean accuracies over runs (top; no-KD dashed, the reference) and the paired difference
    ``KD - no-KD`` of each run with its standard deviation over runs (bottom), the legend below both."""
    plt = _pyplot()
    xs = np.array([r["x"] for r in results])
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.0, 6.0), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    means = {key: np.array([_mean_std(r[key])[0] for r in results]) for key in ("teacher", "no_kd", "kd")}
    top.plot(xs, means["teacher"], marker="s", color="tab:gray", label="teacher (modality a), mean")
    top.plot(xs, means["kd"], marker="o", color="tab:red", label="student with KD, mean")
    top.plot(xs, means["no_kd"], linestyle="--", color="tab:blue", label="student without KD, mean (reference)")
    top.set_ylabel("test accuracy (%)")
    top.set_title(title)
    top.grid(alpha=0.3)
    diff = np.array([_mean_std(np.asarray(r["kd"]) - np.asarray(r["no_kd"])) for r in results])
    bottom.axhline(0.0, linestyle="--", color="tab:blue", linewidth=1.0)
    bottom.fill_between(xs, diff[:, 0] - diff[:, 1], diff[:, 0] + diff[:, 1], color="tab:purple", alpha=0.2,
                        label="± std of KD - no-KD over runs")
    bottom.plot(xs, diff[:, 0], marker="D", color="tab:purple", label="KD - no-KD, mean over runs (paired)")
    bottom.set_ylabel("KD - no-KD (points)")
    bottom.set_xlabel(xlabel)
    bottom.grid(alpha=0.3)
    handles, labels = [], []
    for ax in (top, bottom):
        h, lab = ax.get_legend_handles_labels()
        handles += h
        labels += lab
    fig.tight_layout()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, frameon=False, fontsize=8)
    save_figure(fig, path)
    plt.close(fig)


def plot_salience(salience: torch.Tensor, title: str, path: Path, highlight=None) -> None:
    """Bar plot of normalised saliences; ``highlight`` (the known shared columns) in red, with a legend."""
    plt = _pyplot()
    values = salience.detach().cpu().numpy()
    fig, ax = plt.subplots(figsize=(max(5.0, min(16.0, 0.06 * len(values) + 3)), 3.5))
    colours = ["tab:red" if highlight is not None and i in highlight else "tab:blue" for i in range(len(values))]
    ax.bar(np.arange(len(values)), values, color=colours, width=0.9)
    ax.set_xlabel("channel")
    ax.set_ylabel("normalised salience")
    ax.set_title(title)
    if highlight is not None:
        from matplotlib.patches import Patch

        handles = [Patch(color="tab:red", label="known shared (modality-general) decisive columns"),
                   Patch(color="tab:blue", label="other columns")]
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    save_figure(fig, path)
    plt.close(fig)


# =============================================================================================================
# experiment drivers
# =============================================================================================================
SWEEP_PROTOCOL = {
    "student": "the student's modality, labels and initial weights are the same at every point, only the "
               "teacher's modality changes (the authors' protocol)",
    "teacher": "the teacher's modality is the same at every point, the student's changes (--sweep_fixed teacher)",
}


def run_sweep(args, run_dir: RunDir, device) -> dict:
    exp = args.exp
    settings = gamma_settings(args.hidden_decisive) if exp == "gamma" else alpha_settings(args.hidden_decisive)
    xlabel = "gamma (share of modality-general decisive features)" if exp == "gamma" else \
        "alpha (share of teacher-specific decisive features)"
    results, csv_rows, md_rows = [], [], []
    for setting in settings:
        started = time.time()
        accs = sweep_setting(setting, args.runs, args.seed, args.epochs, device, fixed=args.sweep_fixed)
        results.append({"x": setting["x"], **{k: v.tolist() for k, v in accs.items()}})
        for run in range(args.runs):
            csv_rows.append([setting["label"], run, float(accs["teacher"][run]), float(accs["no_kd"][run]),
                             float(accs["kd"][run])])
        delta = accs["kd"] - accs["no_kd"]
        md_rows.append([setting["label"], _fmt(accs["teacher"]), _fmt(accs["no_kd"]), _fmt(accs["kd"]), _fmt(delta)])
        run_dir.log(f"{exp} {setting['label']}: teacher {_fmt(accs['teacher'])}, no-KD {_fmt(accs['no_kd'])}, "
                    f"KD {_fmt(accs['kd'])}, KD - no-KD {_fmt(delta)} ({time.time() - started:.1f}s)")
    name = exp
    write_csv(run_dir.path / f"{name}.csv", [exp, "run", "teacher_acc", "no_kd_acc", "kd_acc"], csv_rows)
    figure = "Fig. 2" if exp == "gamma" else "Fig. 3"
    text = (f"# MFH {figure}: accuracy (%) vs {exp}, mean ± std over {args.runs} runs\n\n"
            f"Logistic regressions, full-batch SGD lr {LR_LR}, {args.epochs} epochs, seeds {args.seed}+run; "
            f"decisive features hidden from both modalities: {'yes' if args.hidden_decisive else 'no'}; "
            f"{SWEEP_PROTOCOL[args.sweep_fixed]}. KD - no-KD is the paired difference of each run.\n\n"
            + markdown_table([exp, "teacher", "no-KD student", "KD student", "KD - no-KD"], md_rows))
    atomic_write_text(run_dir.path / f"{name}.md", text)
    fixed = "student's data fixed" if args.sweep_fixed == "student" else "teacher's data fixed"
    plot_sweep(results, xlabel, f"MFH {figure} ({args.runs} runs, {fixed})", run_dir.path / f"{name}.png")
    return {"experiment": exp, "fixed": args.sweep_fixed, "points": results}


def _target_check(row_means: dict, paper: tuple) -> tuple[bool, str]:
    problems = []
    if not row_means["gt_kd"] > row_means["no_kd"]:
        problems.append("MG-KD <= no-KD")
    if not row_means["gt_kd"] > row_means["kd"]:
        problems.append("MG-KD <= regular KD")
    for key, label, ref in (("no_kd", "no-KD", paper[2]), ("kd", "regular KD", paper[3]), ("gt_kd", "MG KD", paper[4])):
        if abs(row_means[key] - ref) > PAPER_TOLERANCE:
            problems.append(f"{label} {row_means[key] - ref:+.2f} from paper")
    return not problems, "yes" if not problems else "no: " + "; ".join(problems)


def run_table2(args, run_dir: RunDir, device) -> dict:
    teachers = list(dict.fromkeys(["gt", *args.table2_teachers]))  # gt always: the paper's table and the target
    csv_rows, md_rows, extra_rows, summary = [], [], [], []
    all_met = True
    for gamma, xs1, xs2 in TABLE2_ROWS:
        started = time.time()
        out = table2_row(xs1, xs2, args.runs, args.seed, args.epochs, device, args.swap_kd_modalities, teachers,
                         args.repeats)
        means = {k: _mean_std(v)[0] for k, v in out.items() if k != "alg1_salience"}
        paper = PAPER_TABLE2[gamma]
        met, verdict = _target_check(means, paper)
        all_met &= met
        for run in range(args.runs):
            csv_rows.append([f"{gamma:.2f}", xs1, xs2, run] + [float(out[k][run]) for k in _table2_columns(teachers)])
        md_rows.append([f"{gamma:.2f} ({xs1}+{xs2})", f"{_fmt(out['teacher'])} ({paper[0]:.2f})",
                        f"{_fmt(out['gt_teacher'])} ({paper[1]:.2f})", f"{_fmt(out['no_kd'])} ({paper[2]:.2f})",
                        f"{_fmt(out['kd'])} ({paper[3]:.2f})", f"{_fmt(out['gt_kd'])} ({paper[4]:.2f})", verdict])
        for kind in teachers:
            if kind == "gt":
                continue
            beats = means[f"{kind}_kd"] > means["kd"] and means[f"{kind}_kd"] > means["no_kd"]
            extra_rows.append([f"{gamma:.2f}", kind, _fmt(out[f"{kind}_teacher"]), _fmt(out[f"{kind}_kd"]),
                               _fmt(out["alg1_recovered"]) if kind == "alg1" else "-",
                               "yes" if beats else "no"])
        summary.append({"gamma": gamma, "xs1": xs1, "xs2": xs2, "means": means, "paper": paper, "meets_target": met,
                        "verdict": verdict})
        run_dir.log(f"gamma {gamma:.2f} (xs1 {xs1}, xs2 {xs2}): teacher {means['teacher']:.2f}, MG teacher "
                    f"{means['gt_teacher']:.2f}, no-KD {means['no_kd']:.2f}, KD {means['kd']:.2f}, MG KD "
                    f"{means['gt_kd']:.2f} - target met: {verdict} ({time.time() - started:.1f}s)")
    write_csv(run_dir.path / "table2.csv", ["gamma", "xs1", "xs2", "run", *_table2_columns(teachers)], csv_rows)
    order = "swapped as the public code (teacher fed x_b)" if args.swap_kd_modalities else "intended (teacher fed x_a)"
    text = (f"# MFH Table 2 (synthetic Gaussian): accuracy (%), mean ± std over {args.runs} runs "
            f"(paper in brackets)\n\n"
            f"Seeds {args.seed}+run, {N_TRAIN} train / {N_TEST} test, logistic regressions, full-batch SGD lr {LR_LR}, "
            f"{args.epochs} epochs; regular-KD modality order: {order}. The modality-general (MG) teacher is trained "
            f"on the known shared columns (`gt`). Target: MG KD beats no-KD and regular KD, every student column "
            f"within {PAPER_TOLERANCE} points of the paper.\n\n"
            + markdown_table(["gamma (xs1+xs2)", "regular teacher", "MG teacher (gamma 1)", "no-KD", "regular KD",
                              "MG KD", "meets target"], md_rows))
    if extra_rows:
        text += (f"\n## Other modality-general teachers\n\n`alg1`: the top-xs2 columns by Algorithm 1 ({args.repeats} "
                 f"permutations, joint training SGD lr {JOINT_LR} momentum {JOINT_MOMENTUM}); `random`: xs2 random "
                 f"columns (control). `recovered`: share of the chosen columns that are truly shared.\n\n"
                 + markdown_table(["gamma", "teacher", "MG teacher", "MG KD", "recovered (%)",
                                   "MG KD beats no-KD and regular KD"], extra_rows))
    text += f"\nAll rows meet the target: {'yes' if all_met else 'no'}\n"
    atomic_write_text(run_dir.path / "table2.md", text)
    run_dir.log("\n" + text)
    return {"experiment": "table2", "rows": summary, "all_rows_meet_target": all_met}


def _table2_columns(teachers) -> list[str]:
    columns = ["teacher", "no_kd", "kd"]
    for kind in teachers:
        columns += [f"{kind}_teacher", f"{kind}_kd"]
    if "alg1" in teachers:
        columns.append("alg1_recovered")
    return columns


# -- Algorithm 1 and nullification on framework datasets -----------------------------------------------------------
def compute_ranking(args, ctx, run_dir: RunDir) -> dict:
    """Networks for modality a and b (loaded, or jointly trained on Synthetic-MVD), then Algorithm 1 on the
    training split: saliences written as CSV, .pt and a bar plot."""
    student_mod = args.mode
    teacher_mod = ctx.spec.other_modality(student_mod)
    model_a, inputs_a = load_network(ctx, args.model_a, args.ckpt_a, teacher_mod, "a")
    model_b, inputs_b = load_network(ctx, args.model_b, args.ckpt_b, student_mod, "b")
    layer = args.layer if args.layer is not None else default_layer(model_a)
    layer_arg = check_layer(model_a, inputs_a, layer)  # before the joint training, which may take a while
    if not args.ckpt_a:  # Synthetic-MVD only (checked by parse_args)
        run_dir.log(f"Algorithm 1 step 1: joint training of {model_a.model_name} ({'+'.join(inputs_a)}) and "
                    f"{model_b.model_name} ({'+'.join(inputs_b)}), full batch, SGD lr {args.joint_lr} momentum "
                    f"{JOINT_MOMENTUM}, {args.joint_epochs} epochs")
        train_joint_networks(ctx, model_a, inputs_a, model_b, inputs_b, args.joint_epochs, args.joint_lr, run_dir.log)
    model_a.eval()
    model_b.eval()
    ranked = rank_channels(ctx, model_a, inputs_a, model_b, inputs_b, layer_arg, args.repeats, args.salience_samples,
                           args.salience_batch, args.seed)
    salience, normalised, order, rank = ranked["salience"], ranked["normalised"], ranked["order"], ranked["rank"]
    run_dir.log(f"Algorithm 1 on {model_a.model_name}.{layer} ({len(salience)} channels) against "
                f"{model_b.model_name}: {args.repeats} permutations x {ranked['samples']} training samples in "
                f"{ranked['seconds']:.1f}s")

    info = {"layer": layer, "model_a": model_a.model_name, "model_b": model_b.model_name, "inputs_a": inputs_a,
            "inputs_b": inputs_b, "repeats": args.repeats, "samples": ranked["samples"], "seconds": ranked["seconds"]}
    shared = None
    if ctx.spec.name == "Synthetic-MVD" and layer_arg is None and inputs_a == ("m1",):
        config = config_from_args(args)
        shared = config.shared_columns(teacher_mod)
        top = order[: len(shared)].numpy()
        info["shared_columns"] = shared.tolist()
        info["shared_recovered_pct"] = float(np.isin(top, shared).mean() * 100) if len(shared) else None
        run_dir.log(f"Known shared columns {shared.tolist()}; top-{len(shared)} by salience {sorted(top.tolist())} "
                    f"({info['shared_recovered_pct']:.0f}% recovered)")
    rows = [[i, float(salience[i]), float(normalised[i]), int(rank[i])] for i in range(len(salience))]
    write_csv(run_dir.path / "salience.csv", ["channel", "salience", "normalised", "rank"], rows)
    atomic_save({"salience": salience, "normalised": normalised, **info}, run_dir.path / "salience.pt")
    plot_salience(normalised, f"Algorithm 1: {model_a.model_name}.{layer} vs {model_b.model_name}",
                  run_dir.path / "salience.png", highlight=set(shared.tolist()) if shared is not None else None)
    return {"model_a": model_a, "inputs_a": inputs_a, "model_b": model_b, "layer": layer_arg, "salience": salience,
            "info": info}


def student_args(args, teacher_name: str, teacher_path: Path, layer: str, channels: list[int], init: int,
                 out_dir: Path) -> RunDescription:
    """The options of one ``MFH-KD`` student run: this run's framework and dataset options, the teacher and the
    nullified channels set explicitly, every other ``MFH-KD`` option at its default."""
    inner = cli.build_parser(NullifiedTeacherKD).parse_args(["--ckpt_name", str(teacher_path)])
    for key, value in vars(args).items():
        if hasattr(inner, key):  # the options both command lines share (data, models, training, dataset flags)
            setattr(inner, key, value)
    inner.Tmodel, inner.ckpt_name = teacher_name, str(teacher_path)
    inner.nullify_layer, inner.nullify_channels, inner.student_init = layer, list(channels), init
    inner.out_dir, inner.record, inner.resume = str(out_dir), False, None
    return cli.described(NullifiedTeacherKD, inner)


def run_nullify(args, ctx, run_dir: RunDir) -> dict:
    ranking = compute_ranking(args, ctx, run_dir)
    teacher, layer, salience = ranking["model_a"], ranking["layer"], ranking["salience"]
    teacher_path = run_dir.path / "teacher_a.pth"
    atomic_save({"model": teacher.state_dict(), "model_name": teacher.model_name}, teacher_path)
    layer_name = ranking["info"]["layer"]
    variants = [("regular", 0.0)] + [(kind, ratio) for ratio in args.ratios for kind in args.kinds]
    generator = torch.Generator().manual_seed(args.seed)
    records, csv_rows = [], []
    for kind, ratio in variants:
        channels = [] if kind == "regular" else select_channels(salience, ratio, kind, generator).tolist()
        teacher_acc = split_accuracy(ctx, teacher, ranking["inputs_a"], "test", layer, channels if channels else None)
        students = []
        for run in range(args.runs):
            inner = student_args(args, teacher.model_name, teacher_path, layer_name, channels, run,
                                 run_dir.path / "students")
            result = engine.run(NullifiedTeacherKD, inner)
            accuracy = 100.0 * float(result["metrics"]["test"]["accuracy"])
            students.append(accuracy)
            csv_rows.append([kind, ratio, run, len(channels), teacher_acc, accuracy])
        records.append({"kind": kind, "ratio": ratio, "channels": len(channels), "teacher_acc": teacher_acc,
                        "student_acc": students})
        run_dir.log(f"{kind} teacher, r = {ratio:.0%} ({len(channels)} of {len(salience)} channels of {layer_name} "
                    f"nullified): teacher test acc {teacher_acc:.2f}, student {_fmt(students)}")
    write_csv(run_dir.path / "nullify.csv", ["kind", "ratio", "run", "nullified", "teacher_acc", "student_acc"],
              csv_rows)
    regular = records[0]
    header = ["r (%)", "regular"] + [f"modality-{k}" if k != "random" else "random" for k in args.kinds]
    md_rows = []
    for ratio in args.ratios:
        row = [f"{ratio * 100:.0f}", _fmt(regular["student_acc"])]
        for kind in args.kinds:
            record = next(r for r in records if r["kind"] == kind and r["ratio"] == ratio)
            row.append(f"{_fmt(record['student_acc'])} (T {record['teacher_acc']:.1f})")
        md_rows.append(row)
    text = (f"# MFH nullified teachers (Sec. 5.4 / Table 8) on {ctx.spec.name}\n\n"
            f"Student {args.Smodel} ({args.mode}) distilled from {teacher.model_name} with channels of `{layer_name}` "
            f"nullified (replaced by their batch mean): the lowest-salience r% (modality-general teacher), the "
            f"highest (modality-specific) or random ones. Loss {args.gt_weight} x CE + {args.pl_weight} x KL (mean), "
            f"{args.epochs} epochs; student test accuracy (%), mean ± std over {args.runs} runs; "
            f"T = nullified teacher's test accuracy. Regular teacher test accuracy {regular['teacher_acc']:.2f}.\n\n"
            + markdown_table(header, md_rows))
    atomic_write_text(run_dir.path / "nullify.md", text)
    run_dir.log("\n" + text)
    return {"experiment": "nullify", "ranking": ranking["info"], "variants": records}


#: the columns of ntdh.csv / ntdh.md (kd_methods.ntdh.class_divergences), with their Markdown format
NTDH_COLUMNS = {"class": "{}", "samples": "{}", "teacher_acc": "{:.2f}", "student_acc": "{:.2f}", "teacher_wrong": "{}",
                "cosine": "{:.4f}", "weight": "{:.4f}", "target_divergence": "{:.4f}",
                "non_target_divergence": "{:.4f}"}


def run_ntdh(args, ctx, run_dir: RunDir) -> dict:
    """The NTDH diagnostic: a teacher (``--ckpt_a``) and a student (``--ckpt_b``) on ``--split``, per class."""
    teacher, teacher_inputs = load_network(ctx, args.model_a, args.ckpt_a, ctx.spec.other_modality(args.mode), "a",
                                           same_data=True)
    student, student_inputs = load_network(ctx, args.model_b, args.ckpt_b, args.mode, "b", same_data=True)
    logits = paired_logits(ctx, teacher, teacher_inputs, student, student_inputs, args.split)
    rows = class_divergences(*logits, ctx.spec.num_classes, args.ntdh_threshold, args.ntdh_true_jsd)
    write_csv(run_dir.path / "ntdh.csv", list(NTDH_COLUMNS), [[row[key] for key in NTDH_COLUMNS] for row in rows])
    divergence = ("the Jensen-Shannon divergence (--ntdh_true_jsd)" if args.ntdh_true_jsd else
                  "the authors' js_divergence, (KL(m || p_t) + KL(m || p_s)) / 2 with m the mean of the two")
    text = (f"# NTDH diagnostic on {ctx.spec.name}, {args.split} split\n\n"
            f"Teacher {teacher.model_name} ({'+'.join(teacher_inputs)}, {args.ckpt_a}) and student "
            f"{student.model_name} ({'+'.join(student_inputs)}, {args.ckpt_b}), per class (the label): accuracies (%), "
            f"samples the teacher gets wrong, mean cosine similarity of the logits, mean NTDH weight (threshold "
            f"{args.ntdh_threshold}) and mean teacher-student divergence over the target/non-target split of the "
            f"classes and over the non-target classes: {divergence}.\n\n"
            + markdown_table(list(NTDH_COLUMNS), [[_cell(NTDH_COLUMNS[key], row[key]) for key in NTDH_COLUMNS]
                                                  for row in rows]))
    atomic_write_text(run_dir.path / "ntdh.md", text)
    run_dir.log("\n" + text)
    return {"experiment": "ntdh", "split": args.split, "teacher": teacher.model_name, "student": student.model_name,
            "teacher_inputs": teacher_inputs, "student_inputs": student_inputs, "threshold": args.ntdh_threshold,
            "divergence": "jsd" if args.ntdh_true_jsd else "authors", "classes": rows}


def _cell(template: str, value) -> str:
    return "-" if value is None else template.format(value)


def run_rank(args, ctx, run_dir: RunDir) -> dict:
    ranking = compute_ranking(args, ctx, run_dir)
    salience = ranking["salience"]
    top = torch.argsort(salience, descending=True, stable=True)[:10].tolist()
    run_dir.log(f"Most modality-general channels of {ranking['info']['layer']}: {top}")
    return {"experiment": "rank", **ranking["info"], "top_channels": top}


# =============================================================================================================
# command line
# =============================================================================================================
def _floats_in_unit(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not in [0, 1]")
    return value


def add_experiment_arguments(group) -> None:
    """The flags of ``main-MFH.py`` beyond the framework's (data, models, training, output, dataset options)."""
    group.add_argument("--exp", choices=EXPERIMENTS, default=None,
                       help="experiment: gamma (Fig. 2), alpha (Fig. 3), table2 (Table 2), rank (Algorithm 1), "
                            "nullify (KD from nullified teachers), ntdh (NTDH's per-class non-target divergence of "
                            "two checkpoints) (required)")
    group.add_argument("--runs", type=int, default=None,
                       help="independent runs (default: 10 for gamma/alpha/table2, 3 student inits for nullify)")
    group.add_argument("--swap_kd_modalities", action=argparse.BooleanOptionalAction, default=False,
                       help="table2: reproduce the public code's regular-KD call, which feeds the teacher x_b and "
                            "trains the student on x_a (default: off, the intended order)")
    group.add_argument("--sweep_fixed", choices=SWEEP_FIXED, default="student",
                       help="gamma/alpha: whose data stay the same across the sweep: student (the authors' protocol: "
                            "the student's modality, labels and initial weights are the same at every point, only "
                            "the teacher's modality changes, so no-KD is one constant) or teacher (the teacher's "
                            "modality stays the same and the student's changes, from the shared generator "
                            "datasets.synthetic.sample_mvd) "
                            "(default: %(default)s)")
    group.add_argument("--hidden_decisive", action=argparse.BooleanOptionalAction, default=True,
                       help="gamma/alpha: the label also depends on decisive features neither modality sees, as the "
                            "public code and App. B.2 (Fig. 2: d = 20; Fig. 3: d = 50); --no-hidden_decisive uses "
                            "d = |J1 ∪ J2| (default: on)")
    group.add_argument("--table2_teachers", nargs="+", choices=TABLE2_TEACHERS, default=list(TABLE2_TEACHERS),
                       help="table2: modality-general teachers from the known columns (gt), Algorithm 1 (alg1), "
                            "random columns (random) (default: all three; gt is always included)")
    group.add_argument("--repeats", type=int, default=None,
                       help="Algorithm 1 permutations per channel, M (default: 100 for table2 as the public Gaussian "
                            "code, 10 for rank/nullify as the public RAVDESS code)")
    group.add_argument("--model_a", default=None,
                       help="rank/nullify: network on modality a (the teacher side, the modality that is not "
                            "--mode) (default: the checkpoint's model_name, else the dataset's unimodal model)")
    group.add_argument("--model_b", default=None,
                       help="rank/nullify: network on modality b = --mode (default: as --model_a)")
    group.add_argument("--ckpt_a", default=None,
                       help="rank/nullify: best.pth of the modality-a network (default: none; Synthetic-MVD then "
                            "trains both by Algorithm 1 step 1)")
    group.add_argument("--ckpt_b", default=None,
                       help="rank/nullify: best.pth of the modality-b network (default: none)")
    group.add_argument("--layer", default=None,
                       help="rank/nullify: layer of model_a (e.g. a declared tap) whose channels are ranked, or "
                            "'input' (default: the model's MFH tap, kd_methods/taps.py slot mfh)")
    group.add_argument("--joint_epochs", type=int, default=1000,
                       help="Algorithm 1 step 1 on Synthetic-MVD: full-batch epochs (default: %(default)s)")
    group.add_argument("--joint_lr", type=float, default=JOINT_LR,
                       help="Algorithm 1 step 1 on Synthetic-MVD: SGD lr, momentum 0.9 (default: %(default)s)")
    group.add_argument("--salience_samples", type=int, default=1000,
                       help="rank/nullify: training samples used by Algorithm 1 (default: %(default)s)")
    group.add_argument("--salience_batch", type=int, default=500,
                       help="rank/nullify: samples per Algorithm 1 batch; permutations stay within a batch "
                            "(default: %(default)s)")
    group.add_argument("--split", choices=SPLITS, default="val",
                       help="ntdh: the split the networks are compared on (default: %(default)s; nothing is selected "
                            "on it)")
    group.add_argument("--ntdh_threshold", type=float, default=THRESHOLD,
                       help="ntdh: cosine similarity from which NTDH still distils a sample the teacher gets wrong, "
                            "for the weight column (default: %(default)s, the authors')")
    group.add_argument("--ntdh_true_jsd", action=argparse.BooleanOptionalAction, default=False,
                       help="ntdh: report the Jensen-Shannon divergence instead of the authors' js_divergence, which "
                            "reverses both KLs (default: off, the authors')")
    group.add_argument("--ratios", type=_floats_in_unit, nargs="+", default=[0.25, 0.5, 0.75],
                       help="nullify: shares r of the layer's channels to nullify (default: 0.25 0.5 0.75)")
    group.add_argument("--kinds", nargs="+", choices=SELECTION_KINDS, default=list(SELECTION_KINDS),
                       help="nullify: teachers to build: general (nullify the lowest saliences), specific (the "
                            "highest), random (default: all three)")
    add_kd_weight_arguments(group)


def check_experiment_args(args) -> None:
    problems = []
    if args.exp is None:
        problems.append(f"--exp is required (one of {', '.join(EXPERIMENTS)})")
    if args.runs is not None and args.runs < 1:
        problems.append("--runs must be >= 1")
    if args.repeats is not None and args.repeats < 1:
        problems.append("--repeats must be >= 1")
    if args.joint_epochs < 0 or args.salience_samples < 1 or args.salience_batch < 1:
        problems.append("--joint_epochs must be >= 0, --salience_samples and --salience_batch >= 1")
    if args.threads is not None and args.threads < 1:
        problems.append("--threads must be >= 1")
    if args.joint_lr <= 0:
        problems.append("--joint_lr must be > 0")
    if not -1.0 <= args.ntdh_threshold <= 1.0:
        problems.append("--ntdh_threshold is a cosine similarity, in [-1, 1]")
    if problems:
        raise UserError("; ".join(problems))
    check_kd_weights(args)


#: the command line of ``main-MFH.py`` for :mod:`utils.cli`: the framework's options, ``--Smodel`` (the students of
#: ``--exp nullify``) and :func:`add_experiment_arguments` (the experiments are not one training run: ``--exp nullify``
#: runs ``MFH-KD`` through the engine once per student)
COMMAND = cli.Command(
    card=MethodCard(name="MFH", summary="MFH experiments (Xue et al., ICLR 2023): Fig. 2/3 and Table 2 on Gaussian "
                    "data, Algorithm 1 feature ranking and KD from nullified teachers on any dataset.",
                    teacher_kind="crossmodal"),
    add_arguments=add_experiment_arguments, check_args=lambda args, spec: check_experiment_args(args))


def build_parser() -> argparse.ArgumentParser:
    """The framework's standard parser (data, models, training, output, dataset options) plus the MFH flags."""
    parser = cli.build_parser(COMMAND)
    # MFH conventions: the student is modality b (m2 on Synthetic-MVD, whose m1 is modality a); table2's
    # public seed is 42, the figures' 0
    parser.set_defaults(mode="m2", seed=None)
    for action in parser._actions:
        if action.dest == "seed":
            action.help = ("seed: table2 uses seeds SEED+run (default 42, as the public code), gamma/alpha SEED+run "
                           "(default 0); rank/nullify: framework seed and split column group_<SEED> (default 0)")
        elif action.dest == "epochs":
            action.help = ("epochs: gamma/alpha/table2 full-batch epochs (default 1000); nullify: student epochs "
                           "(default: per dataset)")
    return parser


def parse_args(argv=None) -> tuple[argparse.Namespace, RunDescription | None]:
    """The experiment's options, and for the experiments on a framework dataset (rank, nullify, ntdh) the run they
    read the data of, resolved once (:func:`utils.cli.described`); ``None`` for the Gaussian experiments."""
    args = build_parser().parse_args(argv)
    check_experiment_args(args)
    if args.resume:
        raise UserError("main-MFH.py does not resume runs (each experiment is short); drop --resume")
    if args.exp in LR_EXPERIMENTS:
        args.seed = args.seed if args.seed is not None else (42 if args.exp == "table2" else 0)
        args.epochs = args.epochs if args.epochs is not None else 1000
        args.runs = args.runs or 10
        args.repeats = args.repeats or 100
        if args.epochs < 0:
            raise UserError("--epochs must be >= 0")
        return args, None
    args.seed = args.seed if args.seed is not None else 0
    args.runs = args.runs or 3
    args.repeats = args.repeats or 10
    cli.check_dataset_options(args, cli.given_flags(COMMAND, argv))
    description = cli.described(COMMAND, args)
    if args.exp == "ntdh" and description.spec.is_segmentation:
        raise UserError(f"--exp ntdh does not support {args.database}: its divergences and weight need one class "
                        f"prediction per sample, not per-pixel maps")
    if args.exp in CHECKPOINT_EXPERIMENTS and not (args.ckpt_a and args.ckpt_b):
        raise UserError(f"--exp {args.exp} compares two trained networks: pass --ckpt_a (the teacher's best.pth) and "
                        f"--ckpt_b (the student's)")
    if bool(args.ckpt_a) != bool(args.ckpt_b):
        raise UserError("pass both --ckpt_a and --ckpt_b (networks on modality a and b), or neither")
    if not args.ckpt_a and args.database != "Synthetic-MVD":
        raise UserError(f"--exp {args.exp} on {args.database} needs trained networks: pass --ckpt_a and --ckpt_b "
                        f"(best.pth files of main-S.py); only Synthetic-MVD trains them itself (Algorithm 1 step 1)")
    return args, description


def run_experiment(args, description: RunDescription | None = None) -> dict:
    """Run the experiment ``args.exp``; ``description``: the framework run rank and nullify read the data of."""
    device = resolve_device(args.device)
    seed_everything(args.seed)
    threads = args.threads  # default here: 1 for gamma/alpha/table2 and Synthetic-MVD
    if threads is None and (args.exp in LR_EXPERIMENTS or args.database == "Synthetic-MVD"):
        # the Gaussian models are tiny ([10, 200, 50] matmuls): intra-op threads only add synchronisation, which
        # made them up to ~100x slower on a loaded 2-core machine
        threads = 1
    threads_line = configure_threads(threads) if threads is not None and device.type == "cpu" else None
    if args.exp in LR_EXPERIMENTS:
        tag = f"runs{args.runs}_seed{args.seed}_ep{args.epochs}"
    else:
        tag = f"{args.database}_{args.mode}_seed{args.seed}"
    record = vars(args).copy()
    run_dir = RunDir.create(args.out_dir, "MFH", args.exp, tag, record, record=False)
    started = time.time()
    try:
        run_dir.log(f"MFH --exp {args.exp} on {device}; run directory {run_dir.path}")
        if threads_line is not None:
            run_dir.log(threads_line)
        if args.exp in ("gamma", "alpha"):
            results = run_sweep(args, run_dir, device)
        elif args.exp == "table2":
            results = run_table2(args, run_dir, device)
        else:
            ctx = build_context(description, device, log=run_dir.log)
            ctx.run_path = run_dir.path
            experiment = {"rank": run_rank, "nullify": run_nullify, "ntdh": run_ntdh}[args.exp]
            results = experiment(args, ctx, run_dir)
        results["wall_time_s"] = round(time.time() - started, 2)
        results["device"] = str(device)
        atomic_write_json(results, run_dir.path / "results.json")
        run_dir.log(f"Done in {results['wall_time_s']:.1f}s")
    except BaseException as error:  # refused input, full disk, Ctrl-C: nothing worth keeping, except how it diverged
        if not isinstance(error, NonFiniteLossError):
            run_dir.remove()
        raise
    finally:
        run_dir.close()
    print(f"Run directory: {run_dir.path}")
    return results


def main(argv=None) -> dict | None:
    """Entry point of ``main-MFH.py``: bad input ends with one line on stderr and exit code 2."""
    return exit_on_error(lambda: run_experiment(*parse_args(argv)),
                         interrupted="interrupted (Ctrl-C)")
