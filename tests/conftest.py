"""Shared fixtures.

Tests marked ``solo`` need solo-learn. Where it is absent they skip, saying how to install it;
under CI (``CI=true``) they fail instead: CI installs solo-learn, so a missing one is a broken
set-up that must not pass as skips.

torch is imported only by the fixture that seeds it, and only where it is installed: the kernel
tests (tests/test_kernels.py) also run where only numpy and Numba are (``tools/arm64-check``).
"""

from __future__ import annotations

import os

import pytest

from s2bnn_plugin.solo_learn.locate import solo_available
from s2bnn_plugin.solo_learn.pin import INSTALL_HINT

SOLO = solo_available()
IN_CI = os.environ.get("CI", "").lower() == "true"


def pytest_report_header(config):
    where = "fail (CI=true)" if IN_CI else "skip"
    return f"solo-learn importable: {SOLO} (tests marked 'solo' {'run' if SOLO else where})"


def pytest_runtest_setup(item):
    """Runs before the test's fixtures are set up (some of them import solo-learn)."""
    if SOLO or item.get_closest_marker("solo") is None:
        return
    message = f"needs solo-learn. {INSTALL_HINT}"
    if IN_CI:
        pytest.fail(f"CI=true but solo-learn is not importable: {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture(autouse=True)
def _seed():
    try:
        import torch
    except ModuleNotFoundError:  # a runtime without torch: nothing to seed
        return
    torch.manual_seed(0)
