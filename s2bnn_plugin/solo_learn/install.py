"""``s2bnn setup-solo``: put the pinned solo-learn tree where the active Python imports it.

solo-learn cannot be pip-installed usefully (PyPI's release is from 2021, and its ``setup.py``
needs ``pkg_resources`` and leaves the scripts out of a wheel), so the tree is unpacked into a
per-user cache folder (``$S2BNN_CACHE_DIR`` or ``$XDG_CACHE_HOME/s2bnn`` or ``~/.cache/s2bnn``,
then ``solo-learn/<commit>/``) and a ``.pth`` file in the environment's site-packages puts it on
``sys.path``. Sources, in this order: ``--from PATH`` (a checkout or a ``.tar.gz`` of one), the
environment variable ``S2BNN_SOLO_SOURCE`` (the same), else a download of the pinned commit's
archive from GitHub.

Nothing is left half-installed: the tree is unpacked into a temporary folder beside its final
place and renamed when complete; the ``.pth`` file is written last, atomically.
"""

from __future__ import annotations

import os
import re
import shutil
import site
import sys
import sysconfig
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from s2bnn_plugin.errors import S2BNNError
from s2bnn_plugin.files import write_text
from s2bnn_plugin.solo_learn.locate import is_solo_tree, solo_checkout
from s2bnn_plugin.solo_learn.pin import (
    COMMIT_MARKER,
    SOLO_ARCHIVE_URL,
    SOLO_COMMIT,
    tree_commit,
)

__all__ = ["PTH_NAME", "SOURCE_ENV", "SetupResult", "SoloSetupError", "cache_root", "setup_solo"]

SOURCE_ENV = "S2BNN_SOLO_SOURCE"
PTH_NAME = "s2bnn_solo_learn.pth"
OTHER_COMMIT_FLAG = "--allow-other-commit"


class SoloSetupError(S2BNNError, RuntimeError):
    """solo-learn could not be installed; the message says why and what to do."""


@dataclass
class SetupResult:
    """What ``setup_solo`` did: the tree on ``sys.path``, its commit, the ``.pth`` file, and
    whether anything changed."""

    tree: Path
    commit: str | None
    pth: Path | None
    changed: bool
    message: str


