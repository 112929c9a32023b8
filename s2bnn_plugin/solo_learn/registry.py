"""solo-learn's registries: it has no plugin entry points, and its scripts look backbones and
methods up in two class-level dicts, ``solo.methods.base.BaseMethod._BACKBONES`` and
``solo.methods.METHODS``. The only code that reads or writes them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from s2bnn_plugin.errors import S2BNNError
from s2bnn_plugin.solo_learn.locate import require_solo

__all__ = [
    "RegistryConflict",
    "add_to_registry",
    "register_backbones",
    "register_methods",
    "solo_backbones",
    "solo_methods",
]


class RegistryConflict(S2BNNError, RuntimeError):
    """solo-learn already has another object under a name the plugin registers."""


def solo_backbones() -> dict[str, Any]:
    """solo-learn's backbone registry (name -> factory), the plugin's included once registered."""
    return require_solo().BaseMethod._BACKBONES


def solo_methods() -> dict[str, Any]:
    """solo-learn's method registry (name -> class)."""
    return require_solo().METHODS


def add_to_registry(registry: dict[str, Any], name: str, obj: Any, kind: str) -> None:
    """``registry[name] = obj`` unless another object already has that name (never overwrite
    someone else's backbone or method silently)."""
    existing = registry.get(name)
    if existing is not None and existing is not obj:
        where = getattr(existing, "__module__", "?")
        raise RegistryConflict(
            f"solo-learn already has a {kind} named {name!r} (from {where}); the plugin will not "
            "overwrite it. Rename one of them."
        )
    registry[name] = obj


def register_backbones(factories: Mapping[str, Any]) -> None:
    """Add backbone factories to solo-learn's registry (idempotently)."""
    registry = solo_backbones()
    for name, factory in factories.items():
        add_to_registry(registry, name, factory, "backbone")


def register_methods(classes: Mapping[str, Any]) -> None:
    """Add method classes to solo-learn's registry (idempotently)."""
    registry = solo_methods()
    for name, cls in classes.items():
        add_to_registry(registry, name, cls, "method")
