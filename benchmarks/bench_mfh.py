"""Benchmark: Algorithm 1 of MFH (Xue et al., ICLR 2023, App. B.4), batched against the reference's loop.

Two problems, each ranked by ``channel_salience`` (batched, automatic group size), by ``channel_salience`` with
one channel (all its repeats) per forward, and by ``channel_salience_loop`` (one full forward per channel per
repeat, as the authors' code), on the same inputs and permutation seeds, so the saliences must agree (checked to
256 float32 ulps, relative):

* ``table2``: the Table 2 networks, two logistic regressions ``50 -> 2`` jointly trained by Algorithm 1 step 1 on
  the Gaussian data of the row gamma 0.50 (200 samples); the 50 input columns are ranked with M = 100
  permutations, as ``main-MFH.py --exp table2`` does for every run. Little work per copy: fixed costs decide.
* ``ravdess``: the 320 channels of ``fc1`` of the RAVDESS ``AudioBranchNet`` (Conv1d MFCC branch, then the
  320-wide layer) against a second ``AudioBranchNet``, random weights and MFCC inputs. The loop pays the conv
  branch for every permutation; the batched version runs it once (the prefix of the network cut by
  ``SegmentedForward``), then only the suffix after ``fc1``, vmapped over the copies.

Times are the best of ``--trials`` (the variants alternate within each trial), as CPU seconds of this process
(all threads) and wall seconds; the ratios are loop / batched. Threads: ``table2`` runs with one, as
``main-MFH.py`` runs its Gaussian experiments (intra-op threads only synchronise on such small products), and
``ravdess`` with torch's default, as ``--exp rank`` on a framework dataset; ``--threads`` sets both.

    python benchmarks/bench_mfh.py                       # both problems, CPU
    python benchmarks/bench_mfh.py --threads 2
    python benchmarks/bench_mfh.py --problem ravdess --samples 128 --repeats 10 --device cuda
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kd_methods import feature_ranking as fr  # noqa: E402
from kd_methods import mfh_lab  # noqa: E402
from datasets.synthetic import MVDConfig, draw_label_weights, sample_mvd  # noqa: E402
from models import build_model  # noqa: E402

#: agreement of batched and loop saliences: the same sums in other orders (different matmul shapes)
RTOL = 256 * torch.finfo(torch.float32).eps


def table2_problem(args, device):
    """Two jointly trained logistic regressions on the Table 2 data of the row gamma 0.50 (xs1 = xs2 = 10)."""
    config = MVDConfig(50, 50, 20, 10, 10)
    rng = np.random.RandomState(42)
    x_a, x_b, y = sample_mvd(config, mfh_lab.N_TRAIN, rng, draw_label_weights(config, rng, delta="ones"))
    xa, xb, yt = (torch.from_numpy(v).unsqueeze(0).to(device) for v in (mfh_lab.table2_layout(config, x_a), x_b, y))
    generators = [torch.Generator().manual_seed(42)]
    (wa, ba), (wb, bb) = mfh_lab.fit_joint(mfh_lab.init_logreg(50, generators, device=device),
                                           mfh_lab.init_logreg(50, generators, device=device), xa, xb, yt, 1000)
    return (mfh_lab.RunLinear(wa[0], ba[0]), mfh_lab.RunLinear(wb[0], bb[0]), xa[0], xb[0], None,
            args.table2_repeats, "Table 2 logistic regressions, 50 input columns")


def ravdess_problem(args, device):
    torch.manual_seed(0)
    model_a = build_model("AudioBranchNet", num_classes=8).to(device).eval()
    model_b = build_model("AudioBranchNet", num_classes=8).to(device).eval()
    inputs_a = torch.randn(args.samples, 15, 156, device=device)
    inputs_b = torch.randn(args.samples, 15, 156, device=device)
    return model_a, model_b, inputs_a, inputs_b, args.layer, args.repeats, f"RAVDESS AudioBranchNet.{args.layer}"


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return result, time.process_time() - cpu, time.perf_counter() - wall


def run_problem(name: str, problem, trials: int, device) -> dict:
    model_a, model_b, inputs_a, inputs_b, layer, repeats, title = problem
    variants = {
        "loop": lambda g: fr.channel_salience_loop(model_a, model_b, inputs_a, inputs_b, layer, repeats=repeats,
                                                   generator=g),
        "batched": lambda g: fr.channel_salience(model_a, model_b, inputs_a, inputs_b, layer, repeats=repeats,
                                                 generator=g),
        "one channel per forward": lambda g: fr.channel_salience(model_a, model_b, inputs_a, inputs_b, layer,
                                                                 repeats=repeats, chunk=1, generator=g),
    }
    fr.channel_salience(model_a, model_b, inputs_a, inputs_b, layer, repeats=1)  # warm-up (allocator, kernels)
    best = {key: (None, float("inf"), float("inf")) for key in variants}
    for _ in range(trials):
        for key, fn in variants.items():
            result, cpu, wall = timed(lambda: fn(torch.Generator().manual_seed(1)), device)
            previous = best[key]
            best[key] = (result, min(previous[1], cpu), min(previous[2], wall))
    loop = best["loop"][0]
    for key, (result, _, _) in best.items():
        rel = ((result - loop).abs() / loop.abs().clamp_min(1e-12)).max().item()
        assert rel <= RTOL, f"{name}: {key} and loop saliences differ: max relative difference {rel:.3g}"
    with torch.no_grad():
        runner = fr._InputRunner(model_a, fr._as_tuple(inputs_a)) if layer is None else \
            fr._SuffixRunner(model_a, fr._as_tuple(inputs_a), layer)
    group = fr.auto_group(runner.per_copy_elements(), runner.feature.device)
    channels = loop.numel()
    return {"name": name, "title": title, "channels": channels, "samples": runner.feature.shape[0],
            "repeats": repeats, "group": group, "forwards": -(-channels * repeats // group), "best": best}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problem", choices=("both", "table2", "ravdess"), default="both",
                        help="which problem to time (default: %(default)s)")
    parser.add_argument("--table2_repeats", type=int, default=100,
                        help="table2: permutations per column M (default: %(default)s, as main-MFH.py)")
    parser.add_argument("--samples", type=int, default=64, help="ravdess: samples N (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="ravdess: permutations per channel M (default: "
                                                               "%(default)s)")
    parser.add_argument("--layer", default="fc1", help="ravdess: layer of AudioBranchNet to rank (default: "
                                                       "%(default)s)")
    parser.add_argument("--trials", type=int, default=3, help="timed trials, best kept (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    builders = {"table2": table2_problem, "ravdess": ravdess_problem}
    names = list(builders) if args.problem == "both" else [args.problem]
    default_threads = torch.get_num_threads()
    reports = []
    try:
        for name in names:
            torch.set_num_threads(args.threads or (1 if name == "table2" else default_threads))
            reports.append({**run_problem(name, builders[name](args, device), args.trials, device),
                            "threads": torch.get_num_threads()})
    finally:
        torch.set_num_threads(default_threads)

    print(f"Algorithm 1 (channel_salience) on {device}, torch {torch.__version__}, best of {args.trials}")
    print()
    print("| problem | channels x M, N | threads | implementation | forwards of model_a | CPU s | wall s | "
          "loop / this (CPU) |")
    print("|---|---|---:|---|---:|---:|---:|---:|")
    for report in reports:
        best, size = report["best"], f"{report['channels']} x {report['repeats']}, N = {report['samples']}"
        loop_cpu = best["loop"][1]
        forwards = {"loop": str(report["channels"] * report["repeats"]),
                    "batched": f"{report['forwards']} ({report['group']} copies each)",
                    "one channel per forward": str(report["channels"])}
        for key, (_, cpu, wall) in best.items():
            print(f"| {report['title']} | {size} | {report['threads']} | {key} | {forwards[key]} | {cpu:.3f} | "
                  f"{wall:.3f} | {loop_cpu / cpu:.2f}x |")
    print()
    for report in reports:
        best = report["best"]
        print(f"{report['name']}: batched/loop speed-up {best['loop'][1] / best['batched'][1]:.2f}x CPU, "
              f"{best['loop'][2] / best['batched'][2]:.2f}x wall; one channel per forward "
              f"{best['loop'][1] / best['one channel per forward'][1]:.2f}x CPU")
    return reports


if __name__ == "__main__":
    main()
