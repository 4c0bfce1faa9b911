"""reproduce.py --tune N (docs/tuning.md): study and evaluation nodes in the graph with equal budgets, the dry-run
plan, a small end-to-end tuning on Synthetic-MVD, a study killed (the tuner, a trial, both) and resumed, and a study
as a submitit job (LocalExecutor). The engine side (--init_seed, --no_test) is tests/test_init_seed_no_test.py."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from utils.sweep import graph as sweep_graph
from utils.sweep import node as node_mod
from utils.sweep import runner, tuning, tuning_plan

REPO = Path(__file__).resolve().parents[1]
TINY = ["--epochs", "1", "--max_steps", "2", "--mvd_samples", "400", "--device", "cpu", "--no-record"]


def tuned_methods() -> list[str]:
    """The comparison's methods (each declares its search space)."""
    return [name for name, cls in sweep_graph.comparison_methods().items() if cls.card.search_space]


def test_every_method_and_the_no_kd_student_get_a_study_of_the_same_n():
    methods = tuned_methods()
    nodes = sweep_graph.build_graph(["Synthetic-MVD"], ["m1", "m2"], [0, 1], methods, TINY, tune=7)
    studies = [n for n in nodes if n.tune]
    expected = {(m, mode, seed) for m in [*methods, "S"] for mode in ("m1", "m2") for seed in (0, 1)}
    assert {(n.method, n.mode, n.seed) for n in studies} == expected
    assert {n.tune["trials"] for n in studies} == {7} and {n.tune["startup"] for n in studies} == {2}
    ids = {n.id: n for n in nodes}
    for study in studies:  # on the default run's teacher; an evaluation node on each study; teachers never tuned
        default = next(n for n in nodes if not n.tune and not n.study and (n.method, n.mode, n.seed) == (
            study.method, study.mode, study.seed))
        assert study.teacher == default.teacher and study.args == default.args
        evaluation = [n for n in nodes if n.study == study.id]
        assert len(evaluation) == 1 and study.id in evaluation[0].deps and evaluation[0].args == default.args
        assert set(study.tune["defaults"]) == set(ids[study.id].tune["defaults"])
    assert not [n for n in studies if n.method == "T"]
    assert len({n.id for n in nodes}) == len(nodes)
    # another N is another study
    other = sweep_graph.build_graph(["Synthetic-MVD"], ["m1"], [0], methods[:1], TINY, tune=8)
    assert not {n.id for n in other if n.tune} & {n.id for n in studies}


def test_startup_trials_and_the_trials_init_seeds():
    assert [tuning_plan.startup_trials(n) for n in (1, 3, 6, 20, 60)] == [2, 2, 2, 7, 10]
    seeds = {tuning_plan.trial_init_seed(seed, number) for seed in range(20) for number in range(50)}
    assert len(seeds) == 20 * 50 and not seeds & set(range(20))  # no trial shares an evaluation's or another's


def test_dry_run_prints_the_spaces_and_the_trial_plan(capsys, tmp_path):
    assert runner.main(["--methods", "KD", "KD-UU", "--modes", "m1", "--seeds", "0", "1", "--tune", "2",
                        "--dry_run", "--out_dir", str(tmp_path / "sw"), "--", *TINY]) == 0
    out = capsys.readouterr().out
    for method in ("S", "KD", "KD-UU"):  # each space, its relative ranges resolved on the dataset
        defaults = sweep_graph.search_defaults(method, ["--database", "Synthetic-MVD"])
        space = [param.describe() for param in sweep_graph.resolved_space(method, defaults)]
        assert f"  {method} on Synthetic-MVD: {'; '.join(space)}\n" in out
    assert "  S on Synthetic-MVD: --lr log-uniform in [0.0001, 0.01]" in out  # 0.1-10 x the default 1e-3
    assert ("Trial plan: 2 trials per study, the same N for every method, S included: S 2 x 2, KD 2 x 2, KD-UU 2 x 2 "
            "= 12 trials in 6 studies, then 6 evaluation runs") in out
    assert "N = 2 is at or below TPE's start-up count (2)" in out and "no pruning" in out
    assert "KD m1 seed 1 (Synthetic-MVD) tune [tune]  <- T seed 1 (Synthetic-MVD)" in out
    assert not (tmp_path / "sw").exists()


