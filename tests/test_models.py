"""Every registered network: parameter counts, forward shapes, hook points, state-dict names.

Models are built once per module (the FuseNets are large) and only ever run in eval mode under ``no_grad``.
"""
from __future__ import annotations

import functools
import math

import pytest
import torch

from models import MODELS, build_model
from utils.core.hooks import active_hook_count, capture_features

B = 2
# FuseNet runs at a small size divisible by 32; its hook shapes below are the reference's 480x640 ones scaled to it.
NYU_H, NYU_W = 64, 96

INPUT_SHAPES = {  # the datasets' input shapes, batch dimension excluded
    "AV-MNIST": {"m1": (1, 28, 28), "m2": (1, 112, 112)},
    "RAVDESS": {"m1": (15, 3, 224, 224), "m2": (15, 156)},
    "VGGSound-50k": {"m1": (10, 7, 7, 512), "m2": (10, 128)},
    "CMMD-V2": {"m1": (2048,), "m2": (768,)},
    "NYU-Depth-V2": {"m1": (3, NYU_H, NYU_W), "m2": (1, NYU_H, NYU_W)},
    "Synthetic-MVD": {"m1": (50,), "m2": (50,)},
}
SYNTHETIC_INPUT_SHAPES = {"m1": (50,), "m2": (50,)}

PARAM_COUNTS = {  # the reference networks' parameter counts
    "LeNet5": 61_706,
    "ThreeLayerCNN-A": 343_562,
    "CNN-I": 1_809_752,
    "DSCNN-I": 6_607_300,
    "VisualBranchNet": 6_084_420,
    "AudioBranchNet": 575_848,
    "DSCNN-VGGS-I": 4_851_965,
    "VisualBranchNet-VGGS": 4_761_549,
    "AudioBranchNet-VGGS": 164_797,
    "MLP-I": 4_593_416,
    "MLP-Vb": 2_627_080,
    "MLP-Tb": 1_316_360,
    "FuseNet-I": 44_188_649,
    "FuseNet-RGBbranch": 29_466_665,
    "FuseNet-Dbranch": 29_465_513,
}

OUTPUT_SHAPES = {
    "AV-MNIST": (B, 10),
    "RAVDESS": (B, 8),
    "VGGSound-50k": (B, 141),
    "CMMD-V2": (B, 8),
    "NYU-Depth-V2": (B, 41, NYU_H, NYU_W),
    "Synthetic-MVD": (B, 2),
    None: (B, 2),  # generic models, built with 2 classes above
}

_HEAD = {"fc1": (B, 320), "fc2": (B, 160)}
_FUSENET_BRANCH = {  # the reference FuseNet's 480x640 shapes scaled to 64x96
    "CBR1_{d}_DEC.0": (B, 64, 64, 96), "CBR2_{e}_ENC": (B, 128, 32, 48), "CBR4_{e}_ENC": (B, 512, 8, 12),
    "CBR5_{e}_ENC": (B, 512, 4, 6), "CBR4_{d}_DEC": (B, 256, 8, 12), "CBR5_{d}_DEC": (B, 512, 4, 6),
}
TAP_SHAPES = {
    "LeNet5": {"conv1": (B, 6, 28, 28), "conv2": (B, 16, 10, 10), "conv3": (B, 120, 1, 1), "fc1": (B, 84),
               "fc2": (B, 10), "flatten_identity": (B, 120)},
    "ThreeLayerCNN-A": {"conv1": (B, 32, 112, 112), "conv2": (B, 64, 56, 56), "conv3": (B, 128, 28, 28),
                        "conv3_maxpool": (B, 128, 14, 14), "conv3_maxpool_flatten": (B, 25088), "fc1": (B, 10)},
    "CNN-I": {"AudioNet.conv1": (B, 32, 112, 112), "AudioNet.conv3": (B, 128, 28, 28), "AudioNet.conv5": (B, 512, 7, 7),
              "ImageNet.conv1": (B, 6, 28, 28), "ImageNet.conv2": (B, 16, 10, 10), "ImageNet.fc1": (B, 84),
              "concat_identity": (B, 596), "fc1": (B, 298), "fc2": (B, 10)},
    "DSCNN-I": {"visual_branch": (B, 18816), "visual_branch.conv1": (B, 6, 15, 224, 224),
                "visual_branch.conv2": (B, 12, 7, 112, 112), "visual_branch.conv3": (B, 24, 3, 56, 56),
                "audio_branch": (B, 1280), "audio_branch.conv1": (B, 32, 156), "audio_branch.conv2": (B, 128, 52),
                "audio_branch.conv3": (B, 256, 17), **_HEAD, "fc3": (B, 8)},
    "VisualBranchNet": {"visual_branch": (B, 18816), **_HEAD, "fc3": (B, 8)},
    "AudioBranchNet": {"audio_branch": (B, 1280), **_HEAD, "fc3": (B, 8)},
    "DSCNN-VGGS-I": {"audio_branch": (B, 256), "visual_branch": (B, 128), **_HEAD, "fc3": (B, 141)},
    "VisualBranchNet-VGGS": {"visual_branch": (B, 128), **_HEAD, "fc3": (B, 141)},
    "AudioBranchNet-VGGS": {"audio_branch": (B, 256), **_HEAD, "fc3": (B, 141)},
    "MLP-I": {"VisualNet.fc1": (B, 1024), "VisualNet.fc2": (B, 512), "TextualNet.fc1": (B, 1024),
              "TextualNet.fc2": (B, 512), "fc1": (B, 512), "fc2": (B, 256), "fc3": (B, 8)},
    "MLP-Vb": {"fc1": (B, 1024), "fc2": (B, 512), "fc3": (B, 8)},
    "MLP-Tb": {"fc1": (B, 1024), "fc2": (B, 512), "fc3": (B, 8)},
    "FuseNet-I": {"after_fusion_identity": (B, 512, 2, 3), "CBR5_RGBD_DEC": (B, 512, 4, 6)},
    "FuseNet-RGBbranch": {k.format(d="RGB", e="RGB"): v for k, v in _FUSENET_BRANCH.items()},
    "FuseNet-Dbranch": {k.format(d="D", e="DEPTH"): v for k, v in _FUSENET_BRANCH.items()},
}

