"""Model registry: every network is built from its command-line name.

A model module registers its builders with :func:`register_model`; the CLI reads :data:`MODELS` for its
``choices`` and everything else builds through :func:`build_model`. No code outside ``models/`` knows a
concrete class.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch.nn as nn

MULTIMODAL = ("m1", "m2")


@dataclass(frozen=True)
class ModelEntry:
    """What the framework knows about a registered network.

    ``inputs`` is the tuple of modalities the forward takes, in order: ``("m1", "m2")`` for a fusion
    model, ``("m1",)`` or ``("m2",)`` for a unimodal one. ``database`` is the dataset family the
    architecture was designed for (several databases may share it, e.g. all Synthetic-MVD variants).
    """

    name: str
    database: str
    inputs: tuple[str, ...]
    builder: Callable[..., nn.Module] = field(repr=False)
    description: str = ""

    @property
    def is_multimodal(self) -> bool:
        return len(self.inputs) > 1


MODELS: dict[str, ModelEntry] = {}


def register_model(name: str, database: str, inputs: tuple[str, ...], description: str = ""):
    """Class or function decorator that registers a builder under its CLI name."""

    def decorator(builder):
        if name in MODELS:
            raise ValueError(f"model name registered twice: {name}")
        MODELS[name] = ModelEntry(name, database, tuple(inputs), builder, description)
        return builder

    return decorator


def get_entry(name: str) -> ModelEntry:
    try:
        return MODELS[name]
    except KeyError:
        from utils.errors import UserError

        raise UserError(f"unknown model '{name}'; valid models: {', '.join(sorted(MODELS))}") from None


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model. ``kwargs`` are passed to its builder (e.g. ``num_classes``)."""
    model = get_entry(name).builder(**kwargs)
    model.model_name = name
    return model


def models_for(database: str) -> list[str]:
    return sorted(n for n, e in MODELS.items() if e.database == database)