@pytest.mark.parametrize("argv, message", [
    (["--tune", "0"], "--tune must be between 1 and"),
    (["--tune_prune"], "--tune_prune prunes the trials of --tune N"),
    (["--", "--init_seed", "3"], "--init_seed is set by reproduce.py --tune for its trials and tuned runs only"),
    (["--set", "KD:--no_test"], "--set KD:--no_test: that flag is set by the sweep"),
])
def test_bad_tuning_flags_one_line_exit_2(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as stop:
        runner.main([*argv, "--dry_run", "--out_dir", str(tmp_path)])
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_the_cell_is_shared_by_the_seeds_of_one_setting_only():
    from kd_methods import get_method
    from utils import cli

    def cell(seed, trials=4, *extra):
        description = cli.describe(get_method("S"), ["--seed", str(seed), *TINY, *extra])
        return tuning.cell_digest("S", description, {"trials": trials, "startup": 2, "prune": False})

    assert cell(0) == cell(3) == cell(0, 4, "--lr", "0.5")  # searched options aside
    assert len({cell(0), cell(0, 5), cell(0, 4, "--epochs", "2")}) == 3


def test_end_to_end_tuning_on_synthetic_mvd(tmp_path):
    sweep = tmp_path / "sw"
    proc = subprocess.run([sys.executable, "reproduce.py", "--methods", "KD", "--modes", "m1", "--seeds", "0",
                           "--tune", "2", "--jobs", "2", "--out_dir", str(sweep), "--", *TINY], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Nodes: 7 done, 0 failed, 0 skipped (of 7)" in proc.stdout
    for method in ("S", "KD"):
        study = next((sweep / "runs").glob(f"*seed0_{method}_tune-*"))
        record = json.loads((study / "tuning.json").read_text())
        assert record["trials"] == record["complete"] == 2 and record["method"] == method  # the same N for both
        assert set(record["params"]) == set(record["defaults"]) == set(record["space"])
        assert record["chosen_trial"] in (0, 1) and len(record["cell"]) == 16 and record["trial_seconds"] > 0
        assert record["sampler"].startswith("TPE(seed=") and record["pruning"] is False
        trial_runs = sorted(study.glob("trials/*/*/*/*/results.json"))
        assert len(trial_runs) == 2
        default_run = json.loads(next((sweep / "runs").glob(f"*seed0_{method}-*/*/*/*/results.json")).read_text())
        for number, path in enumerate(trial_runs):
            trial = json.loads(path.read_text())
            args = json.loads((path.parent / "args.json").read_text())
            # the seed's own split, never its test split, an initialisation of its own
            assert trial["metrics"]["test"] is None and args["no_test"] and trial["seed"] == 0
            assert args["init_seed"] == tuning_plan.trial_init_seed(0, number)
            assert trial["split_sizes"] == default_run["split_sizes"]
            if number == record["chosen_trial"]:
                assert round(100 * trial["metrics"]["val"]["accuracy"], 4) == record["validation"]
        evaluation = json.loads(next((sweep / "runs").glob(f"*seed0_{method}_tuned-*/*/*/*/results.json"))
                                .read_text())
        assert evaluation["tuning"] == record and evaluation["metrics"]["test"] is not None
        eval_args = json.loads(next((sweep / "runs").glob(f"*seed0_{method}_tuned-*/*/*/*/args.json")).read_text())
        assert eval_args["init_seed"] is None and eval_args["seed"] == 0  # initialised from the seed: no trial's
        assert all(eval_args[name] == value for name, value in record["params"].items())
    commands = (sweep / "commands.sh").read_text()
    assert "python -m utils.sweep.tuning " in commands and "$(tuned " in commands
    # the tables read the tuned runs as their own setting, in their cell; the trials are not runs of the table
    rows = list(csv.DictReader((sweep / "runs.csv").open()))
    tuned = {row["method"]: row for row in rows if row["setting"] == "tuned"}
    assert set(tuned) == {"S", "KD"} and len(rows) == 5
    for method, row in tuned.items():
        study = next((sweep / "runs").glob(f"*seed0_{method}_tune-*"))
        assert row["config_digest"] == json.loads((study / "tuning.json").read_text())["cell"]


# -- a study killed and resumed ----------------------------------------------------------------------------------
def _study_dir(tmp_path, trials: int, epochs: int, prune: bool = False) -> Path:
    """The S study node of a one-seed sweep, its node files written (S has no teacher)."""
    nodes = sweep_graph.build_graph(["Synthetic-MVD"], ["m1"], [0], ["KD"], [
        "--epochs", str(epochs), "--max_steps", "1", "--mvd_samples", "400", "--device", "cpu", "--no-record"],
        tune=trials, prune=prune)
    runner.write_node_files(tmp_path, nodes)
    return tmp_path / "runs" / next(n.id for n in nodes if n.tune and n.method == "S")


def _tuner(study: Path) -> subprocess.Popen:
    """The study node's process as the warm launcher runs it (its trials forked from it)."""
    with open(study / "tuner.log", "a") as log:
        return subprocess.Popen(node_mod.study_command(study, [], sys.executable, warm=True), cwd=REPO,
                                start_new_session=True, stdout=log, stderr=subprocess.STDOUT)


def _running_script(study: Path, number: int, tuner: subprocess.Popen) -> int:
    """The pid of trial ``number``'s script once it has written a checkpoint (from its run.lock)."""
    deadline = time.time() + 300
    while time.time() < deadline and tuner.poll() is None:
        for lock in (study / "trials" / f"{number:04d}").glob("*/*/*/run.lock"):
            if (lock.parent / "checkpoint.pth").is_file() and not (lock.parent / "results.json").exists():
                try:
                    return int(lock.read_text().split()[0])
                except (OSError, ValueError, IndexError):
                    pass
        time.sleep(0.02)
    raise AssertionError(f"trial {number} never ran (tuner: {tuner.poll()}): {(study / 'tuner.log').read_text()}")


def _trials(study: Path):
    optuna = tuning_plan.load_optuna()
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(study / tuning.STORAGE_FILE)))
    return optuna.load_study(study_name=study.name, storage=storage).trials


