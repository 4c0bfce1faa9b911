"""MST-Distill training steps per second and peak memory of stage 2 (MaskNets) and stage 3 (distillation): the fast
path against the straightforward one and against its bound, measured in one run.

Variants (kd_methods/mst.py):
* ``fast``: the defaults (``--mst_impl fast``, ``--mst_cache_mb 2048``, the default optimiser): torch.fx segments,
  each teacher prefix once per batch, frozen networks without autograd, and what the frozen networks compute per
  sample (stage 2: student targets and teacher features at the hooked layers; stage 3: the experts' logits) read from
  the per-sample cache filled once when the stage starts. The timed steps are the steady state (every epoch after the
  fill pass); the fill itself is timed apart (here over a one-batch training split, probe batch included). The
  benchmark's split is one batch, so the 2048 MB budget is scaled by batch / real training-split size: the cache then
  holds exactly what it would in a real run (AV-MNIST's auxiliary feature maps, 1.2 MB a sample, do not fit and run
  per batch).
* ``no cache``: ``fast`` with ``--mst_cache_mb 0``: the frozen networks run on every batch (prefix sharing only).
* ``hooks``: ``--mst_impl reference --no-fused_adam``: one full forward per expert / MaskNet with the hooks attached
  as the reference does (cumulative in stage 3) and PyTorch's default (unfused) Adam, as the reference; frozen
  networks still without autograd (the straightforward path).
* ``literal``: ``hooks`` plus ``Method.keep_teacher_graph = True``: every network's parameters require grad and the
  frozen forwards build autograd graphs, as the reference code (its stage-2 backward runs through the whole teacher).
* ``fast, other Adam``: ``fast`` with the other Adam implementation than the default (``--no-fused_adam`` when fused
  Adam is the default, ``--fused_adam`` otherwise; the table names it): with the default unfused, its ratio to
  ``hooks`` shows what fused Adam adds; with the default fused, what the path alone gains with the reference's
  optimiser.
* ``bound``: the same step with no frozen-network work at all, its inputs computed once beforehand: stage 3, the
  student and router alone (forward, the losses against fixed expert logits, backward, optimiser step); stage 2, the
  MaskNets, the teacher suffixes after each hooked layer and the optimiser alone (fixed student targets and clean
  features). ``fast / bound`` near 1 means the frozen networks cost the fast path nothing any more; ``bound / hooks``
  is the most any saving on the frozen networks could give (Amdahl).

Setups: AV-MNIST shapes (``CNN-I`` + aux ``ThreeLayerCNN-A`` -> ``LeNet5``, batch 8) and RAVDESS shapes
(``DSCNN-I`` + aux ``AudioBranchNet`` -> ``VisualBranchNet``, batch 4), random inputs, default MaskNet sizes
(``--hidden_dim_factor 2``). If a paper family is not registered, Synthetic-MVD is used instead, with a note.

Timing: the variants are built side by side, warmed up, then timed in alternation for ``--rounds`` rounds of one
training step each (the engine's step: sum of the loss dict, one backward, one optimiser step); the fastest round
counts (other jobs on a shared machine only ever add time). Peak memory of a step beyond what is held before it
(weights, gradients, optimiser state) is measured on one untimed step after the warm-up: ``max_memory_allocated`` on
CUDA, the growth of the resident set on CPU (Linux ``VmHWM`` reset through ``/proc/self/clear_refs``, after
``malloc_trim``); ``--no-memory`` skips it. After the table, one line per setup and stage:
``stage N <dataset>: fast/hooks X.XXx, fast/bound Y.YY``.

Usage: ``python benchmarks/bench_mst.py [--rounds 3] [--threads 1] [--device cpu|cuda] [--configs AV-MNIST RAVDESS]
[--no-memory]``.
"""
from __future__ import annotations

import argparse
import functools
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kd_methods.mst import MSTDistill  # noqa: E402
from kd_methods.mst_losses import loss_weights  # noqa: E402
from utils.offline import offline_context  # noqa: E402
from models import MODELS  # noqa: E402
from utils import cli  # noqa: E402
from utils.engine import set_modes  # noqa: E402

OTHER = "fast, other Adam"
#: variant -> (--mst_impl, keep_teacher_graph, extra options, --mst_cache_mb for the real split); the options of
#: OTHER are chosen in :func:`build`
VARIANTS = {"fast": ("fast", False, (), 2048), "no cache": ("fast", False, (), 0),
            "hooks": ("reference", False, ("--no-fused_adam",), 0),
            "literal": ("reference", True, ("--no-fused_adam",), 0),
            OTHER: ("fast", False, (), 2048)}


@functools.lru_cache(maxsize=None)
def default_fused() -> bool:
    """Whether MST-Distill's default optimiser is fused Adam (``--fused_adam``)."""
    return bool(cli.parse_args(MSTDistill, ["--database", "Synthetic-MVD"]).fused_adam)


