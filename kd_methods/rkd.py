"""Relational knowledge distillation (``main-RKD.py``, ``main-RKD-UU.py``), and the feature taps
and embedders RKD shares with CRD.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F

from datasets import get_spec
from kd_methods import register_method
from kd_methods.features import feature_shapes, tap_layers
from kd_methods.kd import SingleTeacherDistiller
from utils.core.cards import MethodCard
from utils.core.hooks import capture_features

#: the embedding width of RKD's and CRD's embedders (hard-coded in the reference)
EMBED_DIM = 128

#: the feature RKD and CRD distil is each model's last declared tap (``kd_methods.taps``, slot ``feature``): the
#: reference's per-pair table used the same layer for a model in every pair (AV-MNIST: CNN-I fc1, LeNet5 fc1,
#: ThreeLayerCNN-A conv3; RAVDESS/VGGSound: fc2; CMMD-V2: fc2), which is what the taps declare
FEATURE_SLOT = "feature"

def feature_layer(database: str, model: str, method: str) -> str:
    """The submodule whose output ``method`` distils for ``model``; one-line error for a model without taps."""
    return tap_layers(FEATURE_SLOT, model, database, method, "feature layer")[0]


def flatten_feature(feature: torch.Tensor, database: str) -> torch.Tensor:
    """``[B, D]``; a 4-d feature is max-pooled 2x2 first where the database says so
    (:attr:`~datasets.base.DatasetSpec.pool_feature_maps`, AV-MNIST). The hooked ``conv3`` output is pre-ReLU,
    so this differs from the model's own pooled (post-ReLU) feature by a ReLU, as in the reference."""
    if feature.dim() == 4 and get_spec(database).pool_feature_maps:
        feature = F.max_pool2d(feature, kernel_size=2, stride=2)
    return feature.reshape(feature.shape[0], -1)


class Embed(nn.Module):
    """``Linear(d -> 128)`` then row L2 normalisation ``x / ||x||`` without epsilon (as the reference)."""

    def __init__(self, in_dim: int, out_dim: int = EMBED_DIM):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x.reshape(x.shape[0], -1))
        return x / x.pow(2).sum(1, keepdim=True).pow(0.5)


