"""The package's one check of numeric values: what counts as a whole or a real number, whether it
lies in a range, and the words that say so.

Every option, setting and field that takes a number is checked through :class:`Range`: a bool is
never a number (``True`` would pass as 1), a real number is finite, and a whole number is an
integral type (``2.0`` is refused where a count is meant, as the command line's ``type=int``
would). :func:`require` raises the caller's :class:`~s2bnn_plugin.errors.S2BNNError` subclass
with a one-line message naming the option, what it must be and the value given;
:meth:`Range.admits` answers without raising, for checks that collect every problem before
reporting them. A :class:`Setting` is one row of a table of settings: a key, its default, the
values it accepts (numbers of a range, or names) and what it means, from which a table's
defaults, its checks and its documentation all come.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import TypeVar

from s2bnn_plugin.errors import S2BNNError, UsageError

__all__ = [
    "NO_DEFAULT",
    "Range",
    "Setting",
    "is_number",
    "require",
    "require_positive",
    "require_whole",
]

Value = TypeVar("Value")


def is_number(value: object) -> bool:
    """Whether ``value`` is a real number, finite or not (a bool is not a number here)."""
    return not isinstance(value, bool) and isinstance(value, numbers.Real)


@dataclass(frozen=True)
class Range:
    """Numbers from ``low`` to ``high`` (``None``: unbounded on that side), ends included unless
    ``open_low``; whole numbers only with ``whole``, else finite real numbers."""

    low: float | None = None
    high: float | None = None
    whole: bool = False
    open_low: bool = False

    def admits(self, value: object) -> bool:
        """Whether ``value`` is a number of this range (never a bool, never NaN or infinite)."""
        if not is_number(value):
            return False
        if self.whole:
            if not isinstance(value, numbers.Integral):
                return False
        elif not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            return False
        return self.high is None or value <= self.high

    def interval(self) -> str:
        """The bounds alone: ``[0, 1]``, ``(0.0, 4.0]``, ``>= 1``, ``> 0``, ``<= 1``."""
        if self.low is not None and self.high is not None:
            return f"{'(' if self.open_low else '['}{self.low}, {self.high}]"
        if self.low is not None:
            return f"{'>' if self.open_low else '>='} {self.low}"
        if self.high is not None:
            return f"<= {self.high}"
        return ""

    def describe(self) -> str:
        """What a value must be, in words: ``an integer in [1, 1024]``, ``a number in [0, 1]``,
        ``a whole number >= 1``, ``a finite number > 0``."""
        if self.low is not None and self.high is not None:
            return f"{'an integer' if self.whole else 'a number'} in {self.interval()}"
        noun = "a whole number" if self.whole else "a finite number"
        return f"{noun} {self.interval()}".rstrip()


def require(
    name: str,
    value: Value,
    allowed: Range,
    why: str = "",
    error: type[S2BNNError] = UsageError,
) -> Value:
    """``value`` if ``allowed`` admits it, else ``error`` saying ``{name} must be {what}{why},
    got {value!r}`` (``why``, when given, starts with its own space or parenthesis)."""
    if not allowed.admits(value):
        raise error(f"{name} must be {allowed.describe()}{why}, got {value!r}")
    return value


def require_whole(
    name: str, value: object, minimum: int, what: str, error: type[S2BNNError] = UsageError
) -> None:
    """Raise ``error`` naming ``name`` unless ``value`` is a whole number >= ``minimum``;
    ``what`` says what the setting is."""
    require(name, value, Range(minimum, whole=True), f" ({what})", error)


def require_positive(
    name: str, value: object, what: str, error: type[S2BNNError] = UsageError
) -> None:
    """Raise ``error`` naming ``name`` unless ``value`` is a finite real number > 0; ``what``
    says what the setting is."""
    require(name, value, Range(0, open_low=True), f" ({what})", error)


class _NoDefault:
    """The default of a setting that has none to fill in (see :attr:`Setting.shown_default`)."""

    def __repr__(self) -> str:
        return "NO_DEFAULT"


NO_DEFAULT = _NoDefault()


@dataclass(frozen=True)
class Setting:
    """One row of a settings table: a key, its default, the values it accepts and what it means.

    The values accepted are ``numbers`` (a :class:`Range`), ``choices`` (names), or, with
    neither, anything (a check elsewhere knows more: a file, a method name); ``null`` admits
    ``None`` too. :meth:`words` says what the setting must be: ``accepted`` when given, else
    words derived from the range or the choices. ``hint`` (why, or what the values mean) follows
    them in a refusal. ``shown_default`` says in words what happens without a value where the
    default is :data:`NO_DEFAULT` (required, set by the code, or taken from elsewhere).
    """

    key: str
    default: object
    doc: str
    numbers: Range | None = None
    choices: tuple[str, ...] | None = None
    null: bool = False
    accepted: str = ""
    hint: str = ""
    shown_default: str = ""

    def admits(self, value: object) -> bool:
        if value is None:
            return self.null
        if self.choices is not None:
            return value in self.choices
        if self.numbers is not None:
            return self.numbers.admits(value)
        return True

    def words(self) -> str:
        """What a value must be: ``> 0``, ``a number in [0, 1]``, ``an int >= 1 or null``,
        ``one of ['kl', 'burn']``."""
        if self.accepted:
            return self.accepted
        if self.choices is not None:
            words = f"one of {list(self.choices)}"
        elif self.numbers is None:
            words = "any value"
        elif self.numbers.whole:
            words = f"an int {self.numbers.interval()}"
        elif self.numbers.low is not None and self.numbers.high is not None:
            words = self.numbers.describe()
        else:
            words = self.numbers.interval()  # the hint says "a number"
        return f"{words} or null" if self.null else words

    def problem(self, path: str, value: object) -> str | None:
        """``None`` when ``value`` is accepted, else the refusal: ``{path} must be {words}
        ({hint}), got {value}``."""
        if self.admits(value):
            return None
        hint = f" ({self.hint})" if self.hint else ""
        shown = repr(value) if isinstance(value, str) else str(value)
        return f"{path} must be {self.words()}{hint}, got {shown}"