def test_a_killed_study_resumes_without_losing_or_repeating_a_trial(tmp_path):
    """3 trials of the no-KD student. (1) tuner and trial 1 SIGKILLed together: trial 1 is marked failed and its
    values queued again (trial 2); (2) trial 2's script SIGKILLed under a living tuner: failed, not queued again (it
    is a re-queued trial); (3) the tuner alone SIGKILLed during trial 3: the trial finishes on its own and the next
    tuner counts it from its results, without running it again."""
    study = _study_dir(tmp_path, trials=3, epochs=15)
    first = _tuner(study)
    _running_script(study, 1, first)
    os.killpg(first.pid, signal.SIGKILL)  # the tuner and trial 1 at once
    first.wait()

    second = _tuner(study)
    os.kill(_running_script(study, 2, second), signal.SIGKILL)  # trial 2's script only
    pid = _running_script(study, 3, second)
    os.kill(second.pid, signal.SIGKILL)  # the tuner alone; trial 3 runs on
    second.wait()
    assert not (study / "tuning.json").exists()

    third = _tuner(study)
    assert third.wait(timeout=600) == 0
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # trial 3 ended on its own
    trials = _trials(study)
    states = [t.state.name for t in trials]
    assert states == ["COMPLETE", "FAIL", "FAIL", "COMPLETE", "COMPLETE"], states
    interrupted = json.loads((study / "interrupted.json").read_text())
    assert interrupted == {"1": "left running by a killed tuner", "2": interrupted["2"]} and interrupted["2"]
    assert trials[2].user_attrs == {"requeued_from": 1}
    assert trials[2].params == trials[1].params  # queued again once, with its values
    assert not [t for t in trials if t.user_attrs.get("requeued_from") == 2]
    assert len(list(study.glob("trials/0003/*/*/*/args.json"))) == 1  # trial 3 ran once
    assert json.loads(next(study.glob("trials/0003/*/*/*/results.json")).read_text())["metrics"]["val"][
        "accuracy"] == trials[3].value
    record = json.loads((study / "tuning.json").read_text())
    assert record["trials"] == record["complete"] == 3 and record["interrupted"] == 2 and record["failed"] == 0
    log = (study / "tuner.log").read_text()
    assert "trial 1 interrupted (left running by a killed tuner); its values are queued again" in log
    assert "trial 2 interrupted (killed by signal SIGKILL); already a re-queued trial: not queued again" in log
    assert "trial 3 finished while the tuner was down" in log
    # done: a fourth tuner starts nothing
    assert _tuner(study).wait(timeout=300) == 0 and len(_trials(study)) == 5
    assert "the study is done" in (study / "tuner.log").read_text()


