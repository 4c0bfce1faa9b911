"""FitNets (``main-FitNets.py`` multimodal teacher, ``main-FitNets-UU.py`` cross-modal unimodal teacher).

Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015, as the MST-Distill reference runs it:
a hint stage that regresses two student features onto two teacher features, then a KD stage.

Reference quirks kept by default, each with a switch:

* the hint stage trains only the student parameters whose name contains a guided layer name as a substring
  (not the whole student up to the guided layers as in the paper): ``--hint_full_student`` trains the latter;
* the KD stage selects the student on the validation ``(1-α)·CE + α·KD_T`` with the current α, so epochs are
  compared under different α after every halving: ``--select_on_ce`` selects on the validation CE instead;
* the R1D regressor resizes with the legacy ``nearest`` mode of ``interpolate`` (kept, no switch: it is the
  architecture of the regressor, not a bug).

The reference crashes on teacher/student pairs without a hint table; here the layers come from the models' declared
taps (``kd_methods.taps``), and a pair without them is refused up front.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F

from kd_methods import register_method
from kd_methods.base import Stage
from kd_methods.features import feature_shapes, modules_up_to, sample_inputs
from kd_methods.kd import KD
from models import MODELS
from kd_methods import taps as method_taps
from utils.core.cards import MethodCard
from utils.core.errors import UserError
from utils.core.hooks import capture_features

# -- regressors (the reference's modules and submodule names, default PyTorch init) -------------------------


class R1D(nn.Module):
    """``[B, L_in] -> [B, L_out]``: a 1-channel Conv1d (kernel 3, padding 1, stride ``max(L_in // L_out, 1)``)
    followed by a resize to ``L_out`` with the legacy ``nearest`` mode (not ``nearest-exact``), as the reference."""

    kind = "R1D"

    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...]):
        super().__init__()
        (in_len,), (self.out_len,) = in_shape, out_shape
        self.conv1d = nn.Conv1d(1, 1, kernel_size=3, stride=max(in_len // self.out_len, 1), padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1d(x.unsqueeze(1))
        return F.interpolate(x, size=self.out_len, mode="nearest").squeeze(1)


class R2Dto1D(nn.Module):
    """``[B, C, H, W] -> [B, L]``: Conv2d(C -> 16, 3x3, padding 1), flatten, Linear(16·H·W -> L)."""

    kind = "R2D->1D"

    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...]):
        super().__init__()
        channels, height, width = in_shape
        self.conv2d = nn.Conv2d(channels, 16, kernel_size=3, stride=1, padding=1)
        # The reference sized the Linear by running the conv on torch.rand(1, C, H, W); drawing the same numbers
        # keeps the global RNG stream, hence every later initialisation, identical to the reference's.
        torch.rand(1, channels, height, width)
        self.fc = nn.Linear(16 * height * width, out_shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv2d(x).flatten(1))


class Down(nn.Module):
    """``[B, C_in, H, W] -> [B, C_out, H/2, W/2]``: Conv2d 3x3, stride 2, padding 1."""

    kind = "Down"

    def __init__(self, in_shape, out_shape):
        super().__init__()
        self.conv = nn.Conv2d(in_shape[0], out_shape[0], kernel_size=3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


class Up(nn.Module):
    """``[B, C_in, H, W] -> [B, C_out, 2H, 2W]``: ConvTranspose2d 3x3, stride 2, padding 1, output padding 1."""

    kind = "Up"

    def __init__(self, in_shape, out_shape):
        super().__init__()
        self.deconv = nn.ConvTranspose2d(in_shape[0], out_shape[0], kernel_size=3, stride=2, padding=1,
                                         output_padding=1)

    def forward(self, x):
        return self.deconv(x)


class Fixed(nn.Module):
    """``[B, C_in, H, W] -> [B, C_out, H, W]``: Conv2d 3x3, stride 1, padding 1."""

    kind = "Fixed"

    def __init__(self, in_shape, out_shape):
        super().__init__()
        self.conv = nn.Conv2d(in_shape[0], out_shape[0], kernel_size=3, stride=1, padding=1)

    def forward(self, x):
        return self.conv(x)


REGRESSORS = {cls.kind: cls for cls in (R1D, R2Dto1D, Down, Up, Fixed)}

# -- hint pairs: (teacher layer, student layer, regressor) ------------------------------------------------------
# Each model's last two declared taps, zipped, with the regressor its shapes call for (``kd_methods.taps``, slots
# ``hints`` and ``hints-uu``); the reference's other rows (AV-MNIST and NYU-Depth-V2 cross-modal pairs) are in the
# table there.

def _same_database_pairs(slot: str) -> dict[tuple[str, str], tuple]:
    """The rows of every teacher/student pair of one paper or synthetic database that the slot supports, as the
    reference's tables listed them: multimodal teacher (``hints``) or unimodal teacher of the other modality
    (``hints-uu``), unimodal student. Generic models (any database) are left out: their rows depend on the data."""
    pairs = {}
    for teacher, t_entry in MODELS.items():
        for student, s_entry in MODELS.items():
            if t_entry.database is None or t_entry.database != s_entry.database or s_entry.is_multimodal:
                continue
            if t_entry.is_multimodal != (slot == "hints") or (slot == "hints-uu" and t_entry.inputs == s_entry.inputs):
                continue
            rows = method_taps.hint_rows(slot, teacher, student)
            if rows is not None and all(kind is not None for _, _, kind in rows):
                pairs[(teacher, student)] = rows
    return pairs


#: (Tmodel, Smodel) -> hint rows, for every pair of one database's own models (documentation and tests)
HINT_PAIRS = _same_database_pairs("hints")
HINT_PAIRS_UU = _same_database_pairs("hints-uu")


def hint_rows(slot: str, teacher: str, student: str, database: str, method: str) -> tuple:
    """The pair's rows (regressors possibly still unknown: ``None``) or one :class:`UserError` listing the pairs of
    ``database``."""
    rows = method_taps.hint_rows(slot, teacher, student)
    if rows is not None:
        return rows
    known = [f"{t} -> {s}" for t, s in (HINT_PAIRS if slot == "hints" else HINT_PAIRS_UU)
             if MODELS[t].database == database]
    raise UserError(f"{method} has no hint-pair entry for {teacher} -> {student} on {database} (each model needs two "
                    f"declared feature taps); supported: {', '.join(known) or 'any two models with two taps each'}")


@register_method
class FitNets(KD):
    """FitNets (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015) from a multimodal teacher.

    Stage 1 (``--hint_epochs``): Adam(``--hint_lr``) over the regressors and the guided student parameters,
    ``L_hint = Σ MSE(R_i(f_s,i), f_t,i)`` with the teacher features detached; the student with the lowest
    validation hint loss is kept (the regressors are discarded). Stage 2 (``--epochs``): KD exactly as
    :class:`~kd_methods.kd.KD` (student Adam ``--lr``, ``(1-α)·CE + α·KD_T``, T = ``--kd_temperature``, the
    reference's 4, α halved after every 30 epochs),
    selected on the α-weighted validation loss (reference) or on the CE (``--select_on_ce``).
    """

    card = MethodCard(
        name="FitNets",
        position=70,
        summary="FitNets: hint training (regressed intermediate features), then KD from a multimodal teacher.",
        roles=("teacher", "student"),
        teacher_kind="multimodal",
        needs_checkpoint=True,
        search_space={"lr": ("log", 0.1, 10.0, "relative"), "hint_lr": ("log", 0.1, 10.0, "relative"),
                      "alpha": ("float", 0.1, 0.9), "kd_temperature": ("log", 1.0, 16.0)},
    )
    slot = "hints"

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        KD.add_arguments(parser)
        parser.add_argument("--hint_epochs", type=int, default=None,
                            help="epochs of the hint stage (default: --epochs, the reference's 100 on the paper "
                                 "datasets)")
        parser.add_argument("--hint_lr", type=float, default=1e-3,
                            help="Adam learning rate of the hint stage (default: %(default)s)")
        parser.add_argument("--hint_full_student", action=argparse.BooleanOptionalAction, default=False,
                            help="hint stage trains every student layer up to the guided ones, as the FitNets paper; "
                                 "default off: only parameters whose name contains a guided layer name (reference)")
        parser.add_argument("--select_on_ce", action=argparse.BooleanOptionalAction, default=False,
                            help="KD stage selects on the validation CE; default off: on (1-α)·CE + α·KD with the "
                                 "current α (reference)")

    @classmethod
    def check_args(cls, args, spec) -> None:
        super().check_args(args, spec)
        hint_rows(cls.slot, args.Tmodel, args.Smodel, spec.name, cls.name)
        if args.hint_epochs is None:
            args.hint_epochs = args.epochs
        if args.hint_epochs < 0 or args.hint_lr <= 0:
            raise UserError("--hint_epochs must be >= 0 and --hint_lr > 0")

    def __init__(self, ctx):
        super().__init__(ctx)  # teacher, then student, then the regressors: the reference's build order
        rows = hint_rows(self.slot, self.args.Tmodel, self.args.Smodel, self.spec.name, self.name)
        t_inputs = sample_inputs(ctx, self.teacher_modalities())
        s_inputs = sample_inputs(ctx, (self.mode,))
        t_shapes = feature_shapes(self.teacher, [t for t, _, _ in rows], t_inputs)
        s_shapes = feature_shapes(self.student, [s for _, s, _ in rows], s_inputs)
        self.hint_pairs = tuple((t, s, kind or method_taps.regressor_kind(s_shapes[s], t_shapes[t]))
                                for t, s, kind in rows)
        for t, s, kind in self.hint_pairs:
            if kind is None:
                raise UserError(f"{self.name}: no hint regressor maps student {self.args.Smodel}.{s} "
                                f"{list(s_shapes[s])} to teacher {self.args.Tmodel}.{t} {list(t_shapes[t])} "
                                f"(flat to flat, map to flat, or maps of equal, double or half size)")
        self.regressors = nn.ModuleList(REGRESSORS[kind](s_shapes[s], t_shapes[t]) for t, s, kind in self.hint_pairs)
        guided = [s for _, s, _ in self.hint_pairs]
        if self.args.hint_full_student:  # every module whose forward ends before the last guided layer's does
            modules = modules_up_to(self.student, guided, s_inputs)
            self.guided_names = [f"{m}.{p}" for m in modules
                                 for p, _ in self.student.get_submodule(m).named_parameters(recurse=False)]
        else:  # reference: substring match of the guided layer names in the parameter names
            self.guided_names = [n for n, _ in self.student.named_parameters() if any(g in n for g in guided)]

    def hint_loss(self, batch) -> torch.Tensor:
        with capture_features(self.teacher, [t for t, _, _ in self.hint_pairs]) as f_t:
            self.teacher_forward(self.teacher, batch, self.teacher_modalities())
        with capture_features(self.student, [s for _, s, _ in self.hint_pairs]) as f_s:
            self.run_model(self.student, batch, (self.mode,))
        return sum(F.mse_loss(regressor(f_s[s]), f_t[t].detach())
                   for regressor, (t, s, _) in zip(self.regressors, self.hint_pairs))

    def hint_optimizer(self) -> torch.optim.Optimizer:
        # the reference's groups: one per regressor, then the guided student parameters (all at --hint_lr)
        params = dict(self.student.named_parameters())
        groups = [{"params": list(regressor.parameters())} for regressor in self.regressors]
        groups.append({"params": [params[n] for n in self.guided_names]})
        return self.make_adam(groups, self.args.hint_lr)

    def kd_val_step(self, batch, epoch):
        """Validation terms of the KD stage; ``loss`` is the reference's criterion, weighted with the current α."""
        logits, terms = self.distill_terms(batch, epoch)
        alpha, ce = self.alpha(epoch), self.task_loss(logits, batch.y)
        return {"ce": ce, **terms, "loss": (1 - alpha) * ce + alpha * sum(terms.values())}

    def stages(self):
        def hint_step(batch, epoch):
            return {"hint": self.hint_loss(batch)}

        return [
            Stage("hint", self.args.hint_epochs, self.hint_optimizer, hint_step, [self.student, self.regressors],
                  val_step=hint_step, select_key="hint", selected=self.student),
            Stage("kd", self.args.epochs, self.adam(self.student), self.train_step, [self.student],
                  val_step=self.kd_val_step, select_key="ce" if self.args.select_on_ce else "loss",
                  selected=self.student),
        ]

    def extra_results(self):
        return {"hint_pairs": [{"teacher": t, "student": s, "regressor": kind} for t, s, kind in self.hint_pairs],
                "hint_trained_parameters": self.guided_names}


@register_method
class FitNetsUU(FitNets):
    """FitNets (Romero et al., ICLR 2015) from a cross-modal unimodal teacher (``main-FitNets-UU.py``).

    As :class:`FitNets`; the teacher is a ``main-S.py`` model of the other modality, fed that modality.
    """

    card = MethodCard(
        name="FitNets-UU",
        position=70,
        summary="FitNets: hint training, then KD from a cross-modal unimodal teacher.",
        roles=("teacher", "student"),
        teacher_kind="crossmodal",
        needs_checkpoint=True,
        search_space={"lr": ("log", 0.1, 10.0, "relative"), "hint_lr": ("log", 0.1, 10.0, "relative"),
                      "alpha": ("float", 0.1, 0.9), "kd_temperature": ("log", 1.0, 16.0)},
    )
    slot = "hints-uu"
