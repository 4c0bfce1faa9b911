"""NTDH: KD masked by the teacher's correctness and the teacher-student logit similarity (``main-NTDH-UU.py``,
``main-NTDH.py``), and the per-class non-target divergence its diagnostic reports (``main-MFH.py --exp ntdh``).

Chen, Xu, Huang, Zhao, Jiang, Gao, Gao, "Non-target Divergence Hypothesis: Toward Understanding Domain Gaps in
Cross-Modal Knowledge Distillation", arXiv:2409.02438, 2024 (the authors' repository names it "... Toward
Understanding Modality Differences ..."). Code: github.com/elonchern/Non-target-Divergence-Hypothesis, read at
commit 4a02ed0; the method is ``pd_diff`` and the modes ``KD_KL_PSSM`` / ``dkd_PSSM`` of ``train_kd`` in
``gauss/main.py`` (``dkd_loss`` in ``gauss/distiller_zoo/DKD.py``), the divergence ``js_divergence`` of
``sklearn/distances/jsd.py``.

**The weight** (``pd_diff``), per sample, from the teacher logits ``z_t`` and the student logits ``z_s``:
``omega = 1`` where the teacher predicts the label; where it does not, ``omega = (cos + 1) / 2`` if
``cos = cos_sim(z_t, z_s) >= 0.996`` and ``omega = 0`` otherwise. The teacher's prediction is the argmax of its
logits (the code takes it of their softmax: the same index but for float ties). As in the code, ``omega`` is not
detached: the gradient also flows through the cosine of the teacher-wrong samples that pass the threshold.

**The loss**, by default ``KD_KL_PSSM``: ``KL_batchmean(softmax(omega z_t / T) ‖ softmax(omega z_s / T))`` with
``T = 0.7`` and no ``T²`` factor. ``omega`` scales the *logits* (the code's ``output/0.7*omega.unsqueeze(1)``):
``omega = 0`` makes both distributions uniform, so that sample's term is exactly 0; ``omega`` in [0.998, 1]
changes the temperature by at most 0.2 %. In effect the distillation term is masked on the samples the teacher
gets wrong unless the student's logits point almost the same way. ``--ntdh_loss dkd`` is ``dkd_PSSM``, decoupled
KD (Zhao et al., CVPR 2022) at ``T = 0.7`` whose per-sample TCKD and NCKD terms are multiplied by ``omega``:
``dkd_alpha * TCKD + dkd_beta * NCKD``, each ``T² / B`` times the omega-weighted sum (``gauss/main.py`` calls it
with alpha = beta = 1; ``sklearn/main.py`` with alpha = 16, beta = 1).

**In this framework** the term is the distillation term of the single-teacher scaffold
(:class:`~kd_methods.kd.SingleTeacherDistiller`, as KD here): ``(1 - alpha) CE + alpha L_ntdh``, alpha 0.5
(the code's weights 1 and 1, in ratio), halved after every 30 epochs as every baseline of the comparison, Adam,
the student of lowest validation CE kept (the code trains full-batch SGD for a fixed number of epochs, without
validation). ``NTDH-UU`` distils a unimodal teacher of the other modality, the setting of the paper's
experiments; ``NTDH`` the multimodal teacher (our reading: the paper has no multimodal teacher).
NYU-Depth-V2 is refused: the weight needs one class prediction per sample, right or wrong, which a
segmentation map (with unlabelled pixels) does not have.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from datasets.base import DatasetSpec
from kd_methods import register_method
from kd_methods.kd import SingleTeacherDistiller
from utils.core.cards import MethodCard
from utils.core.errors import UserError

#: the code's temperature (``/0.7`` in ``KD_KL_PSSM`` and ``dkd_loss(..., 0.7, omega)``)
TEMPERATURE = 0.7
#: the code's similarity threshold (``cosine_similarity.ge(0.996)`` in ``pd_diff``)
THRESHOLD = 0.996
#: ``--ntdh_loss``: ``KD_KL_PSSM`` (kl, the default) or ``dkd_PSSM`` (dkd)
LOSSES = ("kl", "dkd")
#: the code's way of leaving the target class out of a softmax (``- 1000.0 * gt_mask``)
TARGET_OFFSET = 1000.0


def teacher_wrong(teacher_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``[B]`` bool: the teacher's prediction (argmax of its logits) is not the label (``pd_diff``'s ``mask_tf``)."""
    return teacher_logits.argmax(dim=1) != target


