"""NYU-Depth-V2 segmentation models of the FuseNet family (Hazirbas et al., ACCV 2016): the RGB-D teacher
``FuseNet-I`` and the single-stream students ``FuseNet-RGBbranch`` / ``FuseNet-Dbranch``.

All three are VGG-16-shaped SegNet-style encoder-decoders with max-unpooling. Submodule names, registration
order and the unused modules of the reference (``pool3_d``, ``pool5_d``, ``penultimate_identity``...) are kept
so reference checkpoints load with ``strict=True`` and hook paths stay valid. No pretrained weights are used:
the reference copied torchvision's ImageNet VGG-16 convs into its encoders, then overwrote every conv and batch
norm with a small Xavier init, which :func:`init_fusenet_` reproduces. Its construction still consumed random
numbers (torchvision builds VGG-16 with default-initialised layers before loading the weights); the builders
replay those draws (:func:`replay_vgg16_construction_draws`), so that for the same ``--seed`` the networks, and
everything built after them (MaskNets, GateNet), start from the reference's values.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.init as init

from models.registry import register_model

NUM_LABELS = 41
DROPOUT = 0.4
BN_MOMENTUM = 0.1
INIT_GAIN = 0.02

# Per stage, the (in, out) channels of each 3x3 conv: the VGG-16 feature extractor (the depth stream's first conv
# takes 1 channel) and the mirrored decoder (its stage 1 is built separately because it ends in the logits).
VGG16_STAGES = (
    ((3, 64), (64, 64)),
    ((64, 128), (128, 128)),
    ((128, 256), (256, 256), (256, 256)),
    ((256, 512), (512, 512), (512, 512)),
    ((512, 512), (512, 512), (512, 512)),
)
DECODER_STAGES = (
    None,
    ((128, 128), (128, 64)),
    ((256, 256), (256, 256), (256, 128)),
    ((512, 512), (512, 512), (512, 256)),
    ((512, 512), (512, 512), (512, 512)),
)


#: torchvision VGG-16's classifier, (in, out) per linear layer (1000 ImageNet classes)
VGG16_CLASSIFIER = ((512 * 7 * 7, 4096), (4096, 4096), (4096, 1000))
_DRAW_CHUNK = 1 << 20


def vgg16_construction_draws() -> int:
    """32-bit random draws consumed by ``torchvision.models.vgg16(weights=VGG16_Weights.DEFAULT)``.

    With weights, torchvision skips its own init (``init_weights=False``), so the draws are those of each layer's
    default reset: a Kaiming-uniform weight and a uniform bias, one 32-bit draw per element (138 357 544 in all).
    """
    convs = sum(c_in * c_out * 9 + c_out for stage in VGG16_STAGES for c_in, c_out in stage)
    return convs + sum(c_in * c_out + c_out for c_in, c_out in VGG16_CLASSIFIER)


def replay_draws(count: int) -> None:
    """Advance torch's default CPU generator by ``count`` 32-bit draws, as ``count`` float32 ``uniform_`` draws do.

    Full-range int64 ``random_`` takes two 32-bit draws per element, which halves the number of elements to fill;
    with no 528 MB of VGG-16 weights allocated, a replay takes a fraction of a torchvision construction's time
    (0.35-0.9 s against 1.7-4 s on one core of the 2-core test VM). ``tests/test_fusenet_init.py`` checks the state
    against a real torchvision construction.
    """
    pairs, odd = divmod(count, 2)
    buffer = torch.empty(min(pairs, _DRAW_CHUNK), dtype=torch.int64, device="cpu")
    while pairs:
        step = min(pairs, _DRAW_CHUNK)
        buffer[:step].random_()
        pairs -= step
    if odd:
        torch.empty(1, device="cpu").uniform_()


def replay_vgg16_construction_draws() -> None:
    """The random numbers the reference consumed building one torchvision VGG-16 (its weights were then loaded and,
    in the end, overwritten): replayed so that what is built afterwards gets the reference's values."""
    replay_draws(vgg16_construction_draws())


