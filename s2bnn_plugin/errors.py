"""The plugin's own errors: one base class, so that callers (and the ``s2bnn`` command) can tell
a problem the user can fix (bad input, a missing install) from a bug.

Each error keeps the standard type it has always been (``ValueError``, ``FileNotFoundError``,
``ImportError``, ...) as a second base, so ``except ValueError`` in existing code still works.
The message names the problem and its fix; ``s2bnn`` prints it on one line (exit code 2) and
shows the traceback only with ``--debug``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

__all__ = [
    "DataError",
    "FileMissing",
    "S2BNNError",
    "UsageError",
    "name_a_few",
    "require_positive",
    "require_whole",
]


class S2BNNError(Exception):
    """Base class of every error the plugin raises on purpose (input, files, installs)."""


class UsageError(S2BNNError, ValueError):
    """A command-line argument or option that cannot work (the message says which and why)."""


class DataError(S2BNNError, ValueError):
    """A dataset (folder, file or split) that cannot be used as given."""


class FileMissing(S2BNNError, FileNotFoundError):
    """An input file or folder that is not there."""


def require_whole(
    name: str, value: object, minimum: int, what: str, error: type[S2BNNError] = UsageError
) -> None:
    """Raise ``error`` naming ``name`` unless ``value`` is a whole number (not a bool) >=
    ``minimum``; ``what`` says what the setting is."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise error(f"{name} must be a whole number >= {minimum} ({what}), got {value!r}")


def require_positive(
    name: str, value: object, what: str, error: type[S2BNNError] = UsageError
) -> None:
    """Raise ``error`` naming ``name`` unless ``value`` is a finite real number (not a bool)
    > 0; ``what`` says what the setting is."""
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real)
    if not ok or not (value > 0 and math.isfinite(value)):
        raise error(f"{name} must be a finite number > 0 ({what}), got {value!r}")


def name_a_few(items: Sequence[object], shown: int = 5) -> str:
    """The first ``shown`` of ``items``, then how many more: an error stays one short line
    however many things it is about (``'a, b, c and 2997 more'``)."""
    head = ", ".join(str(i) for i in items[:shown])
    rest = len(items) - shown
    return f"{head} and {rest} more" if rest > 0 else head
