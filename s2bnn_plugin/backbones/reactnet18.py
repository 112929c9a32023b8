"""A ResNet-18-layout binary network with ReActNet-style blocks (as in Bi-Real Net / ReActNet's
ResNet variant).

Real stem (7x7 stride 2 + max-pool, or a 3x3 stride 1 conv for 32 px inputs), four stages of two
basic blocks (64, 128, 256, 512 channels); every 3x3 conv is binary with its own real shortcut
(2x2 average pool + 1x1 conv + BN where the stage downsamples) and an RPReLU. 512-d features.
"""

from __future__ import annotations

import torch
from torch import nn

from s2bnn_plugin.backbones.base import BackboneConfig, BinaryBackbone, scaled_width
from s2bnn_plugin.backbones.blocks import ResidualBinaryConv
from s2bnn_plugin.nn import RPReLU

__all__ = ["ReActNet18", "ReActResBlock"]

STAGES: tuple[int, ...] = (64, 128, 256, 512)
BLOCKS_PER_STAGE = 2


class ReActResBlock(nn.Module):
    """Two binary 3x3 convs, each with its own residual and RPReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, config: BackboneConfig):
        super().__init__()
        self.conv_a = ResidualBinaryConv(in_channels, out_channels, 3, stride, config)
        self.act_a = RPReLU(out_channels)
        self.conv_b = ResidualBinaryConv(out_channels, out_channels, 3, 1, config)
        self.act_b = RPReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act_a(self.conv_a(x))
        return self.act_b(self.conv_b(x))


class ReActNet18(BinaryBackbone):
    """ResNet-18-layout BNN without its classifier: (B, 3, H, W) -> (B, 512 * width)."""

    name = "reactnet18"

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__(config)
        channels = scaled_width(STAGES[0], config.width_mult)
        if config.cifar:
            stem = [nn.Conv2d(3, channels, 3, stride=1, padding=1, bias=False)]
        else:
            stem = [nn.Conv2d(3, channels, 7, stride=2, padding=3, bias=False)]
        stem.append(nn.BatchNorm2d(channels))
        if not config.cifar:
            stem.append(nn.MaxPool2d(3, stride=2, padding=1))
        self.stem = nn.Sequential(*stem)
        blocks = []
        for stage, width in enumerate(STAGES):
            out = scaled_width(width, config.width_mult)
            for i in range(BLOCKS_PER_STAGE):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(ReActResBlock(channels, out, stride, config))
                channels = out
        self.blocks = nn.Sequential(*blocks)
        self.num_features = channels