def test_a_study_as_a_submitit_job(tmp_path):
    """The study node as one job of submitit's LocalExecutor, its trials forked from the job's interpreter (with
    pruning on: each trial's run reports its validation metric every epoch)."""
    import submitit  # requirements-dev.txt

    study = _study_dir(tmp_path, trials=2, epochs=2, prune=True)
    executor = submitit.AutoExecutor(folder=str(tmp_path / "submitit" / "%j"), cluster="local")
    executor.update_parameters(timeout_min=10)
    job = executor.submit(runner.NodeJob(str(study), [], uuid.uuid4().hex, warm=True))
    status = job.result()
    assert status["state"] == "done", status
    record = json.loads((study / "tuning.json").read_text())
    assert record["complete"] == 2 and node_mod.node_state(study, "S", "Synthetic-MVD")[0] == "done"
    assert record["pruning"] is True
    assert "[warm start" in next(study.glob("trials/0000/node.log")).read_text()
    rows = [json.loads(line) for line in next(study.glob("trials/0001/*/*/*/metrics.jsonl")).read_text().splitlines()]
    assert len(rows) == 2 and all("val_phase/accuracy" in row for row in rows)


def test_median_pruning_stops_a_trial_below_the_median(tmp_path):
    """The watcher of a running trial reports each new epoch's val_phase metric; once the earlier trials have
    finished, a trial below their median at the same epoch is pruned after the warm-up (half of trial 0's epochs)."""
    from types import SimpleNamespace

    optuna = tuning_plan.load_optuna()
    node = {"method": "S", "database": "Synthetic-MVD"}

    def write_rows(folder: Path, values: list[float]):
        run = folder / "S" / "Synthetic-MVD" / "run"
        run.mkdir(parents=True, exist_ok=True)
        (run / "args.json").write_text("{}")
        (run / "metrics.jsonl").write_text("".join(json.dumps({"epoch": i, "val_phase/accuracy": v}) + "\n"
                                                   for i, v in enumerate(values)))

    study = optuna.create_study(direction="maximize")
    owner = SimpleNamespace(optuna=optuna, study=study, node=node, metric="accuracy", settings={"startup": 2},
                            trial_dir=lambda number: tmp_path / f"{number:04d}")
    for number in range(2):  # two finished trials at 0.8 every epoch
        trial = study.ask()
        write_rows(owner.trial_dir(number), [0.8] * 4)
        watcher = tuning.Pruning(owner, trial, owner.trial_dir(number))
        assert watcher() is False
        study.tell(trial, 0.8)
    trial = study.ask()
    watcher = tuning.Pruning(owner, trial, owner.trial_dir(2))
    write_rows(owner.trial_dir(2), [0.1, 0.1])
    assert watcher() is False and watcher.step == 2  # within the warm-up: 4 // 2 epochs
    write_rows(owner.trial_dir(2), [0.1, 0.1, 0.1])
    assert watcher() is True and watcher.pruned and watcher.step == 3
