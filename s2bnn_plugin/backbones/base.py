"""What every binary backbone shares: its keyword arguments and its input contract.

solo-learn calls a backbone factory as ``factory(method, **cfg.backbone.kwargs)`` and expects a
module mapping (B, 3, H, W) to (B, D) with ``num_features = D``. The keyword arguments are
validated here, once, so that a typo in a config fails at model construction (before any
training) with the list of accepted names.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from s2bnn_plugin.errors import S2BNNError
from s2bnn_plugin.nn import QUANTIZERS, Quantizer, get_quantizer

__all__ = [
    "BackboneArgumentError",
    "BackboneConfig",
    "BackboneError",
    "BinaryBackbone",
    "scaled_width",
]


class BackboneError(S2BNNError, ValueError):
    """A backbone name or keyword argument value that cannot build a backbone; the message
    names it and the accepted values."""


class BackboneArgumentError(BackboneError, TypeError):
    """An unknown keyword argument, or one of the wrong type (a ``TypeError``, as Python's own
    for a bad call)."""


@dataclass(frozen=True)
class BackboneConfig:
    """Keyword arguments accepted by every binary backbone factory.

    binary_weights: binarise the weights (``False`` = step 1 of the two-step recipe: binary
        activations, real weights).
    cifar: a stem for 32 px inputs (stride 1, no early downsampling).
    width_mult: multiplies every channel count (rounded, at least 1).
    activation_ste: the sign's straight-through estimator: ``approx_sign`` (ReActNet's polynomial,
        default) or ``ste_sign`` (clipped identity).
    """

    binary_weights: bool = True
    cifar: bool = False
    width_mult: float = 1.0
    activation_ste: str = "approx_sign"

    @classmethod
    def from_kwargs(cls, backbone: str, kwargs: dict[str, Any]) -> BackboneConfig:
        accepted = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise BackboneArgumentError(
                f"{backbone}() got unknown keyword argument(s) {unknown}; "
                f"accepted: {accepted} (set them under backbone.kwargs)"
            )
        cfg = cls(**kwargs)
        cfg.validate(backbone)
        return cfg

    def validate(self, backbone: str) -> None:
        for flag in ("binary_weights", "cifar"):
            if not isinstance(getattr(self, flag), bool):
                raise BackboneArgumentError(
                    f"{backbone}(): {flag} must be true or false, got {getattr(self, flag)!r}"
                )
        if isinstance(self.width_mult, bool) or not isinstance(self.width_mult, int | float):
            raise BackboneArgumentError(
                f"{backbone}(): width_mult must be a number, got {self.width_mult!r}"
            )
        if not 0 < self.width_mult < float("inf"):
            raise BackboneError(
                f"{backbone}(): width_mult must be > 0 and finite (1.0 is the paper's width), "
                f"got {self.width_mult}"
            )
        sign = get_quantizer(self.activation_ste) if isinstance(self.activation_ste, str) else None
        if not isinstance(sign, Quantizer) or not sign.binary or sign.name == "scaled_sign":
            raise BackboneError(
                f"{backbone}(): activation_ste must be 'approx_sign' or 'ste_sign', "
                f"got {self.activation_ste!r} (known quantizers: {sorted(QUANTIZERS)})"
            )

    def kernel_quantizer(self) -> str | None:
        """The weight binariser of binary convolutions (``None`` keeps them real)."""
        return "scaled_sign" if self.binary_weights else None


def scaled_width(channels: int, width_mult: float) -> int:
    """``channels * width_mult`` rounded, at least 1."""
    return max(1, int(round(channels * width_mult)))


class BinaryBackbone(nn.Module):
    """Base of the binary backbones: (B, 3, H, W) -> (B, num_features), any resolution.

    Subclasses build ``stem`` (real), ``blocks`` (binary) and set ``num_features``; the head is the
    global average ``pool``. ``forward`` is ``pool(blocks(stem(x)))``: the packer
    (:mod:`s2bnn_plugin.export`) walks these three in that order with the rule of each module's
    type, so a subclass that keeps this ``forward`` and builds its stem and blocks from modules
    that have pack rules packs without further code. ``name`` is the name its factory is
    registered under; a packed file records it (with ``config``) to rebuild the model.
    """

    name: str = ""
    num_features: int
    stem: nn.Module
    blocks: nn.Module

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        self.config = config
        self.pool = nn.AdaptiveAvgPool2d(1)

    @staticmethod
    def check_input(x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(
                f"expected a batch of RGB images shaped (B, 3, H, W), got shape {tuple(x.shape)}"
                " (grayscale images: repeat the channel 3 times)"
            )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return torch.flatten(self.pool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.forward_features(x)
