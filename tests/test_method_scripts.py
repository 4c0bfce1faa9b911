"""Every method's script end to end: each registered method trains briefly on Synthetic-MVD (the list comes from the
registry), script-specific options, the AV-MNIST on-disk fixture, and configurations refused up front."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from conftest import MVD, run_dir_of, run_script
from kd_methods import all_methods, get_method
from utils import engine

QUICK = ["--mvd_samples", "400", "--no-record", "--device", "cpu"]


def check_results(run_dir: Path, method: str) -> dict:
    results = json.loads((run_dir / "results.json").read_text())
    assert results["method"] == method
    test = results["metrics"]["test"]
    assert 0.0 <= test["accuracy"] <= 1.0 and math.isfinite(test["loss"])
    return results


@pytest.fixture(scope="module")
def trained_mvd_teachers(tmp_path_factory):
    """Teachers trained by main-T.py and main-S.py (1 epoch), as a user would."""
    out = tmp_path_factory.mktemp("mvd_teachers")
    multimodal = run_dir_of(run_script("main-T.py", "--epochs", "1", "--out_dir", out, *QUICK, in_process=True))
    crossmodal = run_dir_of(run_script("main-S.py", "--mode", "m2", "--epochs", "1", "--out_dir", out, *QUICK,
                                       in_process=True))
    return {"multimodal": str(multimodal / "best.pth"), "crossmodal": str(crossmodal / "best.pth")}


def checkpoint_kind(method_cls) -> str:
    """The trained network a method's ``--ckpt_name`` names: its teacher, or (test-T / test-S) the model it tests."""
    if method_cls.card.evaluates_checkpoint:
        return "multimodal" if "teacher" in method_cls.card.roles else "crossmodal"
    return "crossmodal" if method_cls.card.teacher_kind == "crossmodal" else "multimodal"


@pytest.mark.parametrize("name", sorted(all_methods()))
def test_every_registered_method_runs_on_synthetic(name, trained_mvd_teachers, tmp_path, capsys):
    method_cls = get_method(name)
    argv = [*MVD, "--epochs", "1", "--max_steps", "2", "--out_dir", str(tmp_path), "--no-record", "--device", "cpu"]
    if method_cls.card.needs_checkpoint:
        argv += ["--ckpt_name", trained_mvd_teachers[checkpoint_kind(method_cls)]]
    engine.main(name, argv)
    results = check_results(run_dir_of(capsys.readouterr().out), name)
    if "student" in method_cls.card.roles and not method_cls.card.evaluates_checkpoint:
        assert results["models"]["student"] == "MVD-MLP-m1"


# (method, --mode, teacher model): covers the 4-d conv3 rule on the student (m2) and on the teacher (UU, m1)
AVMNIST_RUNS = [("KD", "m1", "CNN-I"), ("KD-UU", "m2", "LeNet5"), ("MLLD", "m2", "CNN-I"),
                ("MLLD-UU", "m1", "ThreeLayerCNN-A"), ("DML", "m1", None), ("RKD", "m2", "CNN-I"),
                ("RKD-UU", "m1", "ThreeLayerCNN-A"), ("CRD", "m2", "CNN-I"), ("CRD-UU", "m1", "ThreeLayerCNN-A"),
                # FD-CMKD: feature widths differ (LeNet5 fc1 84, ThreeLayerCNN-A conv3 128 channels): the width adapter
                ("FD-CMKD", "m1", "ThreeLayerCNN-A"), ("FD-CMKD", "m2", "LeNet5")]


@pytest.fixture(scope="module")
def trained_avmnist_teachers(fixture_root, tmp_path_factory):
    """CNN-I by main-T.py, LeNet5 and ThreeLayerCNN-A by main-S.py, trained briefly on the AV-MNIST fixture."""
    from utils import engine

    out = tmp_path_factory.mktemp("avmnist_teachers")
    common = ["--database", "AV-MNIST", "--data_root", str(fixture_root("AV-MNIST")), "--metadata_dir",
              str(out / "metadata"), "--batch_size", "8", "--epochs", "1", "--out_dir", str(out), "--no-record",
              "--device", "cpu"]
    engine.main("T", common)
    engine.main("S", common + ["--mode", "m1"])
    engine.main("S", common + ["--mode", "m2"])
    return {path.parent.name.split("_")[0]: str(path) for path in out.glob("*/AV-MNIST/*/best.pth")}


@pytest.mark.parametrize("method, mode, teacher", AVMNIST_RUNS)
def test_script_smoke_avmnist_fixture(method, mode, teacher, fixture_root, trained_avmnist_teachers, tmp_path):
    argv = ["--database", "AV-MNIST", "--data_root", str(fixture_root("AV-MNIST")), "--mode", mode,
            "--metadata_dir", str(tmp_path / "metadata"), "--batch_size", "8", "--epochs", "1",
            "--out_dir", str(tmp_path), "--no-record", "--device", "cpu"]
    if teacher is not None:
        argv += ["--ckpt_name", trained_avmnist_teachers[teacher]]
    run_dir = run_dir_of(run_script(f"main-{method}.py", *argv, in_process=True))
    check_results(run_dir, method)


