"""The package's one numeric check (``s2bnn_plugin.validate``): which values a range admits, the
words it uses, and the error it raises."""

from __future__ import annotations

import math

import numpy as np
import pytest

from s2bnn_plugin.errors import DataError, UsageError
from s2bnn_plugin.validate import Range, is_number, require, require_positive, require_whole


@pytest.mark.parametrize(
    "allowed,good,bad",
    [
        (Range(1, whole=True), [1, 7, np.int64(3)], [0, -1, 2.0, True, "3", None, 1.5]),
        (Range(0, 1), [0, 0.5, 1, 1.0, np.float32(0.25)], [-0.1, 1.01, math.nan, False, "0.5"]),
        (Range(0, 4.0, open_low=True), [1e-9, 4.0], [0, 0.0, 4.5, math.inf, math.nan]),
        (Range(0, open_low=True), [1e-300, 1e300], [0, -1, math.inf, math.nan, True]),
        (Range(), [-1e300, 0, 3], [math.inf, -math.inf, math.nan, True, None]),
        (Range(1, 1024, whole=True), [1, 1024], [0, 1025, 512.0]),
    ],
)
def test_a_range_admits_its_numbers_only(allowed, good, bad):
    assert all(allowed.admits(v) for v in good), [v for v in good if not allowed.admits(v)]
    assert not any(allowed.admits(v) for v in bad), [v for v in bad if allowed.admits(v)]


def test_a_bool_is_never_a_number():
    assert not is_number(True) and not is_number(False)
    assert is_number(math.inf) and is_number(np.float64(2)) and not is_number("1")


@pytest.mark.parametrize(
    "allowed,words",
    [
        (Range(1, whole=True), "a whole number >= 1"),
        (Range(0, open_low=True), "a finite number > 0"),
        (Range(1, 1024, whole=True), "an integer in [1, 1024]"),
        (Range(0.0, 4.0, open_low=True), "a number in (0.0, 4.0]"),
        (Range(-1.0, 1.0), "a number in [-1.0, 1.0]"),
        (Range(high=1), "a finite number <= 1"),
        (Range(), "a finite number"),
    ],
)
def test_a_range_says_what_it_admits(allowed, words):
    assert allowed.describe() == words


def test_require_returns_the_value_or_raises_the_callers_error_naming_it():
    assert require("--k", 3, Range(1, whole=True)) == 3
    with pytest.raises(UsageError) as info:
        require("--batch", 0, Range(1, 1024, whole=True), " (images per call)")
    assert str(info.value) == "--batch must be an integer in [1, 1024] (images per call), got 0"
    with pytest.raises(DataError, match=r"^size must be a whole number >= 8 \(pixels\), got 4$"):
        require_whole("size", 4, 8, "pixels", DataError)
    with pytest.raises(UsageError, match=r"^--lr must be a finite number > 0 \(a rate\), got nan"):
        require_positive("--lr", math.nan, "a rate")
    require_whole("--seed", 0, 0, "numpy seeds are non-negative")
    require_positive("--lr", 1e-3, "a rate")
