"""C2KD (Huo et al., CVPR 2024): Kendall's tau-b, the non-target KL and its gate, proxies, the schedule."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import kendalltau

from kd_methods.c2kd import ProxyNet, ProxyNet1D, ProxyNetDense, gate_non_target, kendall_tau_b, non_target_kl, poly_lr


def test_kendall_tau_b_matches_scipy_with_ties():
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0], [1.0, 1.0, 2.0, 2.0, 3.0], [3.0, 1.0, 2.0, 2.0, 0.0],
                      [0.5, 0.5, 0.5, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0, 2.0]])
    y = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 2.0, 3.0, 3.0], [3.0, 1.0, 2.0, 0.0, 0.0],
                      [1.0, 0.0, 1.0, 0.0, 1.0], [1.0, 2.0, 3.0, 4.0, 5.0]])
    rng = np.random.RandomState(0)
    x = torch.cat([x, torch.from_numpy(rng.randint(0, 3, size=(6, 5)).astype(np.float32))])
    y = torch.cat([y, torch.from_numpy(rng.randint(0, 3, size=(6, 5)).astype(np.float32))])
    ours = kendall_tau_b(x, y)
    for row in range(len(x)):
        expected = kendalltau(x[row].numpy(), y[row].numpy(), variant="b").statistic
        if np.isnan(expected):  # an all-tied row: scipy gives NaN, the reference's +1e-8 gives 0
            assert ours[row].item() == 0.0
        else:
            assert ours[row].item() == pytest.approx(expected, abs=1e-6), row
    assert ours[0].item() == pytest.approx(-1.0) and ours[4].item() == 0.0
    assert torch.equal(kendall_tau_b(x, y, chunk_rows=3), ours), "chunking does not change the result"


def test_non_target_kl_golden():
    trained, target = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[3.0, 1.0, 0.0]])
    mask = torch.tensor([[True, False, False]])

    def kl(b, a):  # KL(softmax(b) || softmax(a)) by hand
        zb, za = sum(math.exp(v) for v in b), sum(math.exp(v) for v in a)
        return sum(math.exp(bv) / zb * ((bv - math.log(zb)) - (av - math.log(za))) for av, bv in zip(a, b))

    # reference: the target logit set to 0 (and kept); switch: the target class removed
    assert non_target_kl(trained, target, mask).item() == pytest.approx(kl([0, 1, 0], [0, 2, 3]), rel=1e-6)
    assert non_target_kl(trained, target, mask, remove_target=True).item() == pytest.approx(kl([1, 0], [2, 3]),
                                                                                           rel=1e-6)


def test_non_target_gate():
    per_sample = torch.tensor([1.0, 2.0, 4.0, 8.0])
    passed = torch.tensor([1.0, 0.0, 1.0, 0.0])
    assert gate_non_target(per_sample, passed, dense=False).item() == pytest.approx(5.0 / 4)  # masked count as 0
    assert gate_non_target(per_sample, torch.zeros(4), dense=False).item() == 0.0
    per_pixel = torch.arange(1.0, 9.0)  # 2 images x 4 pixels, image-major
    one_image = torch.tensor([0.0, 1.0])
    # reference (NYU): the mean over every pixel as soon as one image passes; nothing when none does
    assert gate_non_target(per_pixel, one_image, dense=True).item() == pytest.approx(4.5)
    assert gate_non_target(per_pixel, torch.zeros(2), dense=True).item() == 0.0
    # --c2kd_image_mask: only the passing image's pixels, still over all pixels of the batch
    assert gate_non_target(per_pixel, one_image, dense=True, image_mask=True).item() == pytest.approx(26.0 / 8)


def test_poly_lr_schedule():
    assert poly_lr(0.01, 100, 0) == 0.01
    assert poly_lr(0.01, 100, 1) == pytest.approx(0.01 * 0.99 ** 0.9)
    assert poly_lr(0.01, 100, 50) == pytest.approx(0.01 * 0.5 ** 0.9)  # the product telescopes
    assert poly_lr(0.01, 100, 100) == 1e-4  # the floor


def test_c2kd_proxies():
    torch.manual_seed(0)
    assert ProxyNet(10, 128)(torch.randn(2, 128, 14, 14)).shape == (2, 10)
    one_d = ProxyNet1D(10, 84)
    assert one_d(torch.randn(2, 84)).shape == (2, 10)
    assert not one_d.fc1.bias.any() and not one_d.fc2.bias.any()
    dense = ProxyNetDense(41, 64)
    assert dense(torch.randn(2, 64, 8, 12), (16, 24)).shape == (2, 41, 16, 24)  # follows the label size
