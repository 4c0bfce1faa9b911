"""The one training/evaluation loop every script runs.

flags -> DatasetSpec -> DataSource + splits -> method (an nn.Module with stages) -> per stage: epochs of
(train steps: losses -> sum -> backward -> step; validation -> selection) -> evaluation of the selected
model -> run directory. Checkpoints are written after every epoch and at every stage boundary, holding
everything needed to continue bit-for-bit: method state, optimiser state, the best snapshot and all RNGs.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import math
import sys
import time
import traceback
from pathlib import Path

import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from datasets import DATASETS, BatchLoader, dataset_names, get_spec
from datasets.checks import check_source, check_splits
from datasets.splits import INDEX_SEED, generate_permutations, indices_path, resolve_split, write_indices_csv
from kd_methods import get_method
from kd_methods.base import Method, RunContext, Stage, autocast, evaluate, evaluate_splits
from utils import cli
from utils import provenance
from utils.core.checkpoints import full_method_state, load_checkpoint
from utils.core.errors import NonFiniteLossError, RunInterrupted, UserError
from utils.core.health import read_metrics, training_warnings
from utils.core.runtime import (configure_threads, init_seed, resolve_device, rng_state, seed_everything,
                                set_rng_state)
from utils.core.script import exit_on_error
from utils.description import RunDescription
from utils.rundir import RunDir

LOG_EVERY = 20  # steps between progress-bar refreshes and finiteness checks (each one syncs the device)


def main(method_name: str, argv=None) -> dict | None:
    """Entry point of every ``main-*.py`` / ``test-*.py``: bad input ends with one line and exit code 2."""
    def body():
        method_cls = get_method(method_name)
        return run(method_cls, cli.describe(method_cls, argv))

    return exit_on_error(body)


def build_context(description: RunDescription, device, log=print) -> RunContext:
    """The data, splits and loaders of the run ``description`` describes (:func:`utils.cli.describe`)."""
    args, spec = description.args, description.spec
    source = spec.load(args)
    if spec.resolve_split is not None:  # a split of the database's own (Paired: DIR/splits.csv or groups.npy)
        train, val, test = spec.resolve_split(args, len(source), log)
    else:
        train, val, test = resolve_split(spec.name, len(source), args.seed, from_file=spec.split == "index_file",
                                         metadata_dir=args.metadata_dir, log=log, data_root=args.data_root)
    splits = {"train": train, "val": val, "test": test}
    check_splits(spec.name, len(source), splits)  # before anything computes statistics of a split
    # --no_test: the data checks and statistics see the train and val samples only, no loader serves the test split
    # (its indices stay in the record: they are the split's identity, not data)
    read = {name: part for name, part in splits.items() if name != "test"} if args.no_test else splits
    if spec.fit is not None:  # statistics of the training split only (e.g. UCI-MFeat's standardisation)
        source = spec.fit(source, read, args)
    check_source(source, spec, read)  # before the first epoch: empty splits, labels, NaN (datasets/checks.py)
    if args.data_on_device and source.in_memory:
        source = source.to(device)

    def make_loader(split: str, shuffle: bool | None = None, batch_size: int | None = None,
                    max_steps: int | None = -1) -> BatchLoader:
        if split not in read:
            raise RuntimeError(f"the {split} split was asked for, but this run has --no_test")
        return BatchLoader(source, splits[split], batch_size or args.batch_size,
                           shuffle=(split == "train") if shuffle is None else shuffle, seed=init_seed(args),
                           device=device,
                           num_workers=args.num_workers if split == "train" else 0,
                           max_steps=args.max_steps if max_steps == -1 else max_steps)

    ctx = RunContext(args=args, spec=spec, device=device, source=source, splits=splits, make_loader=make_loader,
                     log=log)
    ctx.make_record = functools.partial(provenance.context_record, ctx)
    return ctx


def run_tag(args, spec) -> str:
    names = [getattr(args, flag) for flag in ("Tmodel", "Smodel") if getattr(args, flag, None)]
    tag = spec.run_tag(args) if spec.run_tag is not None else ""  # e.g. UCI-MFeat's view pair
    options = f"_{tag}" if tag else ""
    return f"{'--'.join(names)}{options}_{args.mode}_seed{args.seed}"


def run(method_cls: type[Method], description: RunDescription) -> dict:
    started = time.time()
    args = description.args
    threads = configure_threads(getattr(args, "threads", None))
    seed_everything(init_seed(args))
    device = resolve_device(args.device)
    changes = description.resume_changes
    resume = load_checkpoint(args.resume) if args.resume else None

    if resume is not None:
        path = _run_path(args.resume)
        position = (resume["stage"], resume["epoch"])
        run_dir = RunDir.reopen(path, args.record, keep_metrics=lambda row: (row["stage_index"], row["epoch"] + 1)
                                <= position)
        run_dir.log(f"Resuming {path} at stage {position[0]}, epoch {position[1]}: {method_cls.epoch_plan(args)}"
                    + (f"; changed: {', '.join(changes)}" if changes else ""))
    else:
        # created once the data and models have loaded: a run refused before its first epoch leaves nothing
        run_dir = RunDir.deferred(args.out_dir, method_cls.name, args.database, run_tag(args, description.spec),
                                  vars(args), args.record)
        run_dir.log(f"{method_cls.name} on {args.database}: {method_cls.epoch_plan(args)}")
    if run_dir.lock.took_over:
        run_dir.log(f"Took over the lock of {run_dir.lock.took_over}, which has ended")
    try:
        ctx = build_context(description, device, log=run_dir.log)
        ctx.run_path = run_dir.path
        ctx.provenance = run_dir.provenance = provenance.run_record(description, ctx.splits)
        if resume is not None:
            _check_same_inputs(resume, ctx.provenance, run_dir.path, args)
        method = method_cls(ctx).to(device)
        stages = method.stages()
        if resume is not None:
            _load_resumed_state(method, resume, run_dir.path / "checkpoint.pth")
            set_rng_state(resume["rng"])
        ctx.run_path = run_dir.materialize()
        run_dir.log(f"{method_cls.name} on {args.database} ({device}); run directory {run_dir.path}")
        run_dir.log(threads)
        best_epoch = fit(method, stages, ctx, run_dir, resume)
        results = finish(method, ctx, run_dir, best_epoch, time.time() - started, device, stages)
    except BaseException as error:
        resumable = run_dir.has_checkpoint
        _record_failure(run_dir, error, new_run=resume is None)
        if isinstance(error, KeyboardInterrupt):
            raise RunInterrupted(f"interrupted; resume with --resume {run_dir.path}" if resumable
                                 else "interrupted before the first checkpoint; nothing was kept") from None
        raise
    finally:
        run_dir.close()
    print(f"Run directory: {run_dir.path}", flush=True)
    return results


def _check_same_inputs(resume: dict, current: dict, path, args) -> None:
    """A resumed run continues on the data and from the checkpoints it started with: a file changed since (another
    teacher written over its best.pth, other data under the same folder) is refused, as it would mix two runs."""
    saved = resume.get("provenance") or {}
    changed = []
    if saved.get("data_digest") and saved["data_digest"] != current.get("data_digest"):
        changed.append(f"the data (sha256 {saved['data_digest'][:12]} then, {current['data_digest'][:12]} now)")
    for flag, entry in (saved.get("checkpoints") or {}).items():
        now = current.get("checkpoints", {}).get(flag, {}).get("sha256")
        if now is not None and now != entry.get("sha256"):
            changed.append(f"--{flag} {getattr(args, flag, None)} (sha256 {entry.get('sha256', '?')[:12]} then, "
                           f"{now[:12]} now)")
    if changed and not getattr(args, "allow_teacher_mismatch", False):
        raise UserError(f"{path} started from other inputs than it would resume from: {'; '.join(changed)}; start "
                        f"a new run (or pass --allow_teacher_mismatch to resume anyway)")


def budget(stages: list[Stage], ctx: RunContext) -> dict:
    """``{"epochs": {stage: epochs}, "steps": optimiser steps in all}``: the training a run was given, counted as
    the engine runs it (a last batch of one joins the one before in stages that train BatchNorm layers)."""
    loader = ctx.make_loader("train")
    steps = 0
    for stage in stages:
        loader.min_batch = 2 if _trains_batchnorm(stage) else 1
        steps += stage.epochs * len(loader)
    return {"epochs": {stage.name: stage.epochs for stage in stages}, "steps": steps}


def _record_failure(run_dir: RunDir, error: BaseException, new_run: bool) -> None:
    """Every error that ends a run also goes into its ``log.txt``; a new run that has not saved a checkpoint is
    removed (nothing in it can be resumed), except after a NaN loss, whose log says how the run diverged."""
    if isinstance(error, KeyboardInterrupt):
        line = "interrupted (Ctrl-C)"
    elif isinstance(error, BrokenPipeError):
        line = "stopped: the output pipe was closed"
    elif isinstance(error, (UserError, NonFiniteLossError)):
        line = f"error: {error}"
    else:
        line = "error: " + "".join(traceback.format_exception(type(error), error, error.__traceback__)).rstrip()
    run_dir.log_file_only(line)
    if new_run and run_dir.exists and not run_dir.has_checkpoint and not isinstance(error, NonFiniteLossError):
        run_dir.remove()


def _load_resumed_state(method: Method, resume: dict, path) -> None:
    """A per-epoch checkpoint is its stage file plus its own part (in the first stage: the seeded initial state plus
    its own part)."""
    full = full_method_state(resume, path)
    if full is None:  # first stage: what is not stored is the freshly built (seeded) initial state
        full = resume["method"]
    missing, unexpected = method.load_state_dict(full, strict=False)
    if unexpected or (missing and resume.get("base") is not None):
        raise UserError(f"{path} does not fit this {method.name} configuration ({len(missing)} missing, "
                        f"{len(unexpected)} unexpected tensors)")


def _run_path(resume_arg):
    path = Path(resume_arg)
    return path if path.is_dir() else path.parent


def set_modes(method: Method, stage: Stage, training: bool) -> None:
    method.eval()
    if training:
        for module in stage.train_modules:
            module.train()


def fit(method: Method, stages: list[Stage], ctx: RunContext, run_dir: RunDir, resume: dict | None) -> int | None:
    """Run every stage; returns the selected epoch of the last stage that selects one."""
    args = ctx.args
    start_stage = resume["stage"] if resume else 0
    best_epoch = resume.get("best_epoch_last") if resume else None
    base = resume.get("base") if resume else None  # the stage file the per-epoch checkpoints build on
    epoch_offset = sum(s.epochs for s in stages[:start_stage])
    train_loader = ctx.make_loader("train")
    check_batch_sizes(stages[start_stage:], train_loader, ctx)
    val_loader = ctx.make_loader("val", max_steps=args.max_steps)
    test_loader = ctx.make_loader("test") if args.test_phase else None
    beside = first_stage_beside(method, stages)

    for stage_index in range(start_stage, len(stages)):
        stage = stages[stage_index]
        loader = train_loader
        loader.min_batch = 2 if _trains_batchnorm(stage) else 1
        optimizer = stage.start()
        best = {"value": math.inf, "epoch": None, "state": None}
        start_epoch, snapshot_epoch = 0, None  # snapshot_epoch: the best epoch whose state SNAPSHOT holds
        if resume is not None and stage_index == resume["stage"]:
            if resume.get("optimizer") is not None:
                optimizer.load_state_dict(resume["optimizer"])
            best, snapshot_epoch = _resumed_best(resume["best"], stage, run_dir)
            start_epoch = resume["epoch"]
            resume = None
        if stage.epochs and start_epoch == 0:
            run_dir.log(f"Stage {stage_index + 1}/{len(stages)} '{stage.name}': {stage.epochs} epochs")
        with _stage_bar(stage, f"{stage_index + 1}/{len(stages)}", start_epoch, loader, run_dir) as bar:
            for epoch in range(start_epoch, stage.epochs):
                t0 = time.time()
                if stage.on_epoch_start is not None:
                    stage.on_epoch_start(epoch, optimizer)
                loader.set_epoch(epoch if stage_index >= beside else epoch_offset + epoch)
                train_means = train_epoch(method, stage, optimizer, loader, ctx, epoch, run_dir.path, bar)
                row = {"stage": stage.name, "stage_index": stage_index, "epoch": epoch,
                       **{f"train/{k}": v for k, v in train_means.items()}}
                if stage.epoch_logs is not None:
                    row.update(stage.epoch_logs())
                if stage.val_step is not None:
                    val_means = validate(method, stage, stage.val_step, val_loader, ctx, epoch)
                    _check_finite_validation(val_means, stage, epoch, run_dir.path)
                    row.update({f"val/{k}": v for k, v in val_means.items()})
                    value = val_means.get(stage.select_key) if stage.select_key else None
                    if value is not None and value < best["value"]:
                        state = stage.selected.state_dict() if stage.selected is not None else None
                        best = {"value": value, "epoch": epoch, "state": copy.deepcopy(state)}
                        row["best"] = True
                if args.val_phase:  # the reported network's headline figure so far (median pruning reads it)
                    model, modalities = method.evaluation_model()
                    _, val_metrics = evaluate(model, modalities, val_loader, ctx)
                    row[f"val_phase/{ctx.spec.headline_metric}"] = val_metrics[ctx.spec.headline_metric]
                if test_loader is not None:
                    model, modalities = method.evaluation_model()
                    row["test/loss"], test_metrics = evaluate(model, modalities, test_loader, ctx)
                    row["test/accuracy"] = test_metrics["accuracy"]
                for group in optimizer.param_groups[:1]:
                    row["lr"] = group["lr"]
                row["time_s"] = round(time.time() - t0, 3)
                run_dir.log(_format_row(row, stage.select_key))
                run_dir.log_metrics(row, step=epoch_offset + epoch)
                stored, snapshot_epoch = _stored_best(best, epoch, snapshot_epoch, run_dir)
                run_dir.save_checkpoint(_checkpoint(method, args, stage_index, epoch + 1, optimizer, stored,
                                                    best_epoch, base))

        if stage.selected is not None and best["state"] is not None:
            stage.selected.load_state_dict(best["state"])
            if stage_index < beside:
                best_epoch = best["epoch"]
            run_dir.log(f"Stage '{stage.name}': restored the best epoch {best['epoch']} "
                        f"(val {stage.select_key} {best['value']:.5f})")
        elif stage.select_key is None and stage_index < beside:
            best_epoch = stage.epochs - 1 if stage.epochs else best_epoch
        if stage.on_stage_end is not None:
            stage.on_stage_end()
        epoch_offset += stage.epochs
        base = f"stage{stage_index + 1}-{stage.name}.pth"
        run_dir.save_file(base, {"args": vars(args), "method": method.state_dict()})
        run_dir.save_checkpoint(_checkpoint(method, args, stage_index + 1, 0, None,
                                            {"value": math.inf, "epoch": None, "state": None}, best_epoch, base))
        (run_dir.path / SNAPSHOT).unlink(missing_ok=True)  # the stage's selection is in its stage file now
    return best_epoch


def first_stage_beside(method: Method, stages: list[Stage]) -> int:
    """Index of the first stage after the last one that trains the network the run reports: such stages train
    networks beside it (e.g. a comparison baseline), each as a run of its own (:class:`~kd_methods.base.Stage`)."""
    reported = method.evaluation_model()[0]
    trains = [i for i, stage in enumerate(stages) if any(m is reported for m in stage.train_modules)]
    return trains[-1] + 1 if trains else len(stages)


@contextlib.contextmanager
def _stage_bar(stage, position: str, start_epoch: int, loader, run_dir: RunDir):
    """A progress bar over the stage's training steps, shown only when stdout and stderr are both a terminal; while
    it is shown, the run's console lines are written above it (``tqdm.write``)."""
    try:
        total = len(loader) * (stage.epochs - start_epoch)
    except TypeError:
        total = None
    shown = sys.stdout.isatty() and sys.stderr.isatty() and stage.epochs > start_epoch
    with tqdm(total=total, desc=f"stage {position} {stage.name}", unit="step", leave=False, dynamic_ncols=True,
              disable=not shown) as bar:
        if bar.disable or run_dir.logger is None:
            yield bar
        else:
            with logging_redirect_tqdm(loggers=[run_dir.logger], tqdm_class=tqdm):
                yield bar


