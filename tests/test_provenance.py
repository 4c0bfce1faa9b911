"""Checkpoints carry what they were trained on (method, data options, seed, split digest), and it is checked: test-S/
test-T test on the checkpoint's own split, a teacher trained on other data, another split or as another model of the
same shapes is refused (or, with --allow_teacher_mismatch, used with a warning), a bare state dict loads with a
warning. Synthetic-MVD runs in-process, one epoch of two steps."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import refused
from datasets import get_spec
from datasets.splits import cut, generate_permutations
from utils import engine, provenance

QUICK = ["--mvd_samples", "400", "--no-record", "--device", "cpu", "--epochs", "1", "--max_steps", "2"]


def train(method: str, out: Path, *argv) -> Path:
    engine.main(method, [*QUICK, "--out_dir", str(out), *argv])
    (run,) = sorted((out / method / "Synthetic-MVD").iterdir())
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """main-S.py runs on m1 with --seed 3 and --seed 0, and one on m2 (equal widths: the m1 tensors fit)."""
    out = tmp_path_factory.mktemp("provenance")
    return {"seed3": train("S", out / "seed3", "--seed", "3"), "seed0": train("S", out / "seed0"),
            "m2": train("S", out / "m2", "--mode", "m2")}


def test_every_checkpoint_file_records_what_it_was_trained_on(runs):
    run = runs["seed3"]
    n = 400
    train_idx, val_idx, test_idx = cut(generate_permutations(n, 4)[3])
    expected_digest = provenance.split_digest({"train": train_idx, "val": val_idx, "test": test_idx})
    parser = argparse.ArgumentParser()
    get_spec("Synthetic-MVD").add_arguments(parser)
    mvd_flags = {a.dest for a in parser._actions if a.dest != "help"}
    for name, kind in (("best.pth", "best"), ("checkpoint.pth", "checkpoint"), ("stage1-train.pth", "stage")):
        saved = torch.load(run / name, weights_only=True)
        record = saved["provenance"]
        assert saved["kind"] == kind
        assert record["method"] == "S" and record["database"] == "Synthetic-MVD" and record["mode"] == "m1"
        assert record["models"] == {"Smodel": "MVD-MLP-m1"} and record["seed"] == 3
        assert set(record["dataset_options"]) == mvd_flags  # every flag the dataset adds, nothing listed by hand
        assert record["dataset_options"]["mvd_samples"] == n
        assert record["split_sha256"] == expected_digest
        assert record["split_sizes"] == {"train": len(train_idx), "val": len(val_idx), "test": len(test_idx)}
    best = torch.load(run / "best.pth", weights_only=True)["provenance"]
    assert best["model_name"] == "MVD-MLP-m1" and best["inputs"] == ["m1"]


def test_the_split_digest_tells_splits_apart():
    a = cut(generate_permutations(50, 2)[0])
    b = cut(generate_permutations(50, 2)[1])
    as_dict = lambda parts: dict(zip(("train", "val", "test"), parts))  # noqa: E731
    assert provenance.split_digest(as_dict(a)) == provenance.split_digest(as_dict([p.copy() for p in a]))
    assert provenance.split_digest(as_dict(a)) != provenance.split_digest(as_dict(b))
    moved = (a[0][:-1], np.concatenate([a[0][-1:], a[1]]), a[2])  # same order, one sample moved train -> val
    assert provenance.split_digest(as_dict(a)) != provenance.split_digest(as_dict(moved))


def test_test_s_uses_the_checkpoints_seed_split_and_data_options(runs, tmp_path):
    """Without --seed/--mvd_samples, test-S.py tests on the split the model was trained beside: the training run's
    own test figures, to the last digit."""
    run = runs["seed3"]
    results = engine.main("test-S", ["--ckpt_name", str(run / "best.pth"), "--out_dir", str(tmp_path), "--no-record",
                                     "--device", "cpu"])
    trained = json.loads((run / "results.json").read_text())
    (tested,) = (tmp_path / "test-S" / "Synthetic-MVD").iterdir()
    tested = json.loads((tested / "results.json").read_text())
    assert results["seed"] == 3
    assert json.dumps(tested["metrics"]["test"]) == json.dumps(trained["metrics"]["test"])


def test_test_s_refuses_a_seed_mode_or_data_option_that_contradicts_the_checkpoint(runs, tmp_path, capsys):
    best = str(runs["seed3"] / "best.pth")
    base = ["--ckpt_name", best, "--out_dir", str(tmp_path), "--no-record", "--device", "cpu"]
    line = refused(capsys, "test-S", base + ["--seed", "0"])
    assert "--seed 0 (checkpoint: 3)" in line and best in line and "--allow_teacher_mismatch" in line
    line = refused(capsys, "test-S", base + ["--mode", "m2"])  # an m1 model, whose shapes fit the m2 model
    assert "--mode m2 (checkpoint: m1)" in line
    line = refused(capsys, "test-S", base + ["--mvd_samples", "300", "--seed", "3"])
    assert "--mvd_samples 300 (checkpoint: 400)" in line and "--seed" not in line.split("contradict")[0]


def test_test_s_with_an_override_warns_in_the_log(runs, tmp_path):
    results = engine.main("test-S", ["--ckpt_name", str(runs["seed3"] / "best.pth"), "--seed", "0",
                                     "--allow_teacher_mismatch", "--out_dir", str(tmp_path), "--no-record",
                                     "--device", "cpu"])
    assert results["seed"] == 0
    (run,) = (tmp_path / "test-S" / "Synthetic-MVD").iterdir()
    log = (run / "log.txt").read_text()
    assert "warning:" in log and "--seed 3 split" in log and "--seed 0 split" in log


def test_a_model_of_another_name_whose_shapes_fit_is_refused(runs, tmp_path, capsys):
    """An m1 model tested as the m2 model (Synthetic-MVD's modalities have equal widths, so the tensors fit)."""
    best = str(runs["seed0"] / "best.pth")
    line = refused(capsys, "test-S", ["--ckpt_name", best, "--mode", "m2", "--Smodel", "MVD-MLP-m2",
                                      "--out_dir", str(tmp_path), *QUICK[:3]])
    assert "--Smodel MVD-MLP-m2 (checkpoint: MVD-MLP-m1)" in line and "--mode m2 (checkpoint: m1)" in line


def test_a_kd_teacher_of_another_model_split_or_data_option_is_refused(runs, tmp_path, capsys):
    base = ["--out_dir", str(tmp_path), *QUICK]
    line = refused(capsys, "KD-UU", ["--ckpt_name", str(runs["seed0"] / "best.pth"), *base])
    assert "model MVD-MLP-m1" in line and "model MVD-MLP-m2" in line, line
    teacher = str(runs["m2"] / "best.pth")
    line = refused(capsys, "KD-UU", ["--ckpt_name", teacher, "--seed", "3", *base])
    assert "--seed 0 split" in line and "--seed 3 split" in line, line
    line = refused(capsys, "KD-UU", ["--ckpt_name", teacher, "--mvd_decisive_a", "5", *base])
    assert "--mvd_decisive_a" in line and "split" not in line, line  # same samples and split, other data
    engine.main("KD-UU", ["--ckpt_name", teacher, *base])  # the right teacher loads silently
    (run,) = (tmp_path / "KD-UU" / "Synthetic-MVD").iterdir()
    assert "warning" not in (run / "log.txt").read_text()


def test_allow_teacher_mismatch_uses_it_with_a_warning_in_the_log(runs, tmp_path):
    engine.main("KD-UU", ["--ckpt_name", str(runs["m2"] / "best.pth"), "--seed", "3", "--allow_teacher_mismatch",
                          "--out_dir", str(tmp_path), *QUICK])
    (run,) = (tmp_path / "KD-UU" / "Synthetic-MVD").iterdir()
    log = (run / "log.txt").read_text()
    assert "warning: teacher checkpoint" in log and "used anyway (--allow_teacher_mismatch)" in log


def test_a_bare_state_dict_loads_with_a_warning(runs, tmp_path):
    bare = tmp_path / "reference_teacher.pth"
    torch.save(torch.load(runs["m2"] / "best.pth", weights_only=True)["model"], bare)
    engine.main("KD-UU", ["--ckpt_name", str(bare), "--out_dir", str(tmp_path), *QUICK])
    (run,) = (tmp_path / "KD-UU" / "Synthetic-MVD").iterdir()
    assert "is a bare state dict without a record" in (run / "log.txt").read_text()


def test_a_run_checkpoint_is_not_a_model(runs, tmp_path, capsys):
    line = refused(capsys, "KD-UU", ["--ckpt_name", str(runs["m2"] / "stage1-train.pth"), "--out_dir", str(tmp_path),
                                     *QUICK])
    assert "is a stage file of a whole run, not a model" in line


def test_a_teacher_of_another_view_choice_names_both_views(tmp_path, capsys):
    """UCI-MFeat's --mfeat_m1/--mfeat_m2 choose the views; the record holds them without being told about them."""
    common = ["--database", "UCI-MFeat", "--no-record", "--device", "cpu", "--epochs", "1", "--max_steps", "2",
              "--out_dir", str(tmp_path)]
    engine.main("S", [*common, "--mode", "m2", "--mfeat_m2", "kar"])
    (best,) = (tmp_path / "S" / "UCI-MFeat").glob("*/best.pth")
    options = torch.load(best, weights_only=True)["provenance"]["dataset_options"]
    assert options["mfeat_m1"] == "fou" and options["mfeat_m2"] == "kar"
    line = refused(capsys, "KD-UU", [*common, "--ckpt_name", str(best)])
    assert "trained on --mfeat_m2 kar, this run uses --mfeat_m2 pix" in line, line
    results = engine.main("test-S", [*common, "--ckpt_name", str(best)])  # tested with the views it was trained on
    assert results["mode"] == "m2" and results["models"] == {"student": "MLP-m2"}
