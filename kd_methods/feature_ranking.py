"""Algorithm 1 of the MFH paper: modality-general decisive feature ranking by permutation, and channel nullification.

Xue, Gao, Ren, Zhao, "The Modality Focusing Hypothesis: Towards Understanding Crossmodal Knowledge Distillation",
ICLR 2023, Appendix B.4, Algorithm 1 (and Sec. 5.4 for the nullified teachers). Two unimodal networks ``f_a``
and ``f_b`` are first trained jointly so that their outputs align (``Dist(f_a(X_a), f_b(X_b)) + CE + CE``). For
every channel ``i`` of a layer of ``f_a`` (or of its input), the channel is permuted across the samples ``M``
times and ``p_i = mean_m Dist(f_a(permuted), f_b(X_b))``; a large ``p_i`` marks a channel that carries
modality-general decisive information. The MGDFR baseline of MST-Distill (``kd_methods/mgdfr.py``) is this
algorithm at one teacher layer; both use :func:`channel_salience`.

Public API
----------
* :func:`channel_salience` - batched Algorithm 1 (step 2): raw saliences ``[C]``.
* :func:`channel_salience_loop` - the reference's one-forward-per-channel-per-repeat loop (tests, benchmark);
  with the same ``generator`` seed it draws the same permutations and returns the same values.
* :func:`normalise_salience` - step 3, min-max to ``[0, 1]`` as the public code.
* :func:`select_channels` - the ``r%`` channels to nullify for a modality-general / -specific / random teacher.
* :func:`nullify_channels` and the context manager :func:`nullified` - replace channels by their batch mean.

How the batched version works: ``f_a`` is cut right after ``layer`` by
:class:`~kd_methods.segments.SegmentedForward`, the torch.fx mechanism MST-Distill (``kd_methods/mst.py``), MGDFR and
the MFH tools share. The prefix (e.g. the conv branch in front of ``fc1``) runs once and yields the layer output
and everything else that crosses the cut. Then, for a group of ``(channel, repeat)`` pairs, the permuted copies of
the layer output are stacked along a new leading copy dimension and only the *suffix* after the layer runs, ONCE,
under :func:`torch.func.vmap` over that dimension; the rest of the carried state is shared by every copy, not
tiled, and each copy sees its own ``[N, ...]`` shapes, so a forward that reads the batch size or adds a skip tensor
after the layer needs no special care. A network that cannot be cut there (untraceable control flow, a layer that
runs twice per forward), or whose vmapped suffix fails or differs from the model's output on a two-copy probe,
takes the plain path: tiled inputs and a hook that permutes each copy's channel. The stacked copies live in one
buffer reused from group to group: after a group only the channels it permuted are written back (unless the
forward wrote into its input, which the tensor's version counter reveals). The group size follows from the
problem: as many copies as fit :data:`CPU_GROUP_ELEMENTS` on a CPU, where a larger group only adds cache misses
and page faults of large temporaries, or :data:`DEVICE_GROUP_ELEMENTS` on an accelerator.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from kd_methods.segments import SegmentedForward, SplitError
from utils.core.hooks import capture_features, get_submodule, replace_outputs

Inputs = torch.Tensor | Sequence[torch.Tensor]
Distance = str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: CPU: elements one batched forward materialises (4 MiB of float32). The copies of a group then stay within a
#: core's L2 cache and the allocator's reused memory; larger groups measured slower (cache misses, and page faults
#: of temporaries too large to be recycled), smaller ones pay the forward's fixed cost too often
#: (``benchmarks/bench_mfh.py``)
CPU_GROUP_ELEMENTS = 1 << 20
#: accelerators: elements per batched forward (about 128 MiB in float32): few large launches, memory recycled by
#: the caching allocator
DEVICE_GROUP_ELEMENTS = 1 << 25
_DISTANCES = ("mse", "l1")


# ---------------------------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------------------------
def _as_tuple(inputs: Inputs) -> tuple[torch.Tensor, ...]:
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


@contextmanager
def _eval_mode(*models: nn.Module) -> Iterator[None]:
    """Put every module in eval (dropout off, BN running stats) and restore each module's own flag afterwards."""
    saved = [(module, module.training) for model in models for module in model.modules()]
    for model in models:
        model.eval()
    try:
        yield
    finally:
        for module, flag in saved:
            module.training = flag


