"""The numeric options that ``s2bnn pack``, ``check`` and ``bench`` share: their ranges and
checks (through the package's one numeric check, :mod:`s2bnn_plugin.validate`), and
``--backbone-kwargs``. Each check raises a one-line :class:`~s2bnn_plugin.errors.UsageError`
naming the flag, the range and the value, before any work starts."""

from __future__ import annotations

import json
from typing import Any

from s2bnn_plugin.errors import UsageError
from s2bnn_plugin.validate import Range, require

__all__ = [
    "BATCH_RANGE",
    "MAX_WIDTH_MULT",
    "REPEATS_RANGE",
    "SIZE_RANGE",
    "float_arg",
    "int_arg",
    "parse_kwargs",
    "threads_arg",
]

SIZE_RANGE = (1, 2048)
BATCH_RANGE = (1, 1024)
REPEATS_RANGE = (1, 1000)
MAX_WIDTH_MULT = 4.0


def parse_kwargs(text: str | None) -> dict[str, Any] | None:
    """``--backbone-kwargs`` (a JSON object) as a dict."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as e:
        raise UsageError(f"--backbone-kwargs is not JSON ({e}): {text!r}") from e
    if not isinstance(value, dict):
        raise UsageError(f"--backbone-kwargs must be a JSON object, got {text!r}")
    return value


def int_arg(flag: str, value: object, lo: int, hi: int, why: str = "") -> int:
    """``value`` as an int in ``[lo, hi]``, or a :class:`UsageError` naming ``flag``."""
    return int(require(flag, value, Range(lo, hi, whole=True), why))


def threads_arg(value: object) -> int:
    """A ``--threads`` value: a positive int no larger than Numba's thread pool."""
    import numba

    most = numba.config.NUMBA_NUM_THREADS
    return int_arg("--threads", value, 1, most, f" (this machine's {most} CPU threads)")


def float_arg(flag: str, value: object, lo: float, hi: float, *, open_low: bool = False) -> float:
    """``value`` as a float in ``[lo, hi]`` (``(lo, hi]`` with ``open_low``), or a
    :class:`UsageError` naming ``flag``."""
    return float(require(flag, value, Range(lo, hi, open_low=open_low)))
