"""Finding solo-learn without importing it (importing it costs seconds): its package, its source
tree and scripts, and the plugin's own solo-learn configs."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from s2bnn_plugin.errors import S2BNNError
from s2bnn_plugin.solo_learn.pin import INSTALL_HINT

__all__ = [
    "SoloLearnNotFound",
    "configs_dir",
    "find_solo_script",
    "is_solo_tree",
    "require_solo",
    "solo_available",
    "solo_checkout",
]


class SoloLearnNotFound(S2BNNError, ImportError):
    """solo-learn (the GitHub version) is not importable."""


def configs_dir() -> Path:
    """Where the Hydra configs shipped with the plugin are installed."""
    spec = importlib.util.find_spec("s2bnn_plugin.solo_configs")
    if spec is None or spec.origin is None:  # pragma: no cover - a broken install
        raise SoloLearnNotFound("the plugin's configs (s2bnn_plugin.solo_configs) are missing")
    return Path(spec.origin).resolve().parent


def solo_available() -> bool:
    """True when solo-learn's ``solo/methods`` package can be found, without importing it."""
    return _solo_package_dir() is not None


def _solo_package_dir() -> Path | None:
    try:
        spec = importlib.util.find_spec("solo")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        if (Path(location) / "methods" / "__init__.py").is_file():
            return Path(location).resolve()
    return None


def require_solo() -> Any:
    """Import and return ``solo.methods``, or raise :class:`SoloLearnNotFound` saying how to
    install it."""
    if not solo_available():
        raise SoloLearnNotFound(INSTALL_HINT)
    import solo.methods

    if not isinstance(getattr(solo.methods.BaseMethod, "_BACKBONES", None), dict):
        raise SoloLearnNotFound(
            f"the solo-learn found at {solo.methods.__file__} is too old (no backbone registry). "
            + INSTALL_HINT
        )
    return solo.methods


def solo_checkout() -> Path | None:
    """The solo-learn checkout: ``$SOLO_LEARN_DIR`` if set, else the folder holding the
    importable ``solo`` package (found without importing it)."""
    env = os.environ.get("SOLO_LEARN_DIR")
    if env:
        return Path(env).expanduser()
    package = _solo_package_dir()
    return None if package is None else package.parent


def is_solo_tree(path: Path) -> bool:
    """Does ``path`` hold a solo-learn source tree (the package and both scripts)?"""
    return (
        (path / "solo" / "methods" / "__init__.py").is_file()
        and (path / "main_pretrain.py").is_file()
        and (path / "main_linear.py").is_file()
    )


def find_solo_script(name: str) -> Path:
    """Path of solo-learn's ``main_pretrain.py`` / ``main_linear.py``."""
    root = solo_checkout()
    if root is None:
        raise SoloLearnNotFound(INSTALL_HINT)
    script = root / name
    if not script.is_file():
        raise SoloLearnNotFound(
            f"{script} does not exist: solo-learn's scripts come with its source tree (a wheel "
            "has only the `solo` package). Point SOLO_LEARN_DIR at the tree, or run "
            "`s2bnn setup-solo`. " + INSTALL_HINT
        )
    return script