def conv_bn_relu(channels, inplace: bool = True, fresh=None) -> nn.Sequential:
    """[Conv3x3, BN, ReLU] per (in, out) pair, flat, so conv ``i`` sits at Sequential index ``3 * i``.

    ``fresh[i]`` False builds conv ``i`` without drawing its default init (the reference deep-copied it from a
    VGG-16 instead of creating it); :func:`init_fusenet_` sets every conv afterwards either way.
    """
    layers = []
    for i, (c_in, c_out) in enumerate(channels):
        if fresh is None or fresh[i]:
            conv = nn.Conv2d(c_in, c_out, kernel_size=3, padding=1)
        else:
            conv = torch.nn.utils.skip_init(nn.Conv2d, c_in, c_out, kernel_size=3, padding=1)
        layers += [conv, nn.BatchNorm2d(c_out, momentum=BN_MOMENTUM), nn.ReLU(inplace=inplace)]
    return nn.Sequential(*layers)


def encoder_block(stage: int, depth: bool = False) -> nn.Sequential:
    """One encoder stage. Its convs are copies of VGG-16's in the reference (no draws), except the depth stream's
    first conv (1 input channel), which the reference created after building a second VGG-16 for it."""
    channels = list(VGG16_STAGES[stage - 1])
    fresh = [False] * len(channels)
    if depth and stage == 1:
        channels[0] = (1, channels[0][1])
        replay_vgg16_construction_draws()
        fresh[0] = True
    return conv_bn_relu(channels, fresh=fresh)


def decoder_block(stage: int, num_labels: int) -> nn.Sequential:
    if stage == 1:
        # The ReLU here is not in-place in the reference; the block ends in the classifier conv.
        return nn.Sequential(*conv_bn_relu([(64, 64)], inplace=False), nn.Conv2d(64, num_labels, 3, padding=1))
    return conv_bn_relu(DECODER_STAGES[stage - 1])


@dataclass(frozen=True)
class EncoderNames:
    """Submodule names of one encoder stream, indexed by stage - 1, plus its registration order."""

    blocks: tuple[str, ...]
    pools: tuple[str, ...]
    dropouts: tuple[str | None, ...]
    order: tuple[str, ...]


@dataclass(frozen=True)
class DecoderNames:
    unpools: tuple[str, ...]
    blocks: tuple[str, ...]
    dropouts: tuple[str | None, ...]

    @property
    def order(self) -> tuple[str, ...]:
        names = []
        for k in reversed(range(5)):
            names += [self.unpools[k], self.blocks[k]] + ([self.dropouts[k]] if self.dropouts[k] else [])
        return tuple(names)


RGB_ENCODER = EncoderNames(
    blocks=tuple(f"CBR{k}_RGB_ENC" for k in range(1, 6)),
    pools=tuple(f"pool{k}" for k in range(1, 6)),
    dropouts=(None, None, "dropout3", "dropout4", "dropout5"),
    order=("CBR1_RGB_ENC", "pool1", "CBR2_RGB_ENC", "pool2", "CBR3_RGB_ENC", "pool3", "dropout3", "CBR4_RGB_ENC",
           "pool4", "dropout4", "CBR5_RGB_ENC", "dropout5", "pool5"),
)
# The reference pools depth stage 3 with ``pool4_d`` (same settings); ``pool3_d`` stays registered but unused.
DEPTH_ENCODER = EncoderNames(
    blocks=tuple(f"CBR{k}_DEPTH_ENC" for k in range(1, 6)),
    pools=("pool1_d", "pool2_d", "pool4_d", "pool4_d", "pool5_d"),
    dropouts=(None, None, "dropout3_d", "dropout4_d", "dropout5_d"),
    order=("CBR1_DEPTH_ENC", "pool1_d", "CBR2_DEPTH_ENC", "pool2_d", "CBR3_DEPTH_ENC", "pool3_d", "dropout3_d",
           "CBR4_DEPTH_ENC", "pool4_d", "dropout4_d", "CBR5_DEPTH_ENC", "pool5_d", "dropout5_d"),
)


