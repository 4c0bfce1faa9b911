"""FD-CMKD (``main-FD-CMKD.py``): frequency-decoupled cross-modal knowledge distillation.

Liu, Zhang, Huang, Xu and Yang, "Distilling Cross-Modal Knowledge via Feature Disentanglement", AAAI 2026
(arXiv 2511.19887); the authors' code is github.com/Johumliu/FD-CMKD (``main_fd_cmkd.py``, ``utils/utils.py``).

The teacher is a pre-trained unimodal network of the *other* modality (a ``main-S.py`` model, the sweep's
cross-modal teacher), as in the authors' code: the audio student learns from the visual teacher and the visual
student from the audio teacher, both teachers trained alone (``main_unimodality.py``). The paper has no multimodal
teacher, and a fusion network's feature has no reason to share the student's width, so there is no multimodal card.

What one training step computes, as the authors' code does (each point checked against it):

1. The penultimate feature ``f`` of teacher and student (here each model's last declared tap, slot ``feature`` of
   :mod:`kd_methods.taps`; a feature map is averaged over its positions to one vector per sample, as the authors'
   ResNet-18 pools its last block).
2. A real FFT of ``f`` along the feature dimension; the DC bin (0) is dropped from both bands; the low band keeps
   bins ``1..d/4`` and the high band the rest, ``d/4+1..d/2``; each band goes back by an inverse real FFT to ``d``
   values (:func:`band_split`). The authors fix this for ``d = 512`` (257 bins: low 1..128, high 129..256, i.e. the
   first half of the retained spectrum); for another width ``d`` the cut is ``floor(d/4)``, the same half of the
   retained ``floor(d/2)`` bins, and the inverse FFT is told the length ``d`` (for odd ``d`` the default length of
   ``irfft`` would be ``d - 1``). Identical to the authors' filter at ``d = 512``; widths below 4 are refused.
3. Each band L2-normalised per sample (``x / max(||x||, 1e-8)``); ``L_low = MSE`` between the student's and the
   detached teacher's low bands, ``L_high = MSE`` between their signed logs ``sign(x) * log1p(|x|)`` of the high
   bands (:func:`distillation_terms`).
4. One classifier per band (ReLU then Linear, "shared" by teacher and student), trained with CE on the student's
   band and on the teacher's band (the teacher's features carry no gradient, so its CE trains the classifier only):
   ``L_align``, four CE terms.
5. Separate task classifiers on the student's two bands: two CE terms; plus the student's own CE on its logits.
6. All weights 1: ``CE + L_low + L_high + L_align + L_band_ce`` (``--fd_low_weight``, ``--fd_high_weight``,
   ``--fd_align_weight``, ``--fd_band_ce_weight`` change them; a tuning search varies the first three with
   ``--lr``, the band heads being part of the task loss like the student's CE).

Deviations from the authors' code, deliberate:

* Optimiser: one Adam over the student and the method's heads at the dataset's learning rate (this framework's
  per-dataset defaults, as every method); the authors use SGD (momentum 0.9, lr 0.01) with a poly schedule
  ``1e-4 + (0.01 - 1e-4)(1 - epoch/100)^0.9`` and Xavier-normal student initialisation.
* The model is the student's own head, selected on the validation CE; the authors keep, per direction, the best of
  three heads (the student's and the two band task classifiers) on **test** accuracy.
* One run trains one direction (``--mode`` names the student); the authors train both students in one joint run
  (one optimiser over both, losses summed; the students share no parameter, so that run is two independent
  trainings on the same batches). Per step the two runs of a sweep (``--mode m1`` and ``--mode m2``)
  compute together what one joint step computes (each teacher forward, each student forward and backward, the
  eight heads), so the pair costs about one joint run, each run about half, plus its own data loading and
  validation; the teachers are the sweep's ``S`` runs, already trained for the no-KD baseline.
* Where teacher and student features differ in width (AV-MNIST's default pair: LeNet5's 84 against
  ThreeLayerCNN-A's 128 channels; or models of the user's choice), a Linear layer maps the student's feature to the
  teacher's width before the split, trained with the student. The authors' widths are equal (512), and so are those
  of every other dataset's default pair here: there is no such layer then.
* NYU-Depth-V2 is refused up front: the band classifiers predict one label per sample from a pooled feature, and
  the authors' public code is classification only (the paper also reports segmentation, with no code for it).

The loss functions are checked against the authors' code on identical tensors (``tests/test_fd_cmkd.py``, which
runs a verbatim copy of their functions kept in ``tests/reference/fd_cmkd_authors.py``).
"""
from __future__ import annotations

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F

from kd_methods import register_method
from kd_methods.features import feature_shapes
from kd_methods.kd import SingleTeacherDistiller
from kd_methods.rkd import feature_layer
from models import get_entry
from utils.core.cards import MethodCard
from utils.core.errors import UserError
from utils.core.hooks import capture_features