def other_label() -> str:
    return "fast, unfused Adam" if default_fused() else "fast, fused Adam"
MEMORY_VARIANTS = ("fast", "hooks", "literal")
#: ``train_samples``: the real training split (60 % of the dataset), for the cache's budget decisions
CONFIGS = {
    "AV-MNIST": {"argv": ["--database", "AV-MNIST"], "batch": 8, "train_samples": 42_000,
                 "models": ("CNN-I", "ThreeLayerCNN-A", "LeNet5")},
    "RAVDESS": {"argv": ["--database", "RAVDESS"], "batch": 4, "train_samples": 864,
                "models": ("DSCNN-I", "AudioBranchNet", "VisualBranchNet")},
    "Synthetic-MVD": {"argv": ["--database", "Synthetic-MVD"], "batch": 256, "train_samples": 3_000,
                      "models": ("MVD-MLP-I", "MVD-MLP-m2", "MVD-MLP-m1")},
}
STAGES = {2: 1, 3: 2}  # paper stage number -> index in MSTDistill.stages()


def build(config: str, variant: str, device: str):
    impl, graph, extra, cache_mb = VARIANTS[variant]
    if variant == OTHER:
        extra = ("--no-fused_adam",) if default_fused() else ("--fused_adam",)
    spec = CONFIGS[config]
    # The benchmark's split is one batch: scale the budget so that the cache holds what it would for the real split.
    cache_mb = cache_mb * spec["batch"] / spec["train_samples"]
    argv = spec["argv"] + ["--batch_size", str(spec["batch"]), "--mst_impl", impl, "--no-compare_baseline",
                           "--mst_cache_mb", str(cache_mb), *extra]
    ctx = offline_context(argv, samples=spec["batch"], device=device)
    torch.manual_seed(0)
    method = MSTDistill(ctx).to(ctx.device)
    method.keep_teacher_graph = graph  # read by the optimiser factories (requires_grad) and the frozen forwards
    batch = next(iter(ctx.make_loader("train", shuffle=False)))
    return method, batch


def _engine_step(method: MSTDistill, stage, optimizer, losses, cuda: bool):
    """One step as the engine takes it: sum of the loss terms, one backward, one optimiser step."""

    def step():
        set_modes(method, stage, training=True)
        total = sum(losses())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        if cuda:
            torch.cuda.synchronize()

    return step


def make_step(method: MSTDistill, batch, stage_number: int):
    """``(step, fill_seconds)``: one engine training step of the stage, and the time its cache took to fill."""
    stage = method.stages()[STAGES[stage_number]]
    optimizer = stage.start()
    set_modes(method, stage, training=True)
    started = time.perf_counter()
    filled = method._cache(stage_number, "train") is not None
    fill_seconds = time.perf_counter() - started if filled else float("nan")
    step = _engine_step(method, stage, optimizer, lambda: stage.train_step(batch, 0).values(), batch.y.is_cuda)
    return step, fill_seconds


def make_bound_step(method: MSTDistill, batch, stage_number: int):
    """``(step, note)``: the stage's step without any frozen-network work, what the frozen networks would give it
    computed once beforehand (stage 3: the experts' logits; stage 2: the student's targets and each teacher's clean
    states at its cuts). ``note`` names the teachers whose forward could not be cut (they still run whole)."""
    stage = method.stages()[STAGES[stage_number]]
    optimizer = stage.start()
    set_modes(method, stage, training=True)
    args = method.args
    note = ""
    with torch.no_grad():
        if stage_number == 3:
            experts = [z.detach() for z in method.expert_logits(batch)]
            w_kl, w_lb = loss_weights(0, args.w_kl, args.w_lb)

            def losses():
                terms = method.stage3_losses(batch, experts)
                return [args.w_task * terms["task"], w_kl * terms["topk"], w_lb * terms["lb"]]
        else:
            target = method.student_target(batch).detach()
            clean = {}
            for group in method.groups:
                seg = method.experts.segments(group)
                if seg is not None:
                    clean[group.tag] = seg.clean_states(*group.inputs(batch))
            whole = [group.model.model_name for group in method.groups if group.tag not in clean]
            note = f" (not cut, run whole: {', '.join(whole)})" if whole else ""

            def losses():
                return method.masknet_losses(batch, target, clean)
    return _engine_step(method, stage, optimizer, losses, batch.y.is_cuda), note


def _proc_status_mb(key: str) -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(key)


def _malloc_trim() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the measurement may undercount
        pass


def step_peak_mb(step, device: str) -> float:
    """Memory a training step needs beyond what is held before it (weights, gradients, optimiser state).

    CUDA: ``max_memory_allocated`` during the step minus ``memory_allocated`` before it. CPU (Linux, glibc): free
    heap is returned with ``malloc_trim``, then the peak resident set during the step (``VmHWM`` after resetting it
    through ``/proc/self/clear_refs``) minus the resident set before it.
    """
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        return (torch.cuda.max_memory_allocated() - before) / 2 ** 20
    _malloc_trim()  # give freed heap back first, so that the step's allocations show up as resident-set growth
    before = _proc_status_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    step()
    return _proc_status_mb("VmHWM") - before


