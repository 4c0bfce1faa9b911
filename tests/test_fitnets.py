"""FitNets and FitNets-UU (Romero et al., ICLR 2015): the regressors and the hint pairs."""
from __future__ import annotations

import functools

import pytest
import torch
import torch.nn as nn

from kd_methods.features import feature_shapes, modules_up_to
from kd_methods.fitnets import HINT_PAIRS, HINT_PAIRS_UU, R1D, REGRESSORS, Down, Fixed, R2Dto1D, Up
from models import build_model, get_entry


@pytest.mark.parametrize("length_in,length_out,stride,conv_length", [
    (25088, 120, 209, 121),   # AV-MNIST UU LeNet5 <- ThreeLayerCNN-A: strided conv, then nearest-resize down
    (120, 25088, 1, 120),     # the reverse: stride 1, nearest-resize up
    (84, 298, 1, 84),         # CNN-I fc1 <- LeNet5 fc1
    (1024, 512, 2, 512),      # CMMD-V2 MLP-I fc1 <- MLP-Vb fc1
    (320, 320, 1, 320),
])
def test_r1d_stride_and_lengths(length_in, length_out, stride, conv_length):
    regressor = R1D((length_in,), (length_out,))
    assert regressor.conv1d.stride == (stride,)
    x = torch.randn(3, length_in)
    assert regressor.conv1d(x.unsqueeze(1)).shape == (3, 1, conv_length)
    assert regressor(x).shape == (3, length_out)


@pytest.mark.parametrize("length_in,length_out,source", [
    (5, 8, [0, 0, 1, 1, 2, 3, 3, 4]),  # legacy nearest: floor(k * in / out); nearest-exact would give 2 at k=3
    (8, 5, [0, 1, 3, 4, 6]),
])
def test_r1d_uses_legacy_nearest_resize(length_in, length_out, source):
    regressor = R1D((length_in,), (length_out,))
    with torch.no_grad():  # identity convolution, so only the resize acts
        regressor.conv1d.weight.copy_(torch.tensor([[[0.0, 1.0, 0.0]]]))
        regressor.conv1d.bias.zero_()
    x = torch.arange(2 * length_in, dtype=torch.float32).view(2, length_in)
    assert torch.equal(regressor(x), x[:, source])


def test_2d_regressor_shapes():
    r = R2Dto1D((120, 1, 1), (596,))  # CNN-I concat_identity <- LeNet5 conv3
    assert (r.conv2d.in_channels, r.conv2d.out_channels, r.fc.in_features, r.fc.out_features) == (120, 16, 16, 596)
    assert r(torch.randn(2, 120, 1, 1)).shape == (2, 596)
    assert R2Dto1D((64, 56, 56), (596,)).fc.in_features == 50176
    assert R2Dto1D((128, 28, 28), (298,)).fc.in_features == 12544
    assert Down((64, 56, 56), (6, 28, 28))(torch.randn(2, 64, 56, 56)).shape == (2, 6, 28, 28)
    assert Up((6, 28, 28), (64, 56, 56))(torch.randn(2, 6, 28, 28)).shape == (2, 64, 56, 56)
    assert Fixed((8, 6, 10), (4, 6, 10))(torch.randn(2, 8, 6, 10)).shape == (2, 4, 6, 10)
    down = Down((4, 30, 40), (4, 15, 20))
    assert (down.conv.kernel_size, down.conv.stride, down.conv.padding) == ((3, 3), (2, 2), (1, 1))
    up = Up((4, 6, 5), (3, 12, 10))
    assert (up.deconv.stride, up.deconv.padding, up.deconv.output_padding) == ((2, 2), (1, 1), (1, 1))


def test_r2d_to_1d_draws_the_reference_rng():
    """The reference sized its Linear with torch.rand(1, C, H, W): the same draw keeps later inits identical."""
    torch.manual_seed(3)
    ours = R2Dto1D((4, 3, 3), (7,))
    torch.manual_seed(3)
    conv = nn.Conv2d(4, 16, 3, padding=1)
    torch.rand(1, 4, 3, 3)
    fc = nn.Linear(16 * 9, 7)
    assert torch.equal(ours.conv2d.weight, conv.weight) and torch.equal(ours.fc.weight, fc.weight)


SMALL_INPUTS = {  # per-sample shapes; NYU smaller than 480x640 to stay fast (every pair is size-agnostic)
    "AV-MNIST": {"m1": (1, 28, 28), "m2": (1, 112, 112)},
    "CMMD-V2": {"m1": (2048,), "m2": (768,)},
    "RAVDESS": {"m1": (15, 3, 224, 224), "m2": (15, 156)},
    "VGGSound-50k": {"m1": (10, 7, 7, 512), "m2": (10, 128)},
    "NYU-Depth-V2": {"m1": (3, 64, 96), "m2": (1, 64, 96)},
    "Synthetic-MVD": {"m1": (50,), "m2": (50,)},
}


@functools.lru_cache(maxsize=None)
def _model(name):
    entry = get_entry(name)
    torch.manual_seed(0)
    return build_model(name, num_classes=10 if entry.database == "AV-MNIST" else 8,
                       input_shapes=SMALL_INPUTS[entry.database]).eval()


def _inputs(name):
    entry = get_entry(name)
    torch.manual_seed(1)
    return tuple(torch.rand(1, *SMALL_INPUTS[entry.database][m]) for m in entry.inputs)


@pytest.mark.parametrize("pair", [*HINT_PAIRS, *HINT_PAIRS_UU], ids=lambda p: "->".join(p))
def test_every_hint_pair_regresses_to_the_teacher_shape(pair):
    table = HINT_PAIRS if pair in HINT_PAIRS else HINT_PAIRS_UU
    teacher, student = _model(pair[0]), _model(pair[1])
    t_shapes = feature_shapes(teacher, [t for t, _, _ in table[pair]], _inputs(pair[0]))
    s_shapes = feature_shapes(student, [s for _, s, _ in table[pair]], _inputs(pair[1]))
    for t, s, kind in table[pair]:
        regressor = REGRESSORS[kind](s_shapes[s], t_shapes[t])
        assert regressor(torch.randn(2, *s_shapes[s])).shape == (2, *t_shapes[t]), (t, s, kind)


def test_hint_table_facts():
    assert HINT_PAIRS_UU[("LeNet5", "ThreeLayerCNN-A")] == (("conv1", "conv2", "Down"),
                                                           ("flatten_identity", "conv3_maxpool_flatten", "R1D"))
    assert ("MVD-MLP-I", "MVD-MLP-m2") in HINT_PAIRS and ("MVD-MLP-m2", "MVD-MLP-m1") in HINT_PAIRS_UU
    assert not set(HINT_PAIRS) & set(HINT_PAIRS_UU)


def test_modules_up_to_follow_execution_order():
    student = _model("ThreeLayerCNN-A")
    got = modules_up_to(student, ["conv2", "conv3_maxpool_flatten"], _inputs("ThreeLayerCNN-A"))
    assert got == ["conv1", "conv2", "conv3", "conv3_maxpool", "conv3_maxpool_flatten"]
