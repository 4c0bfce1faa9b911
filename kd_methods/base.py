"""The contract between a method (a "distiller") and the shared training loop (``utils.engine``).

A method is an ``nn.Module`` that owns every network of the run (student, teachers, extra heads), so one
``state_dict()`` holds the whole run state. It describes its training as a list of :class:`Stage` objects;
each stage says which parameters its optimiser updates, which modules train, how a batch becomes a dict
of loss terms, and which module is snapshotted when the validation criterion improves. The engine does
everything else (epochs, backward/step, validation, selection, logging, checkpoints, resumption).
"""
from __future__ import annotations

import argparse
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from datasets.base import Batch, BatchLoader, DataSource, DatasetSpec
from kd_methods.checkpoints import load_model_checkpoint
from models import build_model, get_entry, models_for
from utils.core.cards import MethodCard, fill_unset
from utils.core.errors import UserError
from utils.core.metrics import ConfusionMatrix

LossDict = dict[str, torch.Tensor]


@dataclass
class Stage:
    """One phase of training, run by the engine for ``epochs`` epochs.

    ``train_step(batch, epoch)`` returns the loss terms, already weighted; the engine sums them, back-
    propagates once and steps the optimiser built by ``make_optimizer`` (called when the stage starts).
    ``val_step(batch, epoch)`` returns the validation terms; the mean over validation batches of
    ``select_key`` picks the epoch whose ``selected`` module state is kept (strictly lower is better) and
    restored when the stage ends. ``select_key=None`` keeps the last epoch (no validation).
    ``train_modules`` are put in ``train()`` during training; every other module of the method stays in
    ``eval()``. ``epoch_logs()`` returns extra per-epoch figures (and resets its counters).
    The shuffle order of a stage's epochs counts on from the previous stages' (as one global shuffling RNG would).
    Stages after the last one that trains the network the run reports (:meth:`Method.evaluation_model`) train
    networks beside it, such as a comparison baseline: each trains as a run of its own would, with a standalone
    run's batches (its shuffles start at loader epoch 0), and its selected epoch is not the run's ``best_epoch``.
    """

    name: str
    epochs: int
    make_optimizer: Callable[[], torch.optim.Optimizer]
    train_step: Callable[[Batch, int], LossDict]
    train_modules: list[nn.Module]
    val_step: Callable[[Batch, int], LossDict] | None = None
    select_key: str | None = "loss"
    selected: nn.Module | None = None
    epoch_logs: Callable[[], dict] | None = None
    on_epoch_start: Callable[[int, torch.optim.Optimizer], None] | None = None
    on_stage_end: Callable[[], None] | None = None
    #: called when the stage starts, before ``make_optimizer`` (which then has no side effects): which parameters
    #: require gradients, counters reset
    on_stage_start: Callable[[], None] | None = None

    def start(self) -> torch.optim.Optimizer:
        """What the engine does when the stage starts: :attr:`on_stage_start`, then the stage's optimiser."""
        if self.on_stage_start is not None:
            self.on_stage_start()
        return self.make_optimizer()


@dataclass
class RunContext:
    """What a method may know about the run: options, dataset, device and data access."""

    args: argparse.Namespace
    spec: DatasetSpec
    device: torch.device
    source: DataSource
    splits: dict[str, "object"]
    make_loader: Callable[..., BatchLoader]
    log: Callable[[str], None] = print
    run_path: "object" = None
    #: the run's provenance record (utils.provenance.run_record): set by the engine, else made on first use by
    #: ``make_record`` (contexts that never load a checkpoint need neither)
    provenance: dict | None = None
    make_record: Callable[[], dict] | None = field(default=None, repr=False)

    def record(self) -> dict:
        """The run's provenance record (what its checkpoints were trained on), made once."""
        if self.provenance is None:
            if self.make_record is None:
                raise RuntimeError("this RunContext has neither a provenance record nor make_record")
            self.provenance = self.make_record()
        return self.provenance

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        return self.source.input_shapes


