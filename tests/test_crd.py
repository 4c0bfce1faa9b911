"""CRD and CRD-UU (Tian et al., ICLR 2020): memory, NCE loss, negatives sampling, the training step."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import MVD, build_method, first_batch
from kd_methods.crd import ContrastMemory, NegativeSampler, nce_loss


def test_crd_memory_update_by_hand():
    memory = ContrastMemory(dim=2, n=3, temperature=1.0)
    memory.memory_s.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]))
    memory.update(memory.memory_s, torch.tensor([0, 2]), torch.tensor([[0.0, 1.0], [0.6, -0.8]]))
    root_half = math.sqrt(0.5)
    expected = torch.tensor([[root_half, root_half], [0.0, 1.0], [1.0, 0.0]])  # (0.6, 0) normalised
    assert torch.allclose(memory.memory_s, expected, atol=1e-6)


def test_crd_z_constants_set_once_and_scores():
    torch.manual_seed(0)
    n = 10
    memory = ContrastMemory(dim=3, n=n, temperature=0.5)
    assert memory.z_s.item() == -1 and memory.z_t.item() == -1
    v_s, v_t = F.normalize(torch.randn(2, 3), dim=1), F.normalize(torch.randn(2, 3), dim=1)
    idx = torch.tensor([[0, 3, 4, 5, 6], [1, 7, 8, 9, 2]])
    m_s, m_t = memory.memory_s.clone(), memory.memory_t.clone()
    p_s, p_t = memory(v_s, v_t, idx[:, 0], idx)
    s_s = torch.exp((m_t[idx] * v_s[:, None]).sum(2) / 0.5)   # student anchor vs teacher memory
    s_t = torch.exp((m_s[idx] * v_t[:, None]).sum(2) / 0.5)
    assert memory.z_s.item() == pytest.approx(s_s.mean().item() * n, rel=1e-5)
    assert memory.z_t.item() == pytest.approx(s_t.mean().item() * n, rel=1e-5)
    assert torch.allclose(p_s, s_s / memory.z_s, rtol=1e-5) and torch.allclose(p_t, s_t / memory.z_t, rtol=1e-5)
    z = memory.z_s.item(), memory.z_t.item()
    memory(v_t, v_s, idx[:, 0], idx)
    assert (memory.z_s.item(), memory.z_t.item()) == z
    assert set(memory.state_dict()) == {"memory_s", "memory_t", "z_s", "z_t"}


def test_crd_dense_and_gathered_scores_agree():
    torch.manual_seed(1)
    memory = ContrastMemory(dim=8, n=50, temperature=0.07)
    anchor = F.normalize(torch.randn(4, 8), dim=1)
    idx = torch.randint(0, 50, (4, 5))
    dense = memory.scores(memory.memory_s, anchor, idx)           # 50 <= 16 * 5: one product and a gather
    idx_wide = torch.randint(0, 50, (4, 2))                       # 50 > 16 * 2: gathered rows
    gathered = memory.scores(memory.memory_s, anchor, idx_wide)
    rows = memory.memory_s[idx]
    assert torch.allclose(dense, torch.exp((rows * anchor[:, None]).sum(2) / 0.07), rtol=1e-5)
    rows = memory.memory_s[idx_wide]
    assert torch.allclose(gathered, torch.exp((rows * anchor[:, None]).sum(2) / 0.07), rtol=1e-5)


def test_nce_loss_by_hand():
    p = torch.tensor([[0.5, 0.1, 0.2], [0.05, 0.3, 0.01]])
    n, k = 4, 2
    noise = k / n
    expected = -(sum(math.log(r[0] / (r[0] + noise + 1e-7)) for r in p.tolist())
                 + sum(math.log(noise / (x + noise + 1e-7)) for r in p.tolist() for x in r[1:])) / 2
    assert nce_loss(p, n).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("k, expect_distinct", [(3, True), (5, True), (6, True), (9, False), (20, False)])
def test_crd_negatives_avoid_the_anchor_class(k, expect_distinct):
    # class 0 has 4 samples, class 1 has 6, class 2 has 2: pools of 8, 6 and 10 candidates. k = 3 draws the
    # chosen ranks, k = 5 and 6 the left-out ones (k = 6 is all of class 1's pool), k = 9 mixes distinct rows
    # (class 2) with rows drawn with replacement, k = 20 draws every row with replacement
    labels = np.array([0, 1, 1, 2, 0, 1, 1, 0, 1, 2, 0, 1])
    sampler = NegativeSampler(labels, k)
    torch.manual_seed(0)
    positions = torch.arange(len(labels)).repeat(30)
    negatives = sampler(positions)
    assert negatives.shape == (len(positions), k)
    classes = torch.as_tensor(labels)
    assert not (classes[negatives] == classes[positions][:, None]).any()
    pools = {0: 8, 1: 6, 2: 10}
    for row, position in zip(negatives.tolist(), positions.tolist()):
        if k <= pools[labels[position]]:
            assert len(set(row)) == k
    if expect_distinct:
        seen = set(negatives[positions == 0].flatten().tolist())      # every candidate turns up
        assert seen == set(np.flatnonzero(labels != 0).tolist())


@pytest.mark.parametrize("k", [3, 7])
def test_crd_negatives_are_uniform(k):
    labels = np.array([0] * 5 + [1] * 10)                              # anchors of class 0: 10 candidates
    sampler = NegativeSampler(labels, k)
    torch.manual_seed(1)
    draws = 4000
    negatives = sampler(torch.zeros(draws, dtype=torch.long))
    assert all(len(set(row)) == k for row in negatives.tolist())
    frequency = torch.bincount(negatives.flatten(), minlength=15)[5:].double() / (draws * k)
    assert torch.allclose(frequency, torch.full((10,), 0.1, dtype=torch.double), atol=0.01)


def test_crd_negatives_large_pool():
    labels = np.repeat(np.arange(3), [20, 200, 30])
    sampler = NegativeSampler(labels, 16)                              # pools 230, 50, 220, all >= 2k
    torch.manual_seed(0)
    positions = torch.tensor([0, 25, 240]).repeat(200)
    negatives = sampler(positions)
    assert all(len(set(row)) == 16 for row in negatives.tolist())
    classes = torch.as_tensor(labels)
    assert not (classes[negatives] == classes[positions][:, None]).any()
    assert set(negatives[positions == 25].flatten().tolist()) == set(np.flatnonzero(labels != 1).tolist())


def test_crd_step_uses_train_positions_and_keeps_state(mvd_teachers):
    method, ctx = build_method("CRD", MVD + ["--ckpt_name", mvd_teachers["multimodal"], "--nce_k", "50"])
    n_train = len(ctx.splits["train"])
    assert method.memory.memory_s.shape == (n_train, 128)
    batch = first_batch(ctx)
    before = method.memory.memory_s.clone()
    losses = method.train_step(batch, 0)
    sum(losses.values()).backward()
    changed = (method.memory.memory_s != before).any(1).nonzero().flatten()
    assert set(changed.tolist()) == set(batch.index.tolist())
    assert method.memory.z_s.item() > 0
    assert all(p.grad is not None for p in method.embed_t.parameters())   # both embedders learn in CRD
    keys = set(method.state_dict())
    assert {"memory.memory_s", "memory.memory_t", "memory.z_s", "memory.z_t"} <= keys
    assert not any(key.startswith("sampler.") for key in keys)