def _decoder_names(block_tag: str, suffix: str) -> DecoderNames:
    return DecoderNames(
        unpools=tuple(f"unpool{k}{suffix}" for k in range(1, 6)),
        blocks=tuple(f"CBR{k}_{block_tag}_DEC" for k in range(1, 6)),
        dropouts=(None, None, f"dropout3_dec{suffix}", f"dropout4_dec{suffix}", f"dropout5_dec{suffix}"),
    )


RGBD_DECODER = _decoder_names("RGBD", "")
RGB_DECODER = _decoder_names("RGB", "_rgb")
DEPTH_DECODER = _decoder_names("D", "_d")


def init_fusenet_(model: nn.Module, gain: float = INIT_GAIN) -> None:
    """The reference's effective init: Xavier-normal convs (gain 0.02, zero bias) and BN weights ~ N(1, gain) with
    zero bias, applied child by child in registration order (which fixes the RNG order). The reference meant to
    keep the VGG-16 encoder weights and initialise only the decoder, but its marker list lived on the network, not
    on the children it inspected, so every child got this init."""

    def init_module(module: nn.Module) -> None:
        if isinstance(module, nn.Conv2d):
            init.xavier_normal_(module.weight, gain=gain)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            init.normal_(module.weight, 1.0, gain)
            init.zeros_(module.bias)

    with torch.no_grad():
        for child in model.children():
            child.apply(init_module)


class FuseNetBase(nn.Module):
    """Module construction from reference names, and the encoder/decoder passes shared by the three models."""

    def _register(self, names, num_labels: int) -> None:
        for name in names:
            setattr(self, name, self._make(name, num_labels))

    @staticmethod
    def _make(name: str, num_labels: int) -> nn.Module:
        if name.startswith("CBR"):
            stage = int(name[3])
            if name.endswith("_ENC"):
                return encoder_block(stage, depth="DEPTH" in name)
            return decoder_block(stage, num_labels)
        if name.startswith("pool"):
            return nn.MaxPool2d(kernel_size=2, stride=2, return_indices=True)
        if name.startswith("unpool"):
            return nn.MaxUnpool2d(kernel_size=2, stride=2)
        if name.startswith("dropout"):
            return nn.Dropout(p=DROPOUT)
        if name.endswith("identity"):
            return nn.Identity()
        raise ValueError(f"no FuseNet module is called {name}")

    def _encode(self, x: torch.Tensor, names: EncoderNames, skips=None, last_pool: bool = True):
        """Run one encoder stream.

        ``skips`` (the other stream's stage outputs) are averaged into each stage output before its pooling,
        which is FuseNet's fusion. Returns the stage outputs before pooling, the pooled (and dropped-out) code,
        and the pool indices and pre-pool sizes the decoder needs. Without ``last_pool`` the stream stops after
        stage 5 (the depth stream of ``FuseNet-I``).
        """
        stage_outputs, indices, sizes = [], [], []
        for k in range(5):
            x = getattr(self, names.blocks[k])(x)
            if skips is not None:
                x = (x + skips[k]) / 2
            stage_outputs.append(x)
            if k == 4 and not last_pool:
                break
            sizes.append(x.shape)
            x, idx = getattr(self, names.pools[k])(x)
            indices.append(idx)
            if names.dropouts[k]:
                x = getattr(self, names.dropouts[k])(x)
        return stage_outputs, x, indices, sizes

    def _decode(self, x: torch.Tensor, names: DecoderNames, indices, sizes) -> torch.Tensor:
        # Unpooling to the stored pre-pool sizes makes any input size work, not only multiples of 32.
        for k in reversed(range(5)):
            x = getattr(self, names.unpools[k])(x, indices[k], output_size=sizes[k][-2:])
            x = getattr(self, names.blocks[k])(x)
            if names.dropouts[k]:
                x = getattr(self, names.dropouts[k])(x)
        return x


