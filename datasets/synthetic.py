"""``Synthetic-MVD``: the Gaussian Modality Venn Diagram generator of the MFH paper (Xue et al., ICLR 2023,
"The Modality Focusing Hypothesis: Towards Understanding Crossmodal Knowledge Distillation", App. B.2).

Decisive features ``x* ~ N(0, I_d)`` decide the label. Modality a (``m1``) is ``N(0, I_d1)`` noise whose first
``|J1|`` columns are overwritten by ``x*_J1``; modality b (``m2``) likewise with ``J2``. The decisive index set
is laid out as ``[a-exclusive | shared | b-exclusive]``; modality a stores ``[a-exclusive | shared]`` and
modality b ``[shared | b-exclusive]`` in their first columns. Then

    gamma = |J1 ∩ J2| / |J1 ∪ J2|,   alpha = 1 - |J2| / |J1 ∪ J2|,   beta = 1 - |J1| / |J1 ∪ J2|.

Binary labels are ``1[<delta, x*> > 0]`` exactly as the paper; ``num_classes = K > 2`` generalises to
``argmax(x* W)`` with ``W ~ N(0, I)`` of shape ``[d, K]``. Everything is deterministic per seed; no files.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from datasets.base import DatasetSpec, TensorSource
from utils.core.errors import UserError


@dataclass(frozen=True)
class MVDConfig:
    dim_a: int = 50          # d1, columns of modality a (m1)
    dim_b: int = 50          # d2, columns of modality b (m2)
    decisive_a: int = 20     # |J1|
    decisive_b: int = 20     # |J2|
    shared: int = 10         # |J1 ∩ J2|
    num_classes: int = 2

    def __post_init__(self):
        problems = []
        if not 0 <= self.shared <= min(self.decisive_a, self.decisive_b):
            problems.append("--mvd_shared must be between 0 and min(--mvd_decisive_a, --mvd_decisive_b)")
        if self.decisive_a > self.dim_a or self.decisive_b > self.dim_b:
            problems.append("decisive columns cannot exceed the modality's dimension (--mvd_dim_a/--mvd_dim_b)")
        if self.num_classes < 2:
            problems.append("--mvd_classes must be at least 2")
        if self.decisive_a + self.decisive_b - self.shared < 1:
            problems.append("at least one decisive feature is needed")
        if problems:
            raise UserError("invalid Synthetic-MVD options: " + "; ".join(problems))

    @property
    def num_decisive(self) -> int:
        """d = |J1 ∪ J2|."""
        return self.decisive_a + self.decisive_b - self.shared

    @property
    def gamma(self) -> float:
        return self.shared / self.num_decisive

    @property
    def alpha(self) -> float:
        return 1.0 - self.decisive_b / self.num_decisive

    @property
    def beta(self) -> float:
        return 1.0 - self.decisive_a / self.num_decisive

    @property
    def exclusive_a(self) -> int:
        return self.decisive_a - self.shared

    def shared_columns(self, modality: str) -> np.ndarray:
        """Column positions of the shared (modality-general) decisive features inside ``m1`` or ``m2``."""
        start = self.exclusive_a if modality == "m1" else 0
        return np.arange(start, start + self.shared)

    def decisive_columns(self, modality: str) -> np.ndarray:
        return np.arange(self.decisive_a if modality == "m1" else self.decisive_b)


def draw_label_weights(config: MVDConfig, rng: np.random.RandomState, delta: str = "gaussian") -> np.ndarray:
    """``delta`` (binary: ``[d]``) or ``W`` (K classes: ``[d, K]``). ``delta="ones"`` is Table 2's all-ones delta."""
    d = config.num_decisive
    if config.num_classes == 2:
        return np.ones(d) if delta == "ones" else rng.randn(d)
    return rng.randn(d, config.num_classes)


def sample_mvd(config: MVDConfig, n: int, rng: np.random.RandomState, weights: np.ndarray):
    """Draw ``n`` samples: ``(x_a [n, d1], x_b [n, d2], y [n])`` as float32/float32/int64 NumPy arrays."""
    d = config.num_decisive
    decisive = rng.randn(n, d)
    x_a = rng.randn(n, config.dim_a)
    x_b = rng.randn(n, config.dim_b)
    x_a[:, : config.decisive_a] = decisive[:, : config.decisive_a]              # [a-exclusive | shared]
    x_b[:, : config.decisive_b] = decisive[:, config.exclusive_a:]               # [shared | b-exclusive]
    scores = decisive @ weights
    y = (scores > 0).astype(np.int64) if weights.ndim == 1 else scores.argmax(axis=1).astype(np.int64)
    return x_a.astype(np.float32), x_b.astype(np.float32), y


def config_from_args(args: argparse.Namespace) -> MVDConfig:
    return MVDConfig(args.mvd_dim_a, args.mvd_dim_b, args.mvd_decisive_a, args.mvd_decisive_b, args.mvd_shared,
                     args.mvd_classes)


def load(args: argparse.Namespace) -> TensorSource:
    config = config_from_args(args)
    rng = np.random.RandomState(args.mvd_seed)
    weights = draw_label_weights(config, rng)
    x_a, x_b, y = sample_mvd(config, args.mvd_samples, rng, weights)
    return TensorSource(torch.from_numpy(x_a), torch.from_numpy(x_b), torch.from_numpy(y))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Synthetic-MVD (MFH Gaussian generator)")
    defaults = MVDConfig()
    group.add_argument("--mvd_dim_a", type=int, default=defaults.dim_a,
                       help="columns of modality a / m1 (default: %(default)s)")
    group.add_argument("--mvd_dim_b", type=int, default=defaults.dim_b,
                       help="columns of modality b / m2 (default: %(default)s)")
    group.add_argument("--mvd_decisive_a", type=int, default=defaults.decisive_a,
                       help="|J1|, decisive columns in m1 (default: %(default)s)")
    group.add_argument("--mvd_decisive_b", type=int, default=defaults.decisive_b,
                       help="|J2|, decisive columns in m2 (default: %(default)s)")
    group.add_argument("--mvd_shared", type=int, default=defaults.shared,
                       help="|J1 ∩ J2|, shared decisive columns (default: %(default)s)")
    group.add_argument("--mvd_classes", type=int, default=defaults.num_classes,
                       help="classes; 2 is the paper's binary rule (default: %(default)s)")
    group.add_argument("--mvd_samples", type=int, default=5000,
                       help="samples in all, cut 60/20/20 (default: %(default)s)")
    group.add_argument("--mvd_seed", type=int, default=0,
                       help="seed of the generated data, independent of --seed (default: %(default)s)")


SPEC = DatasetSpec(
    name="Synthetic-MVD",
    task="classification",
    num_classes=2,
    modalities={"m1": "Gaussian modality a", "m2": "Gaussian modality b"},
    teacher="MVD-MLP-I",
    students={"m1": "MVD-MLP-m1", "m2": "MVD-MLP-m2"},
    batch_size=256,
    input_shapes={"m1": (50,), "m2": (50,)},
    lr=1e-3,
    epochs=20,
    load=load,
    split="generated",
    how_to_obtain="generated in memory; no files needed",
    add_arguments=add_arguments,
    # MST-Distill's stage settings, small so that `python main-MST-Distill.py` finishes in seconds; the no-KD
    # baseline is trained with the same budget for comparison
    method_defaults={"MST-Distill": {"epochs_s1": 5, "epochs_s2": 5, "s1_lr": 1e-3, "s2_lr": 1e-3,
                                     "compare_baseline": True}},
    configure=lambda args: dataclasses.replace(SPEC, num_classes=args.mvd_classes),
)
