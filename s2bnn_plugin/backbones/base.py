"""What every binary backbone shares: its keyword arguments and its input contract.

solo-learn calls a backbone factory as ``factory(method, **cfg.backbone.kwargs)`` and expects a
module mapping (B, 3, H, W) to (B, D) with ``num_features = D``. The keyword arguments are
validated here, once, so that a typo in a config fails at model construction (before any
training) with the list of accepted names.

The keyword arguments are of two kinds: :class:`BackboneConfig` says what the network is (a packed
file records it to rebuild the model), and ``compile`` says how its forward runs (through
``torch.compile`` or eagerly), which changes neither the parameters nor their names.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from s2bnn_plugin.errors import S2BNNError
from s2bnn_plugin.nn import QUANTIZERS, Quantizer, get_quantizer
from s2bnn_plugin.validate import Range, is_number

__all__ = [
    "COMPILE_KWARG",
    "BackboneArgumentError",
    "BackboneConfig",
    "BackboneError",
    "BinaryBackbone",
    "build_backbone",
    "compiled_forward_features",
    "scaled_width",
]

COMPILE_KWARG = "compile"
"""The keyword argument (``backbone.kwargs.compile``) that runs the features through
``torch.compile``; it is not part of :class:`BackboneConfig` (packed files do not record it)."""

#: ``width_mult``: any finite positive multiplier of the channel counts
WIDTH_MULTS = Range(0, open_low=True)


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
        """The config of a factory's keyword arguments, checked. ``compile`` is not a field
        (it says how the model runs, not what it is) and is refused here rather than dropped:
        a factory builds its model with :func:`build_backbone`, which honours it."""
        if COMPILE_KWARG in kwargs:
            raise BackboneArgumentError(
                f"{backbone}(): {COMPILE_KWARG} sets how the model runs, which the config does "
                "not hold: build the model with build_backbone(cls, kwargs) (see CONTRIBUTING, "
                "'Adding a backbone'), which honours it"
            )
        accepted = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise BackboneArgumentError(
                f"{backbone}() got unknown keyword argument(s) {unknown}; "
                f"accepted: {[*accepted, COMPILE_KWARG]} (set them under backbone.kwargs)"
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
        if not is_number(self.width_mult):
            raise BackboneArgumentError(
                f"{backbone}(): width_mult must be a number, got {self.width_mult!r}"
            )
        if not WIDTH_MULTS.admits(self.width_mult):
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


def _forward_features(model: BinaryBackbone, x: torch.Tensor) -> torch.Tensor:
    return model.forward_features(x)


@functools.cache
def compiled_forward_features(backend: str = "inductor") -> Callable[..., torch.Tensor]:
    """``torch.compile`` of ``model.forward_features(x)`` as a function ``f(model, x)``, made once
    per backend. One compiled function serves every backbone: Dynamo guards on the modules'
    structure (parameters are graph inputs), so two models of one architecture share a graph."""
    return torch.compile(_forward_features, backend=backend)


class BinaryBackbone(nn.Module):
    """Base of the binary backbones: (B, 3, H, W) -> (B, num_features), any resolution.

    Subclasses build ``stem`` (real), ``blocks`` (binary) and set ``num_features``; the head is the
    global average ``pool``. ``forward`` is ``pool(blocks(stem(x)))``: the packer
    (:mod:`s2bnn_plugin.export`) walks these three in that order with the rule of each module's
    type, so a subclass that keeps this ``forward`` and builds its stem and blocks from modules
    that have pack rules packs without further code. ``name`` is the name its factory is
    registered under; a packed file records it (with ``config``) to rebuild the model.

    ``compile_features`` (``backbone.kwargs.compile``, off by default) runs ``forward_features``
    through ``torch.compile``. Compilation happens inside ``forward``, so the module stays this
    class: its ``state_dict`` keys, the packer's walk and ``copy.deepcopy`` are those of the eager
    model. The first call compiles (tens of seconds on a CPU; it needs a C++ compiler there);
    a later call compiles again only when what the graph was traced for changes: train/eval
    mode, gradient mode, a new input shape (the batch size of a last, smaller batch: once, then
    the batch dimension is traced as dynamic), a new dtype or device. ``compile_backend`` is the
    ``torch.compile`` backend (Inductor; tests use ``aot_eager``, which needs no C++ compiler).
    """

    name: str = ""
    compile_backend: str = "inductor"
    num_features: int
    stem: nn.Module
    blocks: nn.Module

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        self.config = config
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.compile_features = False

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
        if self.compile_features and not torch.compiler.is_compiling():
            return compiled_forward_features(self.compile_backend)(self, x)
        return self.forward_features(x)


Backbone = TypeVar("Backbone", bound=BinaryBackbone)


def build_backbone(cls: type[Backbone], kwargs: dict[str, Any]) -> Backbone:
    """``cls`` built from a factory's keyword arguments: :class:`BackboneConfig`'s fields and
    ``compile`` (true or false, default false), all checked before the model is built. Every
    factory builds its model this way (``cls.name`` names it in the messages)."""
    name = cls.name
    kwargs = dict(kwargs)
    compile_features = kwargs.pop(COMPILE_KWARG, False)
    if not isinstance(compile_features, bool):
        raise BackboneArgumentError(
            f"{name}(): compile must be true or false, got {compile_features!r}"
        )
    model = cls(BackboneConfig.from_kwargs(name, kwargs))
    model.compile_features = compile_features
    return model
