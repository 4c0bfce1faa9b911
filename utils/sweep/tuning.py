"""One hyper-parameter search: the study node of ``reproduce.py --tune N`` (docs/tuning.md).

A study node of (database, mode, method, seed) runs its N trials one after another with Optuna, in its node
directory, and writes :data:`~utils.sweep.node.TUNING_FILE` when they are done; its evaluation node then runs the
chosen values (utils/sweep/node.py):

* sampler: TPE seeded from the node (:func:`sampler_seed`), its start-up trials (random) a third of N
  (:func:`utils.sweep.tuning_plan.startup_trials`); trial 0 is the method's defaults on the dataset (enqueued);
* a trial is one run of the method's script in ``trials/<number>/``, through :func:`utils.sweep.node.run_node` as
  any node (forked from this interpreter under the warm start), with the trial's values, ``--no_test`` (no test
  sample of the seed reaches its tuning) and ``--init_seed`` :func:`trial_init_seed` (an initialisation no other
  trial and no evaluation run uses, so the evaluation does not inherit the luckiest of N initialisations);
* objective: the validation headline metric (accuracy, or mIoU) of the trial run's selected checkpoint, as its
  results.json records it (the method's own selection, not a second one);
* storage: Optuna's journal file ``study.journal`` beside node.json: a killed study resumes with its finished trials
  kept (a trial whose run finished while the tuner was down is told from its results.json); a trial left RUNNING
  without a finished run, or whose script was killed by a signal, is marked failed and its values queued again,
  once; such interrupted trials (listed with the reason in :data:`INTERRUPTED_FILE`) do not count against N, a
  trial whose run fails on its own (a diverging learning rate) does. Only Optuna's public API is used;
* ``--tune_prune``: median pruning on the validation headline metric each epoch (the runs get ``--val_phase``);
  a pruned trial's script is stopped.
"""
from __future__ import annotations

import fcntl
import importlib
import math
import sys
import time
from pathlib import Path

from kd_methods import get_method
from utils import cli, provenance
from utils.core.atomic import make_dirs
from utils.core.data_digest import canonical_digest
from utils.core.errors import UserError
from utils.core.health import read_metrics
from utils.core.script import exit_on_error
from utils.core.search_space import Param
from utils.sweep import node as node_mod
from utils.sweep.graph import resolved_space, search_defaults
from utils.sweep.tuning_plan import load_optuna, sampler_seed, trial_init_seed

STORAGE_FILE = "study.journal"
LOCK_FILE = "study.lock"
TRIALS_DIR = "trials"
#: the trials interrupted from outside (trial number -> why), which do not count against N
INTERRUPTED_FILE = "interrupted.json"
#: the user attribute of a trial queued again after an interruption: the number of the interrupted one
REQUEUED = "requeued_from"


def cell_digest(method: str, description, settings: dict) -> str:
    """The tuned cell's identity (16 hex): the method's result-defining options without the searched ones (its
    configuration digest's inputs: data, teacher configuration), plus the declared space, N, the sampler settings
    and pruning. The seeds of one tuned setting share it whatever values they chose."""
    card = get_method(method).card
    args = description.args
    options = {k: v for k, v in description.options.items() if k not in card.search_space}
    config = provenance.run_config(method, options, description.spec.name,
                                   provenance.data_digest(description.spec, args), provenance.checkpoint_inputs(args))
    return canonical_digest({"config": config, "space": [p.describe() for p in card.search_params],
                             "trials": settings["trials"], "sampler": ["TPE", settings["startup"]],
                             "pruning": settings["prune"]})[:16]


def suggest(trial, params: list[Param]) -> dict:
    """The trial's value of each searched option (enqueued values come back as they were queued)."""
    values = {}
    for param in params:
        if param.kind == "choice":
            values[param.name] = trial.suggest_categorical(param.name, list(param.choices))
        elif param.kind == "int":
            values[param.name] = trial.suggest_int(param.name, int(param.low), int(param.high))
        else:
            values[param.name] = trial.suggest_float(param.name, param.low, param.high, log=param.log)
    return values


