"""Binary residual units shared by the ReActNet-style backbones.

Every binary convolution in these backbones sits in a :class:`ResidualBinaryConv`,
``y = BN(conv(RSign(x))) + shortcut(x)``, followed somewhere by an RPReLU. Keeping this one shape
is what lets :mod:`s2bnn_plugin.packing` pack any of them with one set of rules.
"""

from __future__ import annotations

import torch
from torch import nn

from s2bnn_plugin.backbones.base import BackboneConfig
from s2bnn_plugin.nn import QuantConv2d, RSign

__all__ = ["Shortcut", "ResidualBinaryConv"]


class Shortcut(nn.Module):
    """The real-valued residual path: 2x2 average pool when strided, 1x1 conv + BN when the
    channel count changes, identity otherwise.

    The pool uses ``ceil_mode`` without counting padding so that its output size equals a stride-2
    3x3 convolution's (``ceil(H / 2)``) at odd resolutions too.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.pool = (
            nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False) if stride == 2 else None
        )
        if in_channels != out_channels:
            self.proj = nn.Conv2d(in_channels, out_channels, 1, bias=False)
            self.bn = nn.BatchNorm2d(out_channels)
        else:
            self.proj = None
            self.bn = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = self.pool(x)
        if self.proj is not None:
            x = self.bn(self.proj(x))
        return x


class ResidualBinaryConv(nn.Module):
    """``BN(QuantConv(RSign(x))) + shortcut(x)``: one binary convolution with its residual."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        config: BackboneConfig,
    ) -> None:
        super().__init__()
        self.conv = QuantConv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            input_quantizer=RSign(in_channels, sign=config.activation_ste),
            kernel_quantizer=config.kernel_quantizer(),
        )
        self.bn = nn.BatchNorm2d(out_channels)
        self.shortcut = Shortcut(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)) + self.shortcut(x)