# Reference state-dict keys (with shapes) that checkpoints of the original code carry.
REFERENCE_KEYS = {
    "CNN-I": {"AudioNet.conv1.weight": (32, 1, 3, 3), "AudioNet.conv5.bias": (512,), "ImageNet.fc1.weight": (84, 120),
              "fc1.weight": (298, 596), "fc2.weight": (10, 298)},
    "LeNet5": {"conv3.weight": (120, 16, 5, 5), "fc2.bias": (10,)},
    "ThreeLayerCNN-A": {"fc1.weight": (10, 25088)},
    "DSCNN-I": {"audio_branch.conv1.weight": (32, 15, 3), "audio_branch.bn3.running_var": (256,),
                "visual_branch.conv1.weight": (6, 3, 3, 3, 3), "visual_branch.bn2.num_batches_tracked": (),
                "fc1.weight": (320, 20096)},
    "DSCNN-VGGS-I": {"audio_branch.conv1.weight": (16, 10, 3), "visual_branch.conv1.weight": (256, 512, 3, 3, 3),
                     "fc1.weight": (320, 384), "fc3.bias": (141,)},
    "MLP-I": {"VisualNet.fc1.weight": (1024, 2048), "TextualNet.fc2.bias": (512,), "fc1.weight": (512, 1024)},
    "FuseNet-I": {"CBR1_RGB_ENC.0.weight": (64, 3, 3, 3), "CBR1_RGB_ENC.1.running_mean": (64,),
                  "CBR1_DEPTH_ENC.0.weight": (64, 1, 3, 3), "CBR5_DEPTH_ENC.7.weight": (512,),
                  "CBR4_RGBD_DEC.6.weight": (256, 512, 3, 3), "CBR1_RGBD_DEC.3.weight": (41, 64, 3, 3)},
    "FuseNet-RGBbranch": {"CBR1_RGB_ENC.0.weight": (64, 3, 3, 3), "CBR1_RGB_DEC.3.bias": (41,)},
    "FuseNet-Dbranch": {"CBR1_DEPTH_ENC.0.weight": (64, 1, 3, 3), "CBR2_D_DEC.3.weight": (64, 128, 3, 3)},
}

# Top-level owners of the state-dict entries, in state-dict order (registration order of the reference).
STATE_DICT_PREFIX_ORDER = {
    "CNN-I": ["AudioNet", "ImageNet", "fc1", "fc2"],
    "DSCNN-I": ["audio_branch", "visual_branch", "fc1", "fc2", "fc3"],
    "DSCNN-VGGS-I": ["audio_branch", "visual_branch", "fc1", "fc2", "fc3"],
    "MLP-I": ["VisualNet", "TextualNet", "fc1", "fc2", "fc3"],
    "FuseNet-I": [*(f"CBR{k}_RGB_ENC" for k in range(1, 6)), *(f"CBR{k}_DEPTH_ENC" for k in range(1, 6)),
                  *(f"CBR{k}_RGBD_DEC" for k in (5, 4, 3, 2, 1))],
    "FuseNet-Dbranch": [*(f"CBR{k}_DEPTH_ENC" for k in range(1, 6)), *(f"CBR{k}_D_DEC" for k in (5, 4, 3, 2, 1))],
}

