"""Training steps per second of every registered distillation method, with the frozen teacher run without autograd
(the framework's default) against the reference's way (teacher parameters requiring grad, forward with autograd:
``Method.keep_teacher_graph = True``), measured in the same run.

Setup: AV-MNIST-shaped random data (image ``[1, 28, 28]``, audio ``[1, 112, 112]``, 10 classes) and the AV-MNIST
models (default ``--mode m1``: teacher ``CNN-I`` or, for ``-UU`` methods, ``ThreeLayerCNN-A``; student
``LeNet5``). If those models are not registered, the Synthetic-MVD shapes and MLPs are used instead and the output
says so. The source is a ``TensorSource`` of ``--distinct`` random samples served as ``--samples`` virtual samples
(index modulo), so methods whose state grows with the training split (CRD's memories) see a realistic size
without the memory cost. Teacher checkpoints are random state dicts saved to a temporary folder.

Each method is built twice (the switch acts at construction); both builds run ``--warmup`` untimed steps, then
``--rounds`` timed epochs of ``--steps`` steps each, alternating between the two, through the engine's own
``train_epoch`` (sum of the loss dict, one backward, one optimiser step); the fastest epoch counts
(other jobs on a shared machine only ever add time).
Multi-stage methods are timed on their last stage with epochs; methods that cannot be built generically print
'n/a' and the reason.

Usage: ``python benchmarks/bench_methods.py [--steps 1] [--rounds 6] [--warmup 1] [--batch_size 16] [--threads 1]
[--device cpu|cuda] [--methods KD CRD ...]``.
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets import get_spec  # noqa: E402
from datasets.base import BatchLoader, TensorSource  # noqa: E402
from kd_methods import METHODS, all_methods  # noqa: E402
from kd_methods.base import RunContext  # noqa: E402
from models import MODELS, build_model  # noqa: E402
from utils import cli  # noqa: E402
from utils.engine import train_epoch  # noqa: E402

NOT_DISTILLATION = {"T", "S", "test-T", "test-S"}
AVMNIST_MODELS = ("CNN-I", "LeNet5", "ThreeLayerCNN-A")


class VirtualSource(TensorSource):
    """``samples`` virtual samples backed by ``len(m1)`` real ones (sample i is real sample i mod distinct), with
    labels of their own so that class-dependent methods see ``samples`` labelled samples."""

    def __init__(self, m1, m2, labels: torch.Tensor):
        super().__init__(m1, m2, labels[: len(m1)])
        self.all_labels = labels

    def __len__(self) -> int:
        return len(self.all_labels)

    def get_batch(self, indices):
        index = torch.as_tensor(np.asarray(indices) % len(self.m1), dtype=torch.long)
        return (self.m1.index_select(0, index), self.m2.index_select(0, index),
                self.all_labels.index_select(0, torch.as_tensor(indices, dtype=torch.long)))

    def labels(self) -> np.ndarray:
        return self.all_labels.numpy()


def make_source(database: str, distinct: int, samples: int, num_classes: int) -> VirtualSource:
    generator = torch.Generator().manual_seed(0)
    if database == "AV-MNIST":
        shapes = {"m1": (1, 28, 28), "m2": (1, 112, 112)}
    else:
        shapes = {"m1": (50,), "m2": (50,)}
    m1 = torch.randn(distinct, *shapes["m1"], generator=generator)
    m2 = torch.randn(distinct, *shapes["m2"], generator=generator)
    return VirtualSource(m1, m2, torch.randint(0, num_classes, (samples,), generator=generator))


def build_run(method_cls, database: str, source, options, folder: Path, keep_graph: bool):
    """The method (with ``keep_teacher_graph`` as asked), its timed stage, its loader and its context."""
    spec = get_spec(database)
    argv = ["--database", database, "--batch_size", str(options.batch_size), "--epochs", "1",
            "--device", options.device, "--no-record"]
    if method_cls.card.needs_checkpoint:
        argv += ["--ckpt_name", "placeholder"]
    args = cli.parse_args(method_cls, argv)
    if method_cls.card.needs_checkpoint:
        path = folder / f"{args.Tmodel}.pth"
        if not path.exists():
            model = build_model(args.Tmodel, num_classes=spec.num_classes, input_shapes=source.input_shapes)
            torch.save(model.state_dict(), path)
        args.ckpt_name = str(path)
    n = len(source)
    splits = {"train": np.arange(int(0.6 * n)), "val": np.arange(int(0.6 * n), int(0.8 * n)),
              "test": np.arange(int(0.8 * n), n)}
    device = torch.device(options.device)

    def make_loader(split, shuffle=None, batch_size=None, max_steps=-1):
        return BatchLoader(source, splits[split], batch_size or args.batch_size,
                           shuffle=(split == "train") if shuffle is None else shuffle, seed=0, device=device,
                           max_steps=None if max_steps == -1 else max_steps)

    ctx = RunContext(args=args, spec=spec, device=device, source=source, splits=splits, make_loader=make_loader,
                     log=lambda _message: None)
    variant = type(method_cls.__name__, (method_cls,), {"keep_teacher_graph": keep_graph})
    torch.manual_seed(0)
    method = variant(ctx).to(device)
    stages = [stage for stage in method.stages() if stage.epochs > 0]
    if not stages:
        raise RuntimeError("no stage with epochs")
    return method, stages[-1], ctx, len(stages)


def timed_epoch(run, loader, options) -> float:
    method, stage, ctx, optimizer = run
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
    start = time.perf_counter()
    train_epoch(method, stage, optimizer, loader, ctx, 0, "benchmark")  # returns floats: the device is synced
    return time.perf_counter() - start


def compare(method_cls, database, source, options, folder) -> tuple[list[float], tuple]:
    """Steps/s of the no-grad and the graph variant: both built, warmed up, then timed in alternation
    (``--rounds`` epochs of ``--steps`` steps each) so that load changes on a shared machine hit both alike; the
    fastest epoch of each variant counts."""
    runs, info = [], None
    for keep_graph in (False, True):
        method, stage, ctx, count = build_run(method_cls, database, source, options, folder, keep_graph)
        runs.append((method, stage, ctx, stage.start()))
        info = (stage.name, count, ctx.args)
    batch_size = options.batch_size
    warm = runs[0][2].make_loader("train", batch_size=batch_size, max_steps=options.warmup)
    timed = runs[0][2].make_loader("train", batch_size=batch_size, max_steps=options.steps)
    for run in runs:
        timed_epoch(run, warm, options)
    times = [[], []]
    for _ in range(options.rounds):
        for i, run in enumerate(runs):
            times[i].append(timed_epoch(run, timed, options))
    # the fastest epoch: on a shared machine, other jobs only ever add time
    return [options.steps / min(t) for t in times], info


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1, help="training steps per timed epoch (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=6,
                        help="timed epochs per variant, alternating between the variants (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before them (default: %(default)s)")
    parser.add_argument("--batch_size", type=int, default=16, help="batch size (default: %(default)s)")
    parser.add_argument("--samples", type=int, default=70_000,
                        help="virtual samples, 60%% of them the training split (default: %(default)s, AV-MNIST's N)")
    parser.add_argument("--distinct", type=int, default=256,
                        help="real random samples behind them (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads, 0 = torch's choice (default: %(default)s: on a shared host, threads "
                             "waiting for a descheduled peer make multi-threaded timings erratic)")
    parser.add_argument("--methods", nargs="*", default=None, help="only these methods (default: every one)")
    options = parser.parse_args(argv)

    if options.threads:
        torch.set_num_threads(options.threads)
    all_methods()
    names = [n for n in sorted(METHODS) if n not in NOT_DISTILLATION and (not options.methods or n in options.methods)]
    database = "AV-MNIST" if all(m in MODELS for m in AVMNIST_MODELS) else "Synthetic-MVD"
    spec = get_spec(database)
    source = make_source(database, options.distinct, options.samples, spec.num_classes)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} CPU threads, device {options.device}")
    if database != "AV-MNIST":
        print("AV-MNIST models are not registered yet: falling back to Synthetic-MVD shapes and MLPs")
    print(f"{database}-shaped random data, batch {options.batch_size}, per variant {options.warmup} warm-up step(s) "
          f"then {options.rounds} alternating timed epochs of {options.steps} step(s) (fastest); training split of "
          f"{int(0.6 * options.samples)} samples\n")

    rows = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            try:
                figures, (stage_name, count, args) = compare(METHODS[name], database, source, options, Path(folder))
                note = f" (stage '{stage_name}' of {count})" if count > 1 else ""
                models = f"{args.Tmodel} -> {args.Smodel}" if "teacher" in METHODS[name].card.roles else args.Smodel
                rows.append(f"| {name}{note} | {models} | {figures[0]:.2f} | {figures[1]:.2f} | "
                            f"{figures[0] / figures[1]:.2f}x |")
            except Exception as error:  # noqa: BLE001 - report and go on: one method must not stop the table
                reason = (str(error).splitlines() or [type(error).__name__])[0][:100]
                rows.append(f"| {name} | n/a | n/a | n/a | n/a ({type(error).__name__}: {reason}) |")
            print(rows[-1], file=sys.stderr, flush=True)
    print("| method | teacher -> student | steps/s, teacher no-grad (ours) | steps/s, teacher graph (reference) "
          "| ratio |")
    print("|---|---|---:|---:|---:|")
    print("\n".join(rows))
    print(f"\ntotal time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
