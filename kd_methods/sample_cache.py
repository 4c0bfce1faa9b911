"""Per-sample results of frozen networks, computed once per stage and read back in every later epoch.

A network in eval mode whose weights do not change gives every sample the same output in every epoch, so a stage
that runs frozen networks on each batch only to read their outputs (MST-Distill's student targets and teacher
features in stage 2, its experts' logits in stage 3) can compute them once. :class:`SampleCache` holds them as
``[N, ...]`` tensors, one row per sample of a split, and a batch reads its rows by its samples' positions in the
split (``Batch.index``).

The cache is filled by one pass over the split in a fixed order and batch size, so what it holds does not depend on
where a run started or resumed (a killed run resumes with the same numbers). Read-back values equal a per-batch
computation up to float rounding: kernels may round differently for another batch composition.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch

from datasets.base import Batch

#: ``batch -> per-sample tensors`` (each ``[B, ...]``), computed without autograd
Compute = Callable[[Batch], list[torch.Tensor]]


def per_sample_bytes(values, batch_size: int) -> int | None:
    """Bytes one sample takes in ``values``, or ``None`` if they are not all per-sample tensors ``[B, ...]``."""
    if not isinstance(values, (list, tuple)) or not values:
        return None
    total = 0
    for value in values:
        if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] != batch_size:
            return None
        total += value[0].numel() * value.element_size()
    return total


class SampleCache:
    """Named lists of ``[N, ...]`` tensors: for every sample of a split, what each computation returned for it."""

    def __init__(self, items: dict[str, list[torch.Tensor]]):
        self.items = items

    @classmethod
    def fill(cls, batches: Iterable[Batch], computations: dict[str, Compute], size: int) -> "SampleCache":
        """Run every computation over ``batches`` (which must cover the split once) and keep the results by sample."""
        items: dict[str, list[torch.Tensor]] = {}
        seen = 0
        for batch in batches:
            for name, compute in computations.items():
                values = compute(batch)
                if name not in items:
                    items[name] = [torch.empty((size, *v.shape[1:]), dtype=v.dtype, device=v.device) for v in values]
                for store, value in zip(items[name], values):
                    store.index_copy_(0, batch.index.to(store.device), value.detach())
            seen += len(batch)
        if seen != size:
            raise RuntimeError(f"the cache pass saw {seen} samples, the split has {size}")
        return cls(items)

    def __contains__(self, name: str) -> bool:
        return name in self.items

    def rows(self, name: str, index: torch.Tensor) -> list[torch.Tensor]:
        """The cached values of the samples at ``index`` (positions in the split), as fresh tensors."""
        stores = self.items[name]
        index = index.to(stores[0].device)
        return [store.index_select(0, index) for store in stores]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for stores in self.items.values() for t in stores)


def within_budget(computations: dict[str, Compute], probe: Batch, size: int, budget: int, log, what: str,
                  split: str) -> dict[str, Compute]:
    """The cache budget policy: the computations (most useful first) whose rows for ``size`` samples fit into
    ``budget`` bytes, measured on the ``probe`` batch; each one left out is logged (``what``: e.g. "stage 2") and
    computed per batch instead."""
    chosen: dict[str, Compute] = {}
    for name, compute in computations.items():
        per_sample = per_sample_bytes(compute(probe), len(probe))
        if per_sample is None:
            log(f"{what}: {name} is not per-sample data; computed per batch")
        elif per_sample * size <= budget:
            chosen[name] = compute
            budget -= per_sample * size
        else:
            log(f"{what}: caching {name} for the {size} {split} samples would take "
                f"{per_sample * size / 2 ** 20:,.0f} MB, over --mst_cache_mb; computed per batch")
    return chosen
