"""Benchmark: Algorithm 1 of MFH (Xue et al., ICLR 2023, App. B.4), batched against the reference's loop.

Both rank the 320 channels of ``fc1`` of the RAVDESS ``AudioBranchNet`` (Conv1d MFCC branch, then the 320-wide
classifier layer) against a second ``AudioBranchNet``, on the same random inputs and with the same permutation
seeds, so the saliences must agree (checked to 1e-5 relative). The loop runs one full forward per channel per
repeat; the batched version records the conv branch once and runs only the suffix after ``fc1`` on all the
permuted copies of a group of channels at once.

    python benchmarks/bench_mfh.py                       # 64 samples, 5 repeats, CPU
    python benchmarks/bench_mfh.py --samples 128 --repeats 10 --device cuda
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kd_methods.feature_ranking import channel_salience, channel_salience_loop  # noqa: E402
from models import build_model  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=64, help="samples N (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="permutations per channel M (default: %(default)s)")
    parser.add_argument("--layer", default="fc1", help="layer of AudioBranchNet to rank (default: %(default)s)")
    parser.add_argument("--chunk", type=int, default=None, help="channels per batched forward (default: automatic)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    torch.manual_seed(0)
    model_a = build_model("AudioBranchNet", num_classes=8).to(device).eval()
    model_b = build_model("AudioBranchNet", num_classes=8).to(device).eval()
    inputs_a = torch.randn(args.samples, 15, 156, device=device)
    inputs_b = torch.randn(args.samples, 15, 156, device=device)
    def timed(fn):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return result, time.perf_counter() - start

    # warm-up (allocator, kernels), not timed
    channel_salience(model_a, model_b, inputs_a, inputs_b, args.layer, repeats=1)
    batched, t_batched = timed(lambda: channel_salience(model_a, model_b, inputs_a, inputs_b, args.layer,
                                                        repeats=args.repeats, chunk=args.chunk,
                                                        generator=torch.Generator().manual_seed(1)))
    loop, t_loop = timed(lambda: channel_salience_loop(model_a, model_b, inputs_a, inputs_b, args.layer,
                                                       repeats=args.repeats,
                                                       generator=torch.Generator().manual_seed(1)))
    channels = batched.numel()
    rel = ((batched - loop).abs() / loop.abs().clamp_min(1e-12)).max().item()
    assert rel <= 1e-5, f"batched and loop saliences differ: max relative difference {rel:.3g}"

    print(f"AudioBranchNet.{args.layer}: {channels} channels, N = {args.samples}, M = {args.repeats}, "
          f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print()
    print("| implementation | forwards of model_a | time (s) | channels/s |")
    print("|---|---|---|---|")
    print(f"| channel_salience_loop (reference) | {channels * args.repeats} | {t_loop:.2f} | {channels / t_loop:.1f} |")
    print(f"| channel_salience (batched) | suffix only, chunked | {t_batched:.2f} | {channels / t_batched:.1f} |")
    print()
    print(f"Speed-up: {t_loop / t_batched:.1f}x; max relative difference of the saliences {rel:.2g}")


if __name__ == "__main__":
    main()