def ntdh_weight(teacher_logits: torch.Tensor, student_logits: torch.Tensor, target: torch.Tensor,
                threshold: float = THRESHOLD) -> torch.Tensor:
    """``pd_diff``'s ``omega`` ``[B]``: 1 where the teacher is right, else ``(cos + 1) / 2`` where the logits' cosine
    similarity is at least ``threshold`` and 0 below it. Not detached (the code's gradient flows through it)."""
    cosine = F.cosine_similarity(teacher_logits, student_logits, dim=1)
    gated = (cosine + 1) / 2 * cosine.ge(threshold)
    wrong = teacher_wrong(teacher_logits, target).to(gated.dtype)
    return wrong * gated + (1 - wrong)


def ntdh_kl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, omega: torch.Tensor,
                 temperature: float = TEMPERATURE) -> torch.Tensor:
    """``KD_KL_PSSM``: ``KL_batchmean(softmax(z_t / T · omega) ‖ softmax(z_s / T · omega))``, no ``T²``."""
    scale = omega.unsqueeze(1)
    return F.kl_div(F.log_softmax(student_logits / temperature * scale, dim=1),
                    F.softmax(teacher_logits / temperature * scale, dim=1), reduction="batchmean")


def ntdh_dkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
                  omega: torch.Tensor, temperature: float = TEMPERATURE, alpha: float = 1.0,
                  beta: float = 1.0) -> torch.Tensor:
    """``dkd_PSSM``: ``alpha · TCKD + beta · NCKD`` of decoupled KD, each per-sample KL multiplied by ``omega``,
    summed, times ``T² / B``. TCKD: KL between the binary (target, non-target) probabilities at temperature T;
    NCKD: KL between the distributions over the non-target classes."""
    target_mask = F.one_hot(target, student_logits.shape[1]).bool()
    weight = omega.unsqueeze(1)
    p_s = F.softmax(student_logits / temperature, dim=1)
    p_t = F.softmax(teacher_logits / temperature, dim=1)
    binary_s, binary_t = _binary(p_s, target_mask), _binary(p_t, target_mask)
    tckd = (F.kl_div(torch.log(binary_s), binary_t, reduction="none") * weight).sum() * temperature ** 2 / len(target)
    log_q = F.log_softmax(student_logits / temperature - TARGET_OFFSET * target_mask, dim=1)
    p = F.softmax(teacher_logits / temperature - TARGET_OFFSET * target_mask, dim=1)
    nckd = (F.kl_div(log_q, p, reduction="none") * weight).sum() * temperature ** 2 / len(target)
    return alpha * tckd + beta * nckd


