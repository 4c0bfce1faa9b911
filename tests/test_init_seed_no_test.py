"""The run options of a tuning search (docs/tuning.md): ``--init_seed`` separates the initialisation and data order from
the split, ``--no_test`` never reads the test split, ``--tuning_record`` lands in results.json."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from conftest import run_dir_of
from datasets.base import DatasetSpec, TensorSource
from datasets.splits import resolve_split
from kd_methods import get_method
from utils import cli, engine, provenance
from utils.core.checkpoints import load_checkpoint

QUICK = ["--mvd_samples", "400", "--max_steps", "3", "--epochs", "2", "--device", "cpu", "--threads", "1",
         "--no-record", "--seed", "3"]


def _run(tmp_path, capsys, *extra):
    engine.main("S", [*QUICK, "--out_dir", str(tmp_path), *extra])
    return run_dir_of(capsys.readouterr().out)


def _trained(run_dir):
    """What a run learnt and chose: the selected model's tensors, its per-epoch rows (times aside), its results."""
    model = load_checkpoint(run_dir / "best.pth")["model"]
    rows = [{k: v for k, v in json.loads(line).items() if k != "time_s"}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return model, rows, json.loads((run_dir / "results.json").read_text())


def _same_model(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_init_seed_changes_initialisation_and_order_not_the_split_and_defaults_to_the_seed(tmp_path, capsys):
    plain = _trained(_run(tmp_path / "plain", capsys))
    same = _trained(_run(tmp_path / "same", capsys, "--init_seed", "3"))
    other = _trained(_run(tmp_path / "other", capsys, "--init_seed", "11"))
    # unset is --init_seed = --seed, bit for bit (the run of before the option existed)
    assert _same_model(plain[0], same[0]) and plain[1] == same[1]
    assert plain[2]["metrics"] == same[2]["metrics"] and plain[2]["config_digest"] == same[2]["config_digest"]
    # another initialisation seed: other weights, the same split
    assert not _same_model(plain[0], other[0])
    assert other[2]["split_sizes"] == plain[2]["split_sizes"] and other[2]["seed"] == plain[2]["seed"] == 3
    assert other[2]["config"]["arguments"]["init_seed"] == 11 and other[2]["config_digest"] != plain[2]["config_digest"]
    assert "init_seed" not in plain[2]["config"]["arguments"]


def test_the_split_follows_seed_alone():
    """The split digest of the run record depends on --seed, not on --init_seed."""
    def split_of(*extra):
        description = cli.describe(get_method("S"), [*QUICK, *extra])
        n = description.args.mvd_samples
        train, val, test = resolve_split("Synthetic-MVD", n, description.args.seed, from_file=False)
        return provenance.run_record(description, {"train": train, "val": val, "test": test})["split_sha256"]

    assert split_of() == split_of("--init_seed", "11") != split_of("--seed", "4")


def _poisoned_spec(test_rows: dict):
    """Synthetic-MVD whose test samples hold NaN features and an impossible label, served by a source that fails
    the run if a test sample is ever read a batch at a time."""
    def configured(spec, args):
        real = spec.configure(args) if spec.configure is not None else spec
        if real.name != "Synthetic-MVD":
            return real

        def load(load_args):
            source = real.load(load_args)
            test = resolve_split(real.name, len(source), load_args.seed, from_file=False)[2]
            test_rows["test"] = set(test.tolist())
            m1, m2, y = source.m1.clone(), source.m2.clone(), source.y.clone()
            m1[test], m2[test], y[test] = float("nan"), float("nan"), 99
            return GuardedSource(m1, m2, y, test_rows["test"])

        return dataclasses.replace(real, load=load)

    return configured


class GuardedSource(TensorSource):
    def __init__(self, m1, m2, y, test: set):
        super().__init__(m1, m2, y)
        self.test = test

    def get_batch(self, indices):
        touched = self.test.intersection(np.asarray(indices).tolist())
        assert not touched, f"test samples read: {sorted(touched)[:5]}"
        return super().get_batch(indices)


def test_no_test_never_reads_the_test_split(tmp_path, capsys, monkeypatch):
    clean = _trained(_run(tmp_path / "clean", capsys, "--no_test"))
    test_rows: dict = {}
    monkeypatch.setattr(DatasetSpec, "configured", _poisoned_spec(test_rows))
    poisoned = _trained(_run(tmp_path / "poisoned", capsys, "--no_test"))
    assert test_rows["test"]  # the poisoned source was the one read
    # NaN features and an impossible label in every test sample change nothing the run learns, selects or records
    assert _same_model(clean[0], poisoned[0]) and clean[1] == poisoned[1]
    assert poisoned[2]["metrics"]["test"] is None and clean[2]["metrics"] == poisoned[2]["metrics"]
    assert poisoned[2]["best_epoch"] == clean[2]["best_epoch"]
    # the same data without --no_test reads them, and is refused on the impossible label
    with pytest.raises(SystemExit) as stop:
        engine.main("S", [*QUICK, "--out_dir", str(tmp_path / "full")])
    assert stop.value.code == 2
    assert "label 99" in capsys.readouterr().err


def test_no_test_excludes_test_phase(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        engine.main("S", [*QUICK, "--out_dir", str(tmp_path), "--no_test", "--test_phase"])
    assert stop.value.code == 2 and "--no_test" in capsys.readouterr().err


def test_tuning_record_is_copied_into_results(tmp_path, capsys):
    record = {"method": "S", "trials": 3, "params": {"lr": 0.002}, "cell": "0123456789abcdef"}
    path = tmp_path / "tuning.json"
    path.write_text(json.dumps(record))
    results = json.loads((_run(tmp_path, capsys, "--tuning_record", str(path)) / "results.json").read_text())
    assert results["tuning"] == record and results["metrics"]["test"] is not None
    description = cli.describe(get_method("S"), [*QUICK, "--tuning_record", str(path)])
    assert "tuning_record" not in description.options  # a record, not part of the configuration
    path.write_text("[1, 2]")
    with pytest.raises(SystemExit) as stop:
        engine.main("S", [*QUICK, "--out_dir", str(tmp_path), "--tuning_record", str(path)])
    assert stop.value.code == 2 and "not an object" in capsys.readouterr().err
