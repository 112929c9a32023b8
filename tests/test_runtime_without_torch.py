"""The packed runtime needs only numpy and Numba: ``runtime.load(f)(x)`` imports no torch.

Files packed here (full install) are run by ``runtime_probe.py`` in another process: with this
Python, where torch is installed but any import of it fails the run, and with the Python of a
venv that has only numpy, Numba and the plugin (``S2BNN_RUNTIME_PYTHON``; ``.ci/run`` builds it).
Its features must equal, bit for bit, those this process computed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import runtime_probe
from runtime_cases import QUICK, write_cases

HERE = Path(__file__).resolve().parent
IN_CI = os.environ.get("CI", "").lower() == "true"
BUILD = (
    "python3 -m venv .venv-runtime && .venv-runtime/bin/pip install -c constraints.txt numpy "
    "numba && .venv-runtime/bin/pip install --no-deps . && "
    "export S2BNN_RUNTIME_PYTHON=$PWD/.venv-runtime/bin/python"
)


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cases")
    return folder, write_cases(folder, QUICK)


def _probe(python: str, folder: Path, out: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    if python != sys.executable:
        # Numba's cache index remembers one source file per kernel: another install sharing
        # this process's cache folder would make each recompile what the other wrote
        env["NUMBA_CACHE_DIR"] = str(HERE.parent / ".pytest_cache" / "numba-runtime-venv")
    return subprocess.run(
        [python, str(HERE / "runtime_probe.py"), str(folder), "--out", str(out)],
        cwd=out.parent,  # not the checkout: the plugin comes from the interpreter's install
        env=env,
        capture_output=True,
        text=True,
    )


def _assert_same_features(done, features: dict, out: Path) -> None:
    assert done.returncode == 0, done.stdout + done.stderr
    assert "torch imported: no" in done.stdout, done.stdout
    for name, expected in features.items():
        for engine in ("numba", "numpy"):
            got = np.load(out / f"{name}.{engine}.npy")
            assert got.shape == expected.shape, (name, engine)
            np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))


@pytest.fixture(scope="module")
def runtime_python() -> str:
    python = os.environ.get("S2BNN_RUNTIME_PYTHON")
    if not python:
        message = f"S2BNN_RUNTIME_PYTHON is not set; build the torch-free venv: {BUILD}"
        if IN_CI:
            pytest.fail(f"CI=true but {message}", pytrace=False)
        pytest.skip(message)
    if not os.access(python, os.X_OK):
        pytest.fail(f"S2BNN_RUNTIME_PYTHON={python} is not an executable; {BUILD}", pytrace=False)
    code = (
        "import importlib.util as u, s2bnn_plugin as p; "
        "print(u.find_spec('torch') is None, p.__file__)"
    )
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, cwd="/")
    assert done.returncode == 0, done.stderr
    torch_free, where = done.stdout.split()
    assert torch_free == "True", f"{python} can import torch: not a runtime without torch"
    source = HERE.parent / "s2bnn_plugin"
    assert not Path(where).is_relative_to(source), f"{where}: the checkout, not an installed copy"
    return python


def test_the_runtime_imports_no_torch_where_torch_is_installed(cases, tmp_path):
    folder, features = cases
    done = _probe(sys.executable, folder, tmp_path / "out")
    _assert_same_features(done, features, tmp_path / "out")


def test_a_venv_without_torch_gives_the_same_features(cases, runtime_python, tmp_path):
    folder, features = cases
    done = _probe(runtime_python, folder, tmp_path / "out")
    _assert_same_features(done, features, tmp_path / "out")


def test_the_probe_fails_loudly_on_an_import_of_torch(tmp_path):
    """Its blocker catches an import even where the importing code swallows the error."""
    code = (
        "import sys, runtime_probe as rp; b = rp.block_torch()\n"
        "try:\n    import torch.nn\nexcept ImportError as e:\n    print('raised:', e)\n"
        "print(len(b.attempts), 'torch' in sys.modules)"
    )
    env = dict(os.environ, PYTHONPATH=str(HERE))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "raised: runtime_probe: the torch-free runtime imported 'torch'" in done.stdout
    assert done.stdout.splitlines()[-1] == "1 False"
    assert runtime_probe.BLOCKED[0] == "torch"


def test_the_probe_refuses_a_folder_without_cases(tmp_path):
    probe = [sys.executable, str(HERE / "runtime_probe.py"), str(tmp_path)]
    done = subprocess.run(probe, capture_output=True, text=True)
    assert done.returncode == 2 and "no cases.json in" in done.stderr
