"""Shared fixtures.

Tests marked ``solo`` need solo-learn, tests marked ``openvino`` need OpenVINO (an optional
extra), tests marked ``fashion_mnist`` need Fashion-MNIST's files (Debian's
``dataset-fashion-mnist``). Where one is absent its tests skip, saying how to install it; under
CI (``CI=true``) they fail instead: CI installs all three, so a missing one is a broken set-up
that must not pass as skips.

torch is imported only by the fixture that seeds it, and only where it is installed: the kernel
tests (tests/test_kernels.py) also run where only numpy and Numba are (``tools/arm64-check``).
"""

from __future__ import annotations

import importlib.util
import os
from typing import NamedTuple

import pytest

from s2bnn_plugin.exporters.openvino import INSTALL_HINT as OPENVINO_HINT
from s2bnn_plugin.solo_learn.locate import solo_available
from s2bnn_plugin.solo_learn.pin import INSTALL_HINT as SOLO_HINT

IN_CI = os.environ.get("CI", "").lower() == "true"


class Requirement(NamedTuple):
    """What the tests carrying one marker need: its name, whether it is importable, its install."""

    name: str
    available: bool
    install: str


def _fashion_mnist() -> Requirement:
    """Fashion-MNIST's idx files where ``load_fashion_mnist`` looks for them."""
    try:
        from s2bnn_plugin.data.fashion_mnist import (
            APT_HINT,
            SOURCE_ENV,
            FashionMNISTNotFound,
            find_fashion_mnist,
        )
    except ImportError as e:  # a runtime without Pillow (tools/arm64-check runs no such test)
        return Requirement("Fashion-MNIST", False, f"the data layer does not import here: {e}")
    try:
        find_fashion_mnist()
    except FashionMNISTNotFound:
        found = False
    else:
        found = True
    install = f"as root: {APT_HINT}; or set {SOURCE_ENV}=FOLDER holding its four idx files"
    return Requirement("Fashion-MNIST", found, install)


#: marker -> what its tests need
REQUIREMENTS = {
    "solo": Requirement("solo-learn", solo_available(), SOLO_HINT),
    "openvino": Requirement(
        "openvino", importlib.util.find_spec("openvino") is not None, OPENVINO_HINT
    ),
    "fashion_mnist": _fashion_mnist(),
}


def pytest_report_header(config):
    where = "fail (CI=true)" if IN_CI else "skip"
    return [
        f"{need.name} available: {need.available} "
        f"(tests marked '{marker}' {'run' if need.available else where})"
        for marker, need in REQUIREMENTS.items()
    ]


def pytest_collection_modifyitems(session, config, items):
    """The OpenVINO tests run last. Once OpenVINO 2026.4.1 has read and run an IR in a process,
    a later torch DataLoader with worker processes there can crash that process with SIGSEGV
    when its workers shut down (reproduced with
    ``test_the_written_ir_runs_at_any_batch_and_refuses_another_size`` followed by
    ``test_s2bnn_method.py::test_resumed_run_equals_the_uninterrupted_one_bitwise[simclr-2]``;
    the reverse order passes). The plugin never runs both in one process; the suite must not
    either."""
    items.sort(key=lambda item: item.get_closest_marker("openvino") is not None)


def pytest_runtest_setup(item):
    """Runs before the test's fixtures are set up (some of them import solo-learn)."""
    for marker, need in REQUIREMENTS.items():
        if need.available or item.get_closest_marker(marker) is None:
            continue
        message = f"needs {need.name}. {need.install}"
        if IN_CI:
            pytest.fail(f"CI=true but {need.name} is missing: {message}", pytrace=False)
        pytest.skip(message)


@pytest.fixture(autouse=True)
def _seed():
    try:
        import torch
    except ModuleNotFoundError:  # a runtime without torch: nothing to seed
        return
    torch.manual_seed(0)
