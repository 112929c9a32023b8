"""Shared fixtures.

Tests marked ``solo`` skip where solo-learn is absent, saying how to install it.
"""

from __future__ import annotations

import pytest
import torch

from s2bnn_plugin.solo import INSTALL_HINT, solo_available

SOLO = solo_available()


def pytest_collection_modifyitems(config, items):
    if SOLO:
        return
    skip = pytest.mark.skip(reason=f"needs solo-learn. {INSTALL_HINT}")
    for item in items:
        if "solo" in item.keywords:
            item.add_marker(skip)


def pytest_report_header(config):
    return f"solo-learn importable: {SOLO} (tests marked 'solo' {'run' if SOLO else 'skip'})"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
