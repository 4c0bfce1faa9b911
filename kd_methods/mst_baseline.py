"""``--compare_baseline``: a no-KD student trained after MST-Distill's three stages, reported beside the MST student.

It is the run ``main-S.py`` makes with the same flags: the student architecture initialised from the run's
initialisation seed alone (``--init_seed``, else ``--seed``), trained on CE for ``--epochs`` epochs with Adam at
``--lr`` on a standalone run's batches, the epoch of lowest validation CE selected. It is a stage of the run like
the others (``stage4-baseline.pth``, ``metrics.jsonl``, the checkpoints and ``--resume``), and a stage after the one
that finishes the reported student, so the engine trains it as a run of its own (:class:`~kd_methods.base.Stage`):
it does not change the MST student or its ``best_epoch``. Its metrics go to ``results.json`` ``extra.baseline`` and,
for the test split (unless ``--no_test``), into the log beside the student's.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from datasets.base import Batch
from kd_methods.base import RunContext, Stage, evaluate, evaluate_splits

REPORTED = ("accuracy", "f1_weighted", "average_accuracy", "kappa", "mIoU")


class NoKDBaseline(nn.Module):
    """The baseline network (``net``) and the epoch of its last validation (``validated_epoch``): the engine keeps
    and restores the whole module at its best epoch, so after the stage the buffer holds the selected epoch."""

    def __init__(self, build: Callable[[], nn.Module], seed: int):
        """``seed``: the run's initialisation seed (``--init_seed``, else ``--seed``), as main-S.py would use it."""
        super().__init__()
        with torch.random.fork_rng(devices=[]):  # main-S.py's initial weights, without touching the run's RNG
            torch.manual_seed(seed)
            self.net = build()
        self.register_buffer("validated_epoch", torch.tensor(-1))

    def stage(self, name: str, ctx: RunContext, make_optimizer, on_stage_start) -> Stage:
        mode = ctx.args.mode

        def train_step(batch: Batch, epoch: int):
            return {"ce": ctx.spec.task_loss(self.net(batch.get(mode)), batch.y)}

        def val_step(batch: Batch, epoch: int):
            self.validated_epoch.fill_(epoch)
            return train_step(batch, epoch)

        return Stage(name, ctx.args.epochs, make_optimizer, train_step, [self], val_step=val_step, select_key="ce",
                     selected=self, on_stage_start=on_stage_start)

    def report(self, ctx: RunContext, student: nn.Module) -> dict:
        """``extra.baseline`` (its val and test metrics), after logging its test metrics beside the student's."""
        args, mode = ctx.args, (ctx.args.mode,)
        metrics = evaluate_splits(self.net, mode, ctx)
        if metrics["test"] is None:  # --no_test: no test comparison
            return {"model": args.Smodel, "epochs": args.epochs, "lr": args.lr,
                    "best_epoch": int(self.validated_epoch), "metrics": metrics}
        loss, figures = evaluate(student, mode, ctx.make_loader("test", max_steps=None), ctx)
        ours, base = {"loss": loss, **figures}, metrics["test"]
        ctx.log(f"Test, MST-Distill student vs no-KD baseline ({args.Smodel}, {args.epochs} epochs, "
                f"lr {args.lr:g}, seed {args.seed}):")
        for key in ["loss", *(k for k in REPORTED if k in base)]:
            ctx.log(f"  {key:<17} {ours[key]:.4f}  vs  {base[key]:.4f}  ({ours[key] - base[key]:+.4f})")
        return {"model": args.Smodel, "epochs": args.epochs, "lr": args.lr,
                "best_epoch": int(self.validated_epoch), "metrics": metrics}