def _checkpoint(method, args, stage_index, epoch, optimizer, best, best_epoch_last, base) -> dict:
    """What resuming needs and no more. At a stage boundary (``optimizer`` None) the method state is the stage file
    ``base`` itself; after an epoch it is the part the stage can change (the parameters ``optimizer`` updates and
    every buffer), laid over ``base`` (or, in the first stage, over the seeded initial state) when resumed. ``best``
    is as :func:`_stored_best` gives it."""
    if optimizer is None:
        state = None
    else:
        trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
        keep = {name for name, p in method.named_parameters(remove_duplicate=False) if id(p) in trained}
        keep.update(name for name, _ in method.named_buffers(remove_duplicate=False))
        state = {name: value for name, value in method.state_dict().items()
                 if name in keep or name.endswith("_extra_state")}  # a module's own small state (get_extra_state)
    return {"args": vars(args), "stage": stage_index, "epoch": epoch, "method": state, "partial": state is not None,
            "base": base, "optimizer": optimizer.state_dict() if optimizer is not None else None, "best": best,
            "best_epoch_last": best_epoch_last, "rng": rng_state()}


SNAPSHOT = "best-snapshot.pth"  # the selected network at the stage's best epoch, once it is no longer the current one


def _stored_best(best: dict, epoch: int, snapshot_epoch, run_dir: RunDir):
    """The best snapshot as the checkpoint of ``epoch`` stores it: by reference to the checkpoint's own state at the
    epoch that set it, then by reference to :data:`SNAPSHOT`, written once per best epoch (not after every epoch).
    Every checkpoint on disk stays consistent: the snapshot file is replaced only after a newer best epoch, whose own
    checkpoint refers to itself, was saved."""
    if best.get("state") is None:
        return best, snapshot_epoch
    stored = {"value": best["value"], "epoch": best["epoch"], "state": None}
    if best["epoch"] == epoch:
        return {**stored, "state_is_current": True}, snapshot_epoch
    if snapshot_epoch != best["epoch"]:
        run_dir.save_file(SNAPSHOT, {"epoch": best["epoch"], "state": best["state"]}, kind="snapshot")
    return {**stored, "state_file": SNAPSHOT}, best["epoch"]


