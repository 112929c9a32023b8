"""Reading the fields of a packed network's JSON specification: one error type, and checks that
compare JSON types as well as values (``3.0 == 3`` and ``True == 1`` in Python, but a file that
says ``"kernel": 3.0`` was not written by this plugin).

The format (:mod:`.format`) reads the network's own fields with these, and every unit kind
(:mod:`.units`) its entry's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from s2bnn_plugin.errors import S2BNNError
from s2bnn_plugin.validate import Range

__all__ = [
    "MAX_CHANNELS",
    "PackedFormatError",
    "is_int",
    "need",
    "spec_bool",
    "spec_choice",
    "spec_int",
]

MAX_CHANNELS = 1 << 16


class PackedFormatError(S2BNNError, ValueError):
    """A packed network file or specification that this version cannot use."""


def need(cond: bool, message: str) -> None:
    """Raise :class:`PackedFormatError` with ``message`` unless ``cond``."""
    if not cond:
        raise PackedFormatError(message)


def is_int(v: object) -> bool:
    """A JSON integer: not a bool (``true == 1``) nor a float (``3.0 == 3``)."""
    return isinstance(v, int) and not isinstance(v, bool)


def spec_int(d: Mapping[str, Any], key: str, where: str, lo: int, hi: int) -> int:
    """``d[key]``, a JSON integer in ``[lo, hi]`` (the package's one numeric check,
    :class:`~s2bnn_plugin.validate.Range`)."""
    v = d.get(key)
    allowed = Range(lo, hi, whole=True)
    need(allowed.admits(v), f"{where}: '{key}' must be {allowed.describe()}, got {v!r}")
    return v


def spec_choice(d: Mapping[str, Any], key: str, where: str, choices: tuple[int, ...]) -> int:
    """``d[key]``, a JSON integer among ``choices``."""
    v = d.get(key)
    allowed = " or ".join(map(str, choices))
    need(is_int(v) and v in choices, f"{where}: '{key}' must be the integer {allowed}, got {v!r}")
    return v


def spec_bool(d: Mapping[str, Any], key: str, message: str) -> bool:
    """``d[key]``, a JSON ``true`` or ``false`` (``message`` otherwise)."""
    v = d.get(key)
    need(isinstance(v, bool), message)
    return v
