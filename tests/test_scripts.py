"""``main-T.py``, ``main-S.py``, ``test-T.py`` and ``test-S.py`` on a tiny fixture of every paper dataset, written in
its exact on-disk format (tests/fixtures.py), and on the embedded Synthetic-MVD."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures import FIXTURE_DATABASES
from utils import engine

ROOT = Path(__file__).resolve().parents[1]
METRICS = {"accuracy", "f1_weighted", "average_accuracy", "kappa", "mIoU"}


def train(script_method, database, root, tmp_path, *extra):
    argv = ["--database", database, "--data_root", str(root), "--metadata_dir", str(tmp_path / "metadata"),
            "--out_dir", str(tmp_path / "runs"), "--batch_size", "2", "--epochs", "1", "--max_steps", "2",
            "--no-record", "--device", "cpu", *extra]
    return engine.main(script_method, argv)


def same(a, b) -> bool:
    """Equality of metric dicts where NaN (a never-predicted class's precision) equals NaN."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def latest_run(tmp_path, method, database) -> Path:
    return max((tmp_path / "runs" / method / database).iterdir(), key=lambda path: path.stat().st_mtime_ns)


@pytest.mark.parametrize("database", FIXTURE_DATABASES)
def test_teacher_and_unimodal_scripts_on_fixture(database, fixture_root, tmp_path):
    root = fixture_root(database)
    teacher = train("T", database, root, tmp_path)
    assert METRICS <= set(teacher["metrics"]["test"])
    teacher_run = latest_run(tmp_path, "T", database)
    assert (tmp_path / "metadata" / f"{database}_indices.csv").is_file(), "a missing split file is generated"

    tested = train("test-T", database, root, tmp_path, "--ckpt_name", str(teacher_run / "best.pth"))
    assert same(tested["metrics"]["test"], teacher["metrics"]["test"]), "test-T reproduces the run's test metrics"

    for mode in ("m1", "m2"):
        student = train("S", database, root, tmp_path, "--mode", mode)
        student_run = latest_run(tmp_path, "S", database)
        tested = train("test-S", database, root, tmp_path, "--mode", mode, "--ckpt_name", str(student_run / "best.pth"))
        assert same(tested["metrics"]["test"], student["metrics"]["test"])
        assert tested["models"]["student"] == student["models"]["student"]

    if database == "NYU-Depth-V2":  # the ignored label: loss over labelled pixels only, metrics without void
        assert 0 <= teacher["metrics"]["test"]["mIoU"] <= 1


def test_reference_style_bare_state_dict_is_accepted(fixture_root, tmp_path):
    import torch

    root = fixture_root("CMMD-V2")
    train("S", "CMMD-V2", root, tmp_path, "--mode", "m2")
    best = torch.load(latest_run(tmp_path, "S", "CMMD-V2") / "best.pth", weights_only=True)
    bare = tmp_path / "CMMD-V2_MLP-Tb_seed0_m2_ep1-1.pth"
    torch.save(best["model"], bare)  # what the reference's main-S.py writes: the state dict alone
    result = train("test-S", "CMMD-V2", root, tmp_path, "--mode", "m2", "--ckpt_name", str(bare))
    assert result["models"] == {"student": "MLP-Tb"}


def test_indices_gen_script_writes_the_reference_file(fixture_root, tmp_path):
    root = fixture_root("AV-MNIST")
    command = [sys.executable, str(ROOT / "indices_gen.py"), "--database", "AV-MNIST", "--data_root", str(root),
               "--metadata_dir", str(tmp_path)]
    first = subprocess.run(command, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    header = (tmp_path / "AV-MNIST_indices.csv").read_text().splitlines()[0]
    assert header == ",".join(f"group_{g}" for g in range(20))
    again = subprocess.run(command, capture_output=True, text=True)
    assert again.returncode == 2 and "--overwrite" in again.stderr


def test_results_json_layout(tmp_path):
    train("S", "Synthetic-MVD", None, tmp_path, "--mvd_samples", "300")
    run = latest_run(tmp_path, "S", "Synthetic-MVD")
    results = json.loads((run / "results.json").read_text())
    assert set(results) == {"method", "database", "mode", "models", "seed", "epochs", "best_epoch", "device",
                            "wall_time_s", "metrics", "extra", "config", "config_digest", "data_digest",
                            "split_sizes", "checkpoints", "budget", "code", "warnings"}
    assert set(results["metrics"]) == {"val", "test"}
    assert all(0 <= results["metrics"]["test"][k] <= 1 for k in METRICS)