def _check_distance(distance: Distance) -> None:
    if not callable(distance) and distance not in _DISTANCES:
        raise ValueError(f"distance must be one of {', '.join(_DISTANCES)} or a callable, not {distance!r}")


def _distance(out: torch.Tensor, target: torch.Tensor, distance: Distance) -> torch.Tensor:
    """``Dist`` of Algorithm 1 for one forward: a scalar."""
    if callable(distance):
        return distance(out, target)
    return F.mse_loss(out, target) if distance == "mse" else F.l1_loss(out, target)


def _distance_per_copy(out: torch.Tensor, target: torch.Tensor, copies: int, distance: Distance) -> torch.Tensor:
    """``Dist`` of each of ``copies`` stacked outputs ``[copies * N, ...]`` against ``target [N, ...]``.

    Returns ``[copies]``."""
    out = out.reshape(copies, *target.shape)
    if callable(distance):
        return torch.stack([torch.as_tensor(distance(out[k], target)) for k in range(copies)])
    diff = out - target.unsqueeze(0)
    diff = diff.pow(2) if distance == "mse" else diff.abs()
    return diff.reshape(copies, -1).mean(dim=1)


def _randperm(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """A permutation of ``n`` samples; the same call sequence in the batched and the loop versions."""
    where = generator.device if generator is not None else torch.device("cpu")
    return torch.randperm(n, generator=generator, device=where).to(device)


def _check_output(out, what: str) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"{what} must return a tensor (logits), got {type(out).__name__}")
    return out


def _check_feature(feature, layer: str | None) -> torch.Tensor:
    where = "the input" if layer is None else f"layer '{layer}'"
    if not isinstance(feature, torch.Tensor) or feature.dim() < 2:
        raise ValueError(f"{where} must produce a tensor [N, C, ...] to rank its channels (dim 1)")
    return feature


def _tile(value, copies: int):
    """``[N, ...]`` -> ``[copies * N, ...]`` (copy-major), for tensors and tuples/lists of tensors."""
    if isinstance(value, torch.Tensor):
        return value.repeat(copies, *([1] * (value.dim() - 1))) if copies > 1 else value
    return type(value)(_tile(v, copies) for v in value)


def _numel_per_sample(value) -> int:
    if isinstance(value, torch.Tensor):
        return value[0].numel() if value.dim() else 1
    return sum(_numel_per_sample(v) for v in value)


