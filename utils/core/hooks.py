"""Forward hooks addressed by dotted submodule path (``"visual_branch.conv1"``, ``"CBR1_RGB_DEC.0"``).

Both helpers are context managers, so hooks are removed after every use, even when the forward raises.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn as nn

from utils.core.errors import UserError


def get_submodule(model: nn.Module, path: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        raise UserError(f"{type(model).__name__} has no submodule '{path}'; known: {', '.join(names[:40])}") from None


@contextmanager
def capture_features(model: nn.Module, names: list[str] | tuple[str, ...]) -> Iterator[dict[str, torch.Tensor]]:
    """Record the outputs of the named submodules during the forwards inside the block.

    Yields a dict that fills as the model runs: ``{name: output}`` (the latest forward wins).
    """
    features: dict[str, torch.Tensor] = {}
    handles = []
    for name in names:
        def hook(_module, _inputs, output, _name=name):
            features[_name] = output

        handles.append(get_submodule(model, name).register_forward_hook(hook))
    try:
        yield features
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def replace_outputs(model: nn.Module, transforms: dict[str, Callable[[torch.Tensor], torch.Tensor]]):
    """Replace the output of each named submodule by ``transform(output)`` inside the block.

    Used for MST-Distill's masks (``m * o``), the MFH permutation/nullification, and MGDFR.
    """
    handles = []
    for name, transform in transforms.items():
        def hook(_module, _inputs, output, _transform=transform):
            return _transform(output)

        handles.append(get_submodule(model, name).register_forward_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def active_hook_count(model: nn.Module) -> int:
    """Number of forward hooks currently registered anywhere in ``model`` (tests check it returns to 0)."""
    return sum(len(m._forward_hooks) for m in model.modules())
