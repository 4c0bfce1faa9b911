"""MFH on framework datasets: Algorithm 1 between two trained networks, and the method ``MFH-KD``.

Xue, Gao, Ren, Zhao, "The Modality Focusing Hypothesis: Towards Understanding Crossmodal Knowledge Distillation",
ICLR 2023. The hypothesis: what a cross-modal student gains from KD is decided by the modality-general decisive
features the teacher relies on, not by the teacher's accuracy. Sec. 5.4 and App. B.4 test it on real data: rank
the channels of one teacher layer by Algorithm 1 (permutation saliences against a network of the other
modality, :func:`kd_methods.feature_ranking.channel_salience`), then distil from teachers whose least salient
(modality-general teacher), most salient (modality-specific) or random ``r%`` channels are nullified.

* :func:`load_network`, :func:`train_joint_networks` (Algorithm 1, step 1, on in-memory datasets) and
  :func:`rank_channels` (steps 2-3 over a split): the ranking, no files written.
* :class:`NullifiedTeacherKD`, registered as ``MFH-KD``: KD from a cross-modal teacher with given channels of
  one layer nullified, trained by the shared engine. ``main-MFH.py --exp nullify`` runs it once per teacher
  variant and student initialisation (:mod:`utils.mfh_experiments`).
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from kd_methods import register_method
from kd_methods.base import Method, Stage, build_for_run, freeze
from kd_methods.checkpoints import check_same_data, load_model_checkpoint
from models import get_entry
from utils.core.cards import MethodCard
from utils.core.checkpoints import load_checkpoint
from kd_methods.feature_ranking import channel_salience, normalise_salience, nullified
from kd_methods.features import feature_shapes, sample_inputs
from kd_methods.mfh_lab import JOINT_MOMENTUM
from kd_methods.taps import layers
from utils.core.errors import NonFiniteLossError, UserError


# ---------------------------------------------------------------------------------------------------------------
# networks and Algorithm 1 on framework datasets
# ---------------------------------------------------------------------------------------------------------------
def load_network(ctx, name: str | None, ckpt: str | None, modality: str, flag: str, same_data: bool = False):
    """Build ``name`` (default: the checkpoint's ``model_name``, else the dataset's unimodal model of ``modality``)
    and load ``ckpt`` into it (strict). ``flag`` names the command-line pair in messages (``a``: ``--model_a``).
    ``same_data``: refuse a checkpoint trained on other data or another split than the run's (one line), for the
    experiments that read a split the networks must not have trained on.

    Returns ``(model on ctx.device, the modalities it takes)``.
    """
    state = None
    if ckpt:
        state = load_checkpoint(ckpt)
        if name is None:
            name = state.get("model_name") if isinstance(state, dict) else None
            if name is None:
                raise UserError(f"{ckpt} does not record its model name; pass --model_{flag}")
    if name is None:
        name = ctx.spec.students[modality]
    model = build_for_run(name, ctx, role=f"--model_{flag}")
    if state is not None:  # the one loader; the networks are compared, not distilled: no teacher check
        load_model_checkpoint(model, ckpt, ctx, role=f"--model_{flag}", check_provenance=False,
                              contents=state)
        if same_data:
            check_same_data(state, ckpt, ctx, f"--ckpt_{flag}", "the --seed and dataset options the networks were "
                            "trained with, or networks trained on this run's data and split")
    return model.to(ctx.device), tuple(get_entry(name).inputs)


def full_batch(ctx, split: str):
    """The whole ``split`` as one batch, in split order."""
    loader = ctx.make_loader(split, shuffle=False, batch_size=len(ctx.splits[split]), max_steps=None)
    return next(iter(loader))


def train_joint_networks(ctx, model_a, inputs_a, model_b, inputs_b, epochs: int, lr: float, log) -> None:
    """Algorithm 1, step 1: ``CE(f_a) + CE(f_b) + MSE(f_a, f_b)``, full batch on the training split, SGD with
    momentum 0.9 as the authors' Gaussian code (in-memory datasets such as Synthetic-MVD only)."""
    batch = full_batch(ctx, "train")
    params = [p for p in list(model_a.parameters()) + list(model_b.parameters())]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=JOINT_MOMENTUM)
    model_a.train()
    model_b.train()
    for epoch in range(epochs):
        out_a, out_b = model_a(*batch.inputs(inputs_a)), model_b(*batch.inputs(inputs_b))
        ce_a, ce_b = F.cross_entropy(out_a, batch.y), F.cross_entropy(out_b, batch.y)
        dist = F.mse_loss(out_a, out_b)
        loss = ce_a + ce_b + dist
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"Algorithm 1 joint training diverged at epoch {epoch}; lower --joint_lr")
        if epoch == epochs - 1 or (epoch + 1) % max(1, epochs // 5) == 0:
            log(f"joint training epoch {epoch + 1}/{epochs}: CE_a {ce_a.item():.4f}, CE_b {ce_b.item():.4f}, "
                f"MSE {dist.item():.4f}")
    model_a.eval()
    model_b.eval()


@torch.no_grad()
def split_accuracy(ctx, model, inputs, split: str, layer: str | None = None, channels=None) -> float:
    """Test accuracy (%) of ``model`` on ``split``; with ``channels``, those of ``layer`` are nullified."""
    correct, total = 0, 0
    model.eval()
    for batch in ctx.make_loader(split, shuffle=False, max_steps=None):
        if channels is not None:
            with nullified(model, layer, channels):
                logits = model(*batch.inputs(inputs))
        else:
            logits = model(*batch.inputs(inputs))
        correct += int((logits.argmax(1) == batch.y).sum())
        total += len(batch)
    return 100.0 * correct / max(1, total)


def check_layer(model, inputs, layer: str) -> str | None:
    """``layer`` as :func:`channel_salience` takes it (``'input'`` -> ``None``), or a :class:`UserError`."""
    if layer == "input":
        if len(inputs) != 1:
            raise UserError(f"--layer input needs a unimodal model_a; {model.model_name} takes {'+'.join(inputs)}")
        return None
    if layer not in {n for n, _ in model.named_modules() if n}:
        raise UserError(f"--layer '{layer}' is not a submodule of {model.model_name}; declared taps: "
                        f"{', '.join(getattr(model, 'taps', ())) or '-'}; or 'input'")
    return layer


def default_layer(model) -> str:
    """MFH's default layer of ``model`` (:func:`kd_methods.taps.layers`, slot ``mfh``), else its input."""
    chosen = layers("mfh", model.model_name)
    return chosen[0] if chosen else "input"


def rank_channels(ctx, model_a, inputs_a, model_b, inputs_b, layer: str | None, repeats: int, samples: int,
                  batch_size: int, seed: int) -> dict:
    """Algorithm 1, steps 2-3, on the first ``samples`` training samples in split order, in batches of
    ``batch_size`` (permutations stay within a batch; the batch saliences are averaged weighted by size).

    Returns ``{"salience" [C] float32, "normalised" [C] (min-max), "order" (descending), "rank" [C],
    "samples", "seconds"}``.
    """
    model_a.eval()
    model_b.eval()
    started = time.time()
    generator = torch.Generator().manual_seed(seed)
    total, weight_sum, seen = None, 0, 0
    loader = ctx.make_loader("train", shuffle=False, batch_size=min(batch_size, samples), max_steps=None)
    for batch in loader:
        if seen >= samples:
            break
        sal = channel_salience(model_a, model_b, batch.inputs(inputs_a), batch.inputs(inputs_b), layer,
                               repeats=repeats, generator=generator).double().cpu()
        total = sal * len(batch) if total is None else total + sal * len(batch)
        weight_sum += len(batch)
        seen += len(batch)
    salience = (total / weight_sum).float()
    order = torch.argsort(salience, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    return {"salience": salience, "normalised": normalise_salience(salience), "order": order, "rank": rank,
            "samples": seen, "seconds": round(time.time() - started, 2)}


# ---------------------------------------------------------------------------------------------------------------
# the method
# ---------------------------------------------------------------------------------------------------------------
def _index(text: str) -> int:
    """An index flag (channel, initialisation): an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def add_kd_weight_arguments(group) -> None:
    """``--gt_weight`` / ``--pl_weight``: shared by ``MFH-KD`` and ``main-MFH.py --exp nullify``."""
    group.add_argument("--gt_weight", type=float, default=0.0,
                       help="weight of the student's CE (default: %(default)s, rho = 0 as the paper's Table 8)")
    group.add_argument("--pl_weight", type=float, default=1.0,
                       help="weight of KL(teacher || student), mean reduction (default: %(default)s)")


def check_kd_weights(args) -> None:
    if args.gt_weight < 0 or args.pl_weight < 0 or args.gt_weight + args.pl_weight == 0:
        raise UserError("--gt_weight and --pl_weight must be >= 0 and not both 0")


@register_method
class NullifiedTeacherKD(Method):
    """KD from a cross-modal teacher with some channels of one layer nullified (Xue et al., "The Modality Focusing
    Hypothesis: Towards Understanding Crossmodal Knowledge Distillation", ICLR 2023, Sec. 5.4, Table 8).

    Loss ``gt_weight * CE(student, y) + pl_weight * KL(softmax(teacher) || softmax(student))`` with the KL
    averaged over all ``B x K`` elements (the authors' RAVDESS code; Table 8 uses ``rho = 0``: ``gt_weight 0``).
    The channels ``--nullify_channels`` of ``--nullify_layer`` are replaced by their mean over the current batch
    (:func:`~kd_methods.feature_ranking.nullify_channels`); none given: plain KD from the regular teacher.
    Selection: the student's validation CE. ``main-MFH.py --exp rank`` computes the saliences that choose the
    channels, ``--exp nullify`` runs this method for every teacher variant.
    """

    card = MethodCard(
        name="MFH-KD",
        position=110,
        summary=("MFH-KD (Xue et al., ICLR 2023, Sec. 5.4): KD from a pre-trained cross-modal teacher whose listed "
                 "channels of one layer are nullified (set to their batch mean)."),
        roles=("teacher", "student"),
        teacher_kind="crossmodal",
        needs_checkpoint=True,
        checkpoint_help="the pre-trained cross-modal teacher (--Tmodel): a best.pth of main-S.py on the other modality",
        # a tool of main-MFH.py --exp nullify, not a baseline of the comparison table
        in_comparison=False,
    )

    @staticmethod
    def add_arguments(group: argparse._ArgumentGroup) -> None:
        group.add_argument("--nullify_layer", default=None,
                           help="layer (e.g. a declared tap) of the teacher whose channels are nullified, or 'input' "
                                "(default: none)")
        group.add_argument("--nullify_channels", type=_index, nargs="+", default=[],
                           help="channels (dim 1) of --nullify_layer to nullify (default: none, plain KD)")
        group.add_argument("--student_init", type=_index, default=0,
                           help="index of the student's initialisation (seed SEED*7919+INDEX); data, split and "
                                "batch order stay those of --seed (default: %(default)s)")
        add_kd_weight_arguments(group)

    @classmethod
    def check_args(cls, args, spec) -> None:
        check_kd_weights(args)
        if args.nullify_channels and args.nullify_layer is None:
            raise UserError("--nullify_channels needs --nullify_layer (a layer of --Tmodel, e.g. a tap, or 'input')")

    def __init__(self, ctx):
        super().__init__(ctx)
        args = self.args
        # one student initialisation per --student_init index; data, split and batch order stay those of --seed
        torch.manual_seed(args.seed * 7919 + args.student_init)
        self.student = self.build(args.Smodel, (self.mode,), "student")
        self.teacher = freeze(self.pretrained_teacher())
        self.teacher_inputs = self.teacher_modalities()
        self.layer = None if args.nullify_layer in (None, "input") else args.nullify_layer
        self.channels = torch.as_tensor(args.nullify_channels, dtype=torch.long)
        if self.channels.numel():
            self._check_channels()

    def teacher_modalities(self) -> tuple[str, ...]:
        """What ``--Tmodel`` takes: usually the other modality (a fusion network of ``--exp rank`` also works)."""
        return tuple(get_entry(self.args.Tmodel).inputs)

    def _check_channels(self) -> None:
        inputs = sample_inputs(self.ctx, self.teacher_inputs)
        if self.layer is None:
            if len(inputs) != 1:
                raise UserError(f"--nullify_layer input needs a unimodal teacher; {self.args.Tmodel} takes "
                                f"{'+'.join(self.teacher_inputs)}")
            width = inputs[0].shape[1]
        else:
            check_layer(self.teacher, self.teacher_inputs, self.layer)
            width = feature_shapes(self.teacher, [self.layer], inputs)[self.layer][0]
        if int(self.channels.max()) >= width:
            raise UserError(f"--nullify_channels: {self.args.nullify_layer} of {self.args.Tmodel} has {width} "
                            f"channels (0..{width - 1}), got {int(self.channels.max())}")

    def teacher_logits(self, batch):
        with torch.no_grad():
            if self.channels.numel():
                with nullified(self.teacher, self.layer, self.channels):
                    return self.teacher(*batch.inputs(self.teacher_inputs))
            return self.teacher(*batch.inputs(self.teacher_inputs))

    def stages(self):
        args = self.args

        def train_step(batch, epoch):
            logits = self.student(*batch.inputs((self.mode,)))
            probs = torch.softmax(self.teacher_logits(batch), dim=1)
            # KLDivLoss(reduction="mean"): the mean over all B x K elements (written out: torch warns on "mean")
            kl = (torch.xlogy(probs, probs) - probs * F.log_softmax(logits, dim=1)).mean()
            losses = {"kl": args.pl_weight * kl}
            if args.gt_weight:
                losses["ce"] = args.gt_weight * self.task_loss(logits, batch.y)
            return losses

        return [Stage("kd", args.epochs, self.adam(self.student), train_step, [self.student],
                      val_step=self.student_val_step, select_key="loss", selected=self.student)]

    def model_names(self):
        return {"student": self.args.Smodel, "teacher": self.args.Tmodel}

    def extra_results(self):
        return {"layer": self.args.nullify_layer, "nullified_channels": self.channels.tolist(),
                "student_init": self.args.student_init}
