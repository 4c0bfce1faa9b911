"""FuseNet starts where the reference's FuseNet starts for the same seed.

The reference builds torchvision's VGG-16 (once per encoder stream, ImageNet weights loaded, hence no torchvision
init), copies its convs into the encoders, creates the depth stream's first conv and the decoder convs fresh, and
then overwrites every conv and batch norm with Xavier-normal (gain 0.02) / N(1, 0.02), child by child. Here that
procedure is written out with torchvision's own VGG-16 construction and the reference's class-name based init,
and compared to our builders: every initialised tensor, and the generator's state afterwards (what the MaskNets and
GateNet built next draw from).
"""
from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn as nn
import torchvision

from models import build_model
from models.fusenet import replay_draws, vgg16_construction_draws

SEED = 3
#: the reference's decoder convs (every decoder has these sizes), in construction order: CBR5 ... CBR1
DECODER_CONVS = ((512, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 256), (256, 256), (256, 256),
                 (256, 128), (128, 128), (128, 64), (64, 64), (64, 41))


def _vgg16():
    # The construction the reference's vgg16(weights=VGG16_Weights.DEFAULT) runs before loading the weights.
    torchvision.models.vgg16(weights=None, init_weights=False)


def _decoder():
    for c_in, c_out in DECODER_CONVS:
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1)


@functools.lru_cache(maxsize=None)
def reference_states_before_init(seed: int) -> dict[str, torch.Tensor]:
    """Generator state at the start of the reference's init routine, per model (two VGG-16 constructions in all)."""
    torch.manual_seed(seed)
    _vgg16()  # the VGG-16 whose convs every encoder copies
    after_first = torch.get_rng_state()
    _decoder()
    rgb = torch.get_rng_state()
    torch.set_rng_state(after_first)
    _vgg16()  # the depth stream's VGG-16, for its averaged first conv
    nn.Conv2d(1, 64, kernel_size=3, padding=1)  # that first conv
    _decoder()
    depth = torch.get_rng_state()
    return {"FuseNet-I": depth, "FuseNet-Dbranch": depth, "FuseNet-RGBbranch": rgb}


def reference_init_(net: nn.Module, gain: float = 0.02) -> None:
    """The reference's init as it ran: every direct child, by class name, ``apply`` order (children first)."""

    def init_func(m):
        classname = m.__class__.__name__
        if hasattr(m, "weight") and (classname.find("Conv") != -1 or classname.find("Linear") != -1):
            nn.init.xavier_normal_(m.weight.data, gain=gain)
            if getattr(m, "bias", None) is not None:
                nn.init.constant_(m.bias.data, 0.0)
        elif classname.find("BatchNorm2d") != -1:
            nn.init.normal_(m.weight.data, 1.0, gain)
            nn.init.constant_(m.bias.data, 0.0)

    for child in net.children():
        child.apply(init_func)


@functools.lru_cache(maxsize=None)
def _ours(name: str):
    torch.manual_seed(SEED)
    model = build_model(name, num_classes=41)
    return model, torch.get_rng_state()


@pytest.mark.parametrize("name", ["FuseNet-I", "FuseNet-RGBbranch", "FuseNet-Dbranch"])
def test_fusenet_starts_from_the_reference_weights(name):
    ours, state_after = _ours(name)
    reference = copy.deepcopy(ours)  # same modules in the same order (test_models checks them against the reference)
    torch.set_rng_state(reference_states_before_init(SEED)[name])
    reference_init_(reference)
    assert torch.equal(torch.get_rng_state(), state_after)  # MaskNets and GateNet built next draw the same numbers
    expected = reference.state_dict()
    for key, value in ours.state_dict().items():
        # The first values name the tensor in a failure; the whole tensor must match bit for bit.
        assert torch.equal(value.flatten()[:4], expected[key].flatten()[:4]), key
        assert torch.equal(value, expected[key]), key


def test_fusenet_first_values_for_seed_3():
    # Golden values: the first element of a few initialised tensors of FuseNet-I built after torch.manual_seed(3).
    # Normal draws go through log/sin/cos, which may differ by an ulp between maths libraries: a few ulps' tolerance.
    state = _ours("FuseNet-I")[0].state_dict()
    for key, value in GOLDEN_FUSENET_I.items():
        assert state[key].flatten()[0].item() == pytest.approx(value, rel=2e-6), key


GOLDEN_FUSENET_I = {
    "CBR1_RGB_ENC.0.weight": -0.0018075872212648392, "CBR1_RGB_ENC.1.weight": 0.9736286401748657,
    "CBR1_DEPTH_ENC.0.weight": -0.00072192691732198, "CBR5_DEPTH_ENC.7.weight": 0.9902030825614929,
    "CBR5_RGBD_DEC.0.weight": 0.00012389960465952754, "CBR1_RGBD_DEC.3.weight": -0.001897997222840786,
}


def test_replayed_draws_equal_default_layer_construction():
    # The VGG-16 count itself is checked against torchvision above; here an even and an odd count.
    for layer, count in ((lambda: nn.Linear(5, 3), 5 * 3 + 3), (lambda: nn.Conv2d(1, 3, 1, bias=False), 3)):
        torch.manual_seed(0)
        layer()
        built = torch.get_rng_state()
        torch.manual_seed(0)
        replay_draws(count)
        assert torch.equal(torch.get_rng_state(), built), count
    assert vgg16_construction_draws() == 138_357_544  # torchvision's VGG-16 parameter count
