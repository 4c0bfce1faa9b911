"""Helpers for methods that tap features: the layers a method reads (from the taps the models declare,
:mod:`models.taps`) with one-line errors, and feature shapes probed from one forward (so heads and regressors fit
any input size, e.g. the small NYU fixtures or Synthetic-MVD widths)."""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.func import functional_call

from kd_methods import taps as method_taps
from models import MODELS, get_entry, models_for
from utils.core.errors import UserError
from utils.core.hooks import capture_features


def usable_models(slot: str, database: str, inputs: tuple[str, ...] | None = None) -> list[str]:
    """Models of ``database`` (then the generic ones) that declare enough taps for ``slot``, optionally only those
    taking ``inputs``."""
    return [n for n in models_for(database) if method_taps.layers(slot, n) is not None
            and (inputs is None or MODELS[n].inputs == tuple(inputs))]


def tap_layers(slot: str, model: str, database: str, method: str, what: str) -> tuple[str, ...]:
    """The layers ``method`` reads in ``model`` (:func:`kd_methods.taps.layers`) or one :class:`UserError` naming the
    models that declare the taps it needs."""
    layers = method_taps.layers(slot, model)
    if layers is not None:
        return layers
    shown = ", ".join(usable_models(slot, database, get_entry(model).inputs)) or "none"
    raise UserError(f"{method} has no {what} for model '{model}' (it declares too few feature taps); "
                    f"models with one on {database}: {shown}")


def sample_inputs(ctx, modalities: tuple[str, ...]) -> tuple[torch.Tensor, ...]:
    """One real training sample per modality (right dtype and layout for every model), on the CPU where the
    method's modules live while it is built."""
    m1, m2, _ = ctx.source.get_batch(ctx.splits["train"][:1])
    return tuple((m1 if m == "m1" else m2).cpu() for m in modalities)


def feature_shapes(model: nn.Module, names, inputs) -> dict[str, tuple[int, ...]]:
    """Per-sample output shape of each named submodule: the project's one feature-shape probe.

    ``inputs`` are sample tensors (their per-sample shapes and dtypes are used) or per-sample shapes. The forward
    runs in eval mode on the meta device, with the model's own modules: nothing is computed, no RNG is consumed and
    no BatchNorm statistic moves, so a run that probes is identical to one that knew the shapes.
    """
    names = list(names)
    samples = tuple(torch.empty((1, *x.shape[1:]), dtype=x.dtype, device="meta") if isinstance(x, torch.Tensor)
                    else torch.empty((1, *x), device="meta") for x in inputs)
    tensors = {name: torch.empty_like(t, device="meta") for name, t in (*model.named_parameters(),
                                                                        *model.named_buffers())}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), capture_features(model, names) as found:
            functional_call(model, tensors, samples)
    finally:
        model.train(was_training)
    return {name: tuple(found[name].shape[1:]) for name in names}


@torch.no_grad()
def modules_up_to(model: nn.Module, names, inputs: tuple[torch.Tensor, ...]) -> list[str]:
    """Names of the submodules whose forward completes no later than the last of ``names`` (execution order)."""
    order: list[str] = []
    handles = [module.register_forward_hook(lambda *_, _name=name: order.append(_name))
               for name, module in model.named_modules() if name]
    was_training = model.training
    model.eval()
    try:
        model(*inputs)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    last = max(order.index(name) for name in names)
    return list(dict.fromkeys(order[: last + 1]))


def require_unimodal_teacher(method: str, args, spec) -> None:
    """C2KD and MGDFR feed their teacher the other modality only: a fusion ``--Tmodel`` cannot run (the reference
    crashes on it), so refuse it with the model to use instead."""
    if get_entry(args.Tmodel).is_multimodal:
        raise UserError(f"{method} needs a unimodal teacher of the other modality, not the multimodal "
                        f"'{args.Tmodel}' (the reference crashes on it); e.g. --Tmodel "
                        f"{spec.students[spec.other_modality(args.mode)]}")
