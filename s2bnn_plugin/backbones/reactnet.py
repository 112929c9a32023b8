"""ReActNet-A (Liu et al., ECCV 2020), the student of S2-BNN: a binary MobileNetV1 layout.

Real 3x3 stem (stride 2, 32 channels, BN), then 13 blocks. Each block: a binary 3x3 conv keeping
the channel count (with the block's stride), then binary 1x1 conv(s); a block that doubles the
channels runs two 1x1 convs (in to in) and concatenates them. Every binary conv has its own
residual and is followed by an RPReLU. 1024-d features at width 1.
"""

from __future__ import annotations

import torch
from torch import nn

from s2bnn_plugin.backbones.base import BackboneConfig, BinaryBackbone, scaled_width
from s2bnn_plugin.backbones.blocks import ResidualBinaryConv
from s2bnn_plugin.nn import RPReLU

__all__ = ["ReActNetA", "ReActNetBlock", "REACTNET_A_STAGES"]

# (output channels, stride) of the 13 blocks at width 1; input is the 32-channel stem.
REACTNET_A_STAGES: tuple[tuple[int, int], ...] = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)
STEM_CHANNELS = 32


class ReActNetBlock(nn.Module):
    """A ReActNet-A block: 3x3 binary conv + RPReLU, then one or two 1x1 binary convs + RPReLU."""

    def __init__(self, in_channels: int, expand: int, stride: int, config: BackboneConfig):
        super().__init__()
        if expand not in (1, 2):
            raise ValueError(f"a ReActNet-A block keeps or doubles its channels, not x{expand}")
        self.conv3x3 = ResidualBinaryConv(in_channels, in_channels, 3, stride, config)
        self.act3x3 = RPReLU(in_channels)
        self.conv1x1 = nn.ModuleList(
            ResidualBinaryConv(in_channels, in_channels, 1, 1, config) for _ in range(expand)
        )
        self.act1x1 = RPReLU(in_channels * expand)
        self.out_channels = in_channels * expand

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act3x3(self.conv3x3(x))
        if len(self.conv1x1) == 1:
            x = self.conv1x1[0](x)
        else:
            x = torch.cat([unit(x) for unit in self.conv1x1], dim=1)
        return self.act1x1(x)


class ReActNetA(BinaryBackbone):
    """ReActNet-A without its classifier: (B, 3, H, W) -> (B, 32 * stem width)."""

    name = "reactnet_a"

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__(config)
        channels = scaled_width(STEM_CHANNELS, config.width_mult)
        self.stem = nn.Sequential(
            nn.Conv2d(3, channels, 3, stride=1 if config.cifar else 2, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )
        blocks = []
        previous = STEM_CHANNELS
        for out, stride in REACTNET_A_STAGES:
            expand = out // previous
            block = ReActNetBlock(channels, expand, stride, config)
            blocks.append(block)
            channels, previous = block.out_channels, out
        self.blocks = nn.Sequential(*blocks)
        self.num_features = channels
