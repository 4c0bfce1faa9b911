"""The shared loop and run directory: metrics parity, files of a run, exact resumption after SIGKILL, the NaN
stop, and one-line errors with exit code 2 for bad input."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import cohen_kappa_score, confusion_matrix, f1_score

from conftest import method_registration, run_dir_of, run_script
from kd_methods.base import Stage
from kd_methods.supervised import UnimodalModel
from utils import engine
from utils.core.metrics import ConfusionMatrix, metrics_from_confusion

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--mvd_samples", "400", "--no-record"]


# -- metrics ------------------------------------------------------------------------------------------------

def reference_metrics(gt, pred, num_classes, ignore):
    """The reference's computation with scikit-learn on flat label lists."""
    keep = gt != ignore if ignore is not None else np.full(gt.shape, True)
    gt, pred = gt[keep], pred[keep]
    labels = [c for c in range(num_classes) if c != ignore]
    matrix = confusion_matrix(gt, pred, labels=labels)
    diag = np.diag(matrix)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = diag / matrix.sum(1)
        iou = diag / (matrix.sum(1) + matrix.sum(0) - diag)
    return {
        "accuracy": diag.sum() / matrix.sum(),
        "f1_weighted": f1_score(gt, pred, labels=labels, average="weighted", zero_division=0),
        "average_accuracy": np.mean(recall[matrix.sum(1) > 0]),
        "kappa": cohen_kappa_score(gt, pred, labels=labels),
        "mIoU": np.nanmean(iou),
    }


@pytest.mark.parametrize("num_classes,ignore,shape", [(10, None, (500,)), (8, None, (64,)), (41, 0, (3, 20, 30)),
                                                      (5, 0, (200,))])
def test_metrics_match_sklearn_on_random_predictions(num_classes, ignore, shape):
    rng = np.random.RandomState(num_classes)
    gt = rng.randint(0, num_classes, size=shape)
    logits = rng.randn(shape[0], num_classes, *shape[1:])
    if ignore is not None:  # make sure the ignored label is also *predicted* somewhere
        logits[: shape[0] // 3, ignore] += 100
    pred = logits.argmax(1)
    matrix = ConfusionMatrix(num_classes, ignore)
    half = shape[0] // 2  # two batches accumulate like one
    matrix.update(torch.tensor(logits[:half]), torch.tensor(gt[:half]))
    matrix.update(torch.tensor(logits[half:]), torch.tensor(gt[half:]))
    ours = matrix.compute()
    expected = reference_metrics(gt.reshape(-1), pred.reshape(-1), num_classes, ignore)
    for key, value in expected.items():
        assert ours[key] == pytest.approx(value, abs=6e-5), key
    if ignore is not None:
        assert (pred == ignore).any(), "the case must contain predictions of the ignored label"


def test_metrics_round_half_up_to_four_decimals():
    matrix = np.array([[3, 0], [1, 4]])  # accuracy 7/8 = 0.875
    assert metrics_from_confusion(matrix)["accuracy"] == 0.875
    matrix = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0]])
    assert np.isnan(metrics_from_confusion(matrix)["precision_per_class"][2])


# -- a run and its files ------------------------------------------------------------------------------------

def test_run_directory_files_and_results(tmp_path):
    result = run_script("main-S.py", "--epochs", "3", "--out_dir", tmp_path, "--mvd_samples", "400", cwd=tmp_path)
    run = run_dir_of(result)
    assert run.parent == tmp_path / "S" / "Synthetic-MVD"
    assert run.name.startswith("MVD-MLP-m1_m1_seed0_")
    for name in ("args.json", "log.txt", "metrics.jsonl", "checkpoint.pth", "best.pth", "results.json"):
        assert (run / name).is_file(), name
    assert list(run.glob("events.out.tfevents.*")), "TensorBoard events"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2] and all("val/ce" in r for r in rows)
    results = json.loads((run / "results.json").read_text())
    assert results["method"] == "S" and results["models"] == {"student": "MVD-MLP-m1"}
    assert set(results["metrics"]["test"]) >= {"accuracy", "f1_weighted", "average_accuracy", "kappa", "mIoU", "loss"}
    best_val = min(r["val/ce"] for r in rows)
    assert rows[results["best_epoch"]]["val/ce"] == best_val
    checkpoint = torch.load(run / "checkpoint.pth", weights_only=True)  # plain data only
    best = torch.load(run / "best.pth", weights_only=True)
    assert checkpoint["args"]["Smodel"] == "MVD-MLP-m1" and best["model_name"] == "MVD-MLP-m1"
    assert best["epoch"] == results["best_epoch"]