def _resumed_best(best: dict, stage: Stage, run_dir: RunDir):
    """The in-memory best snapshot (and the epoch :data:`SNAPSHOT` holds) from a checkpoint's ``best``."""
    if best.get("state_is_current"):  # saved at the epoch that set it: the loaded state is the snapshot
        state = copy.deepcopy(stage.selected.state_dict())
        return {"value": best["value"], "epoch": best["epoch"], "state": state}, None
    if best.get("state_file"):
        saved = load_checkpoint(run_dir.path / best["state_file"])
        if saved.get("epoch") != best["epoch"]:
            raise UserError(f"{run_dir.path / best['state_file']} holds epoch {saved.get('epoch')}, not the best epoch "
                            f"{best['epoch']} the checkpoint names; the run directory was changed by hand")
        return {"value": best["value"], "epoch": best["epoch"], "state": saved["state"]}, best["epoch"]
    return best, None


def train_epoch(method, stage: Stage, optimizer, loader, ctx: RunContext, epoch: int, where, bar=None) -> dict:
    """One epoch of ``stage``; ``bar``: the stage's progress bar (:func:`_stage_bar`), advanced per step."""
    set_modes(method, stage, training=True)
    sums: dict[str, torch.Tensor] = {}
    steps = 0
    shown = bar is not None and not bar.disable
    for batch in loader:
        with autocast(ctx.args, ctx.device):
            losses = stage.train_step(batch, epoch)
        total = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        steps += 1
        for key, value in (("loss", total), *losses.items()):
            sums[key] = sums.get(key, 0.0) + value.detach().double()
        if shown:
            bar.update()
        if steps % LOG_EVERY == 0:
            _check_finite(sums["loss"], stage, epoch, steps, where)
            if shown:
                bar.set_postfix(epoch=epoch, loss=f"{sums['loss'].item() / steps:.4f}")
    if steps == 0:
        return {}
    _check_finite(sums["loss"], stage, epoch, steps, where)
    return {key: (value / steps).item() for key, value in sums.items()}