class Study:
    """The study of one node directory: its Optuna study, settings and trials."""

    def __init__(self, node_dir: Path, node: dict, runtime: list[str], warm: bool):
        self.optuna = optuna = load_optuna()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.node_dir, self.node, self.runtime, self.warm = node_dir, node, runtime, warm
        self.settings = node["tune"]
        self.trials = int(self.settings["trials"])
        ckpt = node_mod.teacher_checkpoint(node_dir.parent, node)
        if node.get("teacher") and ckpt is None:
            raise UserError(f"teacher {node['teacher']} has not finished")
        self.base = [*node["args"], *(["--ckpt_name", str(ckpt)] if ckpt else [])]
        self.description = cli.describe(get_method(node["method"]), [*self.base, *runtime])
        self.metric = self.description.spec.headline_metric
        self.defaults = search_defaults(node["method"], [*self.base, *runtime])
        self.params = resolved_space(node["method"], self.defaults)
        storage = optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(node_dir / STORAGE_FILE)))
        self.study = optuna.create_study(study_name=node["id"], storage=storage, direction="maximize",
                                         load_if_exists=True)
        self.resumed = bool(self.study.trials)
        self.study.sampler = optuna.samplers.TPESampler(
            seed=sampler_seed(node["id"], len(self.study.trials)), n_startup_trials=self.settings["startup"])
        self.study.pruner = optuna.pruners.NopPruner()

    # -- the trials' bookkeeping ------------------------------------------------------------------------------
    def state(self, name: str):
        return getattr(self.optuna.trial.TrialState, name)

    def counted(self) -> int:
        """Trials that used the budget: finished, pruned, or failed on their own (not interrupted)."""
        done = (self.state("COMPLETE"), self.state("PRUNED"))
        interrupted = self.interruptions()
        return sum(t.state in done or (t.state == self.state("FAIL") and str(t.number) not in interrupted)
                   for t in self.study.trials)

    def interruptions(self) -> dict[str, str]:
        """Trial number (as text) -> why, of the trials interrupted from outside."""
        return node_mod.read_json(self.node_dir / INTERRUPTED_FILE, {}) or {}

    def trial_dir(self, number: int) -> Path:
        return self.node_dir / TRIALS_DIR / f"{number:04d}"

    @staticmethod
    def log(line: str) -> None:
        """A line of the study's output (its node.log under the sweep)."""
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}", flush=True)

    def value_of(self, number: int) -> float | None:
        """The objective of a finished trial run: its results.json's validation headline metric."""
        state, run_dir = node_mod.node_state(self.trial_dir(number), self.node["method"], self.node["database"])
        if state != "done":
            return None
        results = node_mod.read_json(run_dir / "results.json", {}) or {}
        value = ((results.get("metrics") or {}).get("val") or {}).get(self.metric)
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None

    def interrupted(self, trial, why: str) -> None:
        """Mark ``trial`` (a FrozenTrial) failed by an interruption and queue its values again, once."""
        # recorded before the trial is failed: a kill in between leaves it RUNNING, and the next tuner does the same
        node_mod.write_json(self.node_dir / INTERRUPTED_FILE, {**self.interruptions(), str(trial.number): why})
        self.study.tell(trial.number, state=self.state("FAIL"), skip_if_finished=True)
        if REQUEUED in trial.user_attrs:
            self.log(f"trial {trial.number} interrupted ({why}); already a re-queued trial: not queued again")
            return
        self.study.enqueue_trial(trial.params, user_attrs={REQUEUED: trial.number})
        self.log(f"trial {trial.number} interrupted ({why}); its values are queued again")

    def recover(self) -> None:
        """Trials a killed tuner left RUNNING: told from their finished run, else interrupted and re-queued."""
        for trial in self.study.get_trials(deepcopy=False, states=(self.state("RUNNING"),)):
            value = self.value_of(trial.number)
            status = node_mod.read_json(self.trial_dir(trial.number) / "status.json", {}) or {}
            if value is not None:
                self.study.tell(trial.number, value)
                self.log(f"trial {trial.number} finished while the tuner was down: val {self.metric} {value:.4f}")
            elif status.get("state") == "failed" and (status.get("rc") or 0) > 0:
                self.study.tell(trial.number, state=self.state("FAIL"))
                self.log(f"trial {trial.number} failed: {status.get('error', '')}")
            else:
                self.interrupted(trial, "left running by a killed tuner")

    # -- running ------------------------------------------------------------------------------------------------
    def run(self) -> dict:
        if not self.study.trials:
            self.study.enqueue_trial(self.defaults)  # trial 0: the reference's setting
        self.recover()
        if self.warm:  # each trial is then forked from this interpreter with the imports done once
            for module in node_mod.WARM_PRELOAD:
                importlib.import_module(module)
        interrupted = 0
        while self.counted() < self.trials:
            before = self.counted()
            self.run_trial(self.study.ask())
            interrupted += self.counted() == before
            if interrupted > self.trials:  # every run killed from outside (e.g. out of memory): not a search
                raise UserError(f"{interrupted} trials were killed before they finished (see "
                                f"{self.node_dir / TRIALS_DIR}/*/node.log); run the sweep again once that is fixed")
        return self.finish()

    def run_trial(self, trial) -> None:
        values = suggest(trial, self.params)
        folder = make_dirs(self.trial_dir(trial.number))
        prune = bool(self.settings["prune"])
        args = [*self.base, *node_mod.param_flags(values), "--no_test", "--init_seed",
                str(trial_init_seed(self.node["seed"], trial.number)), *(["--val_phase"] if prune else [])]
        node_mod.write_json(folder / "node.json", {
            "id": f"{self.node['id']}-trial{trial.number}", "method": self.node["method"],
            "script": self.node["script"], "database": self.node["database"], "mode": self.node["mode"],
            "seed": self.node["seed"], "role": "trial", "args": args, "runtime": self.runtime, "teacher": None,
            "trial": trial.number, "params": values})
        watcher = Pruning(self, trial, folder) if prune else None
        status = node_mod.run_node(folder, [], warm=self.warm, watch=watcher)
        shown = " ".join(node_mod.param_flags(values))
        value = self.value_of(trial.number) if status["state"] == "done" else None
        if watcher is not None and watcher.pruned:
            self.study.tell(trial, state=self.state("PRUNED"))
            self.log(f"trial {trial.number} ({shown}): pruned at epoch row {watcher.step}")
        elif value is not None:
            self.study.tell(trial, value)
            self.log(f"trial {trial.number} ({shown}): val {self.metric} {value:.4f}")
        elif (status.get("rc") or 0) < 0:  # killed by a signal from outside: not the values' fault
            self.interrupted(self.study.get_trials(deepcopy=False)[trial.number], status.get("error", "killed"))
        else:  # the run failed on its own (e.g. a diverging learning rate): a trial of the budget
            self.study.tell(trial, state=self.state("FAIL"))
            self.log(f"trial {trial.number} ({shown}): failed: {status.get('error', '')}")

    def trial_seconds(self, trial) -> float:
        """A trial's wall time: its attempts as the node wrapper measured them, else the run's own, else the span
        Optuna recorded."""
        folder = self.trial_dir(trial.number)
        status = node_mod.read_json(folder / "status.json", {}) or {}
        attempts = [a.get("wall_s") or 0.0 for a in status.get("attempts", [])]
        if attempts:
            return float(sum(attempts))
        state, run_dir = node_mod.node_state(folder, self.node["method"], self.node["database"])
        if state == "done":
            return float((node_mod.read_json(run_dir / "results.json", {}) or {}).get("wall_time_s") or 0.0)
        if trial.datetime_start and trial.datetime_complete:
            return (trial.datetime_complete - trial.datetime_start).total_seconds()
        return 0.0

    def finish(self) -> dict:
        trials, interrupted = self.study.trials, self.interruptions()
        complete = [t for t in trials if t.state == self.state("COMPLETE")]
        if not complete:
            raise UserError(f"no trial of {len(trials)} finished (see {self.node_dir / TRIALS_DIR}/*/node.log)")
        best = max(complete, key=lambda t: (t.value, -t.number))  # the earliest of equal values
        card = get_method(self.node["method"]).card
        record = {
            "method": self.node["method"], "database": self.node["database"], "mode": self.node["mode"],
            "seed": self.node["seed"], "trials": self.trials,
            "complete": sum(t.state in (self.state("COMPLETE"), self.state("PRUNED")) for t in trials),
            "space": {p.name: p.describe() for p in card.search_params},
            "params": dict(best.params), "defaults": self.defaults, "chosen_trial": best.number,
            "validation": round(100.0 * best.value, 4),
            "trial_seconds": round(sum(self.trial_seconds(t) for t in trials), 2),
            "sampler": f"TPE(seed={sampler_seed(self.node['id'])}, n_startup_trials={self.settings['startup']})",
            "pruning": bool(self.settings["prune"]), "cell": cell_digest(self.node["method"], self.description,
                                                                         self.settings),
            # beside the shared fields: the ranges searched on this dataset, what the objective was, what failed
            "ranges": {p.name: p.describe() for p in self.params}, "metric": f"val {self.metric} (%)",
            "failed": sum(t.state == self.state("FAIL") and str(t.number) not in interrupted for t in trials),
            "interrupted": len(interrupted),
        }
        node_mod.write_json(self.node_dir / node_mod.TUNING_FILE, record)
        self.log(f"chose trial {best.number} ({' '.join(node_mod.param_flags(best.params))}): val {self.metric} "
                 f"{best.value:.4f}; {record['complete']} of {self.trials} trials finished")
        return record


