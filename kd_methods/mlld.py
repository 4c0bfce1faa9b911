"""Multi-level logit distillation (``main-MLLD.py``, ``main-MLLD-UU.py``)."""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from kd_methods import register_method
from kd_methods.base import kd_loss
from kd_methods.kd import SingleTeacherDistiller
from utils.core.cards import MethodCard

TEMPERATURES = (2.0, 3.0, 4.0, 5.0, 6.0)
#: ``--mlld_class_gram``: the class-level Gram matrix summed over the batch (reference) or averaged over it
CLASS_GRAMS = ("sum", "mean")


def mlld_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
              temperatures: tuple[float, ...] = TEMPERATURES, class_gram: str = "sum") -> torch.Tensor:
    """Mean over temperatures and over the three levels of the instance, class and batch terms.

    For each τ, with ``P_s = softmax(z_s/τ)`` and ``P_t = softmax(z_t/τ)`` (``[B, C]``): instance
    ``τ² KL_batchmean(P_t ‖ P_s)``, class ``MSE(P_sᵀP_s, P_tᵀP_t)`` (C×C) and batch ``MSE(P_s P_sᵀ, P_t P_tᵀ)``
    (B×B); the sum over τ and levels is divided by 5 and by 3, as the reference. The caller detaches the target.

    ``class_gram="mean"`` divides both class Gram matrices by B (``E[p pᵀ]`` over the batch, entries in [0, 1]
    like the batch term's). The default ``"sum"`` keeps the reference: its entries grow like B/C, so the term
    grows like (B/C)², and it only sees the batch's distribution of predictions, not which sample gets which
    class (docs/parity.md).
    """
    if class_gram not in CLASS_GRAMS:
        raise ValueError(f"class_gram must be one of {CLASS_GRAMS}, got {class_gram!r}")
    scale = 1.0 / student_logits.shape[0] if class_gram == "mean" else 1.0
    total = student_logits.new_zeros(())
    for tau in temperatures:
        p_s = F.softmax(student_logits / tau, dim=1)
        p_t = F.softmax(teacher_logits / tau, dim=1)
        instance = kd_loss(student_logits, teacher_logits, tau)
        classes = F.mse_loss(scale * (p_s.t() @ p_s), scale * (p_t.t() @ p_t))
        batch = F.mse_loss(p_s @ p_s.t(), p_t @ p_t.t())
        total = total + instance + classes + batch
    return total / len(temperatures) / 3


@register_method
class MLLD(SingleTeacherDistiller):
    """Multi-level logit distillation from a multimodal teacher (Jin et al., "Multi-Level Logit Distillation",
    CVPR 2023), as the MST-Distill reference implements it.

    Loss ``(1 - alpha) * CE + alpha * L_mlld`` with ``L_mlld`` of :func:`mlld_loss` on the detached teacher logits,
    temperatures 2..6, alpha halved after every 30 epochs; selection on the student's validation CE. Kept from
    the reference: one view per sample (no weak/strong augmentation pair, no confidence masking), and the class
    and batch terms are mean squared errors between Gram matrices of the softened predictions.
    NYU-Depth-V2 is refused: the class and batch terms need ``[B, C]`` logits (the reference crashes there).

    The reference's class term sums its C×C Gram matrix over the batch, so it grows with (B/C)²; with few classes
    and large batches (binary Synthetic-MVD, B = 256) its gradient is hundreds of times the CE's and, being blind
    to which sample gets which class, it drives the student to confident predictions at chance accuracy.
    ``--mlld_class_gram mean`` averages the Gram matrix over the batch instead (docs/parity.md; the measurements are in
    ``docs/results.md``).
    """

    card = MethodCard(
        name="MLLD",
        position=20,
        summary="Multi-level logit distillation (Jin et al., CVPR 2023) from a pre-trained multimodal teacher.",
        roles=("teacher", "student"),
        teacher_kind="multimodal",
        needs_checkpoint=True,
        # the five temperatures 2..6 are the method's fixed set (its paper's), not one knob
        search_space={"lr": ("log", 0.1, 10.0, "relative"), "alpha": ("float", 0.1, 0.9)},
    )
    supports_dense = False
    dense_reason = ("its class and batch terms need [B, C] logits, not per-pixel [B, C, H, W] maps "
                    "(the reference crashes there)")

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        SingleTeacherDistiller.add_arguments(parser)
        parser.add_argument("--mlld_class_gram", choices=CLASS_GRAMS, default="sum",
                            help="class-level term on the C x C Gram matrix P^T P summed over the batch (sum, the "
                                 "reference; grows like (batch/classes)^2 and swamps CE with few classes) or "
                                 "averaged over it (mean) (default: %(default)s)")

    def distill_terms(self, batch, epoch):
        teacher_logits = self.teacher_forward(self.teacher, batch, self.teacher_modalities())
        logits = self.run_model(self.student, batch, (self.mode,))
        return logits, {"mlld": mlld_loss(logits, teacher_logits.detach(), class_gram=self.args.mlld_class_gram)}


@register_method
class MLLDUU(MLLD):
    """MLLD (Jin et al., CVPR 2023) from a unimodal teacher of the other modality (``main-MLLD-UU.py``)."""

    card = MethodCard(
        name="MLLD-UU",
        position=20,
        summary="Multi-level logit distillation (Jin et al., CVPR 2023) from a unimodal teacher of the other modality.",
        roles=("teacher", "student"),
        teacher_kind="crossmodal",
        needs_checkpoint=True,
        # the five temperatures 2..6 are the method's fixed set (its paper's), not one knob
        search_space={"lr": ("log", 0.1, 10.0, "relative"), "alpha": ("float", 0.1, 0.9)},
    )
