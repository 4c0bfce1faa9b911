"""Model registry: every network is built from its command-line name.

A model module registers its builders with :func:`register_model`; the CLI reads :data:`MODELS` for its
``choices`` and everything else builds through :func:`build_model`. No code outside ``models/`` knows a
concrete class.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch.nn as nn

from models.taps import Tap
from utils.core.errors import UserError

MULTIMODAL = ("m1", "m2")


@dataclass(frozen=True)
class ModelEntry:
    """What the framework knows about a registered network.

    ``inputs`` is the tuple of modalities the forward takes, in order: ``("m1", "m2")`` for a fusion
    model, ``("m1",)`` or ``("m2",)`` for a unimodal one. ``database`` is the dataset family the
    architecture was designed for (several databases may share it, e.g. all Synthetic-MVD variants), or
    ``None`` for a generic model sized from the inputs it gets (any dataset whose inputs fit).

    ``taps`` declares the model's feature taps (:mod:`models.taps`; which ones a method reads is
    :mod:`kd_methods.taps`): submodule paths in forward order, the logits excluded, each with its per-sample output
    shape for ``example_inputs`` (``None`` where a dimension follows the input size), then its probe taps (points only
    the MFH tools read; the logits may be one, their width ``None``: it follows the class count). ``example_inputs`` are
    per-sample input shapes the model is built for (the paper shapes for the paper models; any fitting shapes for
    generic ones).
    """

    name: str
    database: str | None
    inputs: tuple[str, ...]
    builder: Callable[..., nn.Module] = field(repr=False)
    description: str = ""
    taps: tuple = ()
    example_inputs: dict = field(default_factory=dict)

    @property
    def is_multimodal(self) -> bool:
        return len(self.inputs) > 1


MODELS: dict[str, ModelEntry] = {}


def register_model(name: str, database: str | None, inputs: tuple[str, ...], description: str = "",
                   taps: dict[str, tuple] | None = None, example_inputs: dict[str, tuple] | None = None,
                   probes: dict[str, tuple] | None = None):
    """Class or function decorator that registers a builder under its CLI name.

    ``taps`` maps each tap (submodule path, forward order, logits excluded) to its per-sample output shape for
    ``example_inputs``; ``probes`` likewise maps the further points only the MFH tools read (distillation rules skip
    them). See :class:`ModelEntry` and :mod:`models.taps`.
    """

    def decorator(builder):
        if name in MODELS:
            raise ValueError(f"model name registered twice: {name}")
        declared = (tuple(Tap(tap, tuple(shape)) for tap, shape in (taps or {}).items())
                    + tuple(Tap(tap, tuple(shape), probe=True) for tap, shape in (probes or {}).items()))
        if len({tap.name for tap in declared}) != len(declared):
            raise ValueError(f"model {name} declares a tap twice (taps and probes share one namespace)")
        MODELS[name] = ModelEntry(name, database, tuple(inputs), builder, description, declared,
                                  dict(example_inputs or {}))
        return builder

    return decorator


def get_entry(name: str) -> ModelEntry:
    try:
        return MODELS[name]
    except KeyError:
        raise UserError(f"unknown model '{name}'; valid models: {', '.join(sorted(MODELS))}") from None


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model. ``kwargs`` are passed to its builder (e.g. ``num_classes``)."""
    entry = get_entry(name)
    model = entry.builder(**kwargs)
    model.model_name = name
    model.taps = tuple(tap.name for tap in entry.taps)
    model.probes = frozenset(tap.name for tap in entry.taps if tap.probe)
    return model


def models_for(database: str) -> list[str]:
    """The models designed for ``database``, then the generic ones (``database=None``) that any dataset may use."""
    return (sorted(n for n, e in MODELS.items() if e.database == database)
            + sorted(n for n, e in MODELS.items() if e.database is None))
