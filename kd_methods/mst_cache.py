"""What MST-Distill's frozen networks compute per sample in stages 2 and 3, computed once per stage and split.

In stage 2 the student and the teachers are frozen (eval mode, fixed weights), in stage 3 the teachers and the
(restored best) MaskNets: stage 2's student targets and teacher states at the cuts, and stage 3's expert logits,
are computed by one pass over the split when the stage first needs them and then read back per batch from a
:class:`~kd_methods.sample_cache.SampleCache` (``--mst_cache_mb``; items that do not fit run per batch). Only with
``--mst_impl fast`` and without ``--max_steps``; read-back values equal a per-batch computation up to float rounding.
"""
from __future__ import annotations

import time
from functools import partial

import torch

from datasets.base import Batch
from kd_methods.mst_experts import ExpertGroup
from kd_methods.sample_cache import Compute, SampleCache, within_budget
from kd_methods.segments import SegmentedForward


class FrozenOutputs:
    """The caches of one MST-Distill method, by ``(stage, split)``; ``caches`` is cleared when a stage ends."""

    def __init__(self, method):
        self.method = method
        self.caches: dict[tuple[int, str], SampleCache | None] = {}

    def get(self, stage: int, split: str) -> SampleCache | None:
        """The stage's cache for ``split``, filled on first use; ``None`` when caching is off or nothing fits."""
        key = (stage, split)
        if key not in self.caches:
            self.caches[key] = self._fill(stage, split)
        return self.caches[key]

    def _computations(self, stage: int) -> dict[str, Compute]:
        """What stage 2 or 3 computes per batch with frozen networks only, by cache item, most useful first."""
        method = self.method
        if stage == 3:  # T, A and the (restored best) MaskNets are all frozen in stage 3
            return {"experts": method.expert_logits}
        computations: dict[str, Compute] = {"student": lambda batch: [method.student_target(batch)]}
        for group in method.groups:
            seg = method.experts.segments(group)
            if seg is not None and seg.states_from_inputs:
                computations[group.tag] = partial(_flat_clean_states, group, seg)
        return computations

    def _fill(self, stage: int, split: str) -> SampleCache | None:
        method = self.method
        args, log = method.args, method.ctx.log
        if args.mst_impl != "fast" or args.mst_cache_mb <= 0 or args.max_steps or method.keep_teacher_graph:
            return None
        loader = method.ctx.make_loader(split, shuffle=False, max_steps=None)
        size = len(loader.indices)
        used = sum(c.nbytes for (s, _), c in self.caches.items() if s == stage and c is not None)
        budget = args.mst_cache_mb * 2 ** 20 - used
        with method.frozen():
            chosen = within_budget(self._computations(stage), next(iter(loader)), size, budget, log,
                                   f"MST-Distill stage {stage}", split)
            if not chosen:
                return None
            started = time.perf_counter()
            cache = SampleCache.fill(loader, chosen, size)
        log(f"MST-Distill stage {stage}: cached {', '.join(chosen)} for the {size} {split} samples "
            f"({cache.nbytes / 2 ** 20:,.1f} MB, {time.perf_counter() - started:.1f} s)")
        return cache


def _flat_clean_states(group: ExpertGroup, seg: SegmentedForward, batch: Batch) -> list:
    with torch.no_grad():
        return seg.flatten(seg.clean_states(*group.inputs(batch)))
