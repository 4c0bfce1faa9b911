"""AV-MNIST models: the image student ``LeNet5``, the audio student ``ThreeLayerCNN-A`` and the fusion teacher
``CNN-I``, as the reference defines them.

Inputs arrive as image ``[B,1,28,28]`` (m1) and audio spectrogram ``[B,1,112,112]`` (m2). ReLU and max-pooling
are applied functionally wherever the reference did, so a hook on a conv/linear module sees its pre-activation
output; the ``*_identity`` modules exist only as hook points.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.registry import register_model
from models.taps import LOGITS

NUM_CLASSES = 10
#: per-sample inputs: 28x28 image digits (m1), 112x112 audio spectrograms (m2)
AVMNIST_INPUTS = {"m1": (1, 28, 28), "m2": (1, 112, 112)}


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al., 1998) with average pooling and padding 2 on the first conv, for 28x28 digits."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, kernel_size=5, padding=2)
        self.pool1 = nn.AvgPool2d(kernel_size=2, stride=2)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)
        self.pool2 = nn.AvgPool2d(kernel_size=2, stride=2)
        self.conv3 = nn.Conv2d(16, 120, kernel_size=5)
        self.flatten_identity = nn.Identity()
        self.fc1 = nn.Linear(120, 84)
        self.fc2 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(F.relu(self.conv1(x)))
        x = self.pool2(F.relu(self.conv2(x)))
        x = F.relu(self.conv3(x))
        x = self.flatten_identity(x.reshape(x.size(0), -1))
        return self.fc2(F.relu(self.fc1(x)))


class ThreeLayerCNNAudio(nn.Module):
    """Three conv + max-pool stages and one linear classifier over 112x112 audio spectrograms."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, padding=1)
        self.conv3 = nn.Conv2d(64, 128, kernel_size=3, padding=1)
        self.conv3_maxpool = nn.Identity()
        self.conv3_maxpool_flatten = nn.Identity()
        self.fc1 = nn.Linear(128 * 14 * 14, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2, 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2, 2)
        x = self.conv3_maxpool(F.max_pool2d(F.relu(self.conv3(x)), 2, 2))
        x = self.conv3_maxpool_flatten(x.reshape(x.size(0), -1))
        return self.fc1(x)


class ImageFeatureNet(nn.Module):
    """``CNN-I``'s image stream: LeNet-5 up to its 84-d penultimate layer (post-ReLU)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, kernel_size=5, padding=2)
        self.pool1 = nn.AvgPool2d(kernel_size=2, stride=2)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)
        self.pool2 = nn.AvgPool2d(kernel_size=2, stride=2)
        self.conv3 = nn.Conv2d(16, 120, kernel_size=5)
        self.fc1 = nn.Linear(120, 84)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(F.relu(self.conv1(x)))
        x = self.pool2(F.relu(self.conv2(x)))
        x = F.relu(self.conv3(x))
        return F.relu(self.fc1(x.reshape(x.size(0), -1)))


class AudioFeatureNet(nn.Module):
    """``CNN-I``'s audio stream: five 3x3 convs (max-pool after the first four), global average pool -> 512-d."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, padding=1)
        self.conv3 = nn.Conv2d(64, 128, kernel_size=3, padding=1)
        self.conv4 = nn.Conv2d(128, 256, kernel_size=3, padding=1)
        self.conv5 = nn.Conv2d(256, 512, kernel_size=3, padding=1)
        self.avg_pool = nn.AdaptiveAvgPool2d((1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            x = F.max_pool2d(F.relu(conv(x)), 2, 2)
        x = self.avg_pool(F.relu(self.conv5(x)))
        return x.reshape(x.size(0), -1)


class CNNIntermediateFusion(nn.Module):
    """AV-MNIST intermediate-fusion teacher: [image 84 | audio 512] features -> two linear layers.

    The reference has no activation between ``fc1`` and ``fc2``; kept so checkpoints and features match.
    """

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.AudioNet = AudioFeatureNet()
        self.ImageNet = ImageFeatureNet()
        self.fc1 = nn.Linear(84 + 512, 298)
        self.fc2 = nn.Linear(298, num_classes)
        self.concat_identity = nn.Identity()

    def forward(self, m1: torch.Tensor, m2: torch.Tensor) -> torch.Tensor:
        fused = self.concat_identity(torch.cat([self.ImageNet(m1), self.AudioNet(m2)], dim=1))
        return self.fc2(self.fc1(fused))


@register_model("LeNet5", "AV-MNIST", ("m1",), "LeNet-5 image student (28x28 digits)",
                taps={"conv1": (6, 28, 28), "conv2": (16, 10, 10), "conv3": (120, 1, 1), "fc1": (84,)},
                probes={"fc2": LOGITS, "flatten_identity": (120,)}, example_inputs=AVMNIST_INPUTS)
def lenet5(num_classes=NUM_CLASSES, input_shapes=None, **_):
    return LeNet5(num_classes)


@register_model("ThreeLayerCNN-A", "AV-MNIST", ("m2",), "three-conv audio student (112x112 spectrograms)",
                taps={"conv1": (32, 112, 112), "conv2": (64, 56, 56), "conv3": (128, 28, 28)},
                probes={"conv3_maxpool": (128, 14, 14), "conv3_maxpool_flatten": (25088,), "fc1": LOGITS},
                example_inputs=AVMNIST_INPUTS)
def three_layer_cnn_audio(num_classes=NUM_CLASSES, input_shapes=None, **_):
    return ThreeLayerCNNAudio(num_classes)


@register_model("CNN-I", "AV-MNIST", ("m1", "m2"), "intermediate-fusion CNN teacher (LeNet-5 image + 5-conv audio)",
                taps={"concat_identity": (596,), "fc1": (298,)},
                probes={"AudioNet.conv1": (32, 112, 112), "AudioNet.conv3": (128, 28, 28),
                        "AudioNet.conv5": (512, 7, 7), "ImageNet.conv1": (6, 28, 28), "ImageNet.conv2": (16, 10, 10),
                        "ImageNet.fc1": (84,), "fc2": LOGITS},
                example_inputs=AVMNIST_INPUTS)
def cnn_intermediate_fusion(num_classes=NUM_CLASSES, input_shapes=None, **_):
    return CNNIntermediateFusion(num_classes)