ALL_MODELS = sorted(MODELS)


def _kwargs(name: str) -> dict:
    if MODELS[name].database is None:  # generic models are sized from the data: their declared example inputs
        return {"input_shapes": MODELS[name].example_inputs, "num_classes": 2}
    return {"input_shapes": SYNTHETIC_INPUT_SHAPES} if MODELS[name].database == "Synthetic-MVD" else {}


@functools.lru_cache(maxsize=None)
def _model(name: str):
    torch.manual_seed(0)
    return build_model(name, **_kwargs(name)).eval()


@functools.lru_cache(maxsize=None)
def _inputs(name: str) -> tuple[torch.Tensor, ...]:
    entry = MODELS[name]
    generator = torch.Generator().manual_seed(1)
    shapes = INPUT_SHAPES[entry.database] if entry.database is not None else entry.example_inputs
    return tuple(torch.randn(B, *shapes[m], generator=generator) for m in entry.inputs)


@functools.lru_cache(maxsize=None)
def _run(name: str):
    """One forward with every default hook captured (cached: the 3-d CNNs and FuseNets are slow on CPU)."""
    model = _model(name)
    with torch.no_grad(), capture_features(model, model.taps) as features:
        output = model(*_inputs(name))
    assert active_hook_count(model) == 0
    return output, dict(features)


def test_every_paper_model_is_registered():
    assert set(PARAM_COUNTS) <= set(MODELS)
    assert set(TAP_SHAPES) == set(PARAM_COUNTS)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_parameter_count(name):
    count = sum(p.numel() for _, p in _model(name).named_parameters())
    if name in PARAM_COUNTS:
        assert count == PARAM_COUNTS[name]
    else:
        assert count > 0


@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_output_shape(name):
    output, _ = _run(name)
    assert tuple(output.shape) == OUTPUT_SHAPES[MODELS[name].database]
    assert output.dtype == torch.float32 and torch.isfinite(output).all()


@pytest.mark.parametrize("name", ALL_MODELS)
def test_taps_resolve_and_capture(name):
    model = _model(name)
    assert isinstance(model.taps, tuple) and model.taps
    for path in model.taps:
        model.get_submodule(path)
    _, features = _run(name)
    assert list(features) and set(features) == set(model.taps)
    if name in TAP_SHAPES:  # the paper models: exactly these taps (probes included), with the reference's shapes
        assert set(model.taps) == set(TAP_SHAPES[name])
    for path, shape in TAP_SHAPES.get(name, {}).items():
        assert tuple(features[path].shape) == shape, path


# every model with an ``fc1`` tap: all but the FuseNets (conv taps) and the one-layer logistic regressions
FC1_MODELS = [n for n in ALL_MODELS if not n.startswith(("FuseNet", "MVD-LR"))]


@pytest.mark.parametrize("name", FC1_MODELS)
def test_fc_hooks_see_pre_activation(name):
    assert "fc1" in _model(name).taps
    # ReLU is functional, so the hooked linear output still holds negative values.
    _, features = _run(name)
    assert (features["fc1"] < 0).any()


@pytest.mark.parametrize("name", ALL_MODELS)
def test_state_dict_round_trip(name):
    model = _model(name)
    state = model.state_dict()
    if name.startswith("FuseNet"):
        # Loading into a meta-device build checks names and shapes without paying for a second 30-44M init.
        with torch.device("meta"):
            fresh = build_model(name, **_kwargs(name))
        fresh.load_state_dict(state, strict=True, assign=True)
    else:
        fresh = build_model(name, **_kwargs(name))
        fresh.load_state_dict(state, strict=True)
    assert list(fresh.state_dict()) == list(state)
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, state[key]), key
    for key, shape in REFERENCE_KEYS.get(name, {}).items():
        assert tuple(state[key].shape) == shape, key
    if name in STATE_DICT_PREFIX_ORDER:
        owners = list(dict.fromkeys(key.split(".")[0] for key in state))
        assert owners == STATE_DICT_PREFIX_ORDER[name]


