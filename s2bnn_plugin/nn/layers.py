"""Layers of a ReActNet-style binary network.

The binary convolution is a ``Conv2d`` whose input and weights pass through quantizer objects
(see :mod:`s2bnn_plugin.nn.quantizers`); the learnable threshold (RSign) is itself an input
quantizer, so a block half reads ``conv(input_quantizer=RSign) -> BN -> + residual -> RPReLU``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from s2bnn_plugin.nn.quantizers import Quantizer, get_quantizer, is_binary

__all__ = ["LearnableBias", "RSign", "RPReLU", "QuantConv2d"]


class LearnableBias(nn.Module):
    """A learnable per-channel shift ``x + b`` (ReActNet's "move")."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias.reshape(1, -1, 1, 1).to(x.dtype)


class RSign(Quantizer):
    """ReActNet's RSign: ``sign(x + b)`` with a learnable per-channel threshold ``-b``.

    It is an input quantizer with parameters; ``sign`` picks the STE (``approx_sign`` default).
    Forward, for channel ``c``::

        q(x)[c] = +1 if x[c] + b[c] >= 0 else -1

    Surrogate gradient: that of ``sign`` evaluated at ``x + b`` (see
    :class:`~s2bnn_plugin.nn.ApproxSign`, :class:`~s2bnn_plugin.nn.SteSign`), for ``x`` and, summed
    over the batch and positions, for ``b``::

        dq/dx[c] = dq/db[c] = sign'(x[c] + b[c])

    Its thresholds are parameters: each layer needs its own RSign (:func:`get_quantizer` refuses
    one object passed to two layers).
    """

    name = "rsign"

    def __init__(self, channels: int, sign: str | Quantizer = "approx_sign") -> None:
        super().__init__()
        self.shift = LearnableBias(channels)
        quantizer = get_quantizer(sign)
        if not is_binary(quantizer):
            raise ValueError(f"RSign needs a binary sign quantizer, got {sign!r}")
        self.sign = quantizer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sign(self.shift(x))


class RPReLU(nn.Module):
    """ReActNet's RPReLU: shift, per-channel PReLU, shift."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.shift_in = LearnableBias(channels)
        self.prelu = nn.PReLU(channels)
        self.shift_out = LearnableBias(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shift_out(self.prelu(self.shift_in(x)))


class QuantConv2d(nn.Conv2d):
    """``Conv2d`` with an ``input_quantizer`` and a ``kernel_quantizer`` (``None`` keeps real).

    Zero padding is applied after the input quantizer, exactly as ``F.conv2d`` does: padded
    positions are 0, neither +1 nor -1. The packed CPU kernels reproduce this.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        *,
        input_quantizer: Quantizer | str | None = None,
        kernel_quantizer: Quantizer | str | None = None,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.input_quantizer = get_quantizer(input_quantizer)
        self.kernel_quantizer = get_quantizer(kernel_quantizer)

    @property
    def binary_input(self) -> bool:
        return is_binary(self.input_quantizer)

    @property
    def binary_kernel(self) -> bool:
        return is_binary(self.kernel_quantizer)

    def quantized_weight(self) -> torch.Tensor:
        """The weight the convolution actually uses (binarised and scaled, or real)."""
        if self.kernel_quantizer is None:
            return self.weight
        return self.kernel_quantizer(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        w = self.quantized_weight()
        return F.conv2d(x, w.to(x.dtype), None, self.stride, self.padding, self.dilation)
