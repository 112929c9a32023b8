"""Under ``CI=true`` a test whose requirement is missing fails instead of skipping: every such
requirement goes through a marker of tests/conftest.py's ``REQUIREMENTS`` table, never through a
skip of the test's own (which CI would count as a pass)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

# a conftest that is the suite's, with Fashion-MNIST nowhere to be found
_MISSING_FASHION_MNIST = textwrap.dedent(
    f"""
    import importlib.util
    from pathlib import Path
    from s2bnn_plugin.data import fashion_mnist
    fashion_mnist.DEFAULT_SOURCE_DIR = Path("/nonexistent/fashion-mnist")
    spec = importlib.util.spec_from_file_location("suite_conftest", {str(TESTS / "conftest.py")!r})
    suite = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(suite)
    pytest_runtest_setup = suite.pytest_runtest_setup  # the hook under test
    """
)

_A_TEST = textwrap.dedent(
    """
    import pytest

    @pytest.mark.fashion_mnist
    def test_reads_fashion_mnist():
        pass
    """
)


@pytest.mark.parametrize("ci", ["true", ""])
def test_a_fashion_mnist_test_fails_under_ci_when_the_dataset_is_missing(tmp_path, ci):
    (tmp_path / "conftest.py").write_text(_MISSING_FASHION_MNIST)
    (tmp_path / "test_it.py").write_text(_A_TEST)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    fashion_mnist: the data\n")
    env = {k: v for k, v in os.environ.items() if k != "S2BNN_FASHION_MNIST"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-rs", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**env, "CI": ci},
        timeout=300,
    )
    out = proc.stdout
    if ci:
        assert proc.returncode == 1 and "1 error" in out, out[-2000:]  # failed in its set-up
        assert "CI=true but Fashion-MNIST is missing" in out, out[-2000:]
    else:
        assert proc.returncode == 0 and "1 skipped" in out, out[-2000:]
    assert "apt-get install dataset-fashion-mnist" in out, out[-2000:]


def _own_skips(path: Path) -> list[str]:
    """The calls in a test file that skip on a requirement of their own: importorskip of
    solo-learn or OpenVINO, and skipif on a module-level flag about data."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        args = [ast.unparse(a) for a in node.args]
        if name.endswith("importorskip") and args and args[0].strip("'\"") in ("solo", "openvino"):
            found.append(f"{path.name}:{node.lineno} {ast.unparse(node)}")
        if name.endswith("mark.skipif") and any("FASHION" in a.upper() for a in args):
            found.append(f"{path.name}:{node.lineno} {ast.unparse(node)}")
    return found


def test_no_test_skips_a_ci_requirement_by_itself():
    """``pytest.importorskip("solo")`` in tests/test_configs.py and three ``skipif`` on the
    Fashion-MNIST files passed as skips under CI."""
    found = [hit for path in sorted(TESTS.glob("test_*.py")) for hit in _own_skips(path)]
    assert found == [], found
