"""Inputs that are refused before training: bad labels, NaN values, empty or broken splits, batches a BatchNorm
network cannot take, numeric flags without meaning; and runs that stop: NaN validation loss, full disk, Ctrl-C,
a closed output pipe. Each ends with one line (exit 2 for bad input) and leaves no run directory when it fails
before the first epoch."""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from fixtures import make_fixture
from conftest import method_registration
from kd_methods.base import Stage
from kd_methods.supervised import UnimodalModel
from utils import cli, engine
from utils.core import runtime
from utils.core.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--mvd_samples", "200", "--no-record", "--device", "cpu", "--threads", "1"]


def fail_line(capsys, name, argv, code=2) -> str:
    """Run ``name`` in-process; it must exit with ``code`` and print exactly one ``error:`` line, no traceback."""
    with pytest.raises(SystemExit) as exit_info:
        engine.main(name, [str(a) for a in argv])
    assert exit_info.value.code == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def run_ok(name, argv) -> dict:
    return engine.main(name, [str(a) for a in argv])


def runs_under(out_dir: Path) -> list[Path]:
    """Run directories under ``out_dir``; a run removed after failing leaves no empty method folder either."""
    runs = [p for p in Path(out_dir).glob("*/*/*") if p.is_dir()]
    assert all(any(folder.iterdir()) for folder in Path(out_dir).glob("*/*") if folder.is_dir())
    return runs


def avmnist(tmp_path, n=20) -> tuple[Path, list[str]]:
    root = make_fixture("AV-MNIST", tmp_path / "data", n)
    argv = ["--database", "AV-MNIST", "--data_root", root, "--metadata_dir", tmp_path / "meta",
            "--out_dir", tmp_path / "runs", "--epochs", "1", "--max_steps", "2", "--no-record", "--device", "cpu",
            "--threads", "1"]
    return root, argv


def cmmd(tmp_path, n=20) -> tuple[Path, list[str]]:
    root = make_fixture("CMMD-V2", tmp_path / "data", n)
    argv = ["--database", "CMMD-V2", "--data_root", root, "--metadata_dir", tmp_path / "meta",
            "--out_dir", tmp_path / "runs", "--epochs", "1", "--no-record", "--device", "cpu", "--threads", "1"]
    return root, argv


def rewrite_cmmd(root: Path, edit) -> None:
    path = root / "CMMD-V2" / "CMMD_data.pth"
    image, text, label = (np.array(a) for a in torch.load(path, weights_only=False))
    image, text, label = edit(image, text, label)
    torch.save((image, text, label), path)


