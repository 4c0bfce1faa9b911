"""Vanilla knowledge distillation (``main-KD.py``, ``main-KD-UU.py``) and the scaffold the other
single-teacher baselines (MLLD, RKD, CRD) share.

The scaffold, as the reference's single-stage baseline scripts: a pre-trained teacher is loaded and frozen, the
student trains on its own modality with ``(1 - alpha) * CE + alpha * L_distill``, alpha halved after every 30 epochs,
one Adam over the student and the method's extra modules, and the student with the lowest validation CE is kept.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn as nn

from datasets.base import Batch, DatasetSpec
from kd_methods import register_method
from kd_methods.base import LossDict, Method, Stage, add_kd_temperature, halving_schedule
from utils.core.cards import MethodCard
from utils.core.errors import UserError


class SingleTeacherDistiller(Method):
    """A frozen pre-trained teacher, one student, optional extra trainable modules, the alpha-weighted loss.

    Subclasses declare a card with their ``teacher_kind`` and implement :meth:`distill_terms`; they add trainable
    modules (embedders) as attributes and list them in :meth:`extra_modules` so the optimiser covers them.
    """

    #: dense (NYU-Depth-V2) outputs supported; the relation- and feature-based baselines refuse them up front
    supports_dense = True
    #: completes the refusal message: why the method cannot run on segmentation outputs
    dense_reason = ""

    def __init__(self, ctx):
        super().__init__(ctx)
        # Build order as the reference (teacher, student, then the method's modules): the teacher's random init
        # consumes RNG before its weights are loaded, so for a given seed the student and the modules start from
        # the reference's initial weights.
        self.teacher = self.pretrained_teacher()
        self.student = self.build(self.args.Smodel, (self.mode,), "student")

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--alpha", type=float, default=0.5,
                            help="weight of the distillation term, (1-alpha)*CE + alpha*distill; halved after "
                                 "every 30 epochs as the reference (default: %(default)s)")

    @classmethod
    def check_args(cls, args: argparse.Namespace, spec: DatasetSpec) -> None:
        if spec.is_segmentation and not cls.supports_dense:
            raise UserError(f"{cls.name} does not support {spec.name}: {cls.dense_reason}; use KD, KD-UU or "
                            f"another method with per-pixel outputs")
        if not 0.0 <= args.alpha <= 1.0:
            raise UserError(f"--alpha must be in [0, 1], got {args.alpha}")

    def alpha(self, epoch: int) -> float:
        return halving_schedule(self.args.alpha, epoch)

    def extra_modules(self) -> list[nn.Module]:
        """Trainable modules besides the student (embedders); they join the student's Adam."""
        return []

    def distill_terms(self, batch: Batch, epoch: int) -> tuple[torch.Tensor, LossDict]:
        """``(student logits, {name: unweighted distillation term})`` for one training batch; the terms are
        summed into the distillation loss (split only so that each is logged as ``train/<name>``)."""
        raise NotImplementedError

    def train_step(self, batch: Batch, epoch: int) -> LossDict:
        logits, terms = self.distill_terms(batch, epoch)
        alpha = self.alpha(epoch)
        return {"ce": (1.0 - alpha) * self.task_loss(logits, batch.y),
                **{name: alpha * term for name, term in terms.items()}}

    def stages(self) -> list[Stage]:
        trainable = [self.student, *self.extra_modules()]
        return [Stage("train", self.args.epochs, self.adam(*trainable), self.train_step, trainable,
                      val_step=self.student_val_step, select_key="loss", selected=self.student)]

    def model_names(self) -> dict[str, str]:
        return {"teacher": self.args.Tmodel, "student": self.args.Smodel}


@register_method
class KD(SingleTeacherDistiller):
    """Knowledge distillation from a multimodal teacher (Hinton et al., "Distilling the Knowledge in a Neural
    Network", NIPS Deep Learning Workshop 2015).

    Loss ``(1 - alpha) * CE(z_s, y) + alpha * KD_T(z_s, detach(z_t))``: ``KD_T`` is T² · KL(softmax(z_t/T) ‖
    softmax(z_s/T)) per sample, for NYU-Depth-V2 per pixel (labelled and void pixels alike, unlike the CE), with
    ``T = --kd_temperature`` (the reference's 4).
    alpha is halved after epochs 30, 60 and 90. The teacher runs without autograd (the reference built a graph
    for it; the targets were detached, so results are identical).
    """

    card = MethodCard(
        name="KD",
        position=10,
        summary=("Knowledge distillation (Hinton et al. 2015) from a pre-trained multimodal teacher to a unimodal "
                 "student."),
        roles=("teacher", "student"),
        teacher_kind="multimodal",
        needs_checkpoint=True,
        search_space={"lr": ("log", 0.1, 10.0, "relative"), "alpha": ("float", 0.1, 0.9),
                      "kd_temperature": ("log", 1.0, 16.0)},
    )

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        SingleTeacherDistiller.add_arguments(parser)
        add_kd_temperature(parser)

    def distill_terms(self, batch, epoch):
        teacher_logits = self.teacher_forward(self.teacher, batch, self.teacher_modalities())
        logits = self.run_model(self.student, batch, (self.mode,))
        return logits, {"kd": self.kd(logits, teacher_logits.detach(), self.args.kd_temperature)}


@register_method
class KDUU(KD):
    """KD from a unimodal teacher of the other modality ("U->U"; Hinton et al. 2015).

    Identical to :class:`KD` except that the teacher is a ``main-S.py`` model fed the other modality.
    """

    card = MethodCard(
        name="KD-UU",
        position=10,
        summary=("Knowledge distillation (Hinton et al. 2015) from a pre-trained unimodal teacher of the other "
                 "modality."),
        roles=("teacher", "student"),
        teacher_kind="crossmodal",
        needs_checkpoint=True,
        search_space={"lr": ("log", 0.1, 10.0, "relative"), "alpha": ("float", 0.1, 0.9),
                      "kd_temperature": ("log", 1.0, 16.0)},
    )