class FeatureDistiller(SingleTeacherDistiller):
    """A :class:`SingleTeacherDistiller` that also reads one feature of the teacher and of the student.

    The features are captured by forward hooks that exist only for the duration of each forward (the reference
    registered new hooks at every iteration and never removed them). NYU-Depth-V2 is refused.
    """

    supports_dense = False
    dense_reason = "the reference has no feature table for it (it raises)"

    def __init__(self, ctx):
        super().__init__(ctx)
        database = self.spec.name
        self.teacher_layer = feature_layer(database, self.args.Tmodel, self.name)
        self.student_layer = feature_layer(database, self.args.Smodel, self.name)
        self.student_dim = self._feature_dim(self.student, self.student_layer, (self.mode,))
        self.teacher_dim = self._feature_dim(self.teacher, self.teacher_layer, self.teacher_modalities())

    @classmethod
    def check_args(cls, args, spec) -> None:
        super().check_args(args, spec)
        if not spec.is_segmentation:
            feature_layer(spec.name, args.Tmodel, cls.name)
            feature_layer(spec.name, args.Smodel, cls.name)

    def _feature_dim(self, model: nn.Module, layer: str, modalities: tuple[str, ...]) -> int:
        """Width of the flattened feature, from :func:`~kd_methods.features.feature_shapes` (nothing computed, no
        RNG consumed, so the run stays identical to one that knew the width)."""
        shape = feature_shapes(model, [layer], [self.ctx.input_shapes[m] for m in modalities])[layer]
        return flatten_feature(torch.empty((1, *shape), device="meta"), self.spec.name).shape[1]

    def forward_features(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(student logits, student feature, detached teacher feature)``, features flattened."""
        with capture_features(self.teacher, [self.teacher_layer]) as teacher_features:
            self.teacher_forward(self.teacher, batch, self.teacher_modalities())
        with capture_features(self.student, [self.student_layer]) as student_features:
            logits = self.run_model(self.student, batch, (self.mode,))
        database = self.spec.name
        return (logits, flatten_feature(student_features[self.student_layer], database),
                flatten_feature(teacher_features[self.teacher_layer], database).detach())


# -- the RKD loss ----------------------------------------------------------------------------------------------

def pairwise_distances(e: torch.Tensor) -> torch.Tensor:
    """Euclidean distances ``sqrt(clamp(|a|² + |b|² - 2ab, 1e-12))`` with a zero diagonal."""
    square = e.pow(2).sum(1)
    distances = (square.unsqueeze(1) + square.unsqueeze(0) - 2 * e @ e.t()).clamp(min=1e-12).sqrt()
    # masked product instead of the reference's in-place diagonal write: same values, same (zero) gradients
    return distances * (1 - torch.eye(len(e), device=e.device, dtype=e.dtype))


def normalised_distances(e: torch.Tensor) -> torch.Tensor:
    """Distances divided by the mean of the strictly positive ones (sum / count: no host sync, all d >= 0)."""
    distances = pairwise_distances(e)
    return distances / (distances.sum() / (distances > 0).sum())


def angles(e: torch.Tensor) -> torch.Tensor:
    """``[B*B*B]``: cosine between ``e_b - e_a`` and ``e_c - e_a`` for every anchor ``a`` (eps 1e-12)."""
    directions = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)
    return torch.bmm(directions, directions.transpose(1, 2)).reshape(-1)


def rkd_terms(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(distance loss, angle loss)``, each a smooth-L1 (beta 1) mean over all entries, diagonal included.

    The teacher side builds a graph only if ``teacher`` requires grad (``--rkd_train_teacher_embed``).
    A batch of one sample has no relation: both terms are 0 (the reference gets 0/0 = NaN there).
    """
    if len(student) < 2:
        zero = student.sum() * 0
        return zero, zero
    distance = F.smooth_l1_loss(normalised_distances(student), normalised_distances(teacher))
    angle = F.smooth_l1_loss(angles(student), angles(teacher))
    return distance, angle


#: the reference's weights of the distance and angle terms (the RKD paper's lambda_D and lambda_A): the defaults of
#: ``--rkd_distance_weight`` and ``--rkd_angle_weight``
DISTANCE_WEIGHT, ANGLE_WEIGHT = 1.0, 2.0


@register_method
class RKD(FeatureDistiller):
    """Relational knowledge distillation from a multimodal teacher (Park et al., "Relational Knowledge
    Distillation", CVPR 2019), as the MST-Distill reference implements it.

    The student and teacher features (each model's last declared tap) are embedded by ``E_s``/``E_t`` (Linear to 128
    and L2 normalisation); ``L_rkd = w_d * distance + w_a * angle`` on the embeddings (``--rkd_distance_weight``,
    ``--rkd_angle_weight``: the reference's 1 and 2); total
    ``(1 - alpha) * CE + alpha * L_rkd``, alpha halved after every 30 epochs; one Adam over student, E_s, E_t;
    selection on the student's validation CE.

    Reference quirk kept by default: the teacher embedding ``E_t`` is computed without gradient, so it stays at
    its random initialisation (a fixed random projection); ``--rkd_train_teacher_embed`` lets it learn.
    Fixed without a switch (no effect on the numbers): hooks are removed after every forward instead of
    accumulating, and a one-sample batch gives a zero relational loss instead of NaN weights.
    """

    card = MethodCard(
        name="RKD",
        position=40,
        summary="Relational knowledge distillation (Park et al., CVPR 2019) from a pre-trained multimodal teacher.",
        roles=("teacher", "student"),
        teacher_kind="multimodal",
        needs_checkpoint=True,
        search_space={"lr": ("log", 0.1, 10.0, "relative"), "alpha": ("float", 0.1, 0.9),
                      "rkd_distance_weight": ("log", 0.1, 10.0), "rkd_angle_weight": ("log", 0.2, 20.0)},
    )

    def __init__(self, ctx):
        super().__init__(ctx)
        self.embed_s = Embed(self.student_dim)
        self.embed_t = Embed(self.teacher_dim)

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        SingleTeacherDistiller.add_arguments(parser)
        parser.add_argument("--rkd_distance_weight", type=float, default=DISTANCE_WEIGHT,
                            help="weight of the distance term of L_rkd (default: %(default)s, the reference's)")
        parser.add_argument("--rkd_angle_weight", type=float, default=ANGLE_WEIGHT,
                            help="weight of the angle term of L_rkd (default: %(default)s, the reference's)")
        parser.add_argument("--rkd_train_teacher_embed", action=argparse.BooleanOptionalAction, default=False,
                            help="let the teacher embedding E_t receive gradient; the reference computes it under "
                                 "no_grad, so it stays at its random init (default: off, as the reference)")

    def extra_modules(self):
        return [self.embed_s, self.embed_t]

    def distill_terms(self, batch, epoch):
        logits, student_feature, teacher_feature = self.forward_features(batch)
        student = self.embed_s(student_feature)
        with torch.set_grad_enabled(self.args.rkd_train_teacher_embed and torch.is_grad_enabled()):
            teacher = self.embed_t(teacher_feature)
        distance, angle = rkd_terms(student, teacher)
        return logits, {"rkd_distance": self.args.rkd_distance_weight * distance,
                        "rkd_angle": self.args.rkd_angle_weight * angle}


@register_method
class RKDUU(RKD):
    """RKD (Park et al., CVPR 2019) from a unimodal teacher of the other modality (``main-RKD-UU.py``).

    Batch size and lr default to the per-dataset table of docs/scripts.md like every method (the reference script alone
    defaulted to 32; pass ``--batch_size 32`` to match it).
    """

    card = MethodCard(
        name="RKD-UU",
        position=40,
        summary=("Relational knowledge distillation (Park et al., CVPR 2019) from a unimodal teacher of the other "
                 "modality."),
        roles=("teacher", "student"),
        teacher_kind="crossmodal",
        needs_checkpoint=True,
        search_space={"lr": ("log", 0.1, 10.0, "relative"), "alpha": ("float", 0.1, 0.9),
                      "rkd_distance_weight": ("log", 0.1, 10.0), "rkd_angle_weight": ("log", 0.2, 20.0)},
    )
