"""MST-Distill's specialised teachers: a teacher's forward with the output of one of its hooked layers replaced by
``mask(o) * o`` (its MaskNet), computed with forward hooks as the reference does or along the fast path below.
:mod:`kd_methods.mst` states what the experts are; this module only computes them.

Fast path (``--mst_impl fast``, default). Frozen backbones never hold an autograd graph, inputs are not cloned, and
each teacher's computation up to a hooked layer is done once per batch and shared by every expert/MaskNet that
branches from it. To resume a forward in the middle, the frozen network is cut after each hooked layer
(:class:`~kd_methods.segments.SegmentedForward`); replacing the hooked value in the carried state and running the
next segments is exactly what the reference's forward hook does. Work per batch with two layers per teacher:
* stage 2: ``seg0 → f0 → seg1 → f1`` once under ``no_grad``; then ``seg1∘seg2(mask0(f0)·f0)`` and
  ``seg2(mask1(f1)·f1)`` with autograd through the suffix activations only (reference: two full forwards, and a
  backward through the whole teacher);
* stage 3, cumulative: ``seg0 → mask0 → seg1 → (seg2 → T0) and (mask1 → seg2 → T1)``: one prefix, each MaskNet
  once, only the last segment twice (reference: one full forward per expert, MaskNet 0 evaluated twice);
  independent: clean ``seg0 → seg1`` shared, then each expert's suffix.
Across epochs the frozen networks give a sample the same output every time, so what they compute is read back from
a per-sample cache (:mod:`kd_methods.mst_cache`).
A network that cannot be traced or split (a hooked module called twice, data-dependent Python control flow) falls
back to the hook path for that network, with one log line. ``--mst_impl reference`` forces the hook path
everywhere (one full forward per expert/MaskNet with the hooks attached as the reference does); the parity test and
``benchmarks/bench_mst.py`` compare the two. Tracing happens while the network is in eval mode (it is frozen
whenever segments are used), so a forward that branched on ``self.training`` would be traced in its eval branch.
"""
from __future__ import annotations

import argparse
import contextlib
from functools import partial
from typing import Callable

import torch
import torch.nn as nn

from datasets.base import Batch
from kd_methods.mst_losses import apply_mask
from kd_methods.segments import SegmentedForward, SplitError
from utils.core.hooks import replace_outputs


class ExpertGroup:
    """One teacher and its experts: the network, its hooked layers, the indices of its MaskNets, its inputs, and its
    segments once cut (``segmented``; ``split_tried`` once a cut was attempted)."""

    def __init__(self, tag: str, model: nn.Module, layers: tuple[str, ...], first: int, modalities: tuple[str, ...]):
        self.tag, self.model, self.layers, self.modalities = tag, model, layers, modalities
        self.masknet_ids = list(range(first, first + len(layers)))
        self.segmented: SegmentedForward | None = None
        self.split_tried = False

    def inputs(self, batch: Batch) -> tuple[torch.Tensor, ...]:
        return batch.inputs(self.modalities)


