"""The solo-learn commit the plugin is built and tested against, and how to tell a tree's commit.

solo-learn is not on PyPI in a usable form (PyPI's ``solo-learn`` is a 2021 release); the plugin
pins one commit of its GitHub repository (:data:`SOLO_COMMIT`, the one place it is written),
which ``s2bnn setup-solo`` (:mod:`.install`) puts on ``sys.path``.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = [
    "COMMIT_MARKER",
    "INSTALL_HINT",
    "SOLO_ARCHIVE_URL",
    "SOLO_COMMIT",
    "SOLO_REPOSITORY",
    "SOLO_VERSION",
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

_HEX40 = re.compile(r"[0-9a-f]{40}")


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