@pytest.mark.parametrize("name", ["DSCNN-I", "DSCNN-VGGS-I", "VisualBranchNet", "VisualBranchNet-VGGS"])
def test_video_layout_is_permuted_inside_forward(name):
    # The dataset layout is time-first; the model must move channels to dim 1 itself (reference input wrapper).
    model = _model(name)
    inputs = _inputs(name)
    with torch.no_grad(), capture_features(model, ["visual_branch.conv1"]) as features:
        model(*inputs)
    conv = model.visual_branch.conv1
    expected = conv(inputs[0][:1].movedim(-1 if "VGGS" in name else 2, 1))
    assert torch.allclose(features["visual_branch.conv1"][:1], expected, atol=1e-5)


def test_fusenet_registration_order_and_unused_modules():
    fusion = _model("FuseNet-I")
    names = [n for n, _ in fusion.named_children()]
    assert names[0] == "after_fusion_identity"
    assert names[names.index("CBR5_RGB_ENC"):names.index("CBR1_DEPTH_ENC")] == ["CBR5_RGB_ENC", "dropout5", "pool5"]
    assert names[names.index("CBR5_DEPTH_ENC"):names.index("unpool5")] == ["CBR5_DEPTH_ENC", "pool5_d", "dropout5_d"]
    assert names[-2:] == ["unpool1", "CBR1_RGBD_DEC"]
    assert "pool3_d" in names
    rgb = [n for n, _ in _model("FuseNet-RGBbranch").named_children()]
    assert rgb[0] == "penultimate_identity" and rgb[-2:] == ["unpool1_rgb", "CBR1_RGB_DEC"]
    depth = [n for n, _ in _model("FuseNet-Dbranch").named_children()]
    assert depth[0] == "penultimate_identity" and depth[-2:] == ["unpool1_d", "CBR1_D_DEC"]
    # In-place ReLU inside the CBR blocks, except inside the final classifier block.
    assert fusion.CBR1_RGB_ENC[2].inplace and fusion.CBR5_RGBD_DEC[8].inplace
    assert not fusion.CBR1_RGBD_DEC[2].inplace and len(fusion.CBR1_RGBD_DEC) == 4


@pytest.mark.parametrize("name", ["FuseNet-I", "FuseNet-RGBbranch", "FuseNet-Dbranch"])
def test_fusenet_effective_init(name):
    model = _model(name)
    big = model.get_submodule(f"CBR4_{'RGBD' if name == 'FuseNet-I' else ('RGB' if 'RGB' in name else 'D')}_DEC.0")
    fan = 512 * 9
    assert big.weight.std().item() == pytest.approx(0.02 * math.sqrt(2 / (fan + fan)), rel=0.01)
    assert big.weight.mean().abs().item() < 1e-5
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(torch.count_nonzero(c.bias) == 0 for c in convs)
    first = convs[0]
    expected_std = 0.02 * math.sqrt(2 / (first.in_channels * 9 + 64 * 9))
    assert first.weight.abs().max().item() < 8 * expected_std
    bn_weights = torch.cat([m.weight.detach() for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)])
    assert bn_weights.mean().item() == pytest.approx(1.0, abs=0.005)
    assert bn_weights.std().item() == pytest.approx(0.02, rel=0.1)
    assert all(torch.count_nonzero(m.bias) == 0 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_fusenet_runs_at_sizes_not_divisible_by_32():
    model = _model("FuseNet-RGBbranch")
    with torch.no_grad():
        assert model(torch.randn(1, 3, 50, 70)).shape == (1, 41, 50, 70)


def test_fusenet_fusion_averages_streams_and_reuses_pool4_d():
    model = _model("FuseNet-I")
    seen, calls = {}, {"pool3_d": 0, "pool4_d": 0, "pool5_d": 0}
    handles = [model.pool1.register_forward_pre_hook(lambda _m, args: seen.update(pool1_in=args[0].clone()))]
    for name in calls:
        handles.append(model.get_submodule(name).register_forward_hook(
            lambda *_a, _n=name: calls.__setitem__(_n, calls[_n] + 1)))
    try:
        with torch.no_grad(), capture_features(model, ["CBR1_RGB_ENC", "CBR1_DEPTH_ENC"]) as features:
            model(*_inputs("FuseNet-I"))
    finally:
        for handle in handles:
            handle.remove()
    expected = (features["CBR1_RGB_ENC"] + features["CBR1_DEPTH_ENC"]) / 2
    assert torch.allclose(seen["pool1_in"], expected)
    # The reference pools depth stage 3 with pool4_d and never pools the depth stage-5 output.
    assert calls == {"pool3_d": 0, "pool4_d": 2, "pool5_d": 0}