def autocast(args, device):
    """bfloat16 autocast of ``--amp`` on CUDA; elsewhere no change."""
    if args.amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def evaluate(model, modalities, loader, ctx: RunContext) -> tuple[float, dict]:
    """Task loss of the dataset (mean of batch means) and the reference's metrics of ``model`` on ``loader``."""
    was_training = model.training
    model.eval()
    spec = ctx.spec
    confusion = ConfusionMatrix(spec.num_classes, spec.ignore_index, device=ctx.device)
    loss_sum, steps = 0.0, 0
    for batch in loader:
        with autocast(ctx.args, ctx.device):
            logits = model(*batch.inputs(modalities))
        logits = logits.float()
        loss_sum += spec.task_loss(logits, batch.y).double()
        confusion.update(logits, batch.y)
        steps += 1
    model.train(was_training)
    loss = (loss_sum / steps).item() if steps else float("nan")
    return loss, confusion.compute()


def evaluate_splits(model, modalities, ctx: RunContext) -> dict:
    """:func:`evaluate` on the whole val and test splits: ``{"val": {"loss": ..., metrics}, "test": {...}}``;
    ``"test"`` is None under ``--no_test`` (the test split is not read)."""
    metrics = {"val": None, "test": None}
    for split in ("val",) if getattr(ctx.args, "no_test", False) else ("val", "test"):
        loss, figures = evaluate(model, modalities, ctx.make_loader(split, max_steps=None), ctx)
        metrics[split] = {"loss": loss, **figures}
    return metrics


#: the temperature of the reference's ``KD_4``: the default of ``--kd_temperature`` (KD, FitNets' KD stage, MGDFR's
#: phase C); MST-Distill keeps 4 (``kd_methods.mst_losses.TEMPERATURE``)
KD_TEMPERATURE = 4.0


def add_kd_temperature(parser: argparse.ArgumentParser) -> None:
    """``--kd_temperature``, the T of a method's ``KD_T`` term (default the reference's 4)."""
    parser.add_argument("--kd_temperature", type=float, default=KD_TEMPERATURE,
                        help="temperature T of the distillation term T^2 * KL(softmax(z_t/T) || softmax(z_s/T)) "
                             "(default: %(default)s, the reference's)")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = KD_TEMPERATURE,
            per_pixel: bool = False) -> torch.Tensor:
    """The reference's ``KD_T``: T² · KL(softmax(t/T) ‖ softmax(s/T)) summed, divided by the batch size.

    For dense outputs ``[B, C, H, W]`` with ``per_pixel`` (NYU-Depth-V2) the sum is further divided by H·W,
    i.e. the mean per-pixel KL. The caller decides whether the target is detached.
    Hinton et al., "Distilling the Knowledge in a Neural Network", NIPS workshop 2015.
    """
    log_q = F.log_softmax(student_logits / temperature, dim=1)
    p = F.softmax(teacher_logits / temperature, dim=1)
    loss = F.kl_div(log_q, p, reduction="sum") / student_logits.shape[0]
    if per_pixel and student_logits.dim() > 2:
        loss = loss / student_logits[0, 0].numel()
    return loss * temperature ** 2


