"""Feature taps: where a distillation method may read a model's intermediate features.

Every registered model declares its taps (:func:`models.registry.register_model`, ``taps=``): submodule paths in
forward order, the logits excluded, each with its per-sample output shape for the model's ``example_inputs``
(``None`` where a dimension follows the input size or the class count), in the spirit of timm's ``feature_info``.
Further points the MFH tools may rank (the logits, layers inside a branch) are declared as *probe* taps
(``probes=``): the distillation rules skip them. Which taps a method reads is the methods' rule
(:mod:`kd_methods.taps`); a model declares its taps and nothing else.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from utils.core.hooks import capture_features


#: the per-sample shape of the logits declared as a probe tap: their width follows the class count
LOGITS = (None,)


@dataclass(frozen=True)
class Tap:
    """One tap point: submodule path and per-sample output shape (``None`` entries follow the input size or the
    class count); ``probe``: a point only the MFH tools read, skipped by every distillation rule."""

    name: str
    shape: tuple
    probe: bool = False

    @property
    def width(self) -> int:
        """Channels (first dimension) of the tapped output."""
        return self.shape[0]

    @property
    def is_flat(self) -> bool:
        return len(self.shape) == 1


@torch.no_grad()
def feature_info(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[Tap]:
    """The model's declared taps with the shapes one forward of ``inputs`` gives (eval mode: no BatchNorm statistic
    moves and no RNG is consumed)."""
    was_training = model.training
    model.eval()
    try:
        with capture_features(model, list(model.taps)) as features:
            model(*inputs)
    finally:
        model.train(was_training)
    return [Tap(name, tuple(features[name].shape[1:]), name in model.probes) for name in model.taps]
