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

How the batched version works: one plain forward of ``f_a`` records the output of ``layer`` and of every module
that finishes before it (the *prefix*, e.g. the conv branch in front of ``fc1``). Then, for a group of
``(channel, repeat)`` pairs, the permuted copies of the layer output are stacked along the batch dimension and
the model runs ONCE on that group: the layer and the prefix modules return their recorded outputs (tiled to the
group's batch) instead of computing, so only the *suffix* after the layer is evaluated, on ``copies x N`` rows.
Inputs, and the recorded prefix outputs, are tiled too only when the forward needs them beyond the layer (a fusion
branch computed after it, a skip connection around it); one-off probes decide this. The stacked copies live in one
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

from utils.hooks import capture_features, get_submodule, replace_outputs

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
# the prefix cache: run only the suffix after `layer`
# ---------------------------------------------------------------------------------------------------------------
class _SuffixRunner:
    """Runs ``model`` on stacked copies of the output of ``layer`` while skipping everything computed before it.

    Built from one capture forward on the real inputs. A module call is part of the prefix when it ends before
    ``layer`` returns and is not nested in another recorded prefix call (its parents are all ancestors of
    ``layer``); its output is recorded (cloned, so later in-place ops cannot change it). During
    :meth:`forward` those calls, and the layer itself, return recorded / stacked tensors instead of running.
    If a prefix call returns something other than tensors, or the layer runs more than once per forward,
    caching is switched off and the plain path is used: tiled inputs, and a hook permuting copy ``k``'s channel
    in every output of the layer (the reference's hook semantics, batched).
    """

    def __init__(self, model: nn.Module, inputs: tuple[torch.Tensor, ...], layer: str):
        self.model, self.inputs, self.layer = model, inputs, layer
        self.target = get_submodule(model, layer)
        ancestors = {model}
        parts = layer.split(".")
        for depth in range(1, len(parts)):
            ancestors.add(model.get_submodule(".".join(parts[:depth])))
        self.ancestors = ancestors
        #: module -> {batched call index: recorded output}
        self.cache: dict[nn.Module, dict[int, object]] = {}
        self.cacheable = True
        self.feature, self.output = self._capture()
        self.tile_inputs = self.tile_prefix = True
        if self.cacheable:
            self.tile_inputs = not self._inputs_unused()
            self.tile_prefix = not self._prefix_unused()
        self.copies = _CopyBuffer(self.feature)

    def _capture(self):
        # one entry per active call: [module, skipped in the batched run, batched call index, top-level prefix call]
        stack: list[list] = []
        counts: dict[nn.Module, int] = {}
        state = {"feature": None, "layer_calls": 0}
        handles = []

        def pre_hook(module, _args):
            skipped_parent = any(entry[1] for entry in stack)
            prefix_top = (state["feature"] is None and not skipped_parent and module is not self.target
                          and module not in self.ancestors and all(entry[0] in self.ancestors for entry in stack))
            index = None
            if not skipped_parent:  # this call happens in the batched run too, so it counts
                index = counts.get(module, 0)
                counts[module] = index + 1
            stack.append([module, prefix_top or module is self.target or skipped_parent, index, prefix_top])

        def post_hook(module, _args, output):
            _, _, index, prefix_top = stack.pop()
            if module is self.target:
                state["layer_calls"] += 1
                if state["feature"] is None:
                    state["feature"] = _clone(output) if isinstance(output, torch.Tensor) else output
            elif prefix_top and state["feature"] is None:
                if _all_tensors(output):
                    self.cache.setdefault(module, {})[index] = _clone(output)
                else:
                    self.cacheable = False

        try:
            for module in self.model.modules():
                handles.append(module.register_forward_pre_hook(pre_hook))
                handles.append(module.register_forward_hook(post_hook))
            output = _check_output(self.model(*self.inputs), "model_a")
        finally:
            for handle in handles:
                handle.remove()
        if state["feature"] is None:
            raise ValueError(f"layer '{self.layer}' did not run in the forward of {type(self.model).__name__}")
        if state["layer_calls"] > 1 or not self.cacheable:
            # a shared layer, or a prefix module returning non-tensors: no caching (see the class docstring)
            self.cacheable = False
            self.cache = {}
        return _check_feature(state["feature"], self.layer), output

    def _inputs_unused(self) -> bool:
        """Probe: with the prefix cached, does the output still depend on the inputs? (NaN inputs, 2 copies)."""
        if not all(torch.is_floating_point(x) for x in self.inputs):
            return False
        poisoned = tuple(torch.full_like(x, float("nan")) for x in self.inputs)
        stacked = _tile(self.feature, 2)
        try:
            with self._patched(stacked, 2):
                out = self.model(*poisoned)
        except Exception:  # noqa: BLE001 - any failure means the inputs are needed beyond the prefix
            return False
        return self._matches(out)

    def _prefix_unused(self) -> bool:
        """Probe: is a recorded prefix output read after the layer (a skip connection)? Run 2 copies with the
        prefix returning NaN tensors of one copy's size: a read after the layer shows as NaN or a shape error."""
        if not self.cache:
            return True
        inputs = _tile(self.inputs, 2) if self.tile_inputs else self.inputs
        try:
            with self._patched(_tile(self.feature, 2), 2, prefix="nan"):
                out = self.model(*inputs)
        except Exception:  # noqa: BLE001 - e.g. one copy's rows meeting two copies' rows: the prefix is needed
            return False
        return self._matches(out)

    def _matches(self, out) -> bool:
        expected = _tile(self.output, 2)
        return (isinstance(out, torch.Tensor) and out.shape == expected.shape and bool(torch.isfinite(out).all())
                and torch.allclose(out, expected, rtol=1e-4, atol=1e-6))

    @contextmanager
    def _patched(self, stacked: torch.Tensor, copies: int, prefix: str | None = None):
        """Inside the block the layer returns ``stacked`` and each recorded prefix call its output: tiled to
        ``copies`` (``prefix="tile"``), one copy's (``"plain"``: the suffix does not read it) or NaN (the probe).
        Default: ``"tile"`` or ``"plain"`` as :attr:`tile_prefix` says."""
        prefix = prefix or ("tile" if self.tile_prefix else "plain")
        replace = {"tile": lambda value: _tile(value, copies), "plain": lambda value: value,
                   "nan": lambda value: _nan_like(value)}[prefix]
        patched = []

        def patch(module, replacement_for):
            original = module.forward
            had_own = "forward" in module.__dict__
            calls = {"n": 0}

            def forward(*args, **kwargs):
                index = calls["n"]
                calls["n"] += 1
                value = replacement_for(index)
                return original(*args, **kwargs) if value is None else value

            module.forward = forward
            patched.append((module, had_own, original))

        for module, recorded in self.cache.items():
            patch(module, lambda i, _r=recorded: replace(_r[i]) if i in _r else None)
        patch(self.target, lambda i: stacked if i == 0 else None)
        try:
            yield
        finally:
            for module, had_own, original in reversed(patched):
                if had_own:
                    module.forward = original
                else:
                    del module.forward

    def per_copy_elements(self) -> int:
        """Elements one permuted copy materialises (feature, tiled prefix outputs and inputs, output)."""
        n = self.feature.shape[0]
        total = _numel_per_sample(self.feature) + _numel_per_sample(self.output)
        if self.tile_prefix:
            total += sum(_numel_per_sample(v) for recorded in self.cache.values() for v in recorded.values())
        if self.tile_inputs:
            total += _numel_per_sample(self.inputs)
        return max(1, total * n)

    def forward(self, perms: torch.Tensor, channel_of: torch.Tensor) -> torch.Tensor:
        """``model_a`` on ``K`` copies: copy ``k`` has channel ``channel_of[k]`` permuted by ``perms[k]``."""
        copies = perms.shape[0]
        inputs = _tile(self.inputs, copies) if self.tile_inputs else self.inputs
        if self.cacheable:
            with self._patched(self.copies.stacked(perms, channel_of), copies):
                return _check_output(self.model(*inputs), "model_a")
        with replace_outputs(self.model, {self.layer: lambda out: _permute_copies(out, perms, channel_of)}):
            return _check_output(self.model(*inputs), "model_a")


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


def _nan_like(value):
    if isinstance(value, torch.Tensor):
        return torch.full_like(value, float("nan")) if torch.is_floating_point(value) else value
    return type(value)(_nan_like(v) for v in value)


def _all_tensors(value) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    return isinstance(value, (tuple, list)) and len(value) > 0 and all(_all_tensors(v) for v in value)


def _clone(value):
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    return type(value)(_clone(v) for v in value)


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
        layer: dotted submodule path of ``model_a`` (a hook name); ``None`` permutes the input's channels.
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

    Uses :func:`utils.hooks.replace_outputs`; the hook is removed on exit, even when the forward raises.
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

