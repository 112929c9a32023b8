"""``s2bnn doctor``: what this environment has and lacks for each feature, with the fix for
each missing piece, on one screen.

Each check is cheap and independent: a missing piece never stops the others from being checked.
``required`` marks what the README's commands (``make demo``, ``make test``, ``s2bnn pretrain``)
need; a GPU is reported but optional.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Check", "diagnose", "render"]

PIP_SOLO = "pip install 's2bnn-plugin[solo]'  (or pip install -e '.[solo]' in a clone)"


@dataclass
class Check:
    """One line of the report: a feature, what was found, and the fix when it is missing."""

    name: str
    ok: bool
    found: str
    fix: str = ""
    required: bool = True


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return None


def _python() -> Check:
    ok = sys.version_info >= (3, 11)
    return Check(
        "python",
        ok,
        f"{platform.python_version()} ({sys.executable})",
        "use Python >= 3.11",
    )


def _torch() -> list[Check]:
    if importlib.util.find_spec("torch") is None:
        fix = "pip install torch torchvision  (tested: see constraints.txt)"
        return [Check("torch", False, "not installed", fix), Check("gpu", False, "-", "", False)]
    import torch

    vision = _version("torchvision")
    checks = [
        Check(
            "torch",
            vision is not None,
            f"torch {torch.__version__}, torchvision {vision or 'missing'}",
            "pip install torchvision (the release matching your torch)",
        )
    ]
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        checks.append(Check("gpu", True, f"CUDA: {names}", required=False))
    else:
        checks.append(
            Check(
                "gpu",
                False,
                "none visible to torch: CPU runs only (the demo and the tests need none)",
                "for the GPU configs: a CUDA build of torch and an NVIDIA driver",
                required=False,
            )
        )
    return checks


def _numba() -> Check:
    if importlib.util.find_spec("numba") is None:
        return Check("numba", False, "not installed", "pip install numba")
    import llvmlite.binding as llvm
    import numba

    from s2bnn_plugin.kernels import variants

    cpu = os.environ.get("NUMBA_CPU_NAME") or llvm.get_host_cpu_name()
    found = f"numba {numba.__version__}, CPU target {cpu}"
    try:
        variant = variants.select()
    except variants.UnsupportedVariant as e:
        return Check("numba", False, f"{found}: {e}", f"unset {variants.ENV} or fix its value")
    return Check("numba", True, f"{found}: kernel variant {variant.name} ({variant.description})")


def _kernels() -> list[Check]:
    """Whether the packed engine's first run will compile its kernels, and the disk taken by
    machine code compiled from other versions of them (Numba never deletes it)."""
    if importlib.util.find_spec("numba") is None:
        return [Check("kernels", False, "need numba", "pip install numba", required=False)]
    from s2bnn_plugin.kernels.cache import (
        FIRST_COMPILE,
        cache_dir,
        compiled_in,
        other_versions,
    )

    folder = compiled_in()
    checks = [
        Check("kernels", True, f"compiled for these sources in {folder}")
        if folder is not None
        else Check(
            "kernels",
            False,
            f"not compiled yet: the first packed run compiles them into {cache_dir()}",
            f"nothing to do: that run takes longer ({FIRST_COMPILE}), later ones don't",
            required=False,
        )
    ]
    old = other_versions()
    if old:
        size = sum(f.stat().st_size for d in old for f in d.rglob("*") if f.is_file())
        keep = cache_dir().parent.name  # this version's folder (one subfolder per CPU)
        checks.append(
            Check(
                "old kernels",
                False,
                f"{size / 2**20:.0f} MB in {len(old)} folders compiled from other versions,"
                " never loaded again",
                " && ".join(
                    f"find {shlex.quote(str(parent))} -mindepth 1 -maxdepth 1 ! -name {keep}"
                    " -exec rm -r {} +"
                    for parent in sorted({d.parent for d in old})
                ),
                required=False,
            )
        )
    return checks


def _solo() -> list[Check]:
    from s2bnn_plugin.solo_learn.locate import solo_checkout
    from s2bnn_plugin.solo_learn.pin import SOLO_COMMIT, tree_commit

    root = solo_checkout()
    if root is None:
        return [
            Check("solo-learn", False, "not importable", "s2bnn setup-solo"),
            Check("registration", False, "needs solo-learn", "s2bnn setup-solo"),
        ]
    commit = tree_commit(root)
    pinned = commit == SOLO_COMMIT
    where = f"{root}, commit {commit[:7] if commit else 'unknown'}"
    checks = [
        Check(
            "solo-learn",
            pinned,
            where + (" (the pinned one)" if pinned else f" (pinned: {SOLO_COMMIT[:7]})"),
            "s2bnn setup-solo  (installs the pinned commit; or check it out there)",
        )
    ]
    missing = [
        m
        for m in ("einops", "timm", "torchmetrics", "scipy", "sklearn", "wandb")
        if importlib.util.find_spec(m) is None
    ]
    if missing:
        checks.append(
            Check("registration", False, f"solo-learn's needs missing: {missing}", PIP_SOLO)
        )
        return checks
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from s2bnn_plugin.solo import register
            from s2bnn_plugin.solo_learn.registry import solo_backbones, solo_methods

            register()

        ok = "s2bnn" in solo_methods() and "reactnet_a" in solo_backbones()
        checks.append(
            Check(
                "registration",
                ok,
                "method s2bnn and backbones reactnet_a, reactnet18 registered"
                if ok
                else "registration did not add the plugin's names",
                "report this as a bug",
            )
        )
    except Exception as e:  # any import error of solo-learn's belongs in the report
        checks.append(Check("registration", False, f"{type(e).__name__}: {e}"[:200], PIP_SOLO))
    return checks


def _matplotlib() -> Check:
    found = _version("matplotlib")
    return Check(
        "matplotlib",
        found is not None,
        f"matplotlib {found}" if found else "not installed (the demo's plots need it)",
        "pip install matplotlib",
    )


def _fashion_mnist(data_root: str | None) -> Check:
    from s2bnn_plugin.data.fashion_mnist import FashionMNISTNotFound, find_fashion_mnist

    try:
        where = find_fashion_mnist(data_root)
    except FashionMNISTNotFound as e:
        return Check("fashion-mnist", False, "not found", str(e))
    return Check("fashion-mnist", True, f"idx files in {where}")


def diagnose(data_root: str | None = None) -> list[Check]:
    """Run every check; never raises for a missing piece."""
    steps: list[Callable[[], Check | list[Check]]] = [
        _python,
        _torch,
        _numba,
        _kernels,
        _solo,
        _matplotlib,
        lambda: _fashion_mnist(data_root),
    ]
    checks: list[Check] = []
    for step in steps:
        result = step()
        checks += result if isinstance(result, list) else [result]
    return checks


def render(checks: list[Check]) -> str:
    """The one-screen report: a mark, the feature, what was found, and the fix where needed."""
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        mark = "ok " if c.ok else ("-- " if not c.required else "NO ")
        lines.append(f"{mark} {c.name:<{width}}  {c.found}")
        if not c.ok and c.fix:
            lines.append(f"    {'':<{width}}  fix: {c.fix}")
    missing = [c.name for c in checks if not c.ok and c.required]
    lines.append(
        "everything the README's commands need is here"
        if not missing
        else f"missing for the README's commands: {', '.join(missing)}"
    )
    return "\n".join(lines)
