"""Contrastive representation distillation (``main-CRD.py``, ``main-CRD-UU.py``)."""
from __future__ import annotations

import argparse
import math

import numpy as np
import torch
import torch.nn as nn

from kd_methods import register_method
from kd_methods.kd import SingleTeacherDistiller
from kd_methods.rkd import EMBED_DIM, Embed, FeatureDistiller
from utils.core.cards import MethodCard
from utils.core.errors import UserError

NCE_EPS = 1e-7
MOMENTUM = 0.5
#: memories of at most this many times K+1 rows score against every row with one matrix product
DENSE_SCORES_FACTOR = 16


class ContrastMemory(nn.Module):
    """The two momentum memories of CRD and the exponentiated, Z-normalised scores against them.

    ``memory_s`` holds the student embeddings and ``memory_t`` the teacher ones, one row per training sample,
    initialised uniform in ``[-s, s]`` with ``s = 1/sqrt(dim/3)`` (student memory first, as the reference). ``z_s``
    and ``z_t`` are -1 until the first call sets them to ``mean(scores) * n`` for good. All four are buffers, so
    checkpoints and ``--resume`` carry them.
    """

    def __init__(self, dim: int, n: int, temperature: float, momentum: float = MOMENTUM):
        super().__init__()
        self.n, self.temperature, self.momentum = n, temperature, momentum
        bound = 1.0 / math.sqrt(dim / 3)
        self.register_buffer("memory_s", torch.rand(n, dim).mul_(2 * bound).add_(-bound))
        self.register_buffer("memory_t", torch.rand(n, dim).mul_(2 * bound).add_(-bound))
        self.register_buffer("z_s", torch.tensor(-1.0))
        self.register_buffer("z_t", torch.tensor(-1.0))

    def scores(self, memory: torch.Tensor, anchor: torch.Tensor, contrast_idx: torch.Tensor) -> torch.Tensor:
        """``[B, K+1]``: ``exp(<memory[idx[b, j]], anchor[b]> / T)`` with the memory rows detached."""
        if memory.shape[0] <= DENSE_SCORES_FACTOR * contrast_idx.shape[1]:
            # All n dot products, then a gather: up to 16x the reference's multiply-adds, but no [B, K+1, 128]
            # copy of memory rows (1 GB per memory at B = 512); 3.5x faster on CPU for AV-MNIST, same values.
            # The clone keeps the tensor autograd saves intact when the memory is updated in place below.
            dots = (anchor @ memory.detach().clone().t()).gather(1, contrast_idx)
        else:
            rows = memory.index_select(0, contrast_idx.reshape(-1)).detach().view(*contrast_idx.shape, -1)
            dots = torch.bmm(rows, anchor.unsqueeze(2)).squeeze(2)
        return torch.exp(dots / self.temperature)

    @staticmethod
    def _set_once(z: torch.Tensor, scores: torch.Tensor, n: int) -> None:
        # a device-side select instead of `if z < 0` keeps the training step free of host syncs
        z.copy_(torch.where(z < 0, scores.detach().mean() * n, z))

    @torch.no_grad()
    def update(self, memory: torch.Tensor, sample_idx: torch.Tensor, embedding: torch.Tensor) -> None:
        """``memory[y] <- normalise(m * memory[y] + (1 - m) * v)``."""
        rows = memory.index_select(0, sample_idx) * self.momentum + embedding.detach() * (1 - self.momentum)
        memory.index_copy_(0, sample_idx, rows / rows.pow(2).sum(1, keepdim=True).pow(0.5))

    def forward(self, v_s: torch.Tensor, v_t: torch.Tensor, sample_idx: torch.Tensor,
                contrast_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(P_s, P_t)``: student anchors against the teacher memory and teacher anchors against the student
        memory, divided by Z; then both memories move towards this batch's embeddings (rows ``sample_idx``).

        Always in float32, also under ``--amp``: ``exp(dot / 0.07)`` turns bfloat16's relative error of 2^-8 in
        the dot products into errors of several percent in the scores (the loss came out 2.5x too large)."""
        with torch.autocast(v_s.device.type, enabled=False):
            v_s, v_t = v_s.float(), v_t.float()
            s_s = self.scores(self.memory_t, v_s, contrast_idx)
            s_t = self.scores(self.memory_s, v_t, contrast_idx)
            with torch.no_grad():
                self._set_once(self.z_s, s_s, self.n)
                self._set_once(self.z_t, s_t, self.n)
            p_s, p_t = s_s / self.z_s, s_t / self.z_t
            self.update(self.memory_s, sample_idx, v_s)
            self.update(self.memory_t, sample_idx, v_t)
        return p_s, p_t


def nce_loss(p: torch.Tensor, n_data: int, eps: float = NCE_EPS) -> torch.Tensor:
    """``-(1/B) [sum_b log(P_b0 / (P_b0 + K Pn + eps)) + sum_b sum_j>=1 log(K Pn / (P_bj + K Pn + eps))]``,
    ``Pn = 1 / n_data``, ``K = p.shape[1] - 1`` (column 0 is the positive)."""
    k = p.shape[1] - 1
    noise = k / float(n_data)
    p = p.float()  # the log-ratios of nearly equal scores need float32 (see ContrastMemory.forward)
    positive, negative = p[:, 0], p[:, 1:]
    log_d1 = torch.log(positive / (positive + (noise + eps)))
    log_d0 = torch.log(noise / (negative + (noise + eps)))
    return -(log_d1.sum() + log_d0.sum()) / p.shape[0]


class NegativeSampler(nn.Module):
    """Draws, for training samples given by their positions in the train split, ``k`` positions of samples of
    other classes, uniformly; distinct when at least ``k`` such samples exist, else with replacement (as the
    reference's ``numpy.random.choice``). Vectorised on the device from a per-class index table: positions sorted
    by class, and each class's start and count, so the pool of class c is the table without c's block.
    """

    def __init__(self, train_labels: np.ndarray, k: int):
        super().__init__()
        labels = torch.as_tensor(np.asarray(train_labels), dtype=torch.long)
        self.n, self.k = len(labels), k
        count = torch.bincount(labels, minlength=int(labels.max()) + 1 if len(labels) else 1)
        # not persistent: derived from the data, rebuilt at every start
        self.register_buffer("labels", labels, persistent=False)
        self.register_buffer("order", torch.argsort(labels, stable=True), persistent=False)
        self.register_buffer("count", count, persistent=False)
        self.register_buffer("start", torch.cumsum(count, 0) - count, persistent=False)

    def uniform(self, pool: torch.Tensor, columns: int) -> torch.Tensor:
        """``[b, columns]`` integers uniform in ``[0, pool_b)`` (modulo bias below 1e-13)."""
        draws = torch.randint(0, 2 ** 62, (len(pool), columns), device=pool.device)
        return draws % pool.unsqueeze(1)

    def first_distinct(self, pool: torch.Tensor, m: torch.Tensor, columns: int):
        """``(draws, chosen)``: ``columns`` draws per row, uniform in ``[0, pool_b)`` with replacement, and the mask
        of the first ``m_b`` distinct values in draw order ("draw until m distinct": no value is favoured, so the
        set is a uniform m-subset). First occurrences come from a scatter-min of draw positions into a
        ``[b, pool]`` table (no sort). Rows short of ``m_b`` distinct values are drawn again."""
        b, device = len(pool), pool.device
        draws = self.uniform(pool, columns)
        order = torch.arange(columns, device=device, dtype=torch.int32).expand(b, -1)
        first_seen = torch.full((b, int(pool.max())), columns, device=device, dtype=torch.int32)
        first_seen.scatter_reduce_(1, draws, order, reduce="amin")
        first = first_seen.gather(1, draws) == order
        chosen = first & (first.cumsum(1) <= m.unsqueeze(1))
        short = chosen.sum(1) < m
        if bool(short.any()):
            draws[short], chosen[short] = self.first_distinct(pool[short], m[short], columns)
        return draws, chosen

    def distinct(self, pool: torch.Tensor) -> torch.Tensor:
        """``[b, k]`` distinct ranks in ``[0, pool_b)`` per row (``pool_b >= k``), a uniform k-subset.

        The smaller side is drawn: the k chosen ranks, or where ``pool < 2k`` the ``pool - k`` ranks left out. So
        at most half of a pool is drawn and about ``-pool * ln(1 - m / pool) <= 1.39 m`` draws suffice.
        """
        k, device = self.k, pool.device
        complement = pool < 2 * k
        m = torch.where(complement, pool - k, torch.full_like(pool, k))
        expected = -(pool.double() * torch.log1p(-m.double() / pool.double()))
        columns = math.ceil(float(expected.max()) * 1.05) + 32  # > 6 standard deviations of slack
        draws, chosen = self.first_distinct(pool, m, columns)
        if not bool(complement.any()):
            return draws[chosen].view(-1, k)  # row-major: each row's k chosen draws
        ranks = torch.empty(len(pool), k, device=device, dtype=torch.long)
        direct = ~complement
        if bool(direct.any()):
            ranks[direct] = draws[direct][chosen[direct]].view(-1, k)
        # complement rows (pool < 2k, so the table is narrow): keep the in-pool ranks that were not drawn
        pool, draws, picked = pool[complement], draws[complement], chosen[complement]
        rows = torch.arange(len(pool), device=device).unsqueeze(1).expand_as(picked)
        left_out = torch.zeros(len(pool), int(pool.max()), device=device, dtype=torch.bool)
        left_out[rows[picked], draws[picked]] = True
        kept = ~left_out & (torch.arange(left_out.shape[1], device=device) < pool.unsqueeze(1))
        ranks[complement] = kept.nonzero()[:, 1].view(-1, k)
        return ranks

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        classes = self.labels[positions]
        count, start = self.count[classes], self.start[classes]
        pool = self.n - count
        distinct = pool >= self.k
        if bool(distinct.all()):
            ranks = self.distinct(pool)
        else:  # with replacement where fewer than k candidates exist, as numpy.random.choice(replace=True)
            ranks = self.uniform(pool, self.k)
            if bool(distinct.any()):
                ranks[distinct] = self.distinct(pool[distinct])
        # rank r in the pool of class c: the r-th entry of the sorted table, skipping c's own block
        ranks = torch.where(ranks < start.unsqueeze(1), ranks, ranks + count.unsqueeze(1))
        return self.order[ranks]


@register_method
class CRD(FeatureDistiller):
    """Contrastive representation distillation from a multimodal teacher (Tian et al., "Contrastive
    Representation Distillation", ICLR 2020), as the MST-Distill reference implements it.

    Features of :func:`~kd_methods.rkd.feature_layer` are embedded (Linear to 128, L2 normalisation; both
    embedders learn). Each training sample is contrasted with ``--nce_k`` negatives: positions in the train split
    of samples of other classes, distinct when enough exist, drawn on the device for the whole batch (the
    reference drew them per sample with NumPy inside the dataset). Scores against the momentum memories
    (momentum 0.5) are normalised by the Z constants fixed at the first step; loss
    ``(1 - alpha) * CE + alpha * (NCE(P_s) + NCE(P_t))``, alpha halved after every 30 epochs; one Adam over
    student and embedders; selection on the student's validation CE.

    Reference behaviour fixed, no switch needed: with ``--test_phase`` the reference computed the CRD loss on
    test batches and so overwrote memory rows of training samples with test embeddings. Here validation and
    the test phase only evaluate the student's task loss; the memories change only in training steps, so
    there is no behaviour to switch back to. Hooks are removed after every forward (the reference leaked them).
    NYU-Depth-V2 is refused (no feature table in the reference).
    """

    card = MethodCard(
        name="CRD",
        position=50,
        summary=("Contrastive representation distillation (Tian et al., ICLR 2020) from a pre-trained multimodal "
                 "teacher."),
        roles=("teacher", "student"),
        teacher_kind="multimodal",
        needs_checkpoint=True,
        search_space={"lr": ("log", 0.1, 10.0, "relative"), "alpha": ("float", 0.1, 0.9), "nce_t": ("log", 0.02, 0.3)},
    )

    def __init__(self, ctx):
        super().__init__(ctx)
        train = ctx.splits["train"]
        try:
            labels = np.asarray(ctx.source.labels())[train]
        except NotImplementedError:
            raise UserError(f"{self.name} needs class labels per sample, which {self.spec.name} does not provide")
        if len(np.unique(labels)) < 2:
            raise UserError(f"{self.name} needs at least two classes in the training split to draw negatives")
        # reference order: E_s, E_t, then the memories (student memory first)
        self.embed_s = Embed(self.student_dim)
        self.embed_t = Embed(self.teacher_dim)
        self.memory = ContrastMemory(EMBED_DIM, len(train), self.args.nce_t)
        self.sampler = NegativeSampler(labels, self.args.nce_k)

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        SingleTeacherDistiller.add_arguments(parser)
        parser.add_argument("--nce_t", type=float, default=0.07,
                            help="temperature of the contrastive scores (default: %(default)s)")
        parser.add_argument("--nce_k", type=int, default=4096,
                            help="negatives per sample, drawn from other classes of the train split "
                                 "(default: %(default)s)")

    @classmethod
    def check_args(cls, args, spec) -> None:
        super().check_args(args, spec)
        if args.nce_k < 1 or args.nce_t <= 0:
            raise UserError("--nce_k must be >= 1 and --nce_t > 0")

    def extra_modules(self):
        return [self.embed_s, self.embed_t]

    def distill_terms(self, batch, epoch):
        logits, student_feature, teacher_feature = self.forward_features(batch)
        v_s, v_t = self.embed_s(student_feature), self.embed_t(teacher_feature)
        sample_idx = batch.index.to(v_s.device)
        contrast_idx = torch.cat([sample_idx.unsqueeze(1), self.sampler(sample_idx)], dim=1)
        p_s, p_t = self.memory(v_s, v_t, sample_idx, contrast_idx)
        n = self.memory.n
        return logits, {"crd": nce_loss(p_s, n) + nce_loss(p_t, n)}


@register_method
class CRDUU(CRD):
    """CRD (Tian et al., ICLR 2020) from a unimodal teacher of the other modality (``main-CRD-UU.py``)."""

    card = MethodCard(
        name="CRD-UU",
        position=50,
        summary=("Contrastive representation distillation (Tian et al., ICLR 2020) from a unimodal teacher of the "
                 "other modality."),
        roles=("teacher", "student"),
        teacher_kind="crossmodal",
        needs_checkpoint=True,
        search_space={"lr": ("log", 0.1, 10.0, "relative"), "alpha": ("float", 0.1, 0.9), "nce_t": ("log", 0.02, 0.3)},
    )