@pytest.mark.parametrize("script,teacher,extra", [
    ("main-FitNets.py", "multimodal", ["--hint_epochs", "1"]),
    ("main-FitNets-UU.py", "crossmodal", ["--hint_epochs", "1", "--hint_full_student", "--select_on_ce"]),
    ("main-OFA.py", "multimodal", []),
    ("main-OFA-UU.py", "crossmodal", ["--ofa_log_softmax"]),
    ("main-C2KD.py", "crossmodal", ["--c2kd_poly_lr"]),
    ("main-MGDFR.py", None, ["--co_epochs", "1", "--mgdfr_apply_removal"]),
])
def test_scripts_on_synthetic(script, teacher, extra, trained_mvd_teachers, tmp_path):
    ckpt = ["--ckpt_name", trained_mvd_teachers[teacher]] if teacher else []
    run = run_dir_of(run_script(script, "--epochs", "2", "--max_steps", "2", "--out_dir", tmp_path, *QUICK, *ckpt,
                                *extra))
    results = json.loads((run / "results.json").read_text())
    assert 0.0 <= results["metrics"]["test"]["accuracy"] <= 1.0
    assert results["models"]["student"] == "MVD-MLP-m1"
    if script == "main-MGDFR.py":
        assert (run / "salience.npy").is_file() and len(results["extra"]["removed_channels"]) == 24
        assert np.allclose(np.load(run / "salience.npy"), results["extra"]["salience"], atol=1e-6)
    if script == "main-FitNets-UU.py":
        assert results["extra"]["hint_trained_parameters"] == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]


@pytest.mark.parametrize("method,argv,message", [
    ("C2KD", ["--Tmodel", "MVD-MLP-I", "--ckpt_name", "x.pth"], "multimodal"),
    ("MGDFR", ["--Tmodel", "MVD-MLP-I"], "multimodal"),
    ("FitNets-UU", ["--Tmodel", "MVD-LR-m2", "--ckpt_name", "x.pth"], "MVD-MLP-m2 -> MVD-MLP-m1"),
    ("OFA", ["--database", "NYU-Depth-V2", "--ckpt_name", "x.pth"], "does not support NYU-Depth-V2"),
    ("C2KD", ["--Smodel", "MVD-LR-m1", "--ckpt_name", "x.pth"], "proxy-layer"),
])
def test_unsupported_configurations_fail_up_front(method, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        engine.main(method, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_every_method_on_the_avmnist_fixture(fixture_root, tmp_path):
    base = ["--database", "AV-MNIST", "--data_root", str(fixture_root("AV-MNIST")), "--metadata_dir",
            str(tmp_path / "metadata"), "--batch_size", "8", "--epochs", "1", "--no-record", "--device", "cpu",
            "--out_dir", str(tmp_path / "runs")]

    def best(script_method, tag):
        (run,) = (tmp_path / "runs" / script_method / "AV-MNIST").glob(f"{tag}_seed0_*")
        return str(run / "best.pth")

    engine.main("T", base)
    engine.main("S", [*base, "--mode", "m2"])
    engine.main("S", [*base, "--mode", "m1"])
    cnn_i, audio, image = best("T", "CNN-I_m1"), best("S", "ThreeLayerCNN-A_m2"), best("S", "LeNet5_m1")
    hint = ["--hint_epochs", "1"]
    results = {
        "FitNets": engine.main("FitNets", [*base, *hint, "--ckpt_name", cnn_i]),
        "FitNets-UU": engine.main("FitNets-UU", [*base, *hint, "--ckpt_name", audio]),  # ThreeLayerCNN-A -> LeNet5
        "FitNets-UU-m2": engine.main("FitNets-UU", [*base, *hint, "--mode", "m2", "--ckpt_name", image]),
        "FitNets-UU-full": engine.main("FitNets-UU", [*base, *hint, "--mode", "m2", "--ckpt_name", image,
                                                      "--hint_full_student"]),
        "OFA": engine.main("OFA", [*base, "--ckpt_name", cnn_i]),
        "OFA-UU": engine.main("OFA-UU", [*base, "--mode", "m2", "--ckpt_name", image]),
        "C2KD": engine.main("C2KD", [*base, "--ckpt_name", audio]),
        # --mode m2: the ranked teacher layer is LeNet5's fc1 (84 channels), cheap on a CPU
        "MGDFR": engine.main("MGDFR", [*base, "--mode", "m2", "--co_epochs", "1", "--repeat_permute", "2"]),
    }
    for name, result in results.items():
        assert 0.0 <= result["metrics"]["test"]["accuracy"] <= 1.0, name
    # LeNet5 teacher -> ThreeLayerCNN-A: the reference's substring rule trains conv2 only (no parameter is named
    # after conv3_maxpool_flatten); the paper's rule trains every conv before the flattened features
    assert results["FitNets-UU-m2"]["extra"]["hint_trained_parameters"] == ["conv2.weight", "conv2.bias"]
    assert results["FitNets-UU-full"]["extra"]["hint_trained_parameters"] == [
        "conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "conv3.weight", "conv3.bias"]
    assert results["FitNets"]["extra"]["hint_trained_parameters"] == ["conv3.weight", "conv3.bias", "fc1.weight",
                                                                      "fc1.bias"]
    assert results["MGDFR"]["extra"]["teacher_layer"] == "fc1" and len(results["MGDFR"]["extra"]["salience"]) == 84
    assert results["OFA-UU"]["extra"]["stages"] == ["conv1", "conv2", "conv3"]