def seed0_split(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from datasets.splits import cut, generate_permutations

    return cut(generate_permutations(n, 1)[0])


# -- data checked before training ---------------------------------------------------------------------------

def test_label_outside_the_classes_is_refused_before_training(tmp_path, capsys):
    root, argv = avmnist(tmp_path)
    labels = np.load(root / "avmnist" / "train_labels.npy")
    labels[3] = 10
    np.save(root / "avmnist" / "train_labels.npy", labels)
    line = fail_line(capsys, "S", argv)
    assert "label 10 (sample 3" in line and "outside 0..9" in line, line
    assert not runs_under(tmp_path / "runs")


def test_segmentation_label_outside_the_classes_is_refused(tmp_path, capsys):
    import h5py

    root = make_fixture("NYU-Depth-V2", tmp_path / "data")
    with h5py.File(root / "NYU-Depth-V2" / "NYU-Depth-V2_data.mat", "r+") as handle:
        labels = handle["labels40"][...]
        labels[2, 5, 7] = 41
        handle["labels40"][...] = labels
    line = fail_line(capsys, "S", ["--database", "NYU-Depth-V2", "--data_root", root, "--metadata_dir",
                                   tmp_path / "meta", "--out_dir", tmp_path / "runs", "--device", "cpu"])
    assert "label 41 (sample 2" in line and "outside 0..40" in line, line


def test_float_labels_are_not_truncated(tmp_path, capsys):
    root, argv = avmnist(tmp_path)
    labels = np.load(root / "avmnist" / "test_labels.npy").astype(np.float64)
    labels[1] = 2.5
    np.save(root / "avmnist" / "test_labels.npy", labels)
    line = fail_line(capsys, "S", argv)
    assert "test_labels.npy" in line and "not whole numbers" in line and "2.5" in line, line


def test_integral_float_labels_are_accepted():
    from datasets.checks import integer_labels

    assert integer_labels(np.array([0.0, 3.0, 7.0]), "x").tolist() == [0, 3, 7]


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_feature_in_the_validation_split_is_refused(tmp_path, capsys, value):
    root, argv = cmmd(tmp_path)
    sample = int(seed0_split(20)[1][0])  # a validation sample

    def edit(image, text, label):
        text[sample, 17] = value
        return image, text, label

    rewrite_cmmd(root, edit)
    line = fail_line(capsys, "S", argv)
    assert f"m2 (text) holds NaN or infinite values in 1 sample(s), the first is sample {sample} (val split)" in line
    assert not runs_under(tmp_path / "runs")


def test_nan_pixels_are_named_as_such_not_as_a_constant_slice(tmp_path, capsys):
    root, argv = avmnist(tmp_path)
    images = np.load(root / "avmnist" / "image" / "train_data.npy")
    images[4, 100] = np.nan
    np.save(root / "avmnist" / "image" / "train_data.npy", images)
    line = fail_line(capsys, "S", argv)
    assert "AV-MNIST images: 1 sample(s) hold NaN or infinite values (the first is sample 4)" in line, line
    assert "constant" not in line


def test_a_constant_sample_warns_and_is_refused(tmp_path, capsys):
    root, argv = avmnist(tmp_path)
    audio = np.load(root / "avmnist" / "audio" / "train_data.npy")
    audio[2] = 1.0
    np.save(root / "avmnist" / "audio" / "train_data.npy", audio)
    with pytest.warns(RuntimeWarning, match="constant slice"):
        line = fail_line(capsys, "S", argv + ["--mode", "m2"])
    assert "m2 (audio) holds NaN" in line and "sample 2" in line and "constant" in line, line


def test_empty_split_is_refused(tmp_path, capsys):
    line = fail_line(capsys, "S", ["--mvd_samples", "2", "--out_dir", tmp_path, "--no-record", "--device", "cpu"])
    assert "the val split of Synthetic-MVD is empty: N=2 samples" in line and "at least 3" in line and "train/val/test 1/0/1" in line, line
    assert not runs_under(tmp_path)


def test_empty_dataset_is_refused(tmp_path, capsys):
    root, argv = avmnist(tmp_path)
    for part in ("train", "test"):
        np.save(root / "avmnist" / "image" / f"{part}_data.npy", np.zeros((0, 784), dtype=np.float32))
        np.save(root / "avmnist" / "audio" / f"{part}_data.npy", np.zeros((0, 112, 112), dtype=np.float32))
        np.save(root / "avmnist" / f"{part}_labels.npy", np.zeros(0, dtype=np.int64))
    line = fail_line(capsys, "S", argv)
    assert "AV-MNIST has no samples" in line, line
    assert not (tmp_path / "meta").exists()  # no split file written for it


def test_file_backed_features_are_checked_per_batch(tmp_path, capsys):
    root = make_fixture("VGGSound-50k", tmp_path / "data")
    name = (root / "VGGS50K" / "VGGS50k_metadata.txt").read_text().splitlines()[5].rpartition("&")[0]
    feature = root / "VGGS50K" / "VGGS50K_features_normed" / "audio_features" / f"{name}_aFeature.npy"
    values = np.load(feature)
    values[0, 0] = np.nan
    np.save(feature, values)
    line = fail_line(capsys, "S", ["--database", "VGGSound-50k", "--data_root", root, "--metadata_dir",
                                   tmp_path / "meta", "--out_dir", tmp_path / "runs", "--mode", "m2", "--epochs", "1",
                                   "--no-record", "--device", "cpu", "--threads", "1", "--batch_size", "4"])
    assert "m2 of VGGSound-50k sample 5" in line and str(feature) in line and "NaN" in line, line


def test_split_file_with_repeated_indices_names_them_and_its_fix_works(tmp_path, capsys):
    from datasets.splits import generate_permutations, write_indices_csv

    root, argv = avmnist(tmp_path)
    permutations = generate_permutations(20)
    permutations[0, 7] = permutations[0, 3]
    split_file = write_indices_csv(tmp_path / "meta" / "AV-MNIST_indices.csv", permutations)
    line = fail_line(capsys, "S", argv)
    assert f"repeats 1 sample index(es) (e.g. {permutations[0, 3]} appears 2 times)" in line, line
    command = line.split("rewrite it (this changes the splits of every run on it): ")[1]
    assert "--overwrite" in command
    words = shlex.split(command)
    assert words[:2] == ["python", "indices_gen.py"]
    fixed = subprocess.run([sys.executable, str(ROOT / words[1]), *words[2:]], cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
    assert fixed.returncode == 0, fixed.stderr
    from datasets.splits import read_group

    assert sorted(read_group(split_file, 0).tolist()) == list(range(20))


def test_split_file_without_the_seed_column_names_the_columns_found(tmp_path, capsys):
    root, argv = avmnist(tmp_path)
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "AV-MNIST_indices.csv").write_text("idx,fold\n" + "".join(f"{i},0\n" for i in range(20)))
    line = fail_line(capsys, "S", argv)
    assert "no column group_0 (columns found: idx, fold)" in line and "--overwrite" in line, line


def test_batchnorm_never_gets_a_training_batch_of_one(tmp_path, capsys):
    """C2KD's proxies hold BatchNorm layers: 12 training samples at --batch_size 11 leave a last batch of 1,
    which the reference crashed on. It is merged into the batch before it."""
    root, argv = cmmd(tmp_path)
    run_ok("S", argv + ["--mode", "m2"])
    (teacher,) = runs_under(tmp_path / "runs")
    run_ok("C2KD", argv + ["--mode", "m1", "--ckpt_name", teacher / "best.pth", "--batch_size", "11"])
    capsys.readouterr()
    line = fail_line(capsys, "C2KD", argv + ["--mode", "m1", "--ckpt_name", teacher / "best.pth", "--batch_size", "1"])
    assert "trains BatchNorm layers, which need at least 2 samples per batch" in line, line
    assert len(runs_under(tmp_path / "runs")) == 2  # the refused run left nothing behind


def test_batch_loader_merges_a_short_last_batch_only_when_asked():
    from datasets import BatchLoader, TensorSource

    source = TensorSource(torch.arange(12.0)[:, None], torch.zeros(12, 1), torch.zeros(12, dtype=torch.long))
    loader = BatchLoader(source, np.arange(12), 11, shuffle=True, seed=3)
    plain = [len(b) for b in loader]
    loader.min_batch = 2
    merged = list(loader)
    assert plain == [11, 1] and [len(b) for b in merged] == [12] and len(loader) == 1
    assert sorted(merged[0].m1.flatten().tolist()) == list(map(float, range(12)))
    even = BatchLoader(source, np.arange(12), 4, shuffle=True, seed=3)
    before = [b.index.tolist() for b in even]
    even.min_batch = 2
    assert [b.index.tolist() for b in even] == before  # no remainder of 1: the same batches


# -- numeric flags and paths --------------------------------------------------------------------------------

@pytest.mark.parametrize("method,argv,needle", [
    ("S", ["--lr", "nan"], "--lr must be a finite number, got nan"),
    ("S", ["--lr", "inf"], "--lr must be a finite number"),
    ("S", ["--lr", "0"], "--lr must be > 0"),
    ("S", ["--max_steps", "0"], "--max_steps must be >= 1, got 0; leave it out for no cap"),
    ("S", ["--mvd_samples", "0"], "--mvd_samples must be >= 1"),
    ("S", ["--num_workers", "-1"], "--num_workers must be >= 0"),
    ("S", ["--batch_size", "0"], "--batch_size must be >= 1"),
    ("S", ["--epochs", "-2"], "--epochs must be >= 1"),
    ("S", ["--epochs", "0"], "--epochs must be >= 1, got 0"),
    ("S", ["--threads", "0"], "--threads must be >= 1"),
    ("MST-Distill", ["--mst_cache_mb", "-5"], "--mst_cache_mb must be >= 0"),
    ("MST-Distill", ["--s1_lr", "nan"], "--s1_lr must be a finite number"),
    ("MST-Distill", ["--s2_lr=-1e-3"], "--s2_lr must be > 0"),
    ("MST-Distill", ["--w_lb=-1"], "--w_lb must be >= 0"),
    ("FitNets", ["--hint_lr", "inf", "--ckpt_name", "x"], "--hint_lr must be a finite number"),
    ("MGDFR", ["--co_lr", "0"], "--co_lr must be > 0"),
    ("CRD", ["--nce_k", "0", "--ckpt_name", "x"], "--nce_k must be >= 1"),
    ("DML", ["--dml_T", "0"], "--dml_T must be > 0"),
])
def test_numeric_flags_without_meaning_are_refused(capsys, method, argv, needle):
    assert needle in fail_line(capsys, method, argv)


def test_every_flag_default_passes_its_own_rule():
    import kd_methods

    for name in kd_methods.all_methods():
        cli.build_parser(kd_methods.get_method(name)).parse_args([])


def test_tilde_is_expanded_in_path_flags(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    from kd_methods import get_method

    args = cli.parse_args(get_method("KD"), ["--out_dir=~/runs", "--data_root=~/data", "--ckpt_name=~/t.pth",
                                             "--metadata_dir", "~/meta"])
    assert (args.out_dir, args.data_root, args.ckpt_name, args.metadata_dir) == (
        f"{tmp_path}/runs", f"{tmp_path}/data", f"{tmp_path}/t.pth", f"{tmp_path}/meta")


def test_ckpt_name_of_a_run_directory_points_to_its_best_pth(tmp_path, capsys):
    (tmp_path / "best.pth").write_bytes(b"")
    line = fail_line(capsys, "KD", ["--ckpt_name", tmp_path])
    assert f"is a run directory; pass the model inside it: --ckpt_name {tmp_path / 'best.pth'}" in line


# -- file system --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["file", "under_file"])
def test_out_dir_that_cannot_be_created_is_one_line(tmp_path, capsys, where):
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    out = blocker if where == "file" else blocker / "runs"
    line = fail_line(capsys, "S", ["--out_dir", out, *QUICK])
    assert f"{blocker} is not a directory" in line, line


def test_full_disk_removes_the_temporary_file_and_logs_the_error(tmp_path, capsys, monkeypatch):
    import utils.core.checkpoints as rundir

    saves = []
    real_save = torch.save

    def save(obj, handle, *a, **k):
        saves.append(handle.name)
        if len(saves) == 2:  # the checkpoint of epoch 0 is written, then the disk is full
            handle.write(b"\0" * 4096)
            raise OSError(28, "No space left on device")
        return real_save(obj, handle, *a, **k)

    monkeypatch.setattr(rundir.torch, "save", save)
    line = fail_line(capsys, "S", ["--epochs", "3", "--out_dir", tmp_path, *QUICK])
    assert "cannot write" in line and "No space left on device" in line, line
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]
    (run,) = runs_under(tmp_path)
    assert "No space left on device" in (run / "log.txt").read_text().strip().splitlines()[-1]


def test_failed_atomic_write_keeps_the_old_file(tmp_path):
    from utils.core.atomic import atomic_write_bytes

    target = tmp_path / "results.json"
    target.write_text("old")

    def writer(handle):
        handle.write(b"partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(UserError, match="No space left on device"):
        atomic_write_bytes(target, writer)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


class _RefusedAtStageStart(UnimodalModel):
    """Test-only method that fails after its run directory exists but before its first epoch."""

    card = replace(UnimodalModel.card, name="test-inputs-refused-at-stage-start")

    def stages(self):
        (stage,) = super().stages()

        def make_optimizer():
            raise UserError("refused at stage start")

        return [Stage(stage.name, stage.epochs, make_optimizer, stage.train_step, stage.train_modules,
                      stage.val_step, stage.select_key, stage.selected)]


def test_a_run_that_fails_before_its_first_epoch_leaves_no_directory(tmp_path, capsys):
    assert "refused at stage start" in fail_line(capsys, "test-inputs-refused-at-stage-start",
                                                 ["--out_dir", tmp_path, *QUICK])
    assert not runs_under(tmp_path)


class _NaNFromTheStart(UnimodalModel):
    """Test-only method whose training loss is NaN in its first epoch."""

    card = replace(UnimodalModel.card, name="test-inputs-nan-epoch-0")

    def stages(self):
        (stage,) = super().stages()
        clean = stage.train_step
        return [Stage(stage.name, stage.epochs, stage.make_optimizer,
                      lambda batch, epoch: {k: v * float("nan") for k, v in clean(batch, epoch).items()},
                      stage.train_modules, stage.val_step, stage.select_key, stage.selected)]


def test_nan_in_the_first_epoch_does_not_claim_a_checkpoint(tmp_path, capsys):
    line = fail_line(capsys, "test-inputs-nan-epoch-0", ["--out_dir", tmp_path, *QUICK], code=3)
    assert "became nan" in line and "No checkpoint was written yet" in line and "kept in" not in line, line
    (run,) = runs_under(tmp_path)  # kept: its log says how the run diverged
    assert "became nan" in (run / "log.txt").read_text()


class _NaNValidation(UnimodalModel):
    """Test-only method whose validation loss turns NaN in epoch 1."""

    card = replace(UnimodalModel.card, name="test-inputs-nan-validation")

    def stages(self):
        (stage,) = super().stages()
        clean = stage.val_step
        return [Stage(stage.name, stage.epochs, stage.make_optimizer, stage.train_step, stage.train_modules,
                      lambda batch, epoch: {k: v * float("nan") if epoch == 1 else v
                                            for k, v in clean(batch, epoch).items()},
                      stage.select_key, stage.selected)]


def test_nan_validation_loss_stops_the_run(tmp_path, capsys):
    line = fail_line(capsys, "test-inputs-nan-validation", ["--epochs", "4", "--out_dir", tmp_path, *QUICK], code=3)
    assert "the validation ce became nan" in line and "epoch 1" in line, line
    (run,) = runs_under(tmp_path)
    assert f"The last good checkpoint is kept in {run}" in line
    assert torch.load(run / "checkpoint.pth", weights_only=True)["epoch"] == 1
    assert not (run / "results.json").exists()


def test_ctrl_c_ends_with_one_line_naming_the_resume_command(tmp_path):
    # as from a terminal, even when the suite runs in the background (which would leave Ctrl-C ignored)
    process = subprocess.Popen([sys.executable, str(ROOT / "main-S.py"), "--epochs", "100000", "--out_dir",
                                str(tmp_path), *QUICK], cwd=tmp_path, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 240
    while not list(tmp_path.glob("*/*/*/checkpoint.pth")) and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    (run,) = runs_under(tmp_path)
    assert process.returncode == 130 and err.strip().splitlines() == [f"interrupted; resume with --resume {run}"], err
    assert "interrupted" in (run / "log.txt").read_text().strip().splitlines()[-1]


@pytest.mark.parametrize("argv", [["--help"], ["--epochs", "2", *QUICK]])
def test_closed_output_pipe_stays_silent(tmp_path, argv):
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line (| head -0)
    process = subprocess.run([sys.executable, str(ROOT / "main-S.py"), *argv, "--out_dir", str(tmp_path)],
                             cwd=tmp_path, stdout=write, stderr=subprocess.PIPE, text=True, timeout=300)
    os.close(write)
    assert process.stderr == "" and process.returncode in (0, 1), process.stderr


# -- threads ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cpus,load,running,expected", [(2, 3.2, 2, 1), (2, 0.1, 0, 2), (16, 4.0, 1, 12),
                                                        (4, 0.0, 9, 1)])
def test_default_threads_leave_busy_cpus_alone(monkeypatch, cpus, load, running, expected):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setattr(runtime, "cpu_load", lambda: (cpus, load, running))
    monkeypatch.setattr(runtime.torch, "get_num_threads", lambda: 64)
    assert runtime.default_threads()[0] == expected


def test_default_threads_respect_omp_num_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setattr(runtime.torch, "get_num_threads", lambda: 3)
    assert runtime.default_threads()[0] == 3


# test-only methods, registered for this module's tests only
_test_methods = method_registration(_RefusedAtStageStart, _NaNFromTheStart, _NaNValidation)


def test_ctrl_c_during_a_file_write_takes_effect_after_it(tmp_path):
    """A Ctrl-C that arrives while a checkpoint is written waits for the write (no half-written file, and no
    interrupted torch.save whose C++ writer later aborts the interpreter), then ends the run as usual."""
    import signal as signals

    from utils.core.atomic import atomic_write_bytes

    def writer(handle):
        os.kill(os.getpid(), signals.SIGINT)  # arrives in the middle of the write
        torch.save({"weights": torch.arange(1000)}, handle)

    inherited = signals.getsignal(signals.SIGINT)  # SIG_IGN when the suite itself runs in the background
    try:
        signals.signal(signals.SIGINT, signals.default_int_handler)  # Python's own, as in a terminal
        target = tmp_path / "interrupted" / "checkpoint.pth"
        target.parent.mkdir()
        with pytest.raises(KeyboardInterrupt):
            atomic_write_bytes(target, writer)
        assert torch.equal(torch.load(target, weights_only=True)["weights"], torch.arange(1000))
        assert sorted(p.name for p in target.parent.iterdir()) == ["checkpoint.pth"]  # no temporary file left
        assert signals.getsignal(signals.SIGINT) is signals.default_int_handler

        # a process that ignores Ctrl-C (started with nohup or &) keeps ignoring it: the write completes, no error
        signals.signal(signals.SIGINT, signals.SIG_IGN)
        target = tmp_path / "ignored" / "checkpoint.pth"
        target.parent.mkdir()
        atomic_write_bytes(target, writer)
        assert torch.equal(torch.load(target, weights_only=True)["weights"], torch.arange(1000))
        assert signals.getsignal(signals.SIGINT) is signals.SIG_IGN
    finally:
        signals.signal(signals.SIGINT, inherited)
