"""Adam as every method builds it: fused kernels by default, the reference's for-loop Adam with --no-fused_adam."""
from __future__ import annotations

import pytest
import torch

from kd_methods import get_method
from kd_methods.base import make_adam
from tests.tolerances import EPS32
from utils import cli


def _steps(optimizer_factory, steps: int = 5) -> torch.Tensor:
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(64, 32))
    target = torch.randn(64, 32)
    optimizer = optimizer_factory([weight])
    for _ in range(steps):
        optimizer.zero_grad()
        ((weight - target) ** 2).sum().backward()
        optimizer.step()
    return weight.detach()


def test_fused_is_the_default_and_no_fused_restores_the_loop():
    method = get_method("S")
    assert cli.parse_args(method, []).fused_adam is True
    assert cli.parse_args(method, ["--no-fused_adam"]).fused_adam is False
    fused = make_adam([torch.nn.Parameter(torch.zeros(3))], 1e-3, fused=True)
    loop = make_adam([torch.nn.Parameter(torch.zeros(3))], 1e-3, fused=False)
    assert fused.defaults["fused"] is True and not loop.defaults["fused"]


def test_the_loop_is_bit_identical_to_pytorchs_default_adam_and_fused_is_ulps_away():
    reference = _steps(lambda params: torch.optim.Adam(params, lr=1e-3))
    assert torch.equal(_steps(lambda params: make_adam(params, 1e-3, fused=False)), reference)
    assert torch.equal(_steps(lambda params: make_adam(params, 1e-3, fused=False, foreach=True)), reference)
    fused = _steps(lambda params: make_adam(params, 1e-3, fused=True))
    # each step rounds its update differently by about one ulp of the parameter: a few steps drift a few ulps
    assert (fused - reference).abs().max().item() <= 16 * EPS32 * reference.abs().max().item()


@pytest.mark.parametrize("flag, fused", [([], True), (["--no-fused_adam"], False)])
def test_methods_build_the_adam_the_flag_asks_for(flag, fused, tmp_path):
    from utils.engine import run

    method_cls = get_method("S")
    description = cli.describe(method_cls, ["--epochs", "1", "--max_steps", "1", "--device", "cpu", "--no-record",
                                            "--out_dir", str(tmp_path), *flag])
    built = []
    original = torch.optim.Adam.__init__

    def spy(self, params, *a, **k):
        original(self, params, *a, **k)
        built.append(bool(self.defaults.get("fused")))

    torch.optim.Adam.__init__ = spy
    try:
        run(method_cls, description)
    finally:
        torch.optim.Adam.__init__ = original
    assert built and all(value is fused for value in built)
