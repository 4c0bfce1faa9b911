"""OFA (``main-OFA.py`` multimodal teacher, ``main-OFA-UU.py`` cross-modal unimodal teacher).

Hao et al., "One-for-All: Bridge the Gap Between Heterogeneous Architectures in Knowledge Distillation",
NeurIPS 2023, as the MST-Distill reference runs it: every listed student stage gets a projector
to class logits, trained against the teacher's logits with the OFA loss

    ℓ_i = mean_b Σ_c −((p + Y)^ε − Y) · log q_i,   p = softmax(z_t/τ), q_i = softmax(Proj_i(f_s,i)/τ),

``L = (1-α)·CE + α·mean_i ℓ_i``, α halved after every 30 epochs, selection on the validation CE (the reference
also computed the OFA term during validation, for its log only). The scaffold is KD's (``kd.SingleTeacherDistiller``).

Reference quirk kept by default (``--no-ofa_log_softmax``): ``log q`` is the log of the softmax output, which
becomes ``-inf`` (an infinite loss) once a probability underflows; ``--ofa_log_softmax`` uses ``log_softmax``.
NYU-Depth-V2 is refused (the reference raises: its logits are dense maps).
"""
from __future__ import annotations

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F

from kd_methods import register_method
from kd_methods.features import feature_shapes, sample_inputs, tap_layers
from kd_methods.kd import SingleTeacherDistiller
from utils.core.cards import MethodCard
from utils.core.hooks import capture_features

#: the student stages that get a projector (the teacher side is its logits): every tap the student declares
#: (``kd_methods.taps``, slot ``ofa``; the reference's choice for LeNet5, conv1/conv2/fc1, is in its table there).
#: 4-d features get the 2-d projector, flat ones the 1-d projector.
OFA_SLOT = "ofa"


class SepConv(nn.Module):
    """Depthwise-separable block that halves H and W: (dw 3x3 s2, pw 1x1, BN, ReLU, dw 3x3, pw 1x1, BN, ReLU)."""

    def __init__(self, channels_in: int, channels_out: int):
        super().__init__()
        c = channels_in
        self.op = nn.Sequential(
            nn.Conv2d(c, c, 3, stride=2, padding=1, groups=c, bias=False), nn.Conv2d(c, c, 1, bias=False),
            nn.BatchNorm2d(c), nn.ReLU(),
            nn.Conv2d(c, c, 3, stride=1, padding=1, groups=c, bias=False), nn.Conv2d(c, channels_out, 1, bias=False),
            nn.BatchNorm2d(channels_out), nn.ReLU(),
        )

    def forward(self, x):
        return self.op(x)