# ---------------------------------------------------------------------------------------------------------------
# run only the suffix after `layer`
# ---------------------------------------------------------------------------------------------------------------
class _SuffixRunner:
    """Runs ``model`` on ``K`` permuted copies of the output of ``layer``, computing what lies before it once.

    The network is cut after ``layer`` by :class:`~kd_methods.segments.SegmentedForward` (the mechanism MST-Distill
    uses): the prefix runs once on the real inputs and yields the carried state (the layer's output and whatever
    else crosses the cut: skip tensors, a fusion branch's inputs, sizes). A group of copies then runs only the
    suffix segment, under :func:`torch.func.vmap` over a leading copy dimension of the layer output, the rest of the
    state captured unbatched: each copy sees its own ``[N, ...]`` shapes, so a forward that reads the batch size
    after the layer (``x.view(x.size(0), -1)``) or adds a value computed before it stays correct, and nothing is
    tiled. When the network cannot be cut (untraceable control flow, the layer runs more than once per forward) or
    the vmapped suffix fails, writes into a carried value (which every later group would then see), or does not
    reproduce the model's output on a two-copy probe of the unpermuted feature, the plain path is used: tiled
    inputs, and a hook permuting copy ``k``'s channel in every output of the layer (the reference's hook semantics,
    batched).
    """

    def __init__(self, model: nn.Module, inputs: tuple[torch.Tensor, ...], layer: str):
        self.model, self.inputs, self.layer = model, inputs, layer
        calls = []

        def record(_module, _args, output):  # cloned: an in-place op later in the forward must not change it
            calls.append(output.detach().clone() if isinstance(output, torch.Tensor) else output)

        handle = get_submodule(model, layer).register_forward_hook(record)
        try:
            self.output = _check_output(model(*inputs), "model_a")
        finally:
            handle.remove()
        if not calls:
            raise ValueError(f"layer '{layer}' did not run in the forward of {type(model).__name__}")
        self.feature = _check_feature(calls[-1], layer)  # the loop's feature (capture_features keeps the latest)
        self.segmented, self.state = self._segments()
        self.vmapped = self.segmented is not None
        self.copies = _CopyBuffer(self.feature) if self.vmapped else None

    def _segments(self) -> tuple[SegmentedForward | None, list | None]:
        """The cut network and its prefix state, or ``(None, None)`` when the vmapped suffix cannot be trusted."""
        try:
            segmented = SegmentedForward(self.model, [self.layer])
        except SplitError:
            return None, None
        try:
            state = segmented.start(*self.inputs)
            feature = segmented.feature(0, state)
            if not (isinstance(feature, torch.Tensor) and feature.shape == self.feature.shape):
                return None, None
            versions = _versions(state)
            probe = feature.unsqueeze(0).expand(2, *feature.shape).clone()
            out = self._suffix(segmented, state, probe)
            # a suffix that writes into a value computed before the cut would change it for the next group
            if _versions(state) != versions or not self._matches(out):
                return None, None
        except Exception:  # noqa: BLE001 - any failure of the vmapped suffix means "use the plain path"
            return None, None
        return segmented, state

    @staticmethod
    def _suffix(segmented: SegmentedForward, state: list, copies: torch.Tensor) -> torch.Tensor:
        """The logits of each copy ``copies [K, N, ...]`` of the layer output: ``[K * N, ...]`` (copy-major)."""
        out = torch.func.vmap(lambda feature: segmented.finish(0, segmented.replace(0, state, feature)))(copies)
        return _check_output(out, "model_a").flatten(0, 1)

    def _matches(self, out: torch.Tensor) -> bool:
        """``out`` is two copies of the model's output, up to float rounding of other matmul shapes."""
        expected = _tile(self.output, 2)
        if out.shape != expected.shape or out.dtype != expected.dtype or not bool(torch.isfinite(out).all()):
            return False
        eps = torch.finfo(expected.dtype).eps if expected.is_floating_point() else 0.0
        scale = float(expected.detach().abs().max()) if expected.numel() else 0.0
        return torch.allclose(out, expected, rtol=1024 * eps, atol=1024 * eps * scale)

    def per_copy_elements(self) -> int:
        """Elements one permuted copy materialises: its feature and output, plus its inputs on the plain path."""
        n = self.feature.shape[0]
        total = _numel_per_sample(self.feature) + _numel_per_sample(self.output)
        if not self.vmapped:
            total += _numel_per_sample(self.inputs)
        return max(1, total * n)

    def forward(self, perms: torch.Tensor, channel_of: torch.Tensor) -> torch.Tensor:
        """``model_a`` on ``K`` copies: copy ``k`` has channel ``channel_of[k]`` permuted by ``perms[k]``."""
        copies = perms.shape[0]
        if self.vmapped:
            stacked = self.copies.stacked(perms, channel_of)
            return self._suffix(self.segmented, self.state, stacked.view(copies, *self.feature.shape))
        with replace_outputs(self.model, {self.layer: lambda out: _permute_copies(out, perms, channel_of)}):
            return _check_output(self.model(*_tile(self.inputs, copies)), "model_a")


def _versions(state: list) -> list[int | None]:
    return [value._version if isinstance(value, torch.Tensor) else None for value in state]


