"""Binary backbones and their registry.

timm-style: small factories, names that say what they build.

Each factory has solo-learn's signature ``fn(method=None, **kwargs)`` and returns a module mapping
(B, 3, H, W) to (B, num_features). Add a backbone: write its module here, then a factory decorated
with :func:`register_backbone` that returns ``build_backbone(cls, kwargs)`` (which honours
``compile``); :mod:`s2bnn_plugin.solo` registers every entry with solo-learn.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from torch import nn

from s2bnn_plugin.backbones.base import (
    BackboneArgumentError,
    BackboneConfig,
    BackboneError,
    BinaryBackbone,
    build_backbone,
)
from s2bnn_plugin.backbones.reactnet import ReActNetA
from s2bnn_plugin.backbones.reactnet18 import ReActNet18

__all__ = [
    "BACKBONES",
    "BackboneArgumentError",
    "BackboneConfig",
    "BackboneError",
    "BinaryBackbone",
    "ReActNet18",
    "ReActNetA",
    "UnknownBackbone",
    "build_backbone",
    "create_backbone",
    "list_backbones",
    "reactnet18",
    "reactnet_a",
    "register_backbone",
]

BACKBONES: dict[str, Callable[..., nn.Module]] = {}


def register_backbone(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Add a factory to :data:`BACKBONES` under its function name."""
    if fn.__name__ in BACKBONES and BACKBONES[fn.__name__] is not fn:
        raise ValueError(f"a backbone named {fn.__name__!r} is already registered")
    BACKBONES[fn.__name__] = fn
    return fn


@register_backbone
def reactnet_a(method: str | None = None, **kwargs: Any) -> ReActNetA:
    """ReActNet-A, S2-BNN's student (1024-d features at width 1).

    ``method`` is solo-learn's method name, accepted for its factory signature and unused.
    Keyword arguments: see :class:`BackboneConfig`, and ``compile`` (:class:`BinaryBackbone`).
    """
    return build_backbone(ReActNetA, kwargs)


@register_backbone
def reactnet18(method: str | None = None, **kwargs: Any) -> ReActNet18:
    """A ResNet-18-layout BNN with ReActNet-style blocks (512-d features at width 1)."""
    return build_backbone(ReActNet18, kwargs)


def list_backbones() -> list[str]:
    return sorted(BACKBONES)


class UnknownBackbone(BackboneError, KeyError):
    """A backbone name that is not registered (a ``KeyError`` too: a failed registry lookup)."""

    def __str__(self) -> str:  # the message, not KeyError's quoted repr of it
        return str(self.args[0]) if self.args else ""


def create_backbone(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered backbone by name. Raises :class:`UnknownBackbone` for a name that is
    not registered and :class:`BackboneError` for keyword arguments that cannot build it."""
    if name not in BACKBONES:
        close = difflib.get_close_matches(str(name), list_backbones(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UnknownBackbone(f"unknown backbone {name!r}{hint}; available: {list_backbones()}")
    return BACKBONES[name](**kwargs)