class ExpertForwards:
    """The experts' logits (stage 3) and the per-MaskNet losses (stage 2) of ``groups``, by either path.

    ``args`` is read at every call (``--mst_impl``, ``--expert_masks``); ``frozen()`` is the grad mode of the frozen
    networks' forwards; ``kd(pred, target)`` the distillation loss.
    """

    def __init__(self, args: argparse.Namespace, groups: list[ExpertGroup], masknets: nn.ModuleList,
                 kd: Callable, frozen: Callable, log: Callable[[str], None]):
        self.args, self.groups, self.masknets, self.kd, self.frozen, self.log = args, groups, masknets, kd, frozen, log

    def segments(self, group: ExpertGroup) -> SegmentedForward | None:
        """The group's network cut after its hooked layers (fast path), or ``None`` for the hook path."""
        if self.args.mst_impl != "fast":
            return None
        if not group.split_tried:
            group.split_tried = True
            try:
                group.segmented = SegmentedForward(group.model, group.layers)
            except SplitError as error:
                self.log(f"MST-Distill: {error}; {group.model.model_name} uses forward hooks instead")
        return group.segmented

    def _masker(self, j: int):
        return partial(apply_mask, self.masknets[j])

    # -- stage 2: one loss per MaskNet, each with only its own mask active ------------------------------------------
    def masknet_losses(self, batch: Batch, target: torch.Tensor,
                       clean: dict[str, list[list]] | None = None) -> list[torch.Tensor]:
        """KD_4(pred = teacher with MaskNet j only, target = student) for every MaskNet j, in expert order.

        ``clean`` may give a teacher's unmasked states at its cuts (by group tag), e.g. read from a cache.
        """
        losses = []
        for group in self.groups:
            inputs = group.inputs(batch)
            seg = self.segments(group)
            if seg is None:
                # One full hooked forward per MaskNet, as the reference. The frozen part before the hooked layer is
                # not recorded by autograd because its parameters do not require grad (unless keep_teacher_graph).
                for j, layer in zip(group.masknet_ids, group.layers):
                    with replace_outputs(group.model, {layer: self._masker(j)}):
                        losses.append(self.kd(group.model(*inputs), target))
                continue
            states = (clean or {}).get(group.tag)
            if states is None:
                with torch.no_grad():  # the clean features at every hooked layer, computed once
                    states = seg.clean_states(*inputs)
            for i, j in enumerate(group.masknet_ids):
                state = seg.replace(i, states[i], apply_mask(self.masknets[j], seg.feature(i, states[i])))
                losses.append(self.kd(seg.finish(i, state), target))
        return losses

    # -- stage 3: the experts' logits ------------------------------------------------------------------------------
    def logits(self, batch: Batch) -> list[torch.Tensor]:
        """Logits of every expert ``[T0, T1, A0, A1]`` (cumulative or independent masks), without autograd."""
        cumulative = self.args.expert_masks == "cumulative"
        experts = []
        with self.frozen():
            for group in self.groups:
                inputs = group.inputs(batch)
                seg = self.segments(group)
                if seg is None:
                    experts += self._hooked(group, inputs, cumulative)
                elif cumulative:
                    experts += self._cumulative(group, seg, inputs)
                else:
                    experts += self._independent(group, seg, inputs)
        return experts

    def _hooked(self, group: ExpertGroup, inputs, cumulative: bool) -> list[torch.Tensor]:
        outs = []
        with contextlib.ExitStack() as attached:
            for j, layer in zip(group.masknet_ids, group.layers):
                if cumulative:  # the reference: hooks stay attached while the next experts run
                    attached.enter_context(replace_outputs(group.model, {layer: self._masker(j)}))
                    outs.append(group.model(*inputs))
                else:
                    with replace_outputs(group.model, {layer: self._masker(j)}):
                        outs.append(group.model(*inputs))
        return outs

    def _cumulative(self, group: ExpertGroup, seg: SegmentedForward, inputs) -> list[torch.Tensor]:
        # prefix -> mask0 -> (next segment) shared; expert i stops adding masks after layer i.
        outs, state = [], seg.start(*inputs)
        last = len(group.layers) - 1
        for i, j in enumerate(group.masknet_ids):
            state = seg.replace(i, state, apply_mask(self.masknets[j], seg.feature(i, state)))
            if i == last:
                outs.append(seg.advance(i, state))
            else:
                state = seg.advance(i, state)
                outs.append(seg.finish(i + 1, state))
        return outs

    def _independent(self, group: ExpertGroup, seg: SegmentedForward, inputs) -> list[torch.Tensor]:
        clean = seg.clean_states(*inputs)
        return [seg.finish(i, seg.replace(i, clean[i], apply_mask(self.masknets[j], seg.feature(i, clean[i]))))
                for i, j in enumerate(group.masknet_ids)]
