"""The registry of unit kinds: the binary units a packed network is made of, by the name its
specification gives them.

A kind is one module here: a :class:`~s2bnn_plugin.runtime.model.UnitLayout` subclass (its
settings: parsed from and written to its specification entry, its arrays and their shapes) and
a :class:`~s2bnn_plugin.runtime.model.Unit` subclass of it (with its arrays: its numpy reference,
its compiled calls, its values for the float twin, its OpenVINO graph); the unit class is
registered below. Built in: :mod:`.binary_conv` (the residual binary convolution).
"""

from __future__ import annotations

from s2bnn_plugin.runtime.model import Unit
from s2bnn_plugin.runtime.spec import PackedFormatError
from s2bnn_plugin.runtime.units.binary_conv import BinaryConv

__all__ = ["DEFAULT_KIND", "UNIT_KINDS", "register_unit_kind", "unit_kind"]

UNIT_KINDS: dict[str, type[Unit]] = {}
"""Every unit kind's unit class, by its ``kind`` name (its ``parse`` reads the layout)."""


def register_unit_kind(unit: type[Unit]) -> type[Unit]:
    """Register a unit kind's unit class under its ``kind`` (usable as a decorator)."""
    if UNIT_KINDS.get(unit.kind, unit) is not unit:
        raise ValueError(f"a unit kind named {unit.kind!r} is already registered")
    UNIT_KINDS[unit.kind] = unit
    return unit


def unit_kind(name: object, where: str) -> type[Unit]:
    """The unit class of the unit kind ``name`` (a specification's ``kind``, read at
    ``where``); :class:`PackedFormatError` if it names none."""
    kind = UNIT_KINDS.get(name) if isinstance(name, str) else None
    if kind is None:
        raise PackedFormatError(
            f"{where}: unknown unit kind {name!r}; this version of s2bnn-plugin reads "
            f"{sorted(UNIT_KINDS)} (a file written by a newer version? upgrade s2bnn-plugin)"
        )
    return kind


register_unit_kind(BinaryConv)

DEFAULT_KIND = BinaryConv.kind
"""The kind of every unit of a format-version-1 file (whose units do not name their kind)."""
