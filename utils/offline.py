"""Offline run contexts (tests and benchmarks): random tensors shaped like a database's inputs, no files.

Outside ``kd_methods/`` on purpose: building a context from command-line options is the caller's side of the
method <-> engine boundary (methods never import ``utils.cli`` or ``utils.engine``).
"""
from __future__ import annotations

import functools

import numpy as np
import torch

from datasets import BatchLoader, TensorSource, get_spec
from kd_methods.base import RunContext
from kd_methods.mst import MSTDistill
from utils import cli, provenance


def offline_context(argv: list[str], samples: int = 8, input_shapes: dict | None = None, device: str = "cpu",
                    data_seed: int = 0, log=lambda message: None) -> RunContext:
    """A :class:`RunContext` for MST-Distill over ``samples`` random samples (train = val = test = all of them).

    ``argv`` are command-line options (``--database`` etc.); ``input_shapes`` overrides the per-sample shapes of
    the spec (:meth:`~datasets.base.DatasetSpec.example_input_shapes`; e.g. a small NYU size). Synthetic-MVD uses its
    own generator.
    """
    args = cli.parse_args(MSTDistill, argv)
    spec = get_spec(args.database)
    spec = spec.configured(args) if hasattr(spec, "configured") else spec
    if spec.name == "Synthetic-MVD" and input_shapes is None:
        source = spec.load(args)
    else:
        shapes = input_shapes or spec.example_input_shapes()
        generator = torch.Generator().manual_seed(data_seed)
        m1 = torch.randn((samples, *shapes["m1"]), generator=generator)
        m2 = torch.randn((samples, *shapes["m2"]), generator=generator)
        label_shape = (samples, *shapes["m1"][-2:]) if spec.is_segmentation else (samples,)
        y = torch.randint(0, spec.num_classes, label_shape, generator=generator)
        source = TensorSource(m1, m2, y)
    indices = np.arange(len(source))
    splits = {"train": indices, "val": indices, "test": indices}
    torch_device = torch.device(device)

    def make_loader(split, shuffle=None, batch_size=None, max_steps=-1):
        return BatchLoader(source, splits[split], batch_size or args.batch_size,
                           shuffle=(split == "train") if shuffle is None else shuffle, seed=args.seed,
                           device=torch_device, max_steps=args.max_steps if max_steps == -1 else max_steps)

    ctx = RunContext(args=args, spec=spec, device=torch_device, source=source, splits=splits, make_loader=make_loader,
                     log=log)
    ctx.make_record = functools.partial(provenance.context_record, ctx)
    return ctx