def _permute_copies(tiled: torch.Tensor, perms: torch.Tensor, channel_of: torch.Tensor) -> torch.Tensor:
    """``tiled [K*N, C, ...]`` (copy-major) -> a copy where, in copy ``k``, channel ``channel_of[k]`` of sample ``n``
    takes the value of sample ``perms[k, n]`` of the same copy."""
    copies, n = perms.shape
    view = tiled.reshape(copies, n, *tiled.shape[1:])
    result = view.clone()
    copy_index = torch.arange(copies, device=tiled.device)
    result[copy_index, :, channel_of] = view[copy_index.unsqueeze(1), perms, channel_of.unsqueeze(1)]
    return result.reshape(tiled.shape)


class _CopyBuffer:
    """Stacked copies ``[K*N, C, ...]`` (copy-major) of ``feature [N, C, ...]``, copy ``k`` with channel
    ``channel_of[k]`` permuted across the samples by ``perms[k]``: the values :func:`_permute_copies` gives for
    the tiled feature, in one buffer kept from group to group. Before a group, only the channels the previous
    group permuted are written back; the whole buffer is rebuilt when it is too small or when its version counter
    shows that someone else wrote into it (a forward with an in-place op on its input, ``ReLU(inplace=True)``)."""

    def __init__(self, feature: torch.Tensor):
        self.feature = feature
        self.buffer: torch.Tensor | None = None
        self.version = -1
        self.written: tuple[torch.Tensor, torch.Tensor] | None = None

    def stacked(self, perms: torch.Tensor, channel_of: torch.Tensor) -> torch.Tensor:
        copies, n = perms.shape
        feature = self.feature
        if self.buffer is None or self.buffer.shape[0] < copies or self.buffer._version != self.version:
            # a fresh buffer, never a view of the feature (expand(1, ...).contiguous() would be one)
            self.buffer = feature.new_empty((copies, *feature.shape))
            self.buffer.copy_(feature.unsqueeze(0).expand(copies, *feature.shape))
        elif self.written is not None:
            index, channels = self.written
            self.buffer[index, :, channels] = feature[:, channels].movedim(1, 0)
        index = torch.arange(copies, device=feature.device)
        view = self.buffer[:copies]
        view[index, :, channel_of] = feature[perms, channel_of.unsqueeze(1)]
        self.written = (index, channel_of)
        self.version = self.buffer._version
        return view.reshape(copies * n, *feature.shape[1:])


class _InputRunner:
    """``layer=None``: the channels are those of the (single) input; the whole model is the suffix."""

    def __init__(self, model: nn.Module, inputs: tuple[torch.Tensor, ...]):
        if len(inputs) != 1:
            raise ValueError("layer=None ranks the channels of the input, so model_a must take one input tensor; "
                             "name a layer to rank a fusion model's channels")
        self.model = model
        self.feature = _check_feature(inputs[0], None)
        self.output = None
        self.copies = _CopyBuffer(self.feature)

    def per_copy_elements(self) -> int:
        return max(1, self.feature.numel())

    def forward(self, perms: torch.Tensor, channel_of: torch.Tensor) -> torch.Tensor:
        return _check_output(self.model(self.copies.stacked(perms, channel_of)), "model_a")