#: the narrowest feature with a low band (bins 1..d/4) and a high band
MIN_WIDTH = 4
#: the authors' ``norm_feat`` floor on the norm
NORM_EPS = 1e-8
#: each term of :class:`FrequencyDecoupledLoss` -> the option weighting it (1 in the authors' code; ``utils.cli``
#: refuses a negative or non-finite ``--*_weight``), and what it is
WEIGHTS = {"low": ("fd_low_weight", "the low-band MSE"), "high": ("fd_high_weight", "the high-band log-MSE"),
           "align": ("fd_align_weight", "the shared band classifiers' CE (student and teacher bands)"),
           "band_ce": ("fd_band_ce_weight", "the CE of the band task classifiers on the student's bands")}


def band_masks(width: int, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """The 0/1 masks of the low and high bands over the ``width // 2 + 1`` bins of ``rfft``: DC (bin 0) in
    neither, low ``1..width // 4``, high ``width // 4 + 1..width // 2`` (the authors' 1..128 / 129..256 at 512)."""
    bins, cut = width // 2 + 1, width // 4
    low = torch.zeros(bins, device=device, dtype=dtype)
    high = torch.zeros(bins, device=device, dtype=dtype)
    low[1:cut + 1] = 1
    high[cut + 1:] = 1
    return low, high


def band_split(feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(low, high)``: ``feature`` ``[B, d]`` filtered in the frequency domain along ``d`` and brought back to
    ``d`` values by the inverse real FFT (half-precision features in float32: ``torch.fft`` has no bfloat16)."""
    if feature.dtype not in (torch.float32, torch.float64):
        feature = feature.float()
    width = feature.shape[1]
    spectrum = torch.fft.rfft(feature, dim=1)
    low, high = band_masks(width, feature.device, feature.dtype)
    return (torch.fft.irfft(spectrum * low, n=width, dim=1), torch.fft.irfft(spectrum * high, n=width, dim=1))


def normalise(x: torch.Tensor) -> torch.Tensor:
    """Row L2 normalisation ``x / max(||x||, 1e-8)`` (the authors' ``norm_feat``)."""
    return x / torch.norm(x, p=2, dim=1, keepdim=True).clamp(min=NORM_EPS)


def signed_log(x: torch.Tensor) -> torch.Tensor:
    """``sign(x) * log1p(|x|)`` (the authors' ``log``; 0 at 0)."""
    return torch.sign(x) * torch.log1p(torch.abs(x))


def distillation_terms(student_low, student_high, teacher_low, teacher_high) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L_low, L_high)``: MSE of the normalised low bands, MSE of the signed logs of the normalised high bands; the
    teacher's bands are targets (detached)."""
    low = F.mse_loss(normalise(student_low), normalise(teacher_low).detach())
    high = F.mse_loss(signed_log(normalise(student_high)), signed_log(normalise(teacher_high)).detach())
    return low, high


def pooled(feature: torch.Tensor) -> torch.Tensor:
    """``[B, C]``: a feature map ``[B, C, ...]`` averaged over its positions; a vector unchanged."""
    return feature.flatten(2).mean(2) if feature.dim() > 2 else feature


class BandClassifier(nn.Module):
    """ReLU then Linear (the authors' ``Classifier``)."""

    def __init__(self, width: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(x))


class FrequencyDecoupledLoss(nn.Module):
    """The terms of one direction on pooled features of one width: the two band distillation terms and the four band
    classifiers, built in the authors' order (shared low, shared high, task low, task high)."""

    def __init__(self, width: int, num_classes: int):
        super().__init__()
        self.align_low, self.align_high = BandClassifier(width, num_classes), BandClassifier(width, num_classes)
        self.task_low, self.task_high = BandClassifier(width, num_classes), BandClassifier(width, num_classes)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, y: torch.Tensor,
                criterion=F.cross_entropy) -> dict[str, torch.Tensor]:
        """Unweighted ``low``, ``high`` (:func:`distillation_terms`), ``align`` (the shared classifiers' CE on the
        student's and the teacher's bands) and ``band_ce`` (the task classifiers' CE on the student's bands), summed
        in the authors' order."""
        s_low, s_high = band_split(student)
        t_low, t_high = band_split(teacher)
        low, high = distillation_terms(s_low, s_high, t_low, t_high)
        align = ((criterion(self.align_low(s_low), y) + criterion(self.align_low(t_low), y))
                 + (criterion(self.align_high(s_high), y) + criterion(self.align_high(t_high), y)))
        band_ce = criterion(self.task_low(s_low), y) + criterion(self.task_high(s_high), y)
        return {"low": low, "high": high, "align": align, "band_ce": band_ce}


@register_method
class FDCMKD(SingleTeacherDistiller):
    """FD-CMKD (Liu et al., "Distilling Cross-Modal Knowledge via Feature Disentanglement", AAAI 2026) from a
    pre-trained unimodal teacher of the other modality. See the module docstring for the loss, the generalisation to
    feature widths other than 512 and the deviations from the authors' code.

    It keeps the single-teacher scaffold (frozen teacher built first, one Adam over the student and its heads,
    selection on the student's validation CE) but not its alpha: every term has its own weight, 1 by default.
    """

    card = MethodCard(
        name="FD-CMKD",
        position=95,
        summary=("FD-CMKD (Liu et al., AAAI 2026): frequency-decoupled feature distillation (MSE on the low band, "
                 "log-MSE on the high band, shared band classifiers) from a unimodal teacher of the other modality."),
        roles=("teacher", "student"),
        teacher_kind="crossmodal",
        needs_checkpoint=True,
        search_space={"lr": ("log", 0.1, 10.0, "relative"), "fd_low_weight": ("log", 0.1, 10.0),
                      "fd_high_weight": ("log", 0.1, 10.0), "fd_align_weight": ("log", 0.1, 10.0)},
    )

    supports_dense = False
    dense_reason = ("its band classifiers predict one label per sample from a pooled feature (the authors' public "
                    "code is classification only)")

    def __init__(self, ctx):
        super().__init__(ctx)
        database = self.spec.name
        self.teacher_layer = feature_layer(database, self.args.Tmodel, self.name)
        self.student_layer = feature_layer(database, self.args.Smodel, self.name)
        teacher_width = self._width(self.teacher, self.teacher_layer, (self.other,))
        student_width = self._width(self.student, self.student_layer, (self.mode,))
        if teacher_width < MIN_WIDTH:
            raise UserError(f"FD-CMKD needs a teacher feature at least {MIN_WIDTH} wide to split it into two bands; "
                            f"{self.args.Tmodel}.{self.teacher_layer} is {teacher_width} wide: pick another --Tmodel")
        self.width = teacher_width
        # built in the authors' order after the networks: (adapter,) shared band classifiers, task band classifiers
        self.adapter = nn.Linear(student_width, teacher_width) if student_width != teacher_width else None
        self.bands = FrequencyDecoupledLoss(self.width, self.spec.num_classes)
        if self.adapter is not None:
            ctx.log(f"FD-CMKD: student feature {self.args.Smodel}.{self.student_layer} ({student_width}) mapped to "
                    f"the teacher's width {teacher_width} by a Linear layer")

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        for name, what in WEIGHTS.values():
            parser.add_argument(f"--{name}", type=float, default=1.0,
                                help=f"weight of {what}; 1 in the authors' code (default: %(default)s)")

    @classmethod
    def check_args(cls, args, spec) -> None:
        if spec.is_segmentation:
            raise UserError(f"{cls.name} does not support {spec.name}: {cls.dense_reason}; use KD-UU, C2KD or MGDFR")
        other = spec.other_modality(args.mode)
        entry = get_entry(args.Tmodel)
        if tuple(entry.inputs) != (other,):
            raise UserError(f"{cls.name} distils a unimodal teacher of the other modality ({other}), as its authors; "
                            f"'{args.Tmodel}' takes {'+'.join(entry.inputs)}: e.g. --Tmodel {spec.students[other]}")
        feature_layer(spec.name, args.Tmodel, cls.name)
        feature_layer(spec.name, args.Smodel, cls.name)

    def _width(self, model: nn.Module, layer: str, modalities: tuple[str, ...]) -> int:
        """The pooled feature's width (probed on the meta device: nothing computed, no RNG drawn)."""
        return feature_shapes(model, [layer], [self.ctx.input_shapes[m] for m in modalities])[layer][0]

    def extra_modules(self) -> list[nn.Module]:
        return [self.bands] if self.adapter is None else [self.adapter, self.bands]

    def features(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(student logits, student feature, teacher feature)``, features pooled, the student's at the teacher's
        width, the teacher's without gradient."""
        with capture_features(self.teacher, [self.teacher_layer]) as teacher_features:
            self.teacher_forward(self.teacher, batch, (self.other,))
        with capture_features(self.student, [self.student_layer]) as student_features:
            logits = self.run_model(self.student, batch, (self.mode,))
        student = pooled(student_features[self.student_layer])
        if self.adapter is not None:
            student = self.adapter(student)
        return logits, student, pooled(teacher_features[self.teacher_layer]).detach()

    def train_step(self, batch, epoch):
        logits, student, teacher = self.features(batch)
        terms = self.bands(student, teacher, batch.y, self.task_loss)
        return {"ce": self.task_loss(logits, batch.y),
                **{name: getattr(self.args, WEIGHTS[name][0]) * term for name, term in terms.items()}}

    def extra_results(self) -> dict:
        cut = self.width // 4
        return {"teacher_layer": self.teacher_layer, "student_layer": self.student_layer, "feature_width": self.width,
                "low_bins": [1, cut], "high_bins": [cut + 1, self.width // 2], "adapter": self.adapter is not None}
