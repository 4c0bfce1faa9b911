"""Training-data throughput: our batch path against the reference's per-sample Dataset + DataLoader.

The data are AV-MNIST-shaped synthetic tensors held in memory (image ``[1, 28, 28]``, audio
``[1, 112, 112]``, int64 label), and both paths serve the same training split (the first 60 % of a shuffled
index column, as the framework does):

* ours: ``TensorSource`` + ``BatchLoader(shuffle=True)``, i.e. one ``index_select`` gather per modality per batch
  (on CPU into a NumPy-allocated buffer)
  (``--device cuda`` adds a row with the source resident on the GPU, as ``--data_on_device`` does);
* reference: a ``torch.utils.data.Dataset`` whose ``__getitem__`` returns ``(m1_i, m2_i, y_i)`` from Python
  lists of per-sample tensors through an identity preprocessing hook (the reference ``Dataset.py`` keeps such
  lists), iterated by ``DataLoader(shuffle=True, batch_size=512, num_workers=0, pin_memory=True)`` with default
  collation (pinning only where CUDA is); each batch is then moved
  to the device as the reference training loop does;
* copy bound: the same rows of the same epochs gathered with a bare ``index_select`` into buffers allocated once
  and reused (no per-batch allocation, no Python per sample): the memory traffic every path must pay at least.
  ``ours/bound`` near 1 means no batching scheme on this machine can be much faster.

Usage: ``python benchmarks/bench_data.py [--samples 20000] [--epochs 5] [--device cpu|cuda]``. Prints a
Markdown table and the ratio measured in the same run.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.base import BatchLoader, TensorSource  # noqa: E402
from datasets.splits import cut, generate_permutations  # noqa: E402


class ReferenceStyleDataset(torch.utils.data.Dataset):
    """One Python call per sample, returning views into per-sample lists, as the reference does (its multimodal
    dataset passes every item through a per-sample preprocessing hook, an identity for the modes it accepts)."""

    def __init__(self, m1: torch.Tensor, m2: torch.Tensor, y: torch.Tensor, indices: np.ndarray, mode: str = "m1"):
        self.m1 = [m1[i] for i in indices]
        self.m2 = [m2[i] for i in indices]
        self.y = [y[i] for i in indices]
        self.mode = mode

    def __len__(self):
        return len(self.y)

    def preprocess(self, m1, m2, y):
        if self.mode not in ("ORG", "m1", "m2"):
            raise ValueError(f"unsupported mode {self.mode}")
        return m1, m2, y

    def __getitem__(self, i):
        return self.preprocess(self.m1[i], self.m2[i], self.y[i])


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_epochs(make_batches, epochs: list[int], device: torch.device) -> list[float]:
    """Seconds per epoch of producing every batch on ``device`` (synchronised before the clock is read)."""
    times = []
    for epoch in epochs:
        synchronise(device)
        start = time.perf_counter()
        count = 0
        for m1, m2, y in make_batches(epoch):
            count += len(y)  # no per-batch host sync, so GPU copies may overlap as they do in training
        synchronise(device)
        times.append(time.perf_counter() - start)
    return times


BOUND = "copy bound: bare index_select of the same rows into reused buffers"
#: per-sample shapes of m1, m2 and the class count
SHAPES = {"avmnist": ((1, 28, 28), (1, 112, 112), 10), "cmmd": ((2048,), (768,), 8)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=20_000, help="samples in all (default: %(default)s)")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="avmnist",
                        help="per-sample shapes: avmnist (53 KB a sample, copy-bound) or cmmd (feature vectors, "
                             "11 KB a sample) (default: %(default)s)")
    parser.add_argument("--batch_size", type=int, default=512, help="(default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs per path (median reported), after one "
                        "warm-up epoch (default: %(default)s)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="(default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    generator = torch.Generator().manual_seed(0)
    shape_m1, shape_m2, classes = SHAPES[args.shape]
    m1 = torch.rand((args.samples, *shape_m1), generator=generator)
    m2 = torch.rand((args.samples, *shape_m2), generator=generator)
    y = torch.randint(0, classes, (args.samples,), generator=generator)
    train, _, _ = cut(generate_permutations(args.samples, 1)[0])
    n_train = len(train)

    def ours(source):
        loader = BatchLoader(source, train, args.batch_size, shuffle=True, seed=0, device=device)

        def batches(epoch):
            loader.set_epoch(epoch)
            return ((b.m1, b.m2, b.y) for b in loader)
        return batches

    # The reference asks for pinned batches; without an accelerator DataLoader would only warn and not pin.
    reference_loader = torch.utils.data.DataLoader(ReferenceStyleDataset(m1, m2, y, train), batch_size=args.batch_size,
                                                   shuffle=True, num_workers=0, pin_memory=device.type == "cuda")

    def reference(epoch):
        non_blocking = device.type == "cuda"
        return ((a.to(device, non_blocking=non_blocking), b.to(device, non_blocking=non_blocking),
                 c.to(device, non_blocking=non_blocking)) for a, b, c in reference_loader)

    bound_loader = BatchLoader(TensorSource(m1, m2, y), train, args.batch_size, shuffle=True, seed=0, device=device)
    buffers = [torch.from_numpy(np.empty((args.batch_size, *t.shape[1:]), dtype=t.numpy().dtype)) for t in (m1, m2, y)]

    def copy_bound(epoch):
        bound_loader.set_epoch(epoch)  # the rows ours serves in this epoch, batch by batch
        for pos in bound_loader.batch_positions():
            index = torch.from_numpy(train[pos])
            out = [torch.index_select(t, 0, index, out=b[: len(pos)]) for t, b in zip((m1, m2, y), buffers)]
            yield tuple(o.to(device, non_blocking=True) if device.type == "cuda" else o for o in out)

    paths = [("ours: TensorSource + BatchLoader (host memory)", ours(TensorSource(m1, m2, y)))]
    if device.type == "cuda":
        paths.append(("ours: TensorSource on the GPU (--data_on_device)", ours(TensorSource(m1, m2, y).to(device))))
    paths.append((BOUND, copy_bound))
    paths.append(("reference: per-sample Dataset + DataLoader collation", reference))

    # Interleave the paths epoch by epoch and take medians, so drift on a shared machine hits all of them alike.
    for _, batches in paths:
        time_epochs(batches, [0], device)  # warm-up: page faults, allocator, CUDA context
    times = {name: [] for name, _ in paths}
    for epoch in range(1, args.epochs + 1):
        for name, batches in paths:
            times[name] += time_epochs(batches, [epoch], device)
    rows = [(name, float(np.median(times[name])), n_train / float(np.median(times[name]))) for name, _ in paths]

    cpu = platform.processor() or platform.machine()
    print(f"{args.shape}-shaped synthetic data {list(shape_m1)} + {list(shape_m2)}: {args.samples} samples, "
          f"train split {n_train}, batch {args.batch_size}, "
          f"median of {args.epochs} interleaved epochs after 1 warm-up; device {device}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads ({cpu})\n")
    print("| path | s / epoch (median) | samples / s |")
    print("|---|---:|---:|")
    for name, per_epoch, rate in rows:
        print(f"| {name} | {per_epoch:.3f} | {rate:,.0f} |")
    reference_rate = rows[-1][2]
    bound_rate = next(rate for name, _, rate in rows if name == BOUND)
    print()
    for name, _, rate in rows[:-1]:
        if name != BOUND:
            print(f"ratio ({name} / reference): {rate / reference_rate:.2f}x")
    print(f"copy bound / reference: {bound_rate / reference_rate:.2f}x (no batching scheme on this machine passes it)")
    print(f"ours/bound (host memory): {rows[0][2] / bound_rate:.2f}")


if __name__ == "__main__":
    main()
