"""--resume continues that run: differing flags are refused with the list (--epochs raised and runtime options are
applied and logged), a run still running is refused (run.lock), a stale lock is taken over, a finished run is left
as it is, a best.pth / stage file / run of another method gets one line. Per-epoch checkpoints hold what the stage
trains, frozen networks live in the stage files, and resuming from them is still exact (MST-Distill in stages 1 and
3 here; stage 2 in tests/test_mst.py)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from conftest import method_registration, refused
from kd_methods.supervised import UnimodalModel
from utils import engine
from utils.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--mvd_samples", "400", "--no-record", "--device", "cpu", "--max_steps", "2"]
MST = ["--epochs_s1", "2", "--epochs_s2", "1", "--epochs", "2", "--no-compare_baseline", "--mvd_samples", "400",
       "--no-record", "--device", "cpu", "--max_steps", "2"]


class Killed(Exception):
    pass


def killed_run(monkeypatch, method: str, out: Path, argv, at: tuple[int, int]) -> Path:
    """Run until the checkpoint of (stage index, epoch) is written, then die as a SIGKILL would (no clean-up)."""
    original = RunDir.save_checkpoint

    def save_then_die(self, state):
        original(self, state)
        if (state["stage"], state["epoch"]) == at:
            self.lock.held = False  # a killed process does not remove its lock
            raise Killed

    monkeypatch.setattr(RunDir, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        engine.main(method, [*argv, "--out_dir", str(out)])
    monkeypatch.setattr(RunDir, "save_checkpoint", original)
    (run,) = (out / method / "Synthetic-MVD").iterdir()
    assert (run / "run.lock").is_file() and not (run / "results.json").exists()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    fields = (run / "run.lock").read_text().split()
    (run / "run.lock").write_text(f"{gone.stdout.strip()} {fields[1]} -\n")  # as left by a process now dead
    return run


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished")
    engine.main("S", [*QUICK, "--epochs", "1", "--out_dir", str(out)])
    (run,) = (out / "S" / "Synthetic-MVD").iterdir()
    return run


def test_flags_that_differ_from_the_run_are_refused_with_the_list(monkeypatch, tmp_path, capsys):
    run = killed_run(monkeypatch, "S", tmp_path, [*QUICK, "--epochs", "3"], at=(0, 1))
    line = refused(capsys, "S", ["--resume", str(run), "--lr", "0.1", "--batch_size", "7", "--seed", "0"])
    assert "--lr 0.1 (run: 0.001)" in line and "--batch_size 7 (run: 256)" in line and "--seed" not in line, line
    assert "--epochs 2 (run: 3)" in refused(capsys, "S", ["--resume", str(run), "--epochs", "2"])  # no shortening
    assert [r["epoch"] for r in rows(run)] == [0]  # nothing was touched


def test_epochs_extend_a_killed_run_exactly_and_runtime_flags_apply(monkeypatch, tmp_path):
    straight = engine.main("S", [*QUICK, "--epochs", "4", "--out_dir", str(tmp_path / "straight")])
    run = killed_run(monkeypatch, "S", tmp_path / "killed", [*QUICK, "--epochs", "2"], at=(0, 1))
    resumed = engine.main("S", ["--resume", str(run), "--epochs", "4", "--threads", "1", "--device", "cpu"])
    assert json.dumps(resumed["metrics"]) == json.dumps(straight["metrics"])
    assert resumed["best_epoch"] == straight["best_epoch"] and resumed["epochs"] == 4
    assert [r["epoch"] for r in rows(run)] == [0, 1, 2, 3]
    log = (run / "log.txt").read_text()
    assert "changed: --epochs 4 (was 2), --threads 1 (was None)" in log
    assert "Took over the lock of process" in log and not (run / "run.lock").exists()


class _BestAtEpochZero(UnimodalModel):
    """Test-only method whose validation loss grows by one per epoch: epoch 0 stays the best."""

    card = replace(UnimodalModel.card, name="test-best-at-epoch-0")

    def stages(self):
        (stage,) = super().stages()
        val_step = stage.val_step
        stage.val_step = lambda batch, epoch: {k: v + epoch for k, v in val_step(batch, epoch).items()}
        return [stage]


def test_a_best_epoch_kept_over_later_ones_is_written_once_and_resumes_exactly(monkeypatch, tmp_path):
    name = _BestAtEpochZero.name
    straight = engine.main(name, [*QUICK, "--epochs", "4", "--out_dir", str(tmp_path / "straight")])
    run = killed_run(monkeypatch, name, tmp_path / "killed", [*QUICK, "--epochs", "4"], at=(0, 3))
    checkpoint = torch.load(run / "checkpoint.pth", weights_only=True)
    assert checkpoint["best"] == {"value": checkpoint["best"]["value"], "epoch": 0, "state": None,
                                  "state_file": "best-snapshot.pth"}
    snapshot = torch.load(run / "best-snapshot.pth", weights_only=True)
    assert snapshot["epoch"] == 0 and snapshot["kind"] == "snapshot"
    resumed = engine.main(name, ["--resume", str(run)])
    assert json.dumps(resumed["metrics"]) == json.dumps(straight["metrics"]) and resumed["best_epoch"] == 0
    assert not (run / "best-snapshot.pth").exists()  # the stage file holds the selection now


def test_a_run_that_is_still_running_is_refused(tmp_path, capsys):
    out = tmp_path / "live"
    process = subprocess.Popen([sys.executable, str(ROOT / "main-S.py"), *QUICK, "--max_steps", "1", "--epochs",
                                "100000", "--out_dir", str(out)], cwd=tmp_path, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline, run = time.time() + 120, None
        while time.time() < deadline and run is None and process.poll() is None:
            found = list((out / "S" / "Synthetic-MVD").glob("*/checkpoint.pth")) if out.exists() else []
            run = found[0].parent if found else None
            time.sleep(0.05)
        assert run is not None, "the run must have written a checkpoint"
        line = refused(capsys, "S", ["--resume", str(run)])
        assert f"in use by the running process {process.pid}" in line and "run.lock" in line, line
        assert process.poll() is None  # the running process was not disturbed
    finally:
        process.kill()
        process.wait()


def test_a_finished_run_is_reported_and_left_unchanged(finished, capsys):
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in finished.iterdir()}
    results = engine.main("S", ["--resume", str(finished)])
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "is finished (results.json exists); nothing was resumed or changed" in out[0]
    assert results == json.loads((finished / "results.json").read_text())
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in finished.iterdir()} == before
    result = subprocess.run([sys.executable, str(ROOT / "main-S.py"), "--resume", str(finished)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and result.stderr == "" and len(result.stdout.strip().splitlines()) == 1


def test_model_and_stage_files_and_other_methods_get_one_line(finished, capsys):
    line = refused(capsys, "S", ["--resume", str(finished / "best.pth")])
    assert "is a best.pth" in line and f"--resume {finished};" in line and "--ckpt_name" in line
    line = refused(capsys, "S", ["--resume", str(finished / "stage1-train.pth")])
    assert "is a stage file" in line and "--start_stage N --init_from" in line and f"--resume {finished}" in line
    line = refused(capsys, "T", ["--resume", str(finished)])
    assert "is a run of S, not T" in line and f"main-S.py --resume {finished}" in line


def _mst_states(monkeypatch, out: Path) -> tuple[Path, dict]:
    saved = {}
    original = RunDir.save_checkpoint

    def keep(self, state):
        original(self, state)
        saved[(state["stage"], state["epoch"])] = state

    monkeypatch.setattr(RunDir, "save_checkpoint", keep)
    engine.main("MST-Distill", [*MST, "--out_dir", str(out)])
    monkeypatch.setattr(RunDir, "save_checkpoint", original)
    (run,) = (out / "MST-Distill" / "Synthetic-MVD").iterdir()
    return run, saved


def test_per_epoch_checkpoints_hold_what_the_stage_trains(monkeypatch, tmp_path):
    run, saved = _mst_states(monkeypatch, tmp_path)
    prefixes = {0: ("teacher.", "aux.", "student."), 1: ("masknets.",), 2: ("student.", "gate.")}
    for (stage, epoch), state in saved.items():
        if epoch == 0:  # stage boundary: the stage file is the state
            assert state["method"] is None and state["optimizer"] is None
            assert state["base"] == f"stage{stage}-{('co-training', 'masknets', 'distillation')[stage - 1]}.pth"
            continue
        tensors = {key: value for key, value in state["method"].items() if not key.endswith("_extra_state")}
        assert state["method"]["_extra_state"]["stage3_history"] is not None  # MST-Distill's own small state
        keys = set(tensors)
        assert keys and all(key.startswith(prefixes[stage]) for key in keys), (stage, sorted(keys)[:5])
        assert state["base"] == (None if stage == 0 else saved[(stage, 0)]["base"])
        trained = sum(p.numel() for p in tensors.values())
        moments = sum(v.numel() for s in state["optimizer"]["state"].values() for k, v in s.items() if k != "step")
        assert moments == 2 * trained  # Adam's two moments of what trains, nothing else
    full = torch.load(run / "stage2-masknets.pth", weights_only=True)["method"]
    assert any(k.startswith("teacher.") for k in full) and any(k.startswith("masknets.") for k in full)

def test_a_stage_file_passed_to_resume_points_to_start_stage(tmp_path, capsys):
    engine.main("MST-Distill", [*MST, "--epochs_s1", "1", "--epochs", "1", "--out_dir", str(tmp_path)])
    (run,) = (tmp_path / "MST-Distill" / "Synthetic-MVD").iterdir()
    stage_file = run / "stage2-masknets.pth"
    line = refused(capsys, "MST-Distill", ["--resume", str(stage_file)])
    assert f"--start_stage N --init_from {stage_file}" in line and f"--resume {run}" in line


@pytest.mark.parametrize("at", [(0, 1), (2, 1)], ids=["stage1", "stage3"])
def test_mst_resume_in_stage_1_and_3_is_exact(monkeypatch, tmp_path, at):
    straight = engine.main("MST-Distill", [*MST, "--out_dir", str(tmp_path / "straight")])
    run = killed_run(monkeypatch, "MST-Distill", tmp_path / "killed", MST, at=at)
    resumed = engine.main("MST-Distill", ["--resume", str(run)])
    assert json.dumps(resumed["metrics"]) == json.dumps(straight["metrics"])
    assert resumed["best_epoch"] == straight["best_epoch"]
    (reference,) = (tmp_path / "straight" / "MST-Distill" / "Synthetic-MVD").iterdir()
    assert [r.get("val/ce") for r in rows(run)] == [r.get("val/ce") for r in rows(reference)]


def test_first_log_line_of_mst_names_the_stage_epochs(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "main-MST-Distill.py"), "--help"], capture_output=True,
                            text=True, timeout=120)
    assert "does not shorten stages 1-2" in " ".join(result.stdout.split())
    engine.main("MST-Distill", [*MST, "--epochs_s1", "0", "--epochs_s2", "0", "--epochs", "1",
                                "--out_dir", str(tmp_path)])
    (run,) = (tmp_path / "MST-Distill" / "Synthetic-MVD").iterdir()
    first = (run / "log.txt").read_text().splitlines()[0]
    assert "0 co-training (--epochs_s1) + 0 masknets (--epochs_s2) + 1 distillation (--epochs)" in first
    assert "--epochs sets stage 3 only" in first


# test-only methods, registered for this module's tests only
_test_methods = method_registration(_BestAtEpochZero)
