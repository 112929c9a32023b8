"""Everything the plugin needs to know about solo-learn, in one place, without importing it.

solo-learn is not on PyPI in a usable form (PyPI's ``solo-learn`` is a 2021 release); the plugin
pins one commit of its GitHub repository (:data:`SOLO_COMMIT`), which ``s2bnn setup-solo`` puts on
``sys.path`` (:mod:`.install`). solo-learn has no plugin entry points: its scripts look names up
in two class-level dicts, which :func:`add_to_registry` fills (see ``s2bnn_plugin.solo``).
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import Any

from s2bnn_plugin.errors import S2BNNError

__all__ = [
    "CALLBACK_OVERRIDE",
    "INSTALL_HINT",
    "SOLO_ARCHIVE_URL",
    "SOLO_COMMIT",
    "SOLO_REPOSITORY",
    "SOLO_VERSION",
    "RegistryConflict",
    "SoloLearnNotFound",
    "add_to_registry",
    "configs_dir",
    "find_solo_script",
    "hydra_quote",
    "is_solo_tree",
    "require_solo",
    "solo_available",
    "solo_checkout",
    "solo_command",
    "tree_commit",
]

#: The solo-learn commit the plugin is built and tested against (main, version 1.0.6).
SOLO_COMMIT = "9187ea39c2c3f43c455ab06664d2b019a9802954"
SOLO_VERSION = "1.0.6"
SOLO_REPOSITORY = "https://github.com/vturrisi/solo-learn"
SOLO_ARCHIVE_URL = f"{SOLO_REPOSITORY}/archive/{SOLO_COMMIT}.tar.gz"
#: Written by ``s2bnn setup-solo`` into the tree it installs: the commit the tree was taken from.
COMMIT_MARKER = ".s2bnn-solo-commit"

INSTALL_HINT = (
    "solo-learn is not importable. Install the version the plugin pins with `s2bnn setup-solo`: "
    f"it downloads solo-learn {SOLO_VERSION} (commit {SOLO_COMMIT[:7]}) from GitHub "
    "(vturrisi/solo-learn) into a per-user cache and puts it on sys.path with a .pth file; "
    "offline, `s2bnn setup-solo --from PATH` takes a checkout or a .tar.gz of that commit. "
    "PyPI's `solo-learn` is an unusable 2021 release. solo-learn's runtime needs come with "
    "`pip install 's2bnn-plugin[solo]'`. See README, \"Install\"."
)

#: The Hydra override that registers the plugin in a solo-learn script run (DDP children too).
CALLBACK_OVERRIDE = "++hydra.callbacks.s2bnn._target_=s2bnn_plugin.solo.RegisterS2BNN"

_HEX40 = re.compile(r"[0-9a-f]{40}")


class SoloLearnNotFound(S2BNNError, ImportError):
    """solo-learn (the GitHub version) is not importable."""


class RegistryConflict(S2BNNError, RuntimeError):
    """solo-learn already has another object under a name the plugin registers."""


def configs_dir() -> Path:
    """Where the Hydra configs shipped with the plugin are installed."""
    spec = importlib.util.find_spec("s2bnn_plugin.solo_configs")
    if spec is None or spec.origin is None:  # pragma: no cover - a broken install
        raise SoloLearnNotFound("the plugin's configs (s2bnn_plugin.solo_configs) are missing")
    return Path(spec.origin).resolve().parent


def solo_available() -> bool:
    """True when solo-learn's ``solo/methods`` package can be found, without importing it
    (importing solo-learn costs seconds)."""
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


def add_to_registry(registry: dict[str, Any], name: str, obj: Any, kind: str) -> None:
    """``registry[name] = obj`` unless another object already has that name (never overwrite
    someone else's backbone or method silently)."""
    existing = registry.get(name)
    if existing is not None and existing is not obj:
        where = getattr(existing, "__module__", "?")
        raise RegistryConflict(
            f"solo-learn already has a {kind} named {name!r} (from {where}); the plugin will not "
            "overwrite it. Rename one of them."
        )
    registry[name] = obj


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


def _git_head(root: Path) -> str | None:
    """The commit a git checkout is at, read from ``.git`` without running git."""
    git = root / ".git"
    if git.is_file():  # a worktree or submodule: "gitdir: PATH"
        text = git.read_text().strip()
        if text.startswith("gitdir:"):
            git = (root / text.split(":", 1)[1].strip()).resolve()
    try:
        head = (git / "HEAD").read_text().strip()
    except OSError:
        return None
    if _HEX40.fullmatch(head):
        return head
    ref = head.removeprefix("ref:").strip()
    dirs = [git]
    if (git / "commondir").is_file():  # refs of a worktree live in the main repository
        dirs.append((git / (git / "commondir").read_text().strip()).resolve())
    for base in dirs:
        try:
            value = (base / ref).read_text().strip()
        except OSError:
            value = ""
        if _HEX40.fullmatch(value):
            return value
        try:
            for line in (base / "packed-refs").read_text().splitlines():
                sha, _, name = line.partition(" ")
                if name == ref and _HEX40.fullmatch(sha):
                    return sha
        except OSError:
            pass
    return None


def tree_commit(root: Path) -> str | None:
    """The solo-learn commit of a tree: the marker ``setup-solo`` writes, else a git checkout's
    HEAD, else a GitHub archive's folder name (``solo-learn-<commit>``); ``None`` if unknown."""
    try:
        marker = (root / COMMIT_MARKER).read_text().strip()
        if _HEX40.fullmatch(marker):
            return marker
    except OSError:
        pass
    head = _git_head(root)
    if head:
        return head
    match = re.fullmatch(r"solo-learn-([0-9a-f]{40})", root.name)
    return match.group(1) if match else None


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


def hydra_quote(override: str) -> str:
    """Quote an override's value when it holds characters Hydra's grammar rejects unquoted
    (solo-learn names checkpoints ``...-ep=9.ckpt``)."""
    key, sep, value = override.partition("=")
    if not sep or not value or value[0] in "'\"[{" or not any(c in value for c in "=,: "):
        return override
    return f'{key}="{value}"'


def solo_command(
    script: str, overrides: list[str], *, kind: str, dataset: str, config: str, python: str
) -> list[str]:
    """The command line that runs solo-learn's ``script`` with the plugin's ``kind/dataset``
    configs (unless the overrides name a ``--config-path``) and the plugin registered."""
    extra = list(overrides)
    if not any(a.startswith(("--config-path", "-cp")) for a in extra):
        config_dir = configs_dir() / kind / dataset
        if not config_dir.is_dir():
            choices = sorted(p.name for p in (configs_dir() / kind).iterdir() if p.is_dir())
            raise S2BNNError(f"no {kind} configs for dataset {dataset!r}; choose one of {choices}")
        if not (config_dir / config).is_file():
            choices = sorted(p.name for p in config_dir.glob("*.yaml"))
            raise S2BNNError(f"no config {config!r} in {config_dir}; choose one of {choices}")
        extra = ["--config-path", str(config_dir), "--config-name", config, *extra]
    return [python, str(find_solo_script(script)), *map(hydra_quote, extra), CALLBACK_OVERRIDE]