def halving_schedule(value: float, epoch: int, every: int = 30) -> float:
    """The baselines' weight schedule (the reference's "alpha halving"): halved after every ``every`` epochs."""
    return value * 0.5 ** (epoch // every)


def freeze(module: nn.Module) -> nn.Module:
    """A frozen network: no gradients, eval mode (the engine keeps non-training modules in eval)."""
    module.requires_grad_(False)
    return module.eval()


class Method(nn.Module):
    """Base class of every training script's method.

    What the command line, the sweep and the tables know about a method is its :attr:`card` (a
    :class:`~utils.core.cards.MethodCard`, declared with literal arguments in the class body, read without importing
    torch); the class holds the training.
    """

    card: ClassVar[MethodCard]
    #: the card's name (set from the card for each class that declares one)
    name: ClassVar[str] = ""
    #: benchmarks only: run frozen networks with autograd and trainable-looking parameters, as the reference
    #: did (it never wrapped teacher forwards in no_grad), to measure what the no-grad path saves
    keep_teacher_graph: bool = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "card" in cls.__dict__:
            cls.name = cls.card.name

    def __init__(self, ctx: RunContext):
        super().__init__()
        self.ctx = ctx
        self.args = ctx.args
        self.spec = ctx.spec
        self.mode = ctx.args.mode
        self.other = ctx.spec.other_modality(self.mode)
        self.dense = ctx.spec.is_segmentation

    def __getstate__(self):  # keep the context (loaders, sources) out of deep copies and pickles
        state = self.__dict__.copy()
        state.pop("ctx", None)
        return state

    # -- CLI hooks ---------------------------------------------------------------------------------------
    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        """Add the method's own flags."""

    @classmethod
    def default_models(cls, spec: DatasetSpec, mode: str) -> dict[str, str]:
        """Default model names per role for ``spec`` and student modality ``mode`` (the card's)."""
        return cls.card.default_models(spec, mode)

    @classmethod
    def dataset_defaults(cls, spec: DatasetSpec) -> dict:
        """Option defaults that depend on the dataset (the card's
        :meth:`~utils.core.cards.MethodCard.dataset_defaults`)."""
        return cls.card.dataset_defaults(spec)

    @classmethod
    def fill_defaults(cls, args: argparse.Namespace, spec: DatasetSpec) -> None:
        """Set every option left at None to its :meth:`dataset_defaults` value: the one place such defaults are
        filled (by ``utils.cli`` and for contexts built without the command line)."""
        fill_unset(args, cls.dataset_defaults(spec))

    @classmethod
    def check_args(cls, args: argparse.Namespace, spec: DatasetSpec) -> None:
        """Raise :class:`UserError` for impossible option combinations, before any data is loaded."""

    @classmethod
    def epoch_plan(cls, args: argparse.Namespace) -> str:
        """How long the run trains, for the first line of its log."""
        return f"{args.epochs} epoch{'' if args.epochs == 1 else 's'}"

    # -- building blocks ---------------------------------------------------------------------------------
    def build(self, name: str, expected_inputs: tuple[str, ...] | None = None, role: str = "model") -> nn.Module:
        """Build a registered model for this run's data (:func:`build_for_run`), refusing one of another modality
        than the role needs."""
        entry = get_entry(name)
        if expected_inputs is not None and tuple(entry.inputs) != tuple(expected_inputs):
            raise UserError(f"{role} model '{name}' takes {'+'.join(entry.inputs)} but this run feeds it "
                            f"{'+'.join(expected_inputs)}; pick a model of that modality "
                            f"(--mode {self.mode}: student {self.spec.students[self.mode]}, "
                            f"cross-modal {self.spec.students[self.other]}, multimodal {self.spec.teacher})")
        return build_for_run(name, self.ctx, role)

    def task_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The dataset's criterion (:meth:`datasets.base.DatasetSpec.task_loss`)."""
        return self.spec.task_loss(logits, target)

    def kd(self, student_logits, teacher_logits, temperature: float = KD_TEMPERATURE) -> torch.Tensor:
        return kd_loss(student_logits, teacher_logits, temperature, per_pixel=self.dense)

    @staticmethod
    def run_model(model: nn.Module, batch: Batch, modalities: tuple[str, ...]) -> torch.Tensor:
        return model(*batch.inputs(modalities))

    def load_teacher(self, model: nn.Module, path: str, role: str = "teacher") -> nn.Module:
        """Load a teacher from our ``best.pth`` or a reference-style bare state dict: :func:`load_model_checkpoint`."""
        return load_model_checkpoint(model, path, self.ctx, role)

    def teacher_forward(self, model: nn.Module, batch: Batch, modalities: tuple[str, ...]) -> torch.Tensor:
        """Forward of a frozen network: no autograd graph (unless :attr:`keep_teacher_graph`)."""
        with torch.set_grad_enabled(self.keep_teacher_graph and torch.is_grad_enabled()):
            return model(*batch.inputs(modalities))

    def teacher_modalities(self) -> tuple[str, ...]:
        """What the teacher is fed: both modalities (multimodal) or the other one (cross-modal)."""
        return ("m1", "m2") if self.card.teacher_kind == "multimodal" else (self.other,)

    def pretrained_teacher(self) -> nn.Module:
        """Build ``--Tmodel`` for the card's ``teacher_kind``, load ``--ckpt_name`` into it and freeze it."""
        teacher = self.build(self.args.Tmodel, self.teacher_modalities(), "teacher")
        self.load_teacher(teacher, self.args.ckpt_name)
        teacher.requires_grad_(self.keep_teacher_graph)
        return teacher.eval()

    # -- what the engine asks ----------------------------------------------------------------------------
    def stages(self) -> list[Stage]:
        raise NotImplementedError

    def evaluation_model(self) -> tuple[nn.Module, tuple[str, ...]]:
        """The network whose metrics the run reports (the student by default) and the modalities it takes."""
        return self.student, (self.mode,)

    def model_names(self) -> dict[str, str]:
        """``results.json`` ``models``: role -> CLI name."""
        return {"student": self.args.Smodel}

    def extra_results(self) -> dict:
        return {}

    # -- shared defaults for single-stage student training -----------------------------------------------
    def student_val_step(self, batch: Batch, epoch: int) -> LossDict:
        logits = self.run_model(self.student, batch, (self.mode,))
        return {"loss": self.task_loss(logits, batch.y)}

    def adam(self, *modules_or_params, lr: float | None = None) -> Callable[[], torch.optim.Optimizer]:
        """A factory for ``Adam(params, lr)`` with PyTorch defaults, as every reference script uses (fused kernels
        unless ``--no-fused_adam``: see :func:`make_adam`)."""
        def make():
            params = []
            for item in modules_or_params:
                params.extend(item.parameters() if isinstance(item, nn.Module) else item)
            return self.make_adam([p for p in params if p.requires_grad], lr if lr is not None else self.args.lr)

        return make

    def make_adam(self, params, lr: float, foreach: bool | None = None) -> torch.optim.Optimizer:
        """``Adam(params, lr)`` with PyTorch's default hyper-parameters, fused unless ``--no-fused_adam``."""
        return make_adam(params, lr, fused=getattr(self.args, "fused_adam", False), foreach=foreach)


def build_for_run(name: str, ctx: RunContext, role: str = "model") -> nn.Module:
    """Build a registered model for the run behind ``ctx``: the one model resolver of every method and the MFH
    tools. Any model whose inputs fit is accepted: the models of the database and the generic ones (sized from the
    data) directly, a model of another database if one forward of a sample runs (e.g. CMMD-V2's MLP-Vb on other
    2048-d features)."""
    entry, spec = get_entry(name), ctx.spec
    if entry.database in (None, spec.name):
        return build_model(name, num_classes=spec.num_classes, input_shapes=ctx.input_shapes)
    shapes = {m: ctx.input_shapes[m] for m in entry.inputs}
    try:
        model = build_model(name, num_classes=spec.num_classes, input_shapes=ctx.input_shapes)
        _check_fit(model, shapes)
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001 - any failure of the probe means the inputs do not fit
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"{role} model '{name}' is built for {entry.database}, not {spec.name}: its inputs "
                        f"{entry.example_inputs} do not fit {shapes} ({detail}); models for {spec.name}: "
                        f"{', '.join(models_for(spec.name))}") from None
    return model


