"""Failing cleanly outside the training loop: ``reproduce.py``, every data loader, a disk that fills during
``torch.save``, flags without meaning, messages that name the real problem, and the data checker. Each class of bad
input ends with one ``error:`` line and exit code 2 (no traceback) and leaves nothing behind."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import utils.core.atomic
from conftest import refused
from fixtures import make_fixture
from utils import engine
from utils.core import runtime
from utils.core.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

QUICK = ["--mvd_samples", "200", "--no-record", "--device", "cpu", "--threads", "1"]


def one_line(capsys, call, code=2) -> str:
    """``call()`` must exit with ``code`` and print exactly one ``error:`` line on stderr."""
    with pytest.raises(SystemExit) as exit_info:
        call()
    assert exit_info.value.code == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    return err[0]


def leftovers(folder: Path) -> list[Path]:
    """Temporary files of the atomic writer under ``folder``."""
    return [p for p in Path(folder).rglob("*") if ".tmp" in p.name]


def sweep(capsys, argv, code=2) -> str:
    from utils.sweep import main

    return one_line(capsys, lambda: main([str(a) for a in argv]), code)


# -- 1. reproduce.py ---------------------------------------------------------------------------------------------

SWEEP = ["--methods", "KD", "--seeds", "0", "--modes", "m1"]


@pytest.mark.parametrize("case", ["a file", "under a file", "empty"])
def test_sweep_out_dir_that_cannot_hold_a_sweep_is_one_line(tmp_path, capsys, case):
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    out = {"a file": blocker, "under a file": blocker / "sweep", "empty": ""}[case]
    line = sweep(capsys, [*SWEEP, "--out_dir", out])
    assert ("is not a directory" in line) if case != "empty" else ("--out_dir is empty" in line), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]


def test_sweep_read_only_out_dir_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(utils.core.atomic.os, "access", lambda path, mode: False)  # root ignores permission bits
    line = sweep(capsys, [*SWEEP, "--out_dir", tmp_path / "sweep"])
    assert "is not writable" in line and not (tmp_path / "sweep").exists(), line


def _refuse_writes(monkeypatch, reason: int, name: str | None = None):
    """Every atomic write (or those of ``name``) fails as a full or read-only disk would make it fail."""
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if name is None or Path(dst).name == name:
            raise OSError(reason, os.strerror(reason))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(utils.core.atomic.os, "replace", replace)


def test_sweep_full_disk_while_writing_commands_sh_is_one_line(tmp_path, capsys, monkeypatch):
    _refuse_writes(monkeypatch, errno.ENOSPC, "commands.sh")
    line = sweep(capsys, [*SWEEP, "--out_dir", tmp_path / "sweep"])
    assert f"cannot write {tmp_path / 'sweep' / 'commands.sh'}: No space left on device" in line, line
    assert not leftovers(tmp_path) and not list((tmp_path / "sweep" / "runs").glob("*/*/*/*"))  # nothing ran


def _finished_run(sweep_dir: Path, node: str, results) -> Path:
    run = sweep_dir / "runs" / node / "S" / "Synthetic-MVD" / "run"
    run.mkdir(parents=True)
    (run / "args.json").write_text("{}")
    (run / "results.json").write_text(json.dumps(results))
    return run


GOOD = {"method": "S", "database": "Synthetic-MVD", "mode": "m1", "seed": 0, "best_epoch": 1, "wall_time_s": 1.0,
        "metrics": {"test": {"accuracy": 0.75, "loss": 0.5}}}


@pytest.mark.parametrize("reason", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_aggregate_that_cannot_write_its_tables_is_one_line(tmp_path, capsys, monkeypatch, reason):
    _finished_run(tmp_path, "a", GOOD)
    _refuse_writes(monkeypatch, reason)
    line = sweep(capsys, ["--aggregate", "--out_dir", tmp_path])
    assert os.strerror(reason) in line and "cannot write" in line, line
    assert not leftovers(tmp_path)


def test_aggregate_leaves_out_results_of_the_wrong_shape_with_a_warning(tmp_path, capsys):
    from utils.sweep import main

    _finished_run(tmp_path, "good", GOOD)
    _finished_run(tmp_path, "list", [GOOD])
    _finished_run(tmp_path, "string-seed", {**GOOD, "seed": "1"})
    _finished_run(tmp_path, "metrics-string", {**GOOD, "seed": 2, "metrics": "high"})
    _finished_run(tmp_path, "not-json", {}).joinpath("results.json").write_bytes(b"\xff\xfe{")
    assert main(["--aggregate", "--out_dir", str(tmp_path)]) == 1  # the tables are written; the problems reported
    out = capsys.readouterr()
    assert "Traceback" not in out.err and out.err.count("error") == 0
    warnings = [line for line in out.out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 4, out.out
    assert any("a JSON list, not an object" in w for w in warnings) and any("'seed' is \"1\"" in w for w in warnings)
    assert "Aggregated 1 runs" in out.out
    assert (tmp_path / "runs.csv").read_text().count("\n") == 2


def test_submitit_without_slurm_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    pytest.importorskip("submitit")
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun / sbatch
    line = sweep(capsys, [*SWEEP, "--launcher", "submitit", "--cluster", "slurm", "--out_dir", tmp_path / "sweep"])
    assert "--cluster slurm" in line and "--cluster local" in line, line
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("argv,needle", [
    (["--seeds", "0", "25"], "--seeds 25: valid seeds are 0..19"),
    (["--set", "KD:--alpha"], "main-KD.py would refuse the flags the sweep gives it: argument --alpha: expected one"),
    (["--", "--epochs", "0"], "would refuse the flags the sweep gives it: --epochs must be >= 1, got 0"),
])
def test_sweep_flags_every_node_would_refuse_are_refused_before_any_node_runs(tmp_path, capsys, argv, needle):
    base = ["--methods", "KD", "--modes", "m1", "--out_dir", tmp_path / "sweep"]
    line = sweep(capsys, [*base, *(argv if "--seeds" in argv else ["--seeds", "0", *argv])])
    assert needle in line, line
    assert not (tmp_path / "sweep").exists()


def test_a_node_finished_by_another_reproduce_process_is_not_reported_failed(tmp_path):
    """Two reproduce.py on one directory: the per-node lock lets one wrapper run the node and the other find it
    finished; whichever wrote status.json last, each harness reports the node done."""
    from utils.sweep.graph import Node
    from utils.sweep.runner import LocalLauncher

    node = Node(id="n", method="S", script="main-S.py", database="Synthetic-MVD", mode="m1", seed=0, role="no-kd",
                args=[])
    node_dir = tmp_path / "runs" / "n"
    run = node_dir / "S" / "Synthetic-MVD" / "run"
    run.mkdir(parents=True)
    (run / "args.json").write_text("{}")
    (node_dir / "status.json").write_text(json.dumps({"state": "done", "rc": 0, "token": "theirs", "attempts": []}))
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    launcher = LocalLauncher(tmp_path, None)
    handle = {"proc": ended, "node": node, "token": "mine", "device": None}
    assert launcher.poll(handle)["state"] == "failed"  # not finished on disk, and their status is no failure
    (run / "results.json").write_text(json.dumps(GOOD))
    assert launcher.poll(handle)["state"] == "done"


# -- 2. a full disk during torch.save ------------------------------------------------------------------------------

TORCH_FULL_DISK = ("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0",
                   "[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing file data/0: file "
                   "write failed")


@pytest.mark.parametrize("free", [0, 1 << 30], ids=["no-space-left", "space-left"])
@pytest.mark.parametrize("message", TORCH_FULL_DISK, ids=["unexpected-pos", "file-write-failed"])
def test_torch_save_failing_on_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch,
                                                                                    message, free):
    import shutil

    import utils.core.checkpoints as rundir

    saves, real_save = [], torch.save

    def save(obj, handle, *args, **kwargs):  # what torch raises when the file system refuses its writes
        saves.append(handle.name)
        if len(saves) == 2:  # epoch 0's checkpoint was written; epoch 1's meets a full disk
            handle.write(b"\0" * 64)
            raise RuntimeError(message)
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(rundir.torch, "save", save)
    real_usage = shutil.disk_usage
    monkeypatch.setattr(utils.core.atomic.shutil, "disk_usage",
                        lambda path: real_usage(path)._replace(free=free))
    line = refused(capsys, "S", ["--epochs", "3", "--out_dir", tmp_path, *QUICK])
    assert "cannot write" in line and "checkpoint.pth" in line and "inline_container" not in line.split(";")[0]
    assert ("No space left on device" in line) if free == 0 else ("the disk may be full" in line), line
    (run,) = (tmp_path / "S" / "Synthetic-MVD").iterdir()
    assert torch.load(run / "checkpoint.pth", weights_only=True)["epoch"] == 1  # the last good one
    assert not leftovers(tmp_path)
    assert "cannot write" in (run / "log.txt").read_text().strip().splitlines()[-1]


def test_a_disk_full_before_the_first_epoch_leaves_no_run_directory(tmp_path, capsys, monkeypatch):
    _refuse_writes(monkeypatch, errno.ENOSPC, "log.txt")  # the run directory's first file
    line = refused(capsys, "S", ["--out_dir", tmp_path, *QUICK])
    assert "No space left on device" in line, line
    assert list(tmp_path.iterdir()) == []


# -- 3. malformed data files, every database -----------------------------------------------------------------------

def _spoil(path: Path, how: str) -> None:
    good = np.load(path)
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[: 128 + good.nbytes // 2])
    elif how == "npz":
        with open(path, "wb") as handle:
            np.savez(handle, data=good)
    elif how == "pickle":
        np.save(path, np.array([{"a": 1}] * len(good), dtype=object), allow_pickle=True)
    elif how == "text":
        path.write_text("not an array\n")


SPOILED = {"empty": "is empty (0 bytes)", "truncated": "is truncated or malformed",
           "npz": "is a .npz archive (numpy.savez) saved under a .npy name",
           "pickle": "holds pickled Python objects", "text": "holds pickled Python objects (or no .npy header"}


@pytest.mark.parametrize("how", list(SPOILED))
def test_every_kind_of_spoiled_npy_is_named(tmp_path, how):
    from datasets.base import open_npy

    path = tmp_path / "x.npy"
    np.save(path, np.arange(1000, dtype=np.float32).reshape(100, 10))
    _spoil(path, how)
    for mmap in (True, False):
        with pytest.raises(UserError, match="x.npy") as error:
            open_npy(path, "test array", "TestDB", mmap=mmap)
        assert SPOILED[how] in str(error.value) and "\n" not in str(error.value), str(error.value)


@pytest.mark.parametrize("database,relative", [
    ("AV-MNIST", "avmnist/image/train_data.npy"),
    ("RAVDESS", "RAVDESS_preprocessed_npy/label_data.npy"),
    ("VGGSound-50k", None),  # the first sample's visual feature
])
def test_paper_loaders_read_through_the_one_guard(tmp_path, capsys, database, relative):
    root = make_fixture(database, tmp_path / "data")
    if relative is None:
        relative = str(next((root / "VGGS50K").rglob("*_vFeature.npy")).relative_to(root))
        first = (root / "VGGS50K" / "VGGS50k_metadata.txt").read_text().splitlines()[0].split("&")[0]
        relative = str(Path(relative).with_name(f"{first}_vFeature.npy"))
    _spoil(root / relative, "npz")
    line = refused(capsys, "S", ["--database", database, "--data_root", root, "--metadata_dir", tmp_path / "meta",
                                 "--out_dir", tmp_path / "runs", "--no-record", "--device", "cpu"])
    assert "saved under a .npy name" in line and relative.split("/")[-1] in line, line
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("args.json"))


def test_a_truncated_hdf5_file_is_one_line(tmp_path, capsys):
    pytest.importorskip("h5py")
    root = make_fixture("NYU-Depth-V2", tmp_path / "data")
    (path,) = root.rglob("*.mat")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    line = refused(capsys, "S", ["--database", "NYU-Depth-V2", "--data_root", root, "--metadata_dir",
                                 tmp_path / "meta", "--out_dir", tmp_path / "runs", "--no-record", "--device", "cpu"])
    assert "is not a readable HDF5/MATLAB-v7.3 file" in line and "truncated file" in line, line


def test_an_empty_out_dir_is_refused_by_the_scripts_too(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "--out_dir is empty" in refused(capsys, "S", ["--out_dir", "", *QUICK])
    assert list(tmp_path.iterdir()) == []


def paired(root: Path, m1=None, m2=None, labels=None, meta=None, n: int = 60) -> Path:
    rng = np.random.RandomState(0)
    root.mkdir(parents=True, exist_ok=True)
    labels = np.arange(n) % 3 if labels is None else labels
    m1 = rng.randn(n, 6).astype(np.float32) + labels[:, None] if m1 is None else m1
    m2 = rng.randn(n, 4).astype(np.float32) if m2 is None else m2
    for name, array in (("m1", m1), ("m2", m2), ("labels", labels)):
        np.save(root / f"{name}.npy", array)
    if meta is not None:
        (root / "meta.json").write_text(json.dumps(meta))
    return root


def paired_argv(root: Path, tmp_path: Path, *extra) -> list:
    return [str(a) for a in ["--database", "Paired", "--data_root", root, "--out_dir", tmp_path / "runs", "--epochs",
                             "1", "--no-record", "--device", "cpu", *extra]]


@pytest.mark.parametrize("case,needle", [
    ("0-byte m1.npy", "m1.npy (modality m1, [N, ...]) for Paired is empty (0 bytes)"),
    ("truncated labels.npy", "labels.npy (class id per sample, [N] integers) for Paired is truncated"),
    ("features [N, 0]", "m2.npy has shape [60, 0]: its samples hold no values"),
    ("binary splits.csv", "splits.csv is not UTF-8 text"),
    ("float64 beyond float32", "m1.npy has values beyond the float32 range (first at sample 5: 1e+39"),
    ("modalities of the wrong type", "\"modalities\" must map m1 and m2 to names (strings)"),
    ("class names not strings", "\"class_names\" must be a list of strings"),
    ("class names fewer than the labels", "meta.json declares 2 class_names, but"),
    ("a single class without meta.json", "labels.npy: 1 class(es); classification needs at least 2 classes"),
    ("data_root a symlink loop", "is a symbolic link that leads nowhere"),
])
def test_paired_malformed_input_is_one_line_naming_the_file(tmp_path, capsys, case, needle):
    root = tmp_path / "d"
    if case == "0-byte m1.npy":
        paired(root)
        (root / "m1.npy").write_bytes(b"")
    elif case == "truncated labels.npy":
        paired(root)
        _spoil(root / "labels.npy", "truncated")
    elif case == "features [N, 0]":
        paired(root, m2=np.zeros((60, 0), dtype=np.float32))
    elif case == "binary splits.csv":
        paired(root)
        (root / "splits.csv").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe" * 4)
    elif case == "float64 beyond float32":
        m1 = np.random.RandomState(0).randn(60, 6)
        m1[5, 2] = 1e39
        paired(root, m1=m1)
    elif case == "modalities of the wrong type":
        paired(root, meta={"modalities": {"m1": 5}})
    elif case == "class names not strings":
        paired(root, meta={"class_names": [1, 2, 3]})
    elif case == "class names fewer than the labels":
        paired(root, meta={"class_names": ["a", "b"]})
    elif case == "a single class without meta.json":
        paired(root, labels=np.zeros(60, dtype=np.int64))
    elif case == "data_root a symlink loop":
        root.symlink_to(root)
    line = refused(capsys, "S", paired_argv(root, tmp_path))
    assert needle in line, line
    if case == "a single class without meta.json":
        assert "meta.json" not in line
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("args.json"))


def test_paired_features_of_one_value_per_sample_are_accepted(tmp_path):
    labels = np.arange(60) % 3
    root = paired(tmp_path / "d", m1=labels.astype(np.float32) + np.random.RandomState(1).rand(60), labels=labels)
    results = engine.main("S", paired_argv(root, tmp_path, "--batch_size", "8"))
    assert results["models"] and (tmp_path / "runs").exists()
    from datasets import get_spec
    from kd_methods import get_method
    from utils import cli

    args = cli.parse_args(get_method("S"), ["--database", "Paired", "--data_root", str(root)])
    assert get_spec("Paired").configured(args).input_shapes["m1"] == (1,)


# -- 4. flags that make no sense -----------------------------------------------------------------------------------

def test_a_dataset_option_for_another_database_is_refused(capsys):
    line = refused(capsys, "S", ["--mfeat_m1", "kar", *QUICK])
    assert "--mfeat_m1 is an option of --database UCI-MFeat, but this run uses Synthetic-MVD" in line, line


def test_a_dataset_option_of_the_run_database_is_accepted():
    from kd_methods import get_method
    from utils import cli

    args = cli.parse_args(get_method("S"), ["--database", "UCI-MFeat", "--mfeat_m1", "kar"])
    assert args.mfeat_m1 == "kar"


def test_threads_above_the_available_cpus_are_capped_with_a_warning(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_load", lambda: (2, 0.0, 0))
    threads = torch.get_num_threads()
    try:
        line = runtime.configure_threads(64)
        assert torch.get_num_threads() == 2 and "warning: --threads 64 exceeds the 2 CPUs" in line, line
        assert runtime.configure_threads(1) == "CPU threads: 1 (--threads)"
    finally:
        torch.set_num_threads(threads)


def test_training_warnings_of_a_diverged_or_chance_run():
    from utils.core.health import training_warnings

    rows = [{"stage": "train", "epoch": e, "train/loss": loss} for e, loss in enumerate([0.7, 5.0, 3.9e8])]
    warnings = training_warnings(rows, {"accuracy": 0.5}, num_classes=2, is_segmentation=False)
    assert len(warnings) == 2 and "rose from 0.7 (epoch 0) to 3.9e+08 (epoch 2)" in warnings[0]
    assert "at or below chance (1/2" in warnings[1]
    healthy = [{"stage": "train", "epoch": e, "train/loss": loss} for e, loss in enumerate([0.7, 0.4])]
    assert training_warnings(healthy, {"accuracy": 0.9}, num_classes=2, is_segmentation=False) == []
    assert training_warnings(healthy, {"accuracy": 0.01, "mIoU": 0.1}, 41, is_segmentation=True) == []


def test_an_exploding_finite_loss_is_warned_about_in_the_log_and_results(tmp_path):
    results = engine.main("S", ["--lr", "1e9", "--epochs", "4", "--out_dir", str(tmp_path), *QUICK])
    (run,) = (tmp_path / "S" / "Synthetic-MVD").iterdir()
    assert any("training diverged" in w for w in results["warnings"]), results["warnings"]
    assert json.loads((run / "results.json").read_text())["warnings"] == results["warnings"]
    assert "warning: the training loss of stage 'train' rose" in (run / "log.txt").read_text()


# -- 5. messages that name the real problem ------------------------------------------------------------------------

def test_a_truncated_checkpoint_says_so(tmp_path, capsys):
    from models import build_model

    path = tmp_path / "teacher.pth"
    torch.save(build_model("MVD-MLP-I", num_classes=2, input_shapes={"m1": (50,), "m2": (50,)}).state_dict(), path)
    data = path.read_bytes()
    for size in (0, 10, len(data) // 2, len(data) - 10):
        path.write_bytes(data[:size])
        line = refused(capsys, "KD", ["--ckpt_name", path, "--out_dir", tmp_path / "runs", *QUICK])
        assert "is truncated or not a torch checkpoint" in line and "Invalid argument);" not in line[:60], line


def test_a_checkpoint_refused_by_the_safe_loader_does_not_advise_weights_only_false(tmp_path, capsys):
    class Payload:
        def __reduce__(self):
            return (os.getcwd, ())

    path = tmp_path / "evil.pth"
    torch.save({"model": Payload()}, path)
    line = refused(capsys, "KD", ["--ckpt_name", path, "--out_dir", tmp_path / "runs", *QUICK])
    assert "refuses" in line and "weights_only=False" not in line and "trusted source" not in line, line


def test_mfh_checks_the_layer_before_its_joint_training_and_leaves_no_run_directory(tmp_path, capsys):
    from utils.mfh_experiments import main

    line = one_line(capsys, lambda: main(["--exp", "rank", "--layer", "no_such_layer", "--joint_epochs", "10000000",
                                          "--mvd_samples", "200", "--out_dir", str(tmp_path), "--device", "cpu"]))
    assert "--layer 'no_such_layer' is not a submodule" in line, line
    assert list(tmp_path.iterdir()) == []


# -- 6. refuse only what cannot work -------------------------------------------------------------------------------

def test_val_and_test_splits_smaller_than_a_batch_are_evaluated(tmp_path):
    root = paired(tmp_path / "d")  # 60 samples: 36 / 12 / 12, the default batch size is 64
    results = engine.main("S", paired_argv(root, tmp_path, "--batch_size", "8"))
    (run,) = (tmp_path / "runs" / "S" / "Paired").iterdir()
    tested = engine.main("test-S", ["--ckpt_name", str(run / "best.pth"), "--data_root", str(root),
                                    "--out_dir", str(tmp_path / "tests"), "--no-record", "--device", "cpu"])
    assert tested["metrics"]["test"]["accuracy"] == results["metrics"]["test"]["accuracy"]


# -- 7. the data checker -------------------------------------------------------------------------------------------

def test_check_data_prints_a_summary_without_training(tmp_path, capsys):
    from utils.datacheck import main

    root = paired(tmp_path / "d", meta={"class_names": ["cat", "dog", "bird"], "modalities": {"m1": "a", "m2": "b"}},
                  n=150)
    main([str(root)])
    out = capsys.readouterr().out
    assert "every check passed" in out and "N: 150 samples" in out
    assert "m1 (a):" in out and "[150, 6] float64" in out and "[150, 4] float32" in out
    assert "0 'cat' 50, 1 'dog' 50, 2 'bird' 50" in out
    assert "90/30/30 for each of seeds 0..19" in out
    assert not any(tmp_path.rglob("args.json"))


def test_check_data_fails_in_one_line(tmp_path, capsys):
    from utils.datacheck import main

    root = paired(tmp_path / "d")
    assert "has no sample of class" in one_line(capsys, lambda: main([str(root)]))  # 12 test samples per seed
    (root / "labels.npy").write_bytes(b"")
    line = one_line(capsys, lambda: main([str(root)]))
    assert "labels.npy" in line and "is empty (0 bytes)" in line, line


def test_check_data_covers_groups_npy(tmp_path, capsys):
    from utils.datacheck import main

    root = paired(tmp_path / "d", n=150)
    np.save(root / "groups.npy", np.arange(150) // 5)
    main([str(root)])
    assert "whole groups of" in capsys.readouterr().out
    (root / "groups.npy").write_bytes(b"")
    line = one_line(capsys, lambda: main([str(root)]))
    assert "groups.npy" in line and "is empty (0 bytes)" in line, line
