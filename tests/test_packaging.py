"""Packaging: imports need neither solo-learn nor compiled code; a wheel holds everything."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

BLOCK = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'solo', 'numba'}:
            raise ModuleNotFoundError(f'blocked: {name}')
sys.meta_path.insert(0, Block())
"""


def test_imports_without_solo_learn_or_numba():
    code = (
        BLOCK
        + """
import s2bnn_plugin, s2bnn_plugin.nn, s2bnn_plugin.backbones, s2bnn_plugin.teachers
import s2bnn_plugin.methods, s2bnn_plugin.cli, s2bnn_plugin.solo
from s2bnn_plugin.solo_learn import locate
m = s2bnn_plugin.create_backbone('reactnet18', cifar=True, width_mult=0.1)
assert not locate.solo_available()
try:
    locate.require_solo()
except locate.SoloLearnNotFound as e:
    assert 'vturrisi/solo-learn' in str(e) and '.pth' in str(e)
else:
    raise SystemExit('require_solo did not fail')
assert 'numba' not in sys.modules and 'solo' not in sys.modules
print('ok')
"""
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_help_and_the_parser_do_not_import_torch():
    """``s2bnn --help`` answers at once: building the parser imports neither torch nor
    torchvision (they take about 2 s); ``s2bnn_plugin.create_backbone`` still works."""
    code = """
import contextlib, io, sys
from s2bnn_plugin.cli import build_parser, main
build_parser()
with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):
    main(['--help'])
assert 'pack' in out.getvalue() and 'demo' in out.getvalue(), out.getvalue()
heavy = sorted(m for m in ('torch', 'torchvision') if m in sys.modules)
assert not heavy, heavy
from s2bnn_plugin import create_backbone
from s2bnn_plugin.data import DatasetSplits, load_image_folder
assert 'torch' in sys.modules and callable(create_backbone) and callable(load_image_folder)
print('ok')
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_every_subpackage_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {"s2bnn_plugin"}
    for init in (ROOT / "s2bnn_plugin").rglob("__init__.py"):
        rel = init.parent.relative_to(ROOT)
        found.add(".".join(rel.parts))
    found |= {"s2bnn_plugin.kernels", "s2bnn_plugin.solo_configs"}
    assert found == listed
    assert config["package-dir"]["s2bnn_plugin.kernels"] == "kernels"


def test_wheel_holds_kernels_and_configs(tmp_path):
    """Built from a copy of the sources: setuptools reuses a checkout's ``build/`` folder, where
    files of an earlier build would hide one missing from this one."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    for folder in ("s2bnn_plugin", "kernels", "solo_configs"):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(src),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "absent from the `packages` configuration" not in proc.stderr
    (wheel,) = tmp_path.glob("s2bnn_plugin-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "s2bnn_plugin/kernels/__init__.py" in names
    assert not any(n.startswith("kernels/") for n in names)  # never a top-level `kernels`
    for config in (ROOT / "solo_configs").rglob("*.yaml"):
        assert f"s2bnn_plugin/solo_configs/{config.relative_to(ROOT / 'solo_configs')}" in names


def _imported_private_names(folder: Path) -> list[str]:
    """Every ``from <plugin module> import _name`` under ``folder`` (relative imports included)."""
    import ast

    found = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            ours = node.level > 0 or (node.module or "").startswith("s2bnn_plugin")
            for alias in node.names:
                if ours and alias.name.startswith("_") and not alias.name.startswith("__"):
                    where = f"{path.relative_to(ROOT)}:{node.lineno}"
                    found.append(f"{where}: {'.' * node.level}{node.module} import {alias.name}")
    return found


def test_no_module_imports_another_modules_underscore_names():
    """What one module shares with another is public API (named without a leading underscore)."""
    found = [hit for folder in ("s2bnn_plugin", "kernels", "benchmarks", "tests")
             for hit in _imported_private_names(ROOT / folder)]  # fmt: skip
    assert not found, found


#: the most parameters a function outside kernels/ takes: more travel as an options dataclass
MAX_PARAMETERS = 12


def test_no_function_outside_the_kernels_takes_more_than_12_parameters():
    """Long pass-throughs become option dataclasses (``EvalOptions``); the Numba kernels, whose
    compiled calls take NamedTuples field by field, have their own limit (CONTRIBUTING)."""
    import ast

    counts = {}
    for path in sorted((ROOT / "s2bnn_plugin").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                a = node.args
                n = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs)
                counts[f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"] = (
                    n + (a.vararg is not None) + (a.kwarg is not None)
                )
    assert len(counts) > 500  # the whole package was read
    assert {f: n for f, n in counts.items() if n > MAX_PARAMETERS} == {}
