"""Resume a frozen network's forward after a layer: the network's ``torch.fx`` graph cut into compiled segments.

A method that replaces the output of a hooked layer (a MaskNet's ``mask(o) * o``, a permuted channel) and needs the
network's output would run the whole forward again for every replacement. :class:`SegmentedForward` traces the
network once with ``torch.fx`` (the hooked modules are kept as leaves) and cuts the graph right after each hooked
layer; each segment returns every value a later segment needs (its live set), so whatever crosses the cut -
FuseNet's pooling indices and pre-pool sizes, skip tensors, shapes - is carried along automatically, without
per-model code. Running the prefix once and then only the segments after the replaced layer gives what a replacing
forward hook gives. A network that cannot be traced or cut raises :class:`SplitError`; callers fall back to hooks.
Tracing happens while the network is in eval mode, so a forward that branched on ``self.training`` is traced in
its eval branch. It is the project's one such mechanism, shared by MST-Distill (:mod:`kd_methods.mst`) and by
MGDFR and the MFH tools through the permutation saliences of :mod:`kd_methods.feature_ranking`, which run the
segment after the layer under ``torch.func.vmap`` over the permuted copies.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.fx as fx
import torch.nn as nn


class SplitError(RuntimeError):
    """The network cannot be cut at the hooked layers; the method falls back to forward hooks."""


class _LeafTracer(fx.Tracer):
    """Keeps the hooked submodules as single ``call_module`` nodes (e.g. a whole FuseNet CBR block)."""

    def __init__(self, leaves: Sequence[str]):
        super().__init__()
        self.leaves = frozenset(leaves)

    def is_leaf_module(self, module: nn.Module, qualname: str) -> bool:
        return qualname in self.leaves or super().is_leaf_module(module, qualname)


class SegmentedForward:
    """A network's forward cut right after each hooked layer, as compiled ``torch.fx`` segments.

    ``state = start(*inputs)`` runs up to the output of ``layers[0]``; a state is the list of values that later
    segments need (the live set at the cut, plus the hooked output itself). ``feature(j, state)`` is layer j's
    output, ``replace(j, state, value)`` a copy of the state with that output replaced (what a replacing forward
    hook does), ``advance(j, state)`` runs to the output of layer j+1 (or to the logits after the last layer) and
    ``finish(j, state)`` runs to the logits. The segments call the network's own submodules, so weights, devices and
    train/eval modes are shared; they are not registered as submodules (state dicts are unaffected). Build it after
    moving the network to its device.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str]):
        self.layers = tuple(layers)
        try:
            graph = _LeafTracer(self.layers).trace(model)
        except Exception as error:  # noqa: BLE001 - any tracing failure means "use hooks instead"
            raise SplitError(f"torch.fx cannot trace {type(model).__name__}: {str(error).splitlines()[0]}") from None
        nodes = list(graph.nodes)
        position = {node: i for i, node in enumerate(nodes)}
        sites: dict[str, list[fx.Node]] = {layer: [] for layer in self.layers}
        for node in nodes:
            if node.op == "call_module" and node.target in sites:
                sites[node.target].append(node)
        for layer, calls in sites.items():
            if len(calls) != 1:
                raise SplitError(f"{layer} runs {len(calls)} times per forward of {type(model).__name__}")
        hooks = [sites[layer][0] for layer in self.layers]
        cuts = [position[node] for node in hooks]
        if cuts != sorted(cuts):
            raise SplitError(f"the hooked layers {', '.join(self.layers)} do not run in this order")
        last_use = {node: max((position[user] for user in node.users), default=-1) for node in nodes}
        self.carry: list[list[fx.Node]] = []
        for cut, hook in zip(cuts, hooks):
            live = [node for node in nodes[:cut + 1] if last_use[node] > cut]
            if hook not in live:  # an unused hooked output: still needed as the MaskNet input
                live.append(hook)
            self.carry.append(live)
        self.feature_index = [carry.index(hook) for carry, hook in zip(self.carry, hooks)]
        # Whether every carried value is computed from the inputs (not a parameter or constant read before the cut):
        # only then are the states per-sample values that a SampleCache may store by row.
        from_inputs: set[fx.Node] = set()
        for node in nodes:
            if node.op == "placeholder" or any(arg in from_inputs for arg in node.all_input_nodes):
                from_inputs.add(node)
        self.states_from_inputs = all(node in from_inputs for carry in self.carry for node in carry)
        starts = [0] + [cut + 1 for cut in cuts]
        ends = cuts + [len(nodes) - 1]
        self.segments = []
        for k, (first, last) in enumerate(zip(starts, ends)):
            inputs = self.carry[k - 1] if k else []
            outputs = self.carry[k] if k < len(cuts) else None
            self.segments.append(self._compile(model, nodes[first:last + 1], inputs, outputs))

    @staticmethod
    def _compile(model: nn.Module, nodes: list[fx.Node], inputs: list[fx.Node], outputs: list[fx.Node] | None):
        graph = fx.Graph()
        env: dict[fx.Node, fx.Node] = {node: graph.placeholder(node.name) for node in inputs}
        for node in nodes:
            if node.op == "output":
                graph.output(fx.node.map_arg(node.args[0], env.__getitem__))
            else:
                env[node] = graph.node_copy(node, env.__getitem__)
        if outputs is not None:
            graph.output(tuple(env[node] for node in outputs))
        return fx.GraphModule(model, graph)

    def start(self, *inputs) -> list:
        return list(self.segments[0](*inputs))

    def feature(self, j: int, state: list) -> torch.Tensor:
        return state[self.feature_index[j]]

    def replace(self, j: int, state: list, value: torch.Tensor) -> list:
        state = list(state)
        state[self.feature_index[j]] = value
        return state

    def advance(self, j: int, state: list):
        out = self.segments[j + 1](*state)
        return list(out) if j + 1 < len(self.layers) else out

    def finish(self, j: int, state: list) -> torch.Tensor:
        for i in range(j, len(self.layers)):
            state = self.advance(i, state)
        return state

    def clean_states(self, *inputs) -> list[list]:
        """The unmasked state at every cut: ``[state after layer 0, state after layer 1, ...]``."""
        states = [self.start(*inputs)]
        for i in range(1, len(self.layers)):
            states.append(self.advance(i - 1, states[-1]))
        return states

    def flatten(self, states: list[list]) -> list:
        return [value for state in states for value in state]

    def unflatten(self, values: Sequence) -> list[list]:
        states, start = [], 0
        for carry in self.carry:
            states.append(list(values[start:start + len(carry)]))
            start += len(carry)
        return states
