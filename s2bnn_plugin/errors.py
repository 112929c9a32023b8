"""The plugin's own errors: one base class, so that callers (and the ``s2bnn`` command) can tell
a problem the user can fix (bad input, a missing install) from a bug.

Each error also has the standard type of its kind (``ValueError``, ``FileNotFoundError``,
``ImportError``, ...) as a second base, so ``except ValueError`` catches it too.
The message names the problem and its fix; ``s2bnn`` prints it on one line (exit code 2) and
shows the traceback only with ``--debug``. Numeric values are checked by
:mod:`s2bnn_plugin.validate`, which raises these.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "DataError",
    "FileMissing",
    "S2BNNError",
    "UsageError",
    "name_a_few",
]


class S2BNNError(Exception):
    """Base class of every error the plugin raises on purpose (input, files, installs)."""


class UsageError(S2BNNError, ValueError):
    """A command-line argument or option that cannot work (the message says which and why)."""


class DataError(S2BNNError, ValueError):
    """A dataset (folder, file or split) that cannot be used as given."""


class FileMissing(S2BNNError, FileNotFoundError):
    """An input file or folder that is not there."""


def name_a_few(items: Sequence[object], shown: int = 5) -> str:
    """The first ``shown`` of ``items``, then how many more: an error stays one short line
    however many things it is about (``'a, b, c and 2997 more'``)."""
    head = ", ".join(str(i) for i in items[:shown])
    rest = len(items) - shown
    return f"{head} and {rest} more" if rest > 0 else head