def make_adam(params, lr: float, fused: bool = True, foreach: bool | None = None) -> torch.optim.Optimizer:
    """Adam with PyTorch's defaults (the reference's optimiser), as fused kernels where torch has them.

    Fused Adam updates every tensor in one kernel per step (CPU and CUDA); its updates differ from the for-loop
    implementation by about one ulp, inside what the rest of the framework already accepts (cached and fast paths
    agree with the reference up to float rounding). ``fused=False`` gives the for-loop Adam (``foreach`` as given:
    ``None`` is PyTorch's default choice, ``True`` the multi-tensor loop, both bit-identical to the reference's).
    """
    params = list(params)  # tensors, or parameter groups (dicts with "params")
    tensors = [t for item in params for t in (item["params"] if isinstance(item, dict) else [item])]
    devices = {t.device.type for t in tensors}
    if fused and tensors and len(devices) == 1 and all(t.is_floating_point() for t in tensors):
        try:
            return torch.optim.Adam(params, lr=lr, fused=True)
        except RuntimeError:  # a device or dtype without fused kernels: the loop, as with --no-fused_adam
            pass
    return torch.optim.Adam(params, lr=lr, foreach=foreach)


@torch.no_grad()
def _check_fit(model: nn.Module, shapes: dict) -> None:
    """One forward of a zero sample in eval mode (no RNG drawn, no BatchNorm statistic moved); raises if it fails."""
    was_training = model.training
    model.eval()
    try:
        model(*(torch.zeros((1, *shape)) for shape in shapes.values()))
    finally:
        model.train(was_training)
