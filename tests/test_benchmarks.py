"""The benchmark scripts still run (tiny sizes; their figures are recorded in docs/benchmarks.md, not asserted)."""
from __future__ import annotations

import argparse
import importlib.util
import math
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_data_prints_the_ratio(capsys):
    _load("bench_data").main(["--samples", "600", "--epochs", "1", "--batch_size", "64"])
    out = capsys.readouterr().out
    assert "| ours: TensorSource + BatchLoader (host memory) |" in out
    assert "ratio (ours: TensorSource + BatchLoader (host memory) / reference):" in out


@pytest.mark.parametrize("stage", [2, 3])
def test_bench_mst_measures_every_variant(stage, monkeypatch):
    bench = _load("bench_mst")
    monkeypatch.setitem(bench.CONFIGS["Synthetic-MVD"], "batch", 32)
    args = argparse.Namespace(device="cpu", warmup=1, rounds=1, memory=False)
    rates, memory, fill = bench.measure_stage("Synthetic-MVD", stage, args)
    assert set(rates) == set(bench.VARIANTS) and all(rate > 0 for rate in rates.values())
    assert memory == {} and fill > 0 and not math.isnan(fill)  # the default variant really filled its cache