def _check_finite(loss_sum, stage, epoch, step, where):
    if not torch.isfinite(loss_sum).item():
        raise NonFiniteLossError(
            f"the training loss became {loss_sum.item()} in stage '{stage.name}', epoch {epoch}, by step {step}; "
            f"stopped. {_kept(where)} (lower --lr, or check the data)")


def _check_finite_validation(means: dict, stage, epoch: int, where) -> None:
    """A NaN validation loss would never count as an improvement, silently switching model selection off."""
    bad = [(key, value) for key, value in means.items() if not math.isfinite(value)]
    if bad:
        key, value = bad[0]
        raise NonFiniteLossError(f"the validation {key} became {value} in stage '{stage.name}', epoch {epoch}; "
                                 f"stopped, as model selection cannot use it. {_kept(where)} (lower --lr, or check "
                                 f"the data)")


def _kept(where) -> str:
    if where is not None and (Path(where) / "checkpoint.pth").is_file():
        return f"The last good checkpoint is kept in {where}"
    return "No checkpoint was written yet"


def _trains_batchnorm(stage: Stage) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for module in stage.train_modules
               for m in module.modules())


def check_batch_sizes(stages: list[Stage], loader, ctx: RunContext) -> None:
    """Before the first epoch: BatchNorm layers in training mode cannot normalise one sample (the reference
    crashed on such a last batch, e.g. C2KD on CMMD-V2 at --batch_size 13). The loader merges a last batch of
    one into the batch before it; what no merging can fix is refused here."""
    for stage in stages:
        if not stage.epochs or not _trains_batchnorm(stage):
            continue
        size = loader.batch_size
        if size < 2 or len(loader.indices) < 2:
            raise UserError(f"stage '{stage.name}' trains BatchNorm layers, which need at least 2 samples per batch; "
                            f"the train split of {ctx.spec.name} has {len(loader.indices)} and the batch size is "
                            f"{size}: use --batch_size 2 or more, or more data")