def _binary(probabilities: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """``[B, 2]``: the probability of the target class and the summed probability of the others."""
    return torch.cat([(probabilities * target_mask).sum(dim=1, keepdim=True),
                      (probabilities * ~target_mask).sum(dim=1, keepdim=True)], dim=1)


# ---------------------------------------------------------------------------------------------------------------
# the diagnostic: teacher-student divergences per sample, and per class
# ---------------------------------------------------------------------------------------------------------------
def divergences(logits_a: torch.Tensor, logits_b: torch.Tensor, target: torch.Tensor,
                true_jsd: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample ``[B]``: the target and the non-target divergence between two networks' predictions, as the
    authors' ``js_divergence`` (whose batch values are the means of these); symmetric in ``a`` and ``b``.

    Target: between the binary (target, non-target) probabilities; non-target: between the distributions over the
    non-target classes (``softmax(z - 1000 · onehot(y))``). The code's divergence is
    ``(KL(m ‖ p_a) + KL(m ‖ p_b)) / 2`` with ``m = (p_a + p_b) / 2``, the Jensen-Shannon divergence with each KL
    reversed (unbounded; kept by default); ``true_jsd`` gives the Jensen-Shannon divergence
    ``(KL(p_a ‖ m) + KL(p_b ‖ m)) / 2`` (in nats, at most ln 2).
    """
    target_mask = F.one_hot(target, logits_a.shape[1]).bool()
    binary_a = _binary(F.softmax(logits_a, dim=1), target_mask)
    binary_b = _binary(F.softmax(logits_b, dim=1), target_mask)
    shifted_a, shifted_b = logits_a - TARGET_OFFSET * target_mask, logits_b - TARGET_OFFSET * target_mask
    if true_jsd:
        return (_jsd(binary_a, binary_b),
                _jsd(F.softmax(shifted_a, dim=1), F.softmax(shifted_b, dim=1)))
    return (_reversed_jsd(torch.log(binary_a), torch.log(binary_b), (binary_a + binary_b) / 2),
            _reversed_jsd(F.log_softmax(shifted_a, dim=1), F.log_softmax(shifted_b, dim=1),
                          (F.softmax(shifted_a, dim=1) + F.softmax(shifted_b, dim=1)) / 2))


def _reversed_jsd(log_a: torch.Tensor, log_b: torch.Tensor, middle: torch.Tensor) -> torch.Tensor:
    """The code's ``0.5 * (kl_div(log p_a, m) + kl_div(log p_b, m))`` per sample."""
    return 0.5 * (F.kl_div(log_a, middle, reduction="none").sum(dim=1)
                  + F.kl_div(log_b, middle, reduction="none").sum(dim=1))


def _jsd(p_a: torch.Tensor, p_b: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence per sample (``xlogy``: classes of probability 0 add 0)."""
    middle = (p_a + p_b) / 2
    kl_a = (torch.xlogy(p_a, p_a) - torch.xlogy(p_a, middle)).sum(dim=1)
    kl_b = (torch.xlogy(p_b, p_b) - torch.xlogy(p_b, middle)).sum(dim=1)
    return 0.5 * (kl_a + kl_b)


@torch.no_grad()
def paired_logits(ctx, teacher, teacher_inputs: tuple[str, ...], student, student_inputs: tuple[str, ...],
                  split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The teacher's and the student's logits (float32, eval mode) and the labels over the whole ``split`` of the run
    behind ``ctx``, in split order."""
    teacher.eval()
    student.eval()
    teacher_logits, student_logits, labels = [], [], []
    for batch in ctx.make_loader(split, shuffle=False, max_steps=None):
        teacher_logits.append(teacher(*batch.inputs(teacher_inputs)).float())
        student_logits.append(student(*batch.inputs(student_inputs)).float())
        labels.append(batch.y)
    return torch.cat(teacher_logits), torch.cat(student_logits), torch.cat(labels)


@torch.no_grad()
def class_divergences(teacher_logits: torch.Tensor, student_logits: torch.Tensor, target: torch.Tensor,
                      num_classes: int, threshold: float = THRESHOLD, true_jsd: bool = False) -> list[dict]:
    """The diagnostic's rows: one per class (samples of that label), then ``"all"``.

    Each row: ``samples``, ``teacher_acc`` and ``student_acc`` (%), ``teacher_wrong`` (count), the means of the
    logits' ``cosine`` similarity, of the NTDH ``weight`` (:func:`ntdh_weight` at ``threshold``) and of the
    ``target_divergence`` / ``non_target_divergence`` (:func:`divergences`), and, as the code's
    ``error_distribution``, the teacher's and the student's mean softmax over the samples the teacher gets wrong
    (``teacher_error_distribution`` / ``student_error_distribution``; None where it gets none wrong). A class
    without samples has counts 0 and None for the means.
    """
    wrong = teacher_wrong(teacher_logits, target)
    per_sample = {
        "cosine": F.cosine_similarity(teacher_logits, student_logits, dim=1),
        "weight": ntdh_weight(teacher_logits, student_logits, target, threshold),
    }
    per_sample["target_divergence"], per_sample["non_target_divergence"] = divergences(
        teacher_logits, student_logits, target, true_jsd)
    teacher_probabilities, student_probabilities = F.softmax(teacher_logits, 1), F.softmax(student_logits, 1)
    student_right = student_logits.argmax(dim=1) == target
    rows = []
    for label in [*range(num_classes), "all"]:
        chosen = torch.ones_like(wrong) if label == "all" else target == label
        count = int(chosen.sum())
        errors = chosen & wrong
        row = {"class": label, "samples": count, "teacher_wrong": int(errors.sum()),
               "teacher_acc": _percent(~wrong[chosen]), "student_acc": _percent(student_right[chosen])}
        row.update({name: float(values[chosen].mean()) if count else None for name, values in per_sample.items()})
        for who, probabilities in (("teacher", teacher_probabilities), ("student", student_probabilities)):
            row[f"{who}_error_distribution"] = probabilities[errors].mean(0).tolist() if errors.any() else None
        rows.append(row)
    return rows


def _percent(flags: torch.Tensor) -> float | None:
    return 100.0 * float(flags.double().mean()) if flags.numel() else None


# ---------------------------------------------------------------------------------------------------------------
# the methods
# ---------------------------------------------------------------------------------------------------------------
@register_method
class NTDH(SingleTeacherDistiller):
    """NTDH (Chen et al., arXiv:2409.02438, 2024) from a pre-trained multimodal teacher: our reading, the paper
    distils cross-modal teachers only (:class:`NTDHUU`). The rule, its constants and how it sits in the framework:
    the module's docstring.

    Loss ``(1 - alpha) CE(z_s, y) + alpha L_ntdh(z_s, z_t)``, ``L_ntdh`` = :func:`ntdh_kl_loss` with the weight of
    :func:`ntdh_weight` (``--ntdh_loss dkd``: :func:`ntdh_dkd_loss`).
    """

    card = MethodCard(
        name="NTDH",
        position=95,
        summary=("NTDH (Chen et al., arXiv 2024): KD masked where the teacher is wrong and its logits differ from the "
                 "student's, from a pre-trained multimodal teacher (our reading; the paper's teachers are "
                 "cross-modal)."),
        roles=("teacher", "student"),
        teacher_kind="multimodal",
        needs_checkpoint=True,
        search_space={"lr": ("log", 0.1, 10.0, "relative"), "alpha": ("float", 0.1, 0.9),
                      "ntdh_temperature": ("log", 0.25, 4.0), "ntdh_threshold": ("float", 0.9, 1.0)},
    )
    supports_dense = False
    dense_reason = ("its per-sample weight needs one class prediction per sample, right or wrong; a segmentation map "
                    "with unlabelled pixels has none")

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        SingleTeacherDistiller.add_arguments(parser)
        parser.add_argument("--ntdh_loss", choices=LOSSES, default="kl",
                            help="distillation term: kl (the code's KD_KL_PSSM, omega scaling the logits of a KL) "
                                 "or dkd (dkd_PSSM, omega weighting decoupled KD's terms) (default: %(default)s)")
        parser.add_argument("--ntdh_temperature", type=float, default=TEMPERATURE,
                            help="temperature T of the distillation term (default: %(default)s, the code's)")
        parser.add_argument("--ntdh_threshold", type=float, default=THRESHOLD,
                            help="cosine similarity of teacher and student logits from which a sample the teacher "
                                 "gets wrong is still distilled (default: %(default)s, the code's)")
        parser.add_argument("--dkd_alpha", type=float, default=1.0,
                            help="with --ntdh_loss dkd: weight of the target-class term TCKD (default: %(default)s, "
                                 "gauss/main.py's)")
        parser.add_argument("--dkd_beta", type=float, default=1.0,
                            help="with --ntdh_loss dkd: weight of the non-target term NCKD (default: %(default)s)")

    @classmethod
    def check_args(cls, args: argparse.Namespace, spec: DatasetSpec) -> None:
        super().check_args(args, spec)  # --ntdh_temperature > 0: utils/cli.py's NUMBER_RULES
        if not -1.0 <= args.ntdh_threshold <= 1.0:
            raise UserError(f"--ntdh_threshold is a cosine similarity, in [-1, 1]; got {args.ntdh_threshold}")
        if args.dkd_alpha < 0 or args.dkd_beta < 0:
            raise UserError(f"--dkd_alpha and --dkd_beta must be >= 0, got {args.dkd_alpha} and {args.dkd_beta}")

    def ntdh_loss(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                  target: torch.Tensor) -> torch.Tensor:
        """The distillation term on one batch (the weight computed inside, as the code)."""
        args = self.args
        omega = ntdh_weight(teacher_logits, student_logits, target, args.ntdh_threshold)
        if args.ntdh_loss == "dkd":
            return ntdh_dkd_loss(student_logits, teacher_logits, target, omega, args.ntdh_temperature,
                                 args.dkd_alpha, args.dkd_beta)
        return ntdh_kl_loss(student_logits, teacher_logits, omega, args.ntdh_temperature)

    def distill_terms(self, batch, epoch):
        teacher_logits = self.teacher_forward(self.teacher, batch, self.teacher_modalities())
        logits = self.run_model(self.student, batch, (self.mode,))
        return logits, {"ntdh": self.ntdh_loss(logits, teacher_logits.detach(), batch.y)}


@register_method
class NTDHUU(NTDH):
    """NTDH (Chen et al., arXiv:2409.02438, 2024) from a unimodal teacher of the other modality, the setting of the
    paper's experiments (``main-NTDH-UU.py``); otherwise :class:`NTDH`."""

    card = MethodCard(
        name="NTDH-UU",
        position=95,
        summary=("NTDH (Chen et al., arXiv 2024): KD masked where the teacher is wrong and its logits differ from the "
                 "student's, from a pre-trained unimodal teacher of the other modality (the paper's setting)."),
        roles=("teacher", "student"),
        teacher_kind="crossmodal",
        needs_checkpoint=True,
        search_space={"lr": ("log", 0.1, 10.0, "relative"), "alpha": ("float", 0.1, 0.9),
                      "ntdh_temperature": ("log", 0.25, 4.0), "ntdh_threshold": ("float", 0.9, 1.0)},
    )
