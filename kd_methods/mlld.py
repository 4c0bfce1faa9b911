"""Multi-level logit distillation (``main-MLLD.py``, ``main-MLLD-UU.py``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kd_methods import register_method
from kd_methods.base import kd_loss
from kd_methods.kd import TEACHER_HELP, SingleTeacherDistiller

TEMPERATURES = (2.0, 3.0, 4.0, 5.0, 6.0)


def mlld_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
              temperatures: tuple[float, ...] = TEMPERATURES) -> torch.Tensor:
    """Mean over temperatures and over the three levels of the instance, class and batch terms.

    For each τ, with ``P_s = softmax(z_s/τ)`` and ``P_t = softmax(z_t/τ)`` (``[B, C]``): instance
    ``τ² KL_batchmean(P_t ‖ P_s)``, class ``MSE(P_sᵀP_s, P_tᵀP_t)`` (C×C) and batch ``MSE(P_s P_sᵀ, P_t P_tᵀ)``
    (B×B); the sum over τ and levels is divided by 5 and by 3, as the reference. The caller detaches the target.
    """
    total = student_logits.new_zeros(())
    for tau in temperatures:
        p_s = F.softmax(student_logits / tau, dim=1)
        p_t = F.softmax(teacher_logits / tau, dim=1)
        instance = kd_loss(student_logits, teacher_logits, tau)
        classes = F.mse_loss(p_s.t() @ p_s, p_t.t() @ p_t)
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
    """

    name = "MLLD"
    summary = "Multi-level logit distillation (Jin et al., CVPR 2023) from a pre-trained multimodal teacher."
    teacher_kind = "multimodal"
    checkpoint_help = TEACHER_HELP["multimodal"]
    supports_dense = False
    dense_reason = ("its class and batch terms need [B, C] logits, not per-pixel [B, C, H, W] maps "
                    "(the reference crashes there)")

    def distill_terms(self, batch, epoch):
        teacher_logits = self.teacher_forward(self.teacher, batch, self.teacher_modalities())
        logits = self.run_model(self.student, batch, (self.mode,))
        return logits, {"mlld": mlld_loss(logits, teacher_logits.detach())}


@register_method
class MLLDUU(MLLD):
    """MLLD (Jin et al., CVPR 2023) from a unimodal teacher of the other modality (``main-MLLD-UU.py``)."""

    name = "MLLD-UU"
    summary = "Multi-level logit distillation (Jin et al., CVPR 2023) from a unimodal teacher of the other modality."
    teacher_kind = "crossmodal"
    checkpoint_help = TEACHER_HELP["crossmodal"]