@torch.no_grad()
def validate(method, stage: Stage, step_fn, loader, ctx: RunContext, epoch: int) -> dict:
    """Mean over batches of each term's batch mean (the reference's averaging: the last batch counts fully), summed
    in float64 as the reference's Python floats, so near-ties select the same epoch."""
    set_modes(method, stage, training=False)
    sums, steps = {}, 0
    for batch in loader:
        with autocast(ctx.args, ctx.device):
            losses = step_fn(batch, epoch)
        for key, value in losses.items():
            sums[key] = sums.get(key, 0.0) + value.detach().double()
        steps += 1
    return {key: (value / steps).item() for key, value in sums.items()} if steps else {}


def finish(method: Method, ctx: RunContext, run_dir: RunDir, best_epoch, wall_time: float, device,
           stages: list[Stage] = ()) -> dict:
    """Evaluate the selected model on val and test (val only under ``--no_test``: ``metrics.test`` is None), save
    ``best.pth`` and ``results.json`` (with the run's configuration and its digest, the data digest, split sizes,
    budget and code version: docs/sweep.md, and under ``--tuning_record`` the search that chose its flags)."""
    args = ctx.args
    model, modalities = method.evaluation_model()
    metrics = evaluate_splits(model, modalities, ctx)
    run_dir.save_best({"args": vars(args), "model": model.state_dict(), "model_name": model.model_name,
                       "inputs": list(modalities), "epoch": best_epoch, "metrics": metrics})
    results = {
        "method": method.name, "database": args.database, "mode": args.mode, "models": method.model_names(),
        "seed": args.seed, "epochs": args.epochs, "best_epoch": best_epoch, "device": str(device),
        "wall_time_s": round(wall_time, 2), "metrics": metrics, "extra": method.extra_results(),
        **identity_results(ctx, stages),
    }
    results["warnings"] = training_warnings(read_metrics(run_dir.path), metrics["val"], ctx.spec.num_classes,
                                            ctx.spec.is_segmentation)
    for warning in results["warnings"]:
        run_dir.log(f"warning: {warning}")
    if args.tuning_record is not None:  # the search that chose this run's flags (reproduce.py --tune)
        results["tuning"] = cli.read_tuning_record(args.tuning_record)
    run_dir.write_results(results)
    split, shown_metrics = ("Test", metrics["test"]) if metrics["test"] is not None else ("Validation (--no_test)",
                                                                                          metrics["val"])
    shown = ", ".join(f"{k} {shown_metrics[k]:.4f}" for k in ("accuracy", "f1_weighted", "average_accuracy", "kappa",
                                                              "mIoU"))
    selected = f", best epoch {best_epoch}" if best_epoch is not None else ""
    run_dir.log(f"{split} ({model.model_name}{selected}): loss {shown_metrics['loss']:.4f}, {shown}")
    return results


