"""A run's identity is everything that defines it (docs/sweep.md): the data digest (cached file hashes), the
configuration digest and budget in results.json, a Paired teacher trained on another folder refused by main-KD.py
and test-T.py, test scripts taking the checkpoint's own data folder and batch size, and the sweep: stage epochs
from ``-- --epochs N``, cells that hold one configuration (mixed epochs, two data folders of the same N, a
``--set S:`` view change), unreadable runs reported and redone. Tiny data, one epoch of two steps."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import run_dir_of, run_script
from utils.core import data_digest
from utils.sweep import graph as sweep_graph

REPO = Path(__file__).resolve().parents[1]
QUICK = ["--epochs", "1", "--max_steps", "2", "--device", "cpu", "--no-record", "--threads", "1", "--batch_size", "16"]

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def write_paired(root: Path, seed: int, n: int = 120) -> Path:
    """A Paired folder of ``n`` samples (3 classes); another ``seed`` gives other values of the same shapes."""
    rng = np.random.RandomState(seed)
    labels = np.arange(n) % 3
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "m1.npy", (rng.randn(n, 6) + labels[:, None]).astype(np.float32))
    np.save(root / "m2.npy", (rng.randn(n, 5) + labels[:, None]).astype(np.float32))
    np.save(root / "labels.npy", labels)
    return root


# -- the data digest ------------------------------------------------------------------------------------------
def test_file_digests_are_cached_beside_the_data_and_follow_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "a.bin").write_bytes(b"x" * 1000)
    first = data_digest.files_sha256([folder / "a.bin"])
    import hashlib

    assert first[str(folder / "a.bin")] == hashlib.sha256(b"x" * 1000).hexdigest()
    cache = json.loads((folder / data_digest.CACHE_FILE).read_text())["files"]["a.bin"]
    assert cache["size"] == 1000 and cache["sha256"] == first[str(folder / "a.bin")]
    # a cached entry is used while size and mtime agree (proof: a forged digest comes back) ...
    forged = {"version": 1, "files": {"a.bin": {**cache, "sha256": "f" * 64}}}
    (folder / data_digest.CACHE_FILE).write_text(json.dumps(forged))
    assert data_digest.files_sha256([folder / "a.bin"])[str(folder / "a.bin")] == "f" * 64
    # ... and a changed file (same size, new content and mtime) is hashed again
    (folder / "a.bin").write_bytes(b"y" * 1000)
    os.utime(folder / "a.bin", ns=(cache["mtime_ns"] + 10**9, cache["mtime_ns"] + 10**9))
    again = data_digest.files_sha256([folder / "a.bin"])[str(folder / "a.bin")]
    assert again == hashlib.sha256(b"y" * 1000).hexdigest()
    assert data_digest.files_sha256([folder / "missing.bin"]) == {str(folder / "missing.bin"): None}


def test_a_folder_that_cannot_hold_the_cache_uses_the_user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = tmp_path / "data"
    (folder / data_digest.CACHE_FILE).mkdir(parents=True)  # the cache file's place is taken: not writable
    (folder / "a.bin").write_bytes(b"z" * 10)
    data_digest.files_sha256([folder / "a.bin"])
    user_cache = data_digest.cache_paths(folder)[1]
    assert user_cache.parent == tmp_path / "cache" / "mstd"
    assert "a.bin" in json.loads(user_cache.read_text())["files"]


# -- results.json and the checks of teachers and test scripts --------------------------------------------------
@pytest.fixture(scope="module")
def paired_runs(tmp_path_factory):
    """Folders A and B (same N, other values) and a main-T.py teacher trained on A."""
    base = tmp_path_factory.mktemp("paired")
    folder_a, folder_b = write_paired(base / "A", 0), write_paired(base / "B", 1)
    teacher = run_dir_of(run_script("main-T.py", "--database", "Paired", "--data_root", folder_a, "--out_dir",
                                    base / "runs", *QUICK, in_process=True))
    return {"A": folder_a, "B": folder_b, "teacher": teacher, "base": base}


def test_results_record_configuration_data_budget_and_code(paired_runs):
    results = json.loads((paired_runs["teacher"] / "results.json").read_text())
    config = results["config"]
    assert config["method"] == "T" and config["database"] == "Paired"
    assert config["data_digest"] == results["data_digest"]
    assert "seed" not in config["arguments"] and "device" not in config["arguments"]
    assert "data_root" not in config["arguments"] and "mvd_samples" not in config["arguments"]
    assert config["arguments"]["epochs"] == 1 and config["arguments"]["max_steps"] == 2
    from utils.core.data_digest import canonical_digest

    assert results["config_digest"] == canonical_digest(config)
    assert results["split_sizes"] == {"train": 72, "val": 24, "test": 24}
    assert results["budget"] == {"epochs": {"train": 1}, "steps": 2}  # --max_steps 2 of the 5 batches of 72 samples
    assert set(results["code"]) == {"commit", "dirty", "torch"} and results["code"]["torch"]
    import torch

    record = torch.load(paired_runs["teacher"] / "best.pth", weights_only=True)["provenance"]
    assert record["data_digest"] == results["data_digest"] and record["config_digest"] == results["config_digest"]


def test_a_paired_teacher_from_another_folder_is_refused_by_kd_and_test_t(paired_runs, tmp_path):
    best = paired_runs["teacher"] / "best.pth"
    kd = run_script("main-KD.py", "--database", "Paired", "--data_root", paired_runs["B"], "--ckpt_name", best,
                    "--out_dir", tmp_path, *QUICK, check=False, in_process=True)
    assert kd.returncode == 2
    line = kd.stderr.strip().splitlines()[-1]
    assert f"the data in {paired_runs['A'].resolve()}" in line and f"{paired_runs['B'].resolve()}" in line
    assert "--allow_teacher_mismatch" in line
    test_t = run_script("test-T.py", "--data_root", paired_runs["B"], "--ckpt_name", best, "--out_dir", tmp_path,
                        "--device", "cpu", "--no-record", check=False, in_process=True)
    assert test_t.returncode == 2 and "the data in" in test_t.stderr.strip().splitlines()[-1]
    # on the same folder the teacher is accepted, and its digest is in the KD run's configuration
    same = run_dir_of(run_script("main-KD.py", "--database", "Paired", "--data_root", paired_runs["A"], "--ckpt_name",
                                 best, "--out_dir", tmp_path / "same", *QUICK, in_process=True))
    results = json.loads((same / "results.json").read_text())
    teacher = json.loads((paired_runs["teacher"] / "results.json").read_text())
    assert results["config"]["starts_from"] == {"ckpt_name": teacher["config_digest"]}
    assert len(results["checkpoints"]["ckpt_name"]["sha256"]) == 64


def test_allow_teacher_mismatch_uses_the_other_folders_teacher_with_a_warning(paired_runs, tmp_path):
    best = paired_runs["teacher"] / "best.pth"
    run = run_dir_of(run_script("main-KD.py", "--database", "Paired", "--data_root", paired_runs["B"], "--ckpt_name",
                                best, "--out_dir", tmp_path, "--allow_teacher_mismatch", *QUICK, in_process=True))
    log = (run / "log.txt").read_text()
    assert "warning: teacher checkpoint" in log and "the data in" in log and "--allow_teacher_mismatch" in log


def test_test_t_takes_the_checkpoints_folder_and_batch_size_and_prints_no_best_epoch_none(paired_runs, tmp_path):
    best = paired_runs["teacher"] / "best.pth"
    result = run_script("test-T.py", "--ckpt_name", best, "--out_dir", tmp_path, "--device", "cpu", "--no-record",
                        in_process=True)  # no --database, --data_root or --batch_size
    run = run_dir_of(result)
    args = json.loads((run / "args.json").read_text())
    assert Path(args["data_root"]) == paired_runs["A"].resolve() and args["batch_size"] == 16
    assert "best epoch None" not in result.stdout + (run / "log.txt").read_text()
    tested = json.loads((run / "results.json").read_text())
    assert tested["data_digest"] == json.loads((paired_runs["teacher"] / "results.json").read_text())["data_digest"]


def test_a_resumed_run_refuses_a_teacher_file_changed_since_it_started(paired_runs, tmp_path):
    import shutil

    teacher = tmp_path / "teacher.pth"
    shutil.copy(paired_runs["teacher"] / "best.pth", teacher)
    run = run_dir_of(run_script("main-KD.py", "--database", "Paired", "--data_root", paired_runs["A"], "--ckpt_name",
                                teacher, "--out_dir", tmp_path / "kd", *QUICK, in_process=True))
    (run / "results.json").unlink()  # as if it had died after its last checkpoint
    other = run_dir_of(run_script("main-T.py", "--database", "Paired", "--data_root", paired_runs["A"], "--lr", "0.01",
                                  "--out_dir", tmp_path / "t2", *QUICK, in_process=True))
    shutil.copy(other / "best.pth", teacher)  # another teacher written over the file the run started from
    resumed = run_script("main-KD.py", "--resume", run, "--device", "cpu", check=False, in_process=True)
    assert resumed.returncode == 2
    line = resumed.stderr.strip().splitlines()[-1]
    assert "started from other inputs" in line and f"--ckpt_name {teacher}" in line


# -- the sweep -------------------------------------------------------------------------------------------------
def test_epochs_after_the_separator_set_every_training_stage():
    nodes = sweep_graph.build_graph(["UCI-MFeat"], ["m1"], [0], ["MST-Distill", "FitNets", "MGDFR", "KD"],
                                    ["--epochs", "3"], ["MST-Distill:--epochs_s2=1"])
    args = {n.method: n.args for n in nodes}

    def value(method, flag):
        return args[method][args[method].index(flag) + 1]

    assert value("MST-Distill", "--epochs_s1") == "3" and value("MST-Distill", "--epochs_s2") == "1"  # --set wins
    assert args["MST-Distill"].count("--epochs_s2") == 1
    assert value("FitNets", "--hint_epochs") == "3" and value("MGDFR", "--co_epochs") == "3"
    assert value("KD", "--epochs") == "3" and not any(sweep_graph.is_stage_epochs(a) for a in args["KD"])
    assert {n.config for n in nodes} == {nodes[0].config}  # one sweep configuration
    assert sweep_graph.is_stage_epochs("--epochs_s1") and not sweep_graph.is_stage_epochs("--epochs")


def test_another_data_folder_of_the_same_size_is_another_node(tmp_path):
    folder_a, folder_b = write_paired(tmp_path / "A", 0), write_paired(tmp_path / "B", 1)
    a = sweep_graph.build_graph(["Paired"], ["m1"], [0], ["KD"], ["--data_root", str(folder_a)])
    b = sweep_graph.build_graph(["Paired"], ["m1"], [0], ["KD"], ["--data_root", str(folder_b)])
    assert not {n.id for n in a} & {n.id for n in b} and a[0].config != b[0].config
    moved = write_paired(tmp_path / "copy-of-A", 0)  # the same contents elsewhere: the same nodes
    assert [n.id for n in sweep_graph.build_graph(["Paired"], ["m1"], [0], ["KD"], ["--data_root", str(moved)])] \
        == [n.id for n in a]


def reproduce(*args, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "reproduce.py", *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=1800)
    if check and proc.returncode != 0:
        raise AssertionError(f"reproduce.py {args} -> {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def table_rows(sweep: Path) -> list[dict]:
    return list(csv.DictReader((sweep / "table.csv").open()))


def test_a_sweep_directory_of_mixed_configurations_never_merges_them(tmp_path):
    sweep = tmp_path / "sw"
    common = ["--methods", "KD", "--modes", "m1", "--jobs", "2", "--out_dir", sweep]
    tiny = ["--", "--max_steps", "2", "--device", "cpu", "--no-record"]
    reproduce("--database", "UCI-MFeat", *common, "--seeds", "0", "1", *tiny, "--epochs", "1")
    reproduce("--database", "UCI-MFeat", *common, "--seeds", "0", *tiny, "--epochs", "2")
    view = reproduce("--database", "UCI-MFeat", *common, "--seeds", "0", "--set", "S:--mfeat_m1=kar", *tiny,
                     "--epochs", "1")
    assert "2 of 3 nodes finished earlier" in view.stdout  # T and KD of seed 0 are those of the first sweep
    rows = [r for r in table_rows(sweep) if r["database"] == "UCI-MFeat" and r["method"] == "KD"]
    assert len(rows) == 3 and len({r["config"] for r in rows}) == 3  # one row per configuration, none merged
    by_epochs = {r["epochs"]: r for r in rows}
    assert sorted(by_epochs) == ["1", "2"] and len([r for r in rows if r["epochs"] == "1"]) == 2
    assert by_epochs["2"]["n"] == "1"
    paired = [r for r in rows if r["epochs"] == "1" and r["delta_mean"] != ""]
    unpaired = [r for r in rows if r["delta_mean"] == ""]
    assert len(paired) == 1 and paired[0]["n"] == "2" and len(unpaired) == 1 and unpaired[0]["n"] == "1"
    assert all(r["steps"] and r["n_train"] == "1200" and r["n_test"] == "400" for r in rows)
    notes = (sweep / "table.md").read_text()
    assert "3 sweep configurations" in notes and "--set S:--mfeat_m1=kar" in notes
    assert f"KD [{unpaired[0]['config']}]: no paired figures" in notes
    runs = list(csv.DictReader((sweep / "runs.csv").open()))
    kd = [r for r in runs if r["method"] == "KD"]
    assert len(kd) == 3 and all(r["config_digest"] and r["commit"] is not None for r in kd)
    assert len({r["config_digest"] for r in kd}) == 2  # seeds 0 and 1 of one configuration share their digest
    assert {r["epochs"] for r in kd} == {"1", "2"} and {r["n_train"] for r in kd} == {"1200"}

    # two Paired folders of the same N: the second sweep trains anew and the table keeps them apart
    folder_a, folder_b = write_paired(tmp_path / "A", 0), write_paired(tmp_path / "B", 1)
    reproduce("--database", "Paired", *common, "--seeds", "0", *tiny, "--epochs", "1", "--batch_size", "16",
              "--data_root", folder_a)
    second = reproduce("--database", "Paired", *common, "--seeds", "0", *tiny, "--epochs", "1", "--batch_size", "16",
                       "--data_root", folder_b)
    assert "finished earlier" not in second.stdout
    paired_rows = [r for r in table_rows(sweep) if r["database"] == "Paired" and r["method"] == "KD"]
    assert len(paired_rows) == 2 and len({r["config"] for r in paired_rows}) == 2
    assert all(r["delta_mean"] != "" for r in paired_rows)

    # a results.json that cannot be read: reported, --aggregate exits 1, and the sweep redoes that node
    (broken,) = [p for p in (sweep / "runs").glob("Paired_m1_seed0_KD-*/KD/Paired/*/results.json")
                 if "_B_m1_" in p.parent.name]  # the run directory's name holds the data folder's
    broken.write_text("{ not json")
    aggregate = reproduce("--aggregate", "--out_dir", sweep, check=False)
    assert aggregate.returncode == 1 and "cannot be read" in aggregate.stdout
    assert "cannot be read" in (sweep / "table.md").read_text()
    again = reproduce("--database", "Paired", *common, "--seeds", "0", *tiny, "--epochs", "1", "--batch_size", "16",
                      "--data_root", folder_b)
    assert "2 of 3 nodes finished earlier" in again.stdout
    assert reproduce("--aggregate", "--out_dir", sweep).returncode == 0