class Projector2D(nn.Module):
    """``[B, C, H, W] -> [B, K]``: SepConv(C -> 2C), SepConv(2C -> hidden), global average pool, Linear(hidden -> K)."""

    def __init__(self, channels: int, hidden: int, num_classes: int):
        super().__init__()
        self.blks = nn.Sequential(SepConv(channels, 2 * channels), SepConv(2 * channels, hidden),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.blks(x)


class Projector1D(nn.Module):
    """``[B, d] -> [B, K]``: Linear(d -> hidden), ReLU, Linear(hidden -> K)."""

    def __init__(self, dim: int, hidden: int, num_classes: int):
        super().__init__()
        self.blks = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.blks(x)


def _init_subtree(module: nn.Module) -> None:
    """The reference's ``init_weights``: conv kaiming-normal (fan_out, relu); BN 1/0; Linear truncated normal std
    0.02 with absolute cut-offs ±2 (timm's, i.e. effectively untruncated), bias 0; for every module of the subtree."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02, a=-2.0, b=2.0)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def init_projector(module: nn.Module) -> nn.Module:
    """The reference's init, applied as it did: ``proj.apply(init_weights)``. ``apply`` calls ``init_weights`` on
    every submodule (children first) and ``init_weights`` re-initialises that submodule's whole subtree, so a layer
    at depth d is drawn d + 1 times (the projector's convs 5 times, its Linears 3 times). Only the last draw stays,
    with the same distribution as one draw; replaying them all keeps the global RNG stream, hence a seed's initial
    weights, identical to the reference's."""
    module.apply(_init_subtree)
    return module


def build_projectors(shapes: dict[str, tuple[int, ...]], layers, num_classes: int) -> nn.ModuleList:
    """One projector per student stage (hidden width 2·K): 4-d features get :class:`Projector2D`, flat ones
    :class:`Projector1D`. All are built (PyTorch default init) before any is re-initialised, in stage order, as
    the reference, whose RNG stream this keeps."""
    kinds = {3: Projector2D, 1: Projector1D}
    projectors = [kinds[len(shapes[n])](shapes[n][0], 2 * num_classes, num_classes) for n in layers]
    for projector in projectors:
        init_projector(projector)
    return nn.ModuleList(projectors)


def ofa_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target_onehot: torch.Tensor, eps: float,
             temperature: float = 1.0, log_softmax: bool = False) -> torch.Tensor:
    """``mean_b Σ_c −((p + Y)^ε − Y) · log q`` (the teacher side is detached here).

    ``log_softmax=False`` takes ``log(softmax(s/τ))`` as the reference (``-inf`` once a probability underflows).
    """
    p = F.softmax(teacher_logits.detach() / temperature, dim=1)
    if log_softmax:
        log_q = F.log_softmax(student_logits / temperature, dim=1)
    else:
        log_q = torch.log(F.softmax(student_logits / temperature, dim=1))
    y = target_onehot.to(p.dtype)
    return torch.sum(-((p + y) ** eps - y) * log_q, dim=-1).mean()


@register_method
class OFA(SingleTeacherDistiller):
    """OFA (Hao et al., "One-for-All: Bridge the Gap Between Heterogeneous Architectures in Knowledge
    Distillation", NeurIPS 2023) from a multimodal teacher: projectors map the listed student stages to logits,
    trained with the OFA loss against the frozen teacher's logits; one Adam over the student and the projectors.
    """

    card = MethodCard(
        name="OFA",
        position=60,
        summary="OFA: stage-wise projectors of the student trained against the teacher's logits (multimodal teacher).",
        roles=("teacher", "student"),
        teacher_kind="multimodal",
        needs_checkpoint=True,
        search_space={"lr": ("log", 0.1, 10.0, "relative"), "alpha": ("float", 0.1, 0.9),
                      "ofa_eps": ("float", 1.0, 1.5), "ofa_temperature": ("log", 1.0, 4.0)},
    )
    supports_dense = False
    dense_reason = "its loss needs class logits per sample (the reference raises)"

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        SingleTeacherDistiller.add_arguments(parser)
        parser.add_argument("--ofa_eps", type=float, default=1.1,
                            help="exponent ε of the OFA target (default: %(default)s)")
        parser.add_argument("--ofa_temperature", type=float, default=1.0,
                            help="temperature τ of both softmaxes (default: %(default)s)")
        parser.add_argument("--ofa_log_softmax", action=argparse.BooleanOptionalAction, default=False,
                            help="use log_softmax for the student side (stable); default off: log(softmax), "
                                 "the reference")

    @classmethod
    def check_args(cls, args, spec) -> None:
        super().check_args(args, spec)
        tap_layers(OFA_SLOT, args.Smodel, spec.name, cls.name, "student stage")

    def __init__(self, ctx):
        super().__init__(ctx)  # teacher, then student: the reference's build order
        self.layers = tap_layers(OFA_SLOT, self.args.Smodel, self.spec.name, self.name, "student stage")
        shapes = feature_shapes(self.student, self.layers, sample_inputs(ctx, (self.mode,)))
        self.projectors = build_projectors(shapes, self.layers, self.spec.num_classes)

    def extra_modules(self):
        return [self.projectors]

    def distill_terms(self, batch, epoch):
        z_t = self.teacher_forward(self.teacher, batch, self.teacher_modalities())
        with capture_features(self.student, self.layers) as features:
            z_s = self.run_model(self.student, batch, (self.mode,))
        onehot = F.one_hot(batch.y, self.spec.num_classes)
        losses = [ofa_loss(projector(features[n]), z_t, onehot, self.args.ofa_eps, self.args.ofa_temperature,
                           self.args.ofa_log_softmax) for projector, n in zip(self.projectors, self.layers)]
        return z_s, {"ofa": sum(losses) / len(losses)}

    def extra_results(self):
        return {"stages": list(self.layers)}


@register_method
class OFAUU(OFA):
    """OFA (Hao et al., NeurIPS 2023) from a cross-modal unimodal teacher (``main-OFA-UU.py``)."""

    card = MethodCard(
        name="OFA-UU",
        position=60,
        summary="OFA: stage-wise projectors of the student trained against a cross-modal unimodal teacher's logits.",
        roles=("teacher", "student"),
        teacher_kind="crossmodal",
        needs_checkpoint=True,
        search_space={"lr": ("log", 0.1, 10.0, "relative"), "alpha": ("float", 0.1, 0.9),
                      "ofa_eps": ("float", 1.0, 1.5), "ofa_temperature": ("log", 1.0, 4.0)},
    )