class FuseNet(FuseNetBase):
    """FuseNet (Hazirbas et al., ACCV 2016), intermediate fusion: a depth encoder whose stage outputs are
    averaged into the RGB encoder at every stage, and one decoder unpooling with the fused stream's indices."""

    def __init__(self, num_labels: int = NUM_LABELS):
        super().__init__()
        replay_vgg16_construction_draws()  # the reference's VGG-16 whose convs its encoders copied
        self._register(("after_fusion_identity",) + RGB_ENCODER.order + DEPTH_ENCODER.order + RGBD_DECODER.order,
                       num_labels)
        init_fusenet_(self)

    def forward(self, m1: torch.Tensor, m2: torch.Tensor) -> torch.Tensor:
        depth_stages, _, _, _ = self._encode(m2, DEPTH_ENCODER, last_pool=False)
        _, code, indices, sizes = self._encode(m1, RGB_ENCODER, skips=depth_stages)
        return self._decode(self.after_fusion_identity(code), RGBD_DECODER, indices, sizes)


class FuseNetBranch(FuseNetBase):
    """Single-stream FuseNet (Hazirbas et al., ACCV 2016) without fusion: one VGG-16 encoder and its decoder."""

    def __init__(self, encoder: EncoderNames, decoder: DecoderNames, num_labels: int = NUM_LABELS):
        super().__init__()
        replay_vgg16_construction_draws()  # the reference's VGG-16 whose convs its encoder copied
        self._encoder_names = encoder
        self._decoder_names = decoder
        self._register(("penultimate_identity",) + encoder.order + decoder.order, num_labels)
        init_fusenet_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, code, indices, sizes = self._encode(x, self._encoder_names)
        return self._decode(code, self._decoder_names, indices, sizes)


class FuseNetRGB(FuseNetBranch):
    """RGB-only FuseNet stream (student on m1)."""

    def __init__(self, num_labels: int = NUM_LABELS):
        super().__init__(RGB_ENCODER, RGB_DECODER, num_labels)


class FuseNetDepth(FuseNetBranch):
    """Depth-only FuseNet stream (student on m2)."""

    def __init__(self, num_labels: int = NUM_LABELS):
        super().__init__(DEPTH_ENCODER, DEPTH_DECODER, num_labels)


#: per-sample inputs of NYU-Depth-V2 (any H, W work; the tap shapes below are for this size)
NYU_INPUTS = {"m1": (3, 480, 640), "m2": (1, 480, 640)}


@register_model("FuseNet-I", "NYU-Depth-V2", ("m1", "m2"), "FuseNet RGB-D segmentation teacher (fusion every stage)",
                taps={"after_fusion_identity": (512, 15, 20), "CBR5_RGBD_DEC": (512, 30, 40)},
                example_inputs=NYU_INPUTS)
def fusenet_intermediate(num_classes=NUM_LABELS, input_shapes=None, **_):
    return FuseNet(num_classes)


@register_model("FuseNet-RGBbranch", "NYU-Depth-V2", ("m1",), "single-stream FuseNet on RGB",
                taps={"CBR5_RGB_ENC": (512, 30, 40), "CBR5_RGB_DEC": (512, 30, 40)},
                probes={"CBR1_RGB_DEC.0": (64, 480, 640), "CBR2_RGB_ENC": (128, 240, 320),
                        "CBR4_RGB_ENC": (512, 60, 80), "CBR4_RGB_DEC": (256, 60, 80)},
                example_inputs=NYU_INPUTS)
def fusenet_rgb(num_classes=NUM_LABELS, input_shapes=None, **_):
    return FuseNetRGB(num_classes)


@register_model("FuseNet-Dbranch", "NYU-Depth-V2", ("m2",), "single-stream FuseNet on depth",
                taps={"CBR5_DEPTH_ENC": (512, 30, 40), "CBR5_D_DEC": (512, 30, 40)},
                probes={"CBR1_D_DEC.0": (64, 480, 640), "CBR2_DEPTH_ENC": (128, 240, 320),
                        "CBR4_DEPTH_ENC": (512, 60, 80), "CBR4_D_DEC": (256, 60, 80)},
                example_inputs=NYU_INPUTS)
def fusenet_depth(num_classes=NUM_LABELS, input_shapes=None, **_):
    return FuseNetDepth(num_classes)