def identity_results(ctx: RunContext, stages: list[Stage]) -> dict:
    """The part of ``results.json`` that says which experiment a run is: its configuration (digest), data digest,
    split sizes, budget, the checkpoints it started from and the code that ran it."""
    record = ctx.record()
    return {"config": record["config"], "config_digest": record["config_digest"],
            "data_digest": record["data_digest"], "split_sizes": record["split_sizes"],
            "checkpoints": record["checkpoints"], "budget": budget(stages, ctx), "code": provenance.code_version()}


def _format_row(row: dict, select_key: str | None = None) -> str:
    """One short line per epoch, the headline figures only (every figure of the row is in ``metrics.jsonl``): the
    mean training loss, the validation figure the stage selects on, the per-epoch test figures of ``--test_phase``,
    the learning rate, the epoch's time and ``*`` for a new best epoch."""
    parts = [f"[{row['stage']}] epoch {row['epoch']}"]
    if "train/loss" in row:
        parts.append(f"train loss {row['train/loss']:.4g}")
    if select_key and f"val/{select_key}" in row:
        parts.append(f"val {select_key} {row[f'val/{select_key}']:.4g}")
    if "test/loss" in row:
        parts.append(f"test loss {row['test/loss']:.4g} accuracy {row['test/accuracy']:.4g}")
    if "lr" in row:
        parts.append(f"lr {row['lr']:.3g}")
    if "time_s" in row:
        parts.append(f"{row['time_s']:.2f} s")
    if row.get("best"):
        parts.append("*")
    return "  ".join(parts)


