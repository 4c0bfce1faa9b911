"""MGDFR (``main-MGDFR.py``): modality-general decisive feature ranking, then KD.

The modality-general decisive feature ranking (Algorithm 1) of Xue et al., "The Modality Focusing Hypothesis:
Towards Understanding Crossmodal Knowledge Distillation", ICLR 2023, as the MST-Distill reference runs it at one
teacher layer. Three phases, all run by the shared engine:

A. co-training (``--co_epochs``): a unimodal teacher of the other modality and a partner student, both from
   scratch, trained together by ``SGD(--co_lr, momentum 0.9)`` on ``CE_T + CE_S + MSE(z_t, z_s)``; no selection.
B. salience (at the end of A, not a training loop): Algorithm 1 at the ranked teacher layer over the train split
   in shuffled batches of ``6·--batch_size``, ``--repeat_permute`` permutations per channel, distance MSE to the
   partner's logits, min-max normalised (:mod:`kd_methods.feature_ranking`, the one implementation shared with
   MFH). Saved as ``salience.npy`` in the run directory and in ``results.json`` ``extra``.
C. KD (``--epochs``) from the frozen co-trained teacher to a FRESH student (new init, new Adam ``--lr``),
   ``(1-α)·CE + α·KD_T`` (T = ``--kd_temperature``, the reference's 4), α halved after every 30 epochs, selection
   on the validation CE.

Reference quirks kept by default, each with a switch:

* the reference's "freeze" hook of phase C is a no-op, so the ranking has no effect and phase C is plain KD;
  ``--mgdfr_apply_removal`` replaces the ``int(--ratio·D)`` least salient channels of the teacher layer by their
  batch mean (``feature_ranking.nullified``) in every teacher forward of phase C (train and validation);
* NYU-Depth-V2: the co-training and salience distance compares one class map (the last) of one image (the
  first); ``--mgdfr_full_distance`` uses the whole output.

A multimodal ``--Tmodel`` is refused up front (the reference crashes: the teacher is fed one modality).
The reference skipped phases A/B when their files existed in ``checkpoints/``; here the engine's stage
checkpoints (``stage1-co-train.pth``) and ``--resume`` cover that.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from kd_methods import register_method
from kd_methods.base import Method, Stage, add_kd_temperature, halving_schedule
from kd_methods.feature_ranking import channel_salience, normalise_salience, nullified, select_channels
from kd_methods.features import feature_shapes, require_unimodal_teacher, sample_inputs, tap_layers
from kd_methods.reporting import save_artifact
from utils.core.cards import MethodCard
from utils.core.errors import UserError

#: the teacher layer whose channels are ranked: the teacher's last declared tap (``kd_methods.taps``, slot ``mgdfr``;
#: the reference's FuseNet choice, the last encoder stage, is in its table there)
MGDFR_SLOT = "mgdfr"

#: phase B reads the train split in batches this many times --batch_size, as the reference
SALIENCE_BATCH_FACTOR = 6


def one_map_mse(out_t: torch.Tensor, out_s: torch.Tensor) -> torch.Tensor:
    """The reference's NYU distance: MSE between the last class map of the first image of each output."""
    return F.mse_loss(out_t[0][-1], out_s[0][-1])


