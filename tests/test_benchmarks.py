"""The benchmark scripts still run (tiny sizes; their figures are recorded in docs/benchmarks.md, not asserted)."""
from __future__ import annotations

import argparse
import importlib.util
import math
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_data_prints_the_ratio_and_the_copy_bound(capsys):
    bench = _load("bench_data")
    bench.main(["--samples", "600", "--epochs", "1", "--batch_size", "64"])
    out = capsys.readouterr().out
    assert "| ours: TensorSource + BatchLoader (host memory) |" in out and f"| {bench.BOUND} |" in out
    assert "ratio (ours: TensorSource + BatchLoader (host memory) / reference):" in out
    assert re.search(r"^ours/bound \(host memory\): \d+\.\d\d$", out, re.MULTILINE)


@pytest.mark.parametrize("stage", [2, 3])
def test_bench_mst_measures_every_variant(stage, monkeypatch):
    bench = _load("bench_mst")
    monkeypatch.setitem(bench.CONFIGS["Synthetic-MVD"], "batch", 32)
    args = argparse.Namespace(device="cpu", warmup=1, rounds=1, memory=False)
    rates, memory, fill, note = bench.measure_stage("Synthetic-MVD", stage, args)
    assert set(rates) == {*bench.VARIANTS, "bound"} and all(rate > 0 for rate in rates.values())
    assert memory == {} and fill > 0 and not math.isnan(fill)  # the default variant really filled its cache
    assert note == ""  # every teacher was cut, so the bound has no frozen forward left
    line = bench.summary_line("Synthetic-MVD", stage, rates)
    assert re.match(rf"stage {stage} Synthetic-MVD: fast/hooks \d+\.\d\dx, fast/bound \d+\.\d\d \(", line)


def test_bench_mst_bound_step_computes_the_stage_losses(monkeypatch):
    # The bound step must train what the stage trains, from the same losses, only without the frozen forwards.
    bench = _load("bench_mst")
    monkeypatch.setitem(bench.CONFIGS["Synthetic-MVD"], "batch", 32)
    for stage in (2, 3):
        method, batch = bench.build("Synthetic-MVD", "no cache", "cpu")
        step, _ = bench.make_bound_step(method, batch, stage)
        trained = method.masknets if stage == 2 else method.student
        before = [p.detach().clone() for p in trained.parameters()]
        frozen = method.teacher.state_dict()
        step()
        assert any(not torch.equal(a, p) for a, p in zip(before, trained.parameters()))
        assert all(torch.equal(v, method.teacher.state_dict()[k]) for k, v in frozen.items())


def test_gpu_check_without_cuda_says_so_in_one_line_and_exits_2():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    env.pop("GPU_CHECK_DEVICE", None)
    done = subprocess.run(["bash", str(BENCHMARKS / "gpu_check.sh")], capture_output=True, text=True, env=env)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "CUDA is not available" in done.stderr


def test_gpu_check_runs_methods_and_the_amp_check(tmp_path, monkeypatch):
    # The same steps on the CPU (test-only switch), restricted to a few methods on Synthetic-MVD, no benchmarks.
    check = _load("gpu_check")
    monkeypatch.setattr(check, "DEVICE", "cpu")
    report = tmp_path / "report.md"
    code = check.main(["--databases", "Synthetic-MVD", "--methods", "T", "S", "KD", "test-S", "--no-bench",
                       "--report", str(report)])
    text = report.read_text()
    assert code == 0 and "Result: **all passed**" in text
    for row in ("| Synthetic-MVD | S (m2) | ok |", "| Synthetic-MVD | KD | ok |", "| Synthetic-MVD | test-S | ok |"):
        assert row in text
    amp = text.split("## AMP")[1]
    assert re.search(r"\| Synthetic-MVD \| KD \| ok \| ce [\d.]+/[\d.]+, kd ", amp)


def test_bench_sweep_tuning_part_prints_the_harness_per_trial(tmp_path, capsys):
    bench = _load("bench_sweep")
    args = argparse.Namespace(database="UCI-MFeat", methods=["KD"], mode="m1", jobs=2, tune=2, prune=False,
                              run_flags=["--no-record", "--epochs", "1"])
    bench.tuning_part(args, tmp_path)
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in out.splitlines()
            if line.startswith("| KD m1") or line.startswith("| S m1")}
    assert set(rows) == {"KD m1", "S m1"}
    for cells in rows.values():
        trials, training, script, node, span, harness = (float(cell.split()[0]) for cell in cells[:6])
        rounding = 0.005  # training and node seconds are recorded to 0.01 s
        assert trials == 2 and 0 < training <= script + rounding  # each span holds the one before it
        assert script <= node + rounding and node <= span + rounding
        assert math.isclose(harness, span - script, abs_tol=2e-3)
    assert re.search(r"All trials: harness -?\d+\.\d % of the scripts' time", out)