class Pruning:
    """The watcher of a running trial (:func:`utils.sweep.node.run_node`'s ``watch``): reports each new epoch's
    validation headline metric (``val_phase/<metric>`` of metrics.jsonl) to the trial and says when the median
    rule prunes it. Steps are the run's epoch rows in order; the first half of trial 0's rows is warm-up."""

    def __init__(self, study: Study, trial, folder: Path):
        self.owner, self.trial, self.folder = study, trial, folder
        self.step, self.pruned = 0, False
        self.key = f"val_phase/{study.metric}"
        rows = _metric_rows(study.trial_dir(0), study.node, self.key)
        study.study.pruner = study.optuna.pruners.MedianPruner(
            n_startup_trials=study.settings["startup"], n_warmup_steps=len(rows) // 2)

    def __call__(self) -> bool:
        rows = _metric_rows(self.folder, self.owner.node, self.key)
        for value in rows[self.step:]:
            self.trial.report(value, self.step)
            self.step += 1
            if self.trial.should_prune():
                self.pruned = True
                return True
        return False


def _metric_rows(folder: Path, node: dict, key: str) -> list[float]:
    """The per-epoch values of ``key`` in the newest run under a trial's folder (a line still being written does not
    parse and is left out)."""
    dirs = node_mod.run_dirs(folder, node["method"], node["database"])
    return [float(row[key]) for row in read_metrics(dirs[-1]) if key in row] if dirs else []


def main(argv=None) -> int:
    """``python -m utils.sweep.tuning NODE_DIR [--warm] [RUNTIME FLAGS]``: run or resume the study of a node (the
    command :func:`utils.sweep.node.study_command` gives its node); exit code 0 once its tuning.json is written.
    ``--warm``: fork the trials from this interpreter, which imports torch and the project once."""
    argv = sys.argv[1:] if argv is None else list(argv)
    node_dir, rest = Path(argv[0]).resolve(), argv[1:]
    warm = "--warm" in rest
    runtime = [token for token in rest if token != "--warm"]
    node_mod.forward_termination()

    def body() -> int:
        node = node_mod.load_node(node_dir)
        # one tuner per study: a trial forked by a killed tuner holds the lock until it ends, so the next tuner
        # finds its run finished (or failed) instead of starting beside it
        with open(node_dir / LOCK_FILE, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if isinstance(node_mod.read_json(node_dir / node_mod.TUNING_FILE), dict):
                print(f"{node_dir / node_mod.TUNING_FILE} is written: the study is done")
                return 0
            Study(node_dir, node, runtime, warm).run()
        return 0

    return exit_on_error(body)


if __name__ == "__main__":
    sys.exit(main())