@register_method
class MGDFR(Method):
    """MGDFR: Algorithm 1 of Xue et al., "The Modality Focusing Hypothesis: Towards Understanding Crossmodal
    Knowledge Distillation", ICLR 2023, at one layer of a co-trained cross-modal teacher, then KD to a fresh
    student. See the module docstring for the phases and the reference quirks kept by default.
    """

    card = MethodCard(
        name="MGDFR",
        position=90,
        summary=("MGDFR: co-train a cross-modal teacher with a student, rank the teacher's features by permutation "
                 "salience (MFH Algorithm 1), then KD to a fresh student."),
        roles=("teacher", "student"),
        teacher_kind="crossmodal",
        # its teacher is co-trained in the run, as the paper groups it
        table_group="crossmodal-teacher",
        # --ratio and --repeat_permute only matter with --mgdfr_apply_removal (off: the reference's no-op hook)
        search_space={"lr": ("log", 0.1, 10.0, "relative"), "co_lr": ("log", 0.1, 10.0, "relative"),
                      "alpha": ("float", 0.1, 0.9), "kd_temperature": ("log", 1.0, 16.0)},
    )

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--alpha", type=float, default=0.5,
                            help="initial KD weight α of phase C, halved after every 30 epochs (default: %(default)s)")
        add_kd_temperature(parser)
        parser.add_argument("--co_epochs", type=int, default=None,
                            help="epochs of the co-training phase (default: --epochs, the reference's 100 on the "
                                 "paper datasets)")
        parser.add_argument("--co_lr", type=float, default=1e-3,
                            help="SGD learning rate of the co-training phase (default: %(default)s)")
        parser.add_argument("--repeat_permute", type=int, default=10,
                            help="permutations per channel in the salience phase (default: %(default)s)")
        parser.add_argument("--ratio", type=float, default=0.75,
                            help="fraction of the teacher layer's channels listed for removal, the least salient "
                                 "(default: %(default)s)")
        parser.add_argument("--mgdfr_apply_removal", action=argparse.BooleanOptionalAction, default=False,
                            help="replace the listed channels by their batch mean in phase C; default off: the "
                                 "reference's hook is a no-op, phase C is plain KD")
        parser.add_argument("--mgdfr_full_distance", action=argparse.BooleanOptionalAction, default=False,
                            help="NYU-Depth-V2: co-training/salience distance on the whole output; default off: "
                                 "one class map of one image (reference)")

    @classmethod
    def check_args(cls, args, spec) -> None:
        require_unimodal_teacher(cls.name, args, spec)
        tap_layers(MGDFR_SLOT, args.Tmodel, spec.name, cls.name, "teacher layer")
        if args.co_epochs is None:
            args.co_epochs = args.epochs
        if args.co_epochs < 0 or args.co_lr <= 0 or args.repeat_permute < 1 or not 0.0 <= args.ratio <= 1.0:
            raise UserError("--co_epochs must be >= 0, --co_lr > 0, --repeat_permute >= 1 and --ratio in [0, 1]")
        if not 0.0 <= args.alpha <= 1.0:
            raise UserError(f"--alpha must be in [0, 1], got {args.alpha}")

    def __init__(self, ctx):
        super().__init__(ctx)
        # the reference's order: teacher, then the co-training student; the phase-C student is drawn after phase B
        self.teacher = self.build(self.args.Tmodel, (self.other,), "teacher")
        self.co_student = self.build(self.args.Smodel, (self.mode,), "student")
        with torch.random.fork_rng(devices=[]):  # a placeholder: re-initialised when phase C starts
            self.student = self.build(self.args.Smodel, (self.mode,), "student")
        self.layer = tap_layers(MGDFR_SLOT, self.args.Tmodel, self.spec.name, self.name, "teacher layer")[0]
        shape = feature_shapes(self.teacher, [self.layer], sample_inputs(ctx, (self.other,)))[self.layer]
        self.register_buffer("salience", torch.zeros(shape[0]))
        self._removed: torch.Tensor | None = None
        full = self.args.mgdfr_full_distance or not self.dense
        self.distance = F.mse_loss if full else one_map_mse

    # -- phase A: co-training ------------------------------------------------------------------------------
    def co_train_step(self, batch, epoch):
        z_t = self.run_model(self.teacher, batch, (self.other,))
        z_s = self.run_model(self.co_student, batch, (self.mode,))
        return {"ce_t": self.task_loss(z_t, batch.y), "ce_s": self.task_loss(z_s, batch.y),
                "dist": self.distance(z_t, z_s)}

    def co_optimizer(self) -> torch.optim.Optimizer:
        params = [*self.teacher.parameters(), *self.co_student.parameters()]
        return torch.optim.SGD(params, lr=self.args.co_lr, momentum=0.9)

    # -- phase B: salience (Algorithm 1), then the fresh student -------------------------------------------
    def rank_features(self) -> None:
        loader = self.ctx.make_loader("train", batch_size=SALIENCE_BATCH_FACTOR * self.args.batch_size)
        distance = "mse" if self.distance is F.mse_loss else self.distance
        total = torch.zeros_like(self.salience, dtype=torch.float64)
        for batch in loader:
            total += channel_salience(self.teacher, self.co_student, batch.inputs((self.other,)),
                                      batch.inputs((self.mode,)), self.layer, repeats=self.args.repeat_permute,
                                      distance=distance).double()
        # the reference's scale (sum over batches / repeats / training samples); min-max removes it anyway
        raw = total / (self.args.repeat_permute * len(self.ctx.splits["train"]))
        self.salience.copy_(normalise_salience(raw.float()))
        self._removed = None
        salience = self.salience.cpu().numpy()
        save_artifact(self.ctx, "salience.npy", lambda handle: np.save(handle, salience))
        self.ctx.log(f"MGDFR salience of {self.args.Tmodel}.{self.layer} ({self.salience.numel()} channels): "
                     f"least salient {self.removed_channels()[:10].tolist()}...")

    def removed_channels(self) -> torch.Tensor:
        """The ``int(ratio·D)`` least salient channels (the reference's ``argsort(v)[:int(ratio·D)]``)."""
        if self._removed is None:  # cached: phase C would otherwise sync with the device on every forward
            self._removed = select_channels(self.salience, self.args.ratio, "general").to(self.salience.device)
        return self._removed

    def end_co_training(self) -> None:
        self.rank_features()
        self.teacher.requires_grad_(False)
        # a fresh student as the reference's second factory call: new random init, drawn after phase B
        fresh = self.build(self.args.Smodel, (self.mode,), "student")
        self.student.load_state_dict(fresh.state_dict())

    # -- phase C: KD from the frozen co-trained teacher ----------------------------------------------------
    def teacher_logits(self, batch) -> torch.Tensor:
        if not self.args.mgdfr_apply_removal:  # reference: the "freeze" hook returns the output unchanged
            return self.teacher_forward(self.teacher, batch, (self.other,))
        with nullified(self.teacher, self.layer, self.removed_channels()):
            return self.teacher_forward(self.teacher, batch, (self.other,))

    def kd_step(self, batch, epoch):
        alpha = halving_schedule(self.args.alpha, epoch)
        z_t = self.teacher_logits(batch)
        z_s = self.run_model(self.student, batch, (self.mode,))
        kd = self.kd(z_s, z_t.detach(), self.args.kd_temperature)
        return {"ce": (1 - alpha) * self.task_loss(z_s, batch.y), "kd": alpha * kd}

    def val_step(self, batch, epoch):
        # the reference also ran the (hooked) teacher here, without using it; selection is on the CE only
        return self.student_val_step(batch, epoch)

    def stages(self):
        return [
            Stage("co-train", self.args.co_epochs, self.co_optimizer, self.co_train_step,
                  [self.teacher, self.co_student], select_key=None, on_stage_end=self.end_co_training),
            Stage("kd", self.args.epochs, self.adam(self.student), self.kd_step, [self.student],
                  val_step=self.val_step, select_key="loss", selected=self.student),
        ]

    def model_names(self):
        return {"teacher": self.args.Tmodel, "student": self.args.Smodel}

    def extra_results(self):
        return {"teacher_layer": self.layer, "salience": [round(float(v), 6) for v in self.salience.cpu()],
                "removed_channels": self.removed_channels().tolist(), "removal_applied": self.args.mgdfr_apply_removal}