# ---------------------------------------------------------------------------------------------------------------
# Algorithm 1
# ---------------------------------------------------------------------------------------------------------------
def auto_group(per_copy_elements: int, device: torch.device) -> int:
    """Permuted copies per batched forward: as many as fit :data:`CPU_GROUP_ELEMENTS` on a CPU (cache-sized
    temporaries), :data:`DEVICE_GROUP_ELEMENTS` elsewhere; at least one."""
    budget = CPU_GROUP_ELEMENTS if torch.device(device).type == "cpu" else DEVICE_GROUP_ELEMENTS
    return max(1, budget // max(1, per_copy_elements))


@torch.no_grad()
def channel_salience(model_a: nn.Module, model_b: nn.Module, inputs_a: Inputs, inputs_b: Inputs,
                     layer: str | None, repeats: int = 100, distance: Distance = "mse", chunk: int | None = None,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Raw permutation saliences ``[C]`` of the channels (dim 1) of ``layer`` of ``model_a`` (Algorithm 1, step 2).

    Xue et al., ICLR 2023 (MFH), App. B.4: ``p_i = 1/M sum_m Dist(f_a(X_a with channel i permuted), f_b(X_b))``.

    Args:
        model_a: the network whose channels are ranked (``f_theta1``); run in eval mode, no grad.
        model_b: the other modality's network (``f_theta2``); its output is computed once.
        inputs_a, inputs_b: a tensor or a tuple of tensors (a fusion model takes two), batch first, same ``N``.
        layer: dotted submodule path of ``model_a`` (e.g. one of its taps); ``None`` permutes the input's channels.
        repeats: ``M``, fresh permutations per channel (public code: 100 for the Gaussian case).
        distance: ``"mse"`` (Algorithm 1's choice, mean over all output elements), ``"l1"``, or a callable
            ``(out_a, out_b) -> scalar`` (applied to each copy).
        chunk: channels per batched forward (all their repeats stacked along the batch dimension); ``None`` lets
            :func:`auto_group` choose the number of (channel, repeat) copies from the problem, splitting a
            channel's repeats across forwards when they do not fit.
        generator: source of the permutations. Permutations are drawn channel-major, repeat-minor with
            ``torch.randperm(N, generator=generator)``, exactly as :func:`channel_salience_loop` draws them.

    Returns:
        float32 ``[C]`` on the inputs' device; larger = more modality-general (normalise with
        :func:`normalise_salience`).
    """
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    if chunk is not None and chunk < 1:
        raise ValueError("chunk must be >= 1 (or None for automatic)")
    _check_distance(distance)
    inputs_a, inputs_b = _as_tuple(inputs_a), _as_tuple(inputs_b)
    with _eval_mode(model_a, model_b):
        target = _check_output(model_b(*inputs_b), "model_b")
        runner = _InputRunner(model_a, inputs_a) if layer is None else _SuffixRunner(model_a, inputs_a, layer)
        feature = runner.feature
        n, channels = feature.shape[0], feature.shape[1]
        if target.shape[0] != n:
            raise ValueError(f"inputs_a and inputs_b hold different numbers of samples ({n} vs {target.shape[0]})")
        group = chunk * repeats if chunk is not None else auto_group(runner.per_copy_elements(), feature.device)
        total = channels * repeats
        sums = torch.zeros(channels, dtype=torch.float64, device=feature.device)
        for start in range(0, total, group):
            stop = min(total, start + group)
            copies = stop - start
            pairs = torch.arange(start, stop, device=feature.device)
            channel_of = pairs // repeats
            perms = torch.stack([_randperm(n, generator, feature.device) for _ in range(copies)])  # [K, N]
            out = runner.forward(perms, channel_of)
            per_copy = _distance_per_copy(out, target, copies, distance).double()
            sums.index_add_(0, channel_of, per_copy)
        return (sums / repeats).float()


@torch.no_grad()
def channel_salience_loop(model_a: nn.Module, model_b: nn.Module, inputs_a: Inputs, inputs_b: Inputs,
                          layer: str | None, repeats: int = 100, distance: Distance = "mse",
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """Algorithm 1 as the reference runs it: one full forward of ``model_a`` per channel per repeat.

    Same arguments and result as :func:`channel_salience` (Xue et al., ICLR 2023, App. B.4); kept as the
    ground truth for tests and as the baseline of ``benchmarks/bench_mfh.py``.
    """
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    _check_distance(distance)
    inputs_a, inputs_b = _as_tuple(inputs_a), _as_tuple(inputs_b)
    with _eval_mode(model_a, model_b):
        target = _check_output(model_b(*inputs_b), "model_b")
        if layer is None:
            if len(inputs_a) != 1:
                raise ValueError("layer=None needs a single input tensor for model_a")
            feature = _check_feature(inputs_a[0], None)
        else:
            with capture_features(model_a, [layer]) as captured:
                model_a(*inputs_a)
            feature = _check_feature(captured.get(layer), layer)
        n, channels = feature.shape[0], feature.shape[1]
        sums = torch.zeros(channels, dtype=torch.float64)
        for channel in range(channels):
            for _ in range(repeats):
                perm = _randperm(n, generator, feature.device)

                def permute(output, _c=channel, _p=perm):
                    output = output.clone()
                    output[:, _c] = output[_p, _c]
                    return output

                if layer is None:
                    out = model_a(permute(inputs_a[0]))
                else:
                    with replace_outputs(model_a, {layer: permute}):
                        out = model_a(*inputs_a)
                sums[channel] += float(_distance(out, target, distance))
        return (sums / repeats).float().to(feature.device)


def normalise_salience(salience: torch.Tensor) -> torch.Tensor:
    """Algorithm 1, step 3, as the public code: min-max to ``[0, 1]`` (all zeros when every value is equal)."""
    low, high = salience.min(), salience.max()
    span = high - low
    if not torch.isfinite(span) or span <= 0:
        return torch.zeros_like(salience)
    return (salience - low) / span


# ---------------------------------------------------------------------------------------------------------------
# nullified teachers (Sec. 5.4, App. B.4, Table 8)
# ---------------------------------------------------------------------------------------------------------------
SELECTION_KINDS = ("general", "specific", "random")


def select_channels(salience: torch.Tensor, ratio: float, kind: str = "general",
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """The ``int(ratio * C)`` channels to nullify, as sorted int64 indices (MFH Sec. 5.4).

    ``general``: the LOWEST saliences, so the modality-general channels remain (modality-general teacher);
    ``specific``: the HIGHEST, leaving the modality-specific ones (modality-specific teacher); ``random``: a
    uniformly random subset without replacement (the control), drawn from ``generator``.
    """
    if kind not in SELECTION_KINDS:
        raise ValueError(f"kind must be one of {', '.join(SELECTION_KINDS)}, not {kind!r}")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must lie in [0, 1], not {ratio}")
    channels = salience.numel()
    count = int(ratio * channels)  # truncation, as the reference
    if kind == "random":
        where = generator.device if generator is not None else torch.device("cpu")
        chosen = torch.randperm(channels, generator=generator, device=where)[:count]
    else:
        order = torch.sort(salience.detach().flatten().cpu(), descending=(kind == "specific"), stable=True).indices
        chosen = order[:count]
    return torch.sort(chosen.cpu()).values


def nullify_channels(layer_output: torch.Tensor, channels) -> torch.Tensor:
    """A copy of ``layer_output`` ``[N, C, ...]`` whose listed channels are replaced by their batch mean.

    As the public RAVDESS helper (and the MGDFR reference's unreached "freeze" helper): the mean is over the
    batch only, so a 4-d feature map keeps one mean value per position (``[1, k, H, W]`` broadcast over ``N``).
    The teacher's output then depends on the batch composition, also at evaluation.
    """
    index = torch.as_tensor(channels, dtype=torch.long, device=layer_output.device).flatten()
    result = layer_output.clone()
    if index.numel():
        result[:, index] = layer_output[:, index].mean(dim=0, keepdim=True)
    return result


@contextmanager
def nullified(model: nn.Module, layer: str | None, channels) -> Iterator[nn.Module]:
    """Inside the block, ``model``'s ``layer`` output (``None``: its first input) has ``channels`` nullified.

    Uses :func:`utils.core.hooks.replace_outputs`; the hook is removed on exit, even when the forward raises.
    """
    channels = torch.as_tensor(channels, dtype=torch.long).flatten()
    if layer is None:
        def pre_hook(_module, args):
            return (nullify_channels(args[0], channels), *args[1:])

        handle = model.register_forward_pre_hook(pre_hook)
        try:
            yield model
        finally:
            handle.remove()
        return
    with replace_outputs(model, {layer: lambda output: nullify_channels(output, channels)}):
        yield model


__all__ = ["channel_salience", "channel_salience_loop", "normalise_salience", "select_channels", "nullify_channels",
           "nullified", "auto_group", "SELECTION_KINDS", "CPU_GROUP_ELEMENTS", "DEVICE_GROUP_ELEMENTS"]

