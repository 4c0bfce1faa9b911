"""Deep Mutual Learning across modalities (``main-DML.py``). Not part of the MST-Distill reference code."""
from __future__ import annotations

import argparse

from kd_methods import register_method
from kd_methods.base import Method, Stage
from utils.core.cards import MethodCard
from utils.core.errors import UserError


@register_method
class DML(Method):
    """Deep Mutual Learning (Zhang et al., "Deep Mutual Learning", CVPR 2018) between a student on ``--mode``
    and a peer on the other modality (``--Tmodel``, by default the other modality's unimodal model).

    Both networks start from scratch (no checkpoint) and learn together. Each minimises its own CE plus
    ``KL(p_other ‖ p_own)`` with the other's prediction detached, as in the paper, where ``p = softmax(z/T)``
    (``--dml_T``, default 1 = the paper's plain softmax). Choices made here, since the reference has no DML:

    * Temperature: the KL is scaled by T² (Hinton's convention, :func:`~kd_methods.base.kd_loss`) so gradient
      magnitudes do not shrink with T; with the default T = 1 it is the paper's loss exactly. Per-pixel on
      NYU-Depth-V2, like KD.
    * Update: both networks are updated simultaneously from one forward each (one Adam over both, lr ``--lr``),
      instead of the paper's alternating updates with a recomputed prediction after the first network's
      step: the first network's gradient is the paper's, the second's uses its peer's prediction from before
      rather than after that step. It saves one forward per step. (One Adam over both networks equals one
      Adam per network: Adam's state is per parameter.)
    * Build order: the peer is built before the student, so with the same seed the student starts from the
      same weights as in the KD-UU run whose teacher architecture is the peer's.
    * Selection on the student's validation CE (the peer's is logged as ``val/peer_ce``); the student is the
      reported model. The peer stays at its last epoch.
    """

    card = MethodCard(
        name="DML",
        position=30,
        summary="Deep Mutual Learning (Zhang et al., CVPR 2018): student and other-modality peer trained together.",
        roles=("teacher", "student"),
        # the peer: default model and input modality of a cross-modal teacher
        teacher_kind="crossmodal",
        search_space={"lr": ("log", 0.1, 10.0, "relative"), "dml_T": ("log", 1.0, 8.0)},
    )

    def __init__(self, ctx):
        super().__init__(ctx)
        self.peer = self.build(self.args.Tmodel, (self.other,), "peer (--Tmodel)")
        self.student = self.build(self.args.Smodel, (self.mode,), "student")

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--dml_T", type=float, default=1.0,
                            help="softmax temperature of the mutual KL terms, which are scaled by T^2 "
                                 "(default: %(default)s, the paper's plain softmax)")

    @classmethod
    def check_args(cls, args, spec) -> None:
        if args.dml_T <= 0:
            raise UserError(f"--dml_T must be > 0, got {args.dml_T}")

    def train_step(self, batch, epoch):
        logits = self.run_model(self.student, batch, (self.mode,))
        peer_logits = self.run_model(self.peer, batch, (self.other,))
        temperature = self.args.dml_T
        return {
            "ce": self.task_loss(logits, batch.y),
            "kl": self.kd(logits, peer_logits.detach(), temperature),
            "peer_ce": self.task_loss(peer_logits, batch.y),
            "peer_kl": self.kd(peer_logits, logits.detach(), temperature),
        }

    def val_step(self, batch, epoch):
        return {**self.student_val_step(batch, epoch),
                "peer_ce": self.task_loss(self.run_model(self.peer, batch, (self.other,)), batch.y)}

    def stages(self):
        return [Stage("train", self.args.epochs, self.adam(self.student, self.peer), self.train_step,
                      [self.student, self.peer], val_step=self.val_step, select_key="loss", selected=self.student)]

    def model_names(self):
        return {"peer": self.args.Tmodel, "student": self.args.Smodel}