def measure_stage(config: str, stage_number: int, args) -> tuple[dict[str, float], dict[str, float], float, str]:
    """``(steps/s, peak MB, cache fill s, note)`` per variant and the bound: built side by side, warmed up, one untimed
    step measured for memory, then ``--rounds`` timed steps in alternation; the fastest step counts."""
    steps, memory = {}, {}
    for variant in VARIANTS:
        method, batch = build(config, variant, args.device)
        steps[variant], fill = make_step(method, batch, stage_number)
        if variant == "fast":
            fill_seconds = fill
            # The bound runs on the fast build (same configuration, its own optimiser), which saves a build's memory.
            steps["bound"], note = make_bound_step(method, batch, stage_number)
    for variant, step in steps.items():
        for _ in range(args.warmup):
            step()
        if args.memory and variant in MEMORY_VARIANTS:
            memory[variant] = step_peak_mb(step, args.device)
    best = {variant: float("inf") for variant in steps}
    for _ in range(args.rounds):
        for variant, step in steps.items():
            start = time.perf_counter()
            step()
            best[variant] = min(best[variant], time.perf_counter() - start)
    return {variant: 1.0 / seconds for variant, seconds in best.items()}, memory, fill_seconds, note


def summary_line(config: str, stage_number: int, rate: dict[str, float]) -> str:
    """``stage N <dataset>: fast/hooks X.XXx, fast/bound Y.YY`` and what the bound allows at most."""
    return (f"stage {stage_number} {config}: fast/hooks {rate['fast'] / rate['hooks']:.2f}x, "
            f"fast/bound {rate['fast'] / rate['bound']:.2f} (bound/hooks {rate['bound'] / rate['hooks']:.2f}x: the "
            f"most that removing all frozen-network work could give; {other_label()}/hooks "
            f"{rate[OTHER] / rate['hooks']:.2f}x)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["AV-MNIST", "RAVDESS"], choices=list(CONFIGS))
    parser.add_argument("--rounds", type=int, default=3, help="timed steps per variant (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per variant (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    parser.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True,
                        help="measure peak memory too (default: on)")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    torch.set_num_threads(args.threads)
    started = time.time()
    configs = []
    for config in args.configs:
        if all(name in MODELS for name in CONFIGS[config]["models"]):
            configs.append(config)
        else:
            print(f"note: the {config} models are not registered; measuring Synthetic-MVD shapes instead")
            configs.append("Synthetic-MVD")
    configs = list(dict.fromkeys(configs))
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "CPU"
    print(f"MST-Distill stage 2/3 training steps/s, torch {torch.__version__}, {device}, {args.threads} thread(s), "
          f"best of {args.rounds} rounds after {args.warmup} warm-up step(s)\n")
    print(f"Default optimiser: {'fused' if default_fused() else 'unfused (multi-tensor)'} Adam; hooks and literal use "
          "the reference's (unfused).\n")
    print("| setup (T + A -> S, batch) | stage | steps/s fast | no cache | hooks | literal | "
          f"{other_label()} | bound | "
          "**fast / hooks** | **fast / bound** | bound / hooks | no cache / hooks | fast / literal | "
          f"{other_label()} / hooks | cache fill s | peak MB fast | hooks | literal |")
    print("|---|---|" + "---:|" * 17)
    summaries = []
    for config in configs:
        teacher, aux, student = CONFIGS[config]["models"]
        for stage_number in (2, 3):
            rate, memory, fill, note = measure_stage(config, stage_number, args)
            mem = [f"{memory[v]:,.0f}" if v in memory else "-" for v in MEMORY_VARIANTS]
            r = rate
            print(f"| {config}: {teacher} + {aux} -> {student}, {CONFIGS[config]['batch']} | {stage_number} | "
                  f"{r['fast']:.3f} | {r['no cache']:.3f} | {r['hooks']:.3f} | {r['literal']:.3f} | "
                  f"{r[OTHER]:.3f} | {r['bound']:.3f} | **{r['fast'] / r['hooks']:.2f}x** | "
                  f"**{r['fast'] / r['bound']:.2f}** | {r['bound'] / r['hooks']:.2f}x | "
                  f"{r['no cache'] / r['hooks']:.2f}x | {r['fast'] / r['literal']:.2f}x | "
                  f"{r[OTHER] / r['hooks']:.2f}x | {fill:.3f} | {' | '.join(mem)} |", flush=True)
            summaries.append(summary_line(config, stage_number, rate) + note)
    print()
    print("\n".join(summaries))
    print(f"\nTotal time {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