def test_killed_run_resumes_to_identical_metrics(tmp_path):
    """SIGKILL a CPU run mid-way, resume it, and get exactly the uninterrupted run's numbers."""
    argv = ["main-T.py", "--epochs", "6", "--batch_size", "8", "--mvd_samples", "3000", "--no-record",
            "--device", "cpu"]
    reference = run_dir_of(run_script(*argv, "--out_dir", tmp_path / "full", cwd=tmp_path))

    out = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, str(ROOT / argv[0]), *argv[1:], "--out_dir", str(out)], cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    run = None
    while time.time() < deadline and process.poll() is None:
        runs = list((out / "T" / "Synthetic-MVD").glob("*")) if out.exists() else []
        metrics = runs[0] / "metrics.jsonl" if runs else None
        if metrics is not None and metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
            run = runs[0]
            os.kill(process.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    process.wait()
    assert run is not None and process.returncode == -signal.SIGKILL, "the run must be killed mid-way"
    assert not (run / "results.json").exists()

    resumed = run_dir_of(run_script("main-T.py", "--resume", run, "--device", "cpu", cwd=tmp_path))
    assert resumed == run
    expected = json.loads((reference / "results.json").read_text())
    got = json.loads((run / "results.json").read_text())
    assert json.dumps(got["metrics"]) == json.dumps(expected["metrics"]) and got["best_epoch"] == expected["best_epoch"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(6))
    full_rows = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    assert [r["val/ce"] for r in rows] == [r["val/ce"] for r in full_rows]


class _NaNAtEpochTwo(UnimodalModel):
    """Test-only method whose loss turns NaN in epoch 2."""

    card = replace(UnimodalModel.card, name="test-nan-at-epoch-2")

    def stages(self):
        (stage,) = super().stages()
        clean_step = stage.train_step

        def step(batch, epoch):
            losses = clean_step(batch, epoch)
            return {k: v * float("nan") if epoch == 2 else v for k, v in losses.items()}

        return [Stage(stage.name, stage.epochs, stage.make_optimizer, step, stage.train_modules, stage.val_step,
                      stage.select_key, stage.selected)]


def test_nan_loss_stops_with_clear_line_and_keeps_last_good_checkpoint(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        engine.main("test-nan-at-epoch-2", ["--epochs", "5", "--out_dir", str(tmp_path), *QUICK])
    assert exit_info.value.code == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "became nan" in err[0] and "epoch 2" in err[0]
    (run,) = (tmp_path / "test-nan-at-epoch-2" / "Synthetic-MVD").glob("*")
    checkpoint = torch.load(run / "checkpoint.pth", weights_only=True)
    assert checkpoint["epoch"] == 2  # epochs 0 and 1 completed, the NaN epoch never saved
    assert all(torch.isfinite(v).all() for v in checkpoint["method"].values() if v.is_floating_point())
    assert not (run / "results.json").exists()


# -- bad input ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv,needle", [
    (["main-T.py", "--database", "MM-IMDb"], "invalid choice: 'MM-IMDb'"),
    (["main-S.py", "--Smodel", "ResNet18"], "invalid choice: 'ResNet18'"),
    (["main-S.py", "--mode", "ORG"], "argument --mode"),
    (["main-S.py", "--Smodel", "LeNet5"], "built for AV-MNIST, not Synthetic-MVD"),
    (["main-S.py", "--mode", "m2", "--Smodel", "MVD-MLP-m1"], "takes m1 but this run feeds it m2"),
    (["main-S.py", "--seed", "25"], "valid seeds are 0..19"),
    (["main-T.py", "--database", "AV-MNIST", "--data_root", "/nonexistent-root"],
     "/nonexistent-root/avmnist/image/train_data.npy"),
    (["test-S.py"], "--ckpt_name"),
    (["test-S.py", "--ckpt_name", "/no/such/best.pth"], "checkpoint not found: /no/such/best.pth"),
])
def test_bad_input_gives_one_line_and_exit_code_2(tmp_path, argv, needle):
    result = run_script(*argv, "--out_dir", tmp_path, cwd=tmp_path, check=False)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    teacher = run_dir_of(run_script("main-T.py", "--epochs", "1", "--out_dir", tmp_path, *QUICK, cwd=tmp_path))
    result = run_script("test-S.py", "--ckpt_name", teacher / "best.pth", "--out_dir", tmp_path, *QUICK, cwd=tmp_path,
                        check=False)
    assert result.returncode == 2
    assert "does not fit model 'MVD-MLP-m1'" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_data_file_of_the_wrong_shape_is_one_line_and_exit_code_2(tmp_path):
    import numpy as np

    from fixtures import make_fixture

    root = make_fixture("AV-MNIST", tmp_path / "data")
    bad = root / "avmnist" / "audio" / "train_data.npy"
    np.save(bad, np.zeros((3, 112, 100), dtype=np.float32))
    result = run_script("main-T.py", "--database", "AV-MNIST", "--data_root", root, "--out_dir", tmp_path,
                        "--metadata_dir", tmp_path / "metadata", cwd=tmp_path, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert str(bad) in line and "[3, 112, 100]" in line and "docs/data.md, section 'AV-MNIST'" in line, line


# test-only methods, registered for this module's tests only
_test_methods = method_registration(_NaNAtEpochTwo)


# -- what a run prints ----------------------------------------------------------------------------------------------

def test_one_short_line_per_epoch_full_figures_in_metrics_jsonl(tmp_path):
    """Every stage of MST-Distill with --test_phase: one line of at most 120 columns per epoch with the headline
    figures; the many loss terms, routing and expert figures stay in metrics.jsonl."""
    result = run_script("main-MST-Distill.py", *QUICK, "--epochs_s1", "1", "--epochs_s2", "2", "--epochs", "2",
                        "--max_steps", "2", "--test_phase", "--out_dir", tmp_path, "--threads", "1", in_process=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("[")]
    rows = [json.loads(line) for line in (run_dir_of(result) / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == len(rows) == 1 + 2 + 2 + 2  # co-training, masknets, distillation, baseline
    assert all(len(line) <= 120 for line in lines), max(lines, key=len)
    for line, row in zip(lines, rows):
        assert line.startswith(f"[{row['stage']}] epoch {row['epoch']}  train loss {row['train/loss']:.4g}")
        assert f"test loss {row['test/loss']:.4g} accuracy {row['test/accuracy']:.4g}" in line
        assert line.endswith("  *") == bool(row.get("best"))
        assert "routing" not in line and "expert" not in line and "train/" not in line
    distillation = [(line, row) for line, row in zip(lines, rows) if row["stage"] == "distillation"]
    assert all(f"val ce {row['val/ce']:.4g}" in line for line, row in distillation)
    assert all("routing/T0" in row and "expert_ce/T0" in row for _, row in distillation)
    log = (run_dir_of(result) / "log.txt").read_text()
    assert all(line in log for line in lines)


def _in_terminal(argv: list[str], columns: int = 100) -> str:
    """Run ``python ARGV`` with stdout and stderr on a pseudo-terminal of ``columns`` columns; its output."""
    import fcntl
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, stdin=subprocess.DEVNULL, stdout=follower,
                            stderr=follower, close_fds=True)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        chunks.append(chunk)
    proc.wait(timeout=600)
    os.close(leader)
    return b"".join(chunks).decode(errors="replace")


def test_progress_bar_per_stage_on_a_terminal_only(tmp_path):
    argv = ["main-S.py", *QUICK, "--epochs", "3", "--out_dir", str(tmp_path), "--threads", "1"]
    shown = _in_terminal(argv)
    assert "stage 1/1 train:" in shown and "step" in shown
    epoch_lines = [line.strip("\r") for line in shown.split("\n") if "] epoch " in line]
    # each epoch line is written whole above the bar (the bar's redraw is cleared first, in the same chunk)
    assert [line.rsplit("\r", 1)[-1].split("  ")[0] for line in epoch_lines] == [f"[train] epoch {e}" for e in
                                                                                 range(3)]
    redirected = run_script(*argv)
    assert "stage 1/1" not in redirected.stdout + redirected.stderr and "\r" not in redirected.stdout
    assert redirected.stdout.count("[train] epoch ") == 3