def cache_root() -> Path:
    """The per-user folder the plugin keeps installed trees (and prepared data) in."""
    env = os.environ.get("S2BNN_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "s2bnn"


def site_packages() -> Path:
    """Where this Python reads ``.pth`` files: the environment's site-packages, or the user's
    site-packages when that one is not writable (a system Python without root)."""
    purelib = Path(sysconfig.get_paths()["purelib"])
    if os.access(purelib, os.W_OK):
        return purelib
    in_venv = sys.prefix != getattr(sys, "base_prefix", sys.prefix)
    if not in_venv and site.ENABLE_USER_SITE:
        user = Path(site.getusersitepackages())
        user.mkdir(parents=True, exist_ok=True)
        return user
    raise SoloSetupError(
        f"cannot write to {purelib} (this Python's site-packages): run setup-solo with the "
        "permissions that installed the plugin, or use a virtual environment"
    )


def _extract(archive: Path, dest: Path) -> Path:
    """Unpack a solo-learn ``.tar.gz`` into ``dest``; returns the tree's root inside it."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=members, filter="data")
            else:  # pragma: no cover - Python < 3.11.4
                for m in members:
                    target = (dest / m.name).resolve()
                    if not str(target).startswith(str(dest.resolve())) or m.issym() or m.islnk():
                        raise SoloSetupError(f"{archive}: unsafe member {m.name!r}")
                tar.extractall(dest, members=members)
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        raise SoloSetupError(
            f"{archive} is not a readable .tar.gz ({type(e).__name__}: {e}); download it again "
            f"({SOLO_ARCHIVE_URL}) or give a checkout folder with --from"
        ) from e
    entries = [p for p in dest.iterdir()]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return dest


def _archive_commit(archive: Path) -> str | None:
    """The commit a GitHub archive was made from, read from its first entry's folder name
    (``solo-learn-<commit>/``) without unpacking it; ``None`` when it does not say."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            first = tar.next()
    except (tarfile.TarError, EOFError, OSError):
        return None  # _extract reports it
    if first is None:
        return None
    match = re.fullmatch(r"solo-learn-([0-9a-f]{40})", first.name.split("/")[0])
    return match.group(1) if match else None


def _download(url: str, dest: Path, timeout: float) -> None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as f:
            shutil.copyfileobj(response, f)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        reason = getattr(e, "reason", e)
        raise SoloSetupError(
            f"could not download solo-learn ({url}): {reason}. Offline, fetch that archive on a "
            f"machine with network access (or `git clone {url.split('/archive/')[0]}` and "
            f"`git checkout {SOLO_COMMIT}`), copy it here and run `s2bnn setup-solo --from "
            f"PATH` (or set {SOURCE_ENV}=PATH)"
        ) from e


def _source() -> tuple[str | None, str]:
    env = os.environ.get(SOURCE_ENV)
    return (env, f"${SOURCE_ENV}") if env else (None, "download")


def _check_commit(commit: str | None, where: str, allow_other: bool) -> None:
    if commit == SOLO_COMMIT or allow_other:
        return
    shown = commit or "unknown (no .git, no commit in its name)"
    raise SoloSetupError(
        f"{where} is solo-learn at commit {shown}, not the pinned {SOLO_COMMIT}: the plugin is "
        f"tested with the pinned commit only. Check out {SOLO_COMMIT[:7]} there, or pass "
        f"{OTHER_COMMIT_FLAG} to use it anyway"
    )


def _existing_pth_tree(pth: Path) -> Path | None:
    try:
        line = pth.read_text().strip().splitlines()[0]
    except (OSError, IndexError):
        return None
    return Path(line)


def setup_solo(
    source: str | os.PathLike[str] | None = None,
    *,
    allow_other_commit: bool = False,
    force: bool = False,
    timeout: float = 60.0,
    log: Callable[[str], None] = print,
    download: Callable[[str, Path, float], None] = _download,
) -> SetupResult:
    """Install solo-learn for this Python (see the module docstring); idempotent."""
    where_from = "--from"
    if source is None:
        source, where_from = _source()
    site_dir = site_packages()
    pth = site_dir / PTH_NAME
    current = _existing_pth_tree(pth) if pth.is_file() else None

    # Already importable from somewhere else (a hand-made .pth, PYTHONPATH, an editable install)?
    found = solo_checkout()
    if found is not None and source is None and not force:
        found_commit = tree_commit(found)
        on_our_pth = current is not None and found.resolve() == current.resolve()
        if found_commit == SOLO_COMMIT or (allow_other_commit and is_solo_tree(found)):
            note = "" if found_commit == SOLO_COMMIT else f" (commit {found_commit}, not pinned)"
            how = f"via {pth}" if on_our_pth else "already on sys.path"
            return SetupResult(
                found,
                found_commit,
                pth if on_our_pth else None,
                False,
                f"solo-learn is installed: {found}{note}, {how}; nothing to do",
            )
        if not on_our_pth:
            _check_commit(found_commit, f"the importable solo-learn at {found}", False)

    commit: str
    root = cache_root() / "solo-learn"
    if source is not None:
        src = Path(source).expanduser()
        if not src.exists():
            raise SoloSetupError(f"{where_from} {src}: no such file or folder")
        archives = sorted(src.glob("solo-learn-*.tar.gz")) if src.is_dir() else []
        if src.is_dir() and not is_solo_tree(src) and len(archives) == 1:
            src = archives[0]  # a folder holding one downloaded archive
        if src.is_dir():
            if not is_solo_tree(src):
                raise SoloSetupError(
                    f"{where_from} {src} is not a solo-learn source tree (it needs "
                    "solo/methods/, main_pretrain.py and main_linear.py): give the top folder "
                    "of a solo-learn checkout or its .tar.gz"
                )
            found_commit = tree_commit(src)
            _check_commit(found_commit, str(src), allow_other_commit)
            commit = found_commit or "unknown"
        elif not src.is_file():
            raise SoloSetupError(f"{where_from} {src} is neither a folder nor a file")
        else:
            commit = _archive_commit(src) or ""  # else read from the unpacked tree below
            if commit:
                _check_commit(commit, str(src), allow_other_commit)
    else:
        src = None
        commit = SOLO_COMMIT

    final = root / commit if commit else None
    if final is not None and not force and is_solo_tree(final):
        return _write_pth(final, tree_commit(final), pth, current, log)

    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".partial-", dir=root))
    try:
        if src is not None and src.is_dir():
            log(f"copying solo-learn from {src}")
            tree = work / "tree"
            shutil.copytree(src, tree, ignore=shutil.ignore_patterns(".git", "__pycache__"))
        else:
            archive = src
            if archive is None:
                archive = work / f"solo-learn-{SOLO_COMMIT}.tar.gz"
                log(f"downloading {SOLO_ARCHIVE_URL}")
                download(SOLO_ARCHIVE_URL, archive, timeout)
            log(f"unpacking {archive}")
            tree = _extract(archive, work / "unpacked")
            if not is_solo_tree(tree):
                raise SoloSetupError(
                    f"{archive} does not hold a solo-learn source tree (no solo/methods/, "
                    "main_pretrain.py, main_linear.py at its top folder)"
                )
            found_commit = tree_commit(tree)
            _check_commit(found_commit, str(archive), allow_other_commit)
            commit = commit or found_commit or "unknown"
        (tree / COMMIT_MARKER).write_text(commit + "\n")
        final = root / commit
        if final.exists():
            shutil.rmtree(final)
        tree.rename(final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return _write_pth(final, commit, pth, current, log)


def _write_pth(
    tree: Path, commit: str | None, pth: Path, current: Path | None, log: Callable[[str], None]
) -> SetupResult:
    if current is not None and current.resolve() == tree.resolve():
        return SetupResult(
            tree, commit, pth, False, f"solo-learn {commit} is installed: {tree} (via {pth})"
        )
    write_text(pth, f"{tree.resolve()}\n", force=True)
    log(f"wrote {pth}")
    return SetupResult(tree, commit, pth, True, f"installed solo-learn {commit}: {tree}")
