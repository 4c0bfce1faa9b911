"""Tolerances for comparing two float32 computations of the same quantity done in different orders.

Reordering a float32 computation (another kernel, batch composition, memory layout or thread count, which differ
between CPUs) changes every rounding. How far the two results may drift depends on the magnitudes combined and on
how well conditioned the quantity is, not on the CPU: a knowledge-distillation loss between two nearly equal
distributions is a small difference of much larger terms, and its gradient inherits that cancellation. So the
allowed difference is derived from the problem rather than tuned on one machine:

* :func:`scale_tolerance`: ``ULPS`` units in the last place of the tensor's own scale (its largest magnitude), for
  values that are sums of terms of that scale (logits, features);
* :func:`perturbation_floor`: how far each output moves when every input element is moved by ``ULPS`` units in the
  last place of its tensor's scale, i.e. the first-order effect of rounding the inputs, measured on the quantity
  itself (conditioning included). A reordered computation rounds each intermediate by about one unit, so its
  outputs stay within a few times this floor.

:func:`assert_reordered_close` combines both: ``|actual - expected| <= MARGIN * floor + ULPS * eps * scale``.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

EPS32 = torch.finfo(torch.float32).eps
#: units in the last place a reordered reduction may drift per value (a reduction of n terms drifts ~sqrt(n) units;
#: the networks here reduce over up to a few thousand terms per output)
ULPS = 64
#: how many perturbation floors two orderings may differ by (the floor perturbs every input by ULPS units at once)
MARGIN = 4.0


def scale_tolerance(expected: torch.Tensor, ulps: int = ULPS) -> dict:
    """``rtol``/``atol`` of :func:`torch.testing.assert_close` for ``ulps`` units of ``expected``'s largest magnitude."""
    scale = expected.detach().abs().max().item() if expected.numel() else 0.0
    return {"rtol": ulps * EPS32, "atol": ulps * EPS32 * scale}


def perturb(tensors: Sequence[torch.Tensor], ulps: int = ULPS, seed: int = 0) -> list[torch.Tensor]:
    """Copies of ``tensors`` with every element moved by up to ``ulps`` units of its tensor's scale (uniformly)."""
    generator = torch.Generator().manual_seed(seed)
    moved = []
    for tensor in tensors:
        if not tensor.is_floating_point():
            moved.append(tensor)
            continue
        noise = torch.rand(tensor.shape, generator=generator, dtype=torch.float64).to(tensor) * 2 - 1
        moved.append(tensor + noise * (ulps * EPS32 * tensor.detach().abs().max()))  # keeps any autograd graph
    return moved


def perturbation_floor(compute: Callable[..., Sequence[torch.Tensor]], inputs: Sequence[torch.Tensor],
                       ulps: int = ULPS) -> list[torch.Tensor]:
    """Per output of ``compute(*inputs)``: the largest change when the inputs are moved by :func:`perturb`.

    Perturb where the two computations part ways (the first value they compute in another order), after any
    discontinuity they share: an input moved across a max-pooling or top-k tie would measure the tie, not the
    rounding.
    """
    base = [t.detach().clone() for t in compute(*inputs)]
    return floor_between(base, compute(*perturb(inputs, ulps)))


def floor_between(base: Sequence[torch.Tensor], moved: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Per pair: the largest change from ``base`` to ``moved`` (the floor of a perturbation made by the caller)."""
    return [(a.detach().double() - b.detach().double()).abs().max() for a, b in zip(base, moved)]


class perturbed_outputs:
    """Context manager: forward hooks that move the outputs of the named submodules by :func:`perturb`.

    Hooks run in registration order, so a hook registered later (e.g. a MaskNet applied to the same layer) sees
    the moved output.
    """

    def __init__(self, model: torch.nn.Module, names: Sequence[str], ulps: int = ULPS, seed: int = 0):
        self.model, self.names, self.ulps, self.seed = model, list(names), ulps, seed
        self.handles = []

    def __enter__(self):
        for offset, name in enumerate(self.names):
            def hook(module, inputs, output, seed=self.seed + offset):
                return perturb([output], self.ulps, seed)[0] if isinstance(output, torch.Tensor) else output
            self.handles.append(self.model.get_submodule(name).register_forward_hook(hook))
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def assert_reordered_close(actual: torch.Tensor, expected: torch.Tensor, floor: torch.Tensor | float = 0.0,
                           ulps: int = ULPS, what: str = "") -> None:
    """``actual`` equals ``expected`` up to a reordering: within ``MARGIN * floor`` plus ``ulps`` units of the scale."""
    tolerance = scale_tolerance(expected, ulps)
    atol = tolerance["atol"] + MARGIN * float(floor)
    torch.testing.assert_close(actual, expected, rtol=tolerance["rtol"], atol=atol,
                               msg=lambda message: f"{what}: {message} (floor {float(floor):.3g})")