def indices_main(argv=None) -> None:
    """``indices_gen.py``: write ``metadata/<database>_indices.csv`` exactly as the reference's script."""
    parser = cli._Parser(description="Write the reference's split file (20 permutation columns, seed 19980427).")
    parser.add_argument("--database", required=True, choices=dataset_names(), metavar="NAME",
                        help=f"one of {', '.join(dataset_names())}")
    parser.add_argument("--data_root", default=cli.os.environ.get("MSTD_DATA_ROOT", "./data"),
                        help="folder holding the datasets (default: $MSTD_DATA_ROOT, else ./data)")
    parser.add_argument("--metadata_dir", default="metadata", help="output folder (default: %(default)s)")
    parser.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=False,
                        help="replace an existing file (default: off)")
    for spec in DATASETS.values():
        if spec.add_arguments is not None:
            spec.add_arguments(parser)

    def body():
        args = parser.parse_args(argv)
        spec = get_spec(args.database)
        if spec.split != "index_file":
            raise UserError(f"{spec.name} splits are generated in memory from --seed; it needs no index file")
        path = indices_path(spec.name, args.metadata_dir)
        if path.exists() and not args.overwrite:
            raise UserError(f"{path} exists; pass --overwrite to replace it (runs depend on it)")
        n = len(spec.load(args))
        write_indices_csv(path, generate_permutations(n))
        print(f"Wrote {path}: 20 permutations of N={n} (seed {INDEX_SEED})")

    exit_on_error(body)
