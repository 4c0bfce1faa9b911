"""Checkpoint sizes of MST-Distill per dataset, at the real model sizes (default MaskNet sizes, as a real run).

For each stage: the per-epoch ``checkpoint.pth`` (what the stage trains: its parameters, their two Adam moments, and
every buffer), ``best-snapshot.pth`` (the stage's selected network at its best epoch, written once per best epoch
that a later epoch does not improve on), the stage file written once at the stage's end (the whole method state),
and what one per-epoch checkpoint held before (the whole method state, the optimiser and the best snapshot, after
every epoch). Sizes are counted from the tensors of the method built on each dataset's shapes (random inputs, nothing is
trained), so the large configurations need no training run.

``--measure DB ...`` also runs MST-Distill for one step per stage on the tiny on-disk fixtures of tests/fixtures.py
(real model sizes, 2 samples a batch) and prints the bytes of every checkpoint file actually written beside the
counted figure (they differ by torch.save's few kB of framing).

Usage: ``python benchmarks/bench_checkpoints.py [--databases AV-MNIST RAVDESS ...] [--measure AV-MNIST ...]``.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import torch  # noqa: E402

DATABASES = ("Synthetic-MVD", "AV-MNIST", "RAVDESS", "VGGSound-50k", "CMMD-V2", "NYU-Depth-V2")
MB = 2 ** 20


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def counted(database: str) -> dict:
    """Per stage: (per-epoch checkpoint, best snapshot, previous per-epoch size); stage file."""
    from kd_methods.mst import MSTDistill
    from utils.offline import offline_context

    method = MSTDistill(offline_context(["--database", database, "--device", "cpu"], samples=2))
    full = _bytes(method.state_dict().values())
    buffers = _bytes(b for _, b in method.named_buffers())
    stages = {"co-training": ((method.teacher, method.aux, method.student), None),
              "masknets": ((method.masknets,), method.masknets),
              "distillation": ((method.student, method.gate), method.student)}
    if method.baseline is not None:
        stages["baseline"] = ((method.baseline,), method.baseline)
    rows = {}
    for name, (trained, selected) in stages.items():
        params = _bytes(p for m in trained for p in m.parameters())
        best = _bytes(selected.state_dict().values()) if selected is not None else 0
        rows[name] = (3 * params + buffers, best, full + 2 * params + best)
    params = sum(p.numel() for p in method.parameters())
    del method
    return {"rows": rows, "stage_file": full, "params": params}


def measured(database: str) -> dict[tuple[int, int], int]:
    """Bytes of each checkpoint.pth written by a one-step-per-stage fixture run, by (stage index, epoch)."""
    from fixtures import make_fixture

    from utils import engine
    from utils.rundir import RunDir

    sizes = {}
    original = RunDir.save_checkpoint

    def save(self, state):
        original(self, state)
        sizes[(state["stage"], state["epoch"])] = os.path.getsize(self.path / "checkpoint.pth")

    with tempfile.TemporaryDirectory() as tmp:
        root = make_fixture(database, Path(tmp) / "data") if database != "Synthetic-MVD" else Path(tmp)
        RunDir.save_checkpoint = save
        try:
            engine.main("MST-Distill", ["--database", database, "--data_root", str(root), "--metadata_dir",
                                        str(Path(tmp) / "metadata"), "--batch_size", "2", "--epochs_s1", "1",
                                        "--epochs_s2", "1", "--epochs", "1", "--max_steps", "1", "--device", "cpu",
                                        "--no-record", "--no-compare_baseline", "--out_dir", str(Path(tmp) / "runs")])
        finally:
            RunDir.save_checkpoint = original
        (run,) = (Path(tmp) / "runs" / "MST-Distill" / database).iterdir()
        sizes["stage files"] = sum(p.stat().st_size for p in run.glob("stage*.pth"))
    return sizes


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--databases", nargs="+", default=list(DATABASES), choices=DATABASES)
    parser.add_argument("--measure", nargs="*", default=[], choices=DATABASES,
                        help="also run these on the fixtures and print the written file sizes")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print("| dataset | parameters | stage | checkpoint.pth MB, every epoch | before MB | before / now | "
          "best-snapshot.pth MB, once per best epoch | stage file MB, once |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for database in args.databases:
        figures = counted(database)
        for name, (now, snapshot, before) in figures["rows"].items():
            print(f"| {database} | {figures['params'] / 1e6:.1f}M | {name} | {now / MB:,.1f} | {before / MB:,.1f} | "
                  f"{before / now:.1f}x | {snapshot / MB:,.1f} | {figures['stage_file'] / MB:,.1f} |")
    for database in args.measure:
        sizes = measured(database)
        shown = ", ".join(f"stage {s + 1} epoch {e}: {b / MB:,.1f} MB" for (s, e), b in
                          ((k, v) for k, v in sizes.items() if k != "stage files") if e > 0)
        print(f"measured {database} (fixture run, one step per stage): {shown}; stage files "
              f"{sizes['stage files'] / MB:,.1f} MB in all")


if __name__ == "__main__":
    main()
