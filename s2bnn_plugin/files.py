"""Writing the plugin's output files: checked before the work, created exclusively, whole or not
at all.

Every file the plugin writes goes through here (packed files, OpenVINO IRs, ``eval --json``
reports, the demo's markers and caches, Fashion-MNIST's images, the ``.pth`` of
``setup-solo``):

- :func:`check_output` refuses, before any work starts, an output path that cannot or must not
  be written: one that exists (unless ``force``), a folder, a path in a missing or read-only
  folder, a name longer than the file system allows, or one of the command's own inputs. Each
  error is one line naming the path and the fix.
- :func:`atomic_file` (:func:`atomic_open` for an open file, :func:`write_text` for text)
  writes to a temporary file beside the target and moves it into place only when the writing
  succeeded, so a reader never sees half a file. Without ``force`` the target is created
  exclusively: a file, folder or symbolic link (dangling or not) that appeared there while the
  work ran is never replaced. With ``force`` an existing file or link is replaced (the link
  itself, never the file it points to); a folder never is.
- :func:`atomic_files` does the same for a group of files that belong together (an OpenVINO IR's
  ``.xml`` and ``.bin``): all of them are put in place, or none.

Temporaries are named ``.<name>.<8 hex digits>.partial`` (hidden, and ending in ``.partial``,
which no reader of the plugin loads; :func:`is_partial` recognises them). They are removed on
every exit Python sees: an exception, ``KeyboardInterrupt``, and ``SIGTERM`` (which, while a
temporary exists in the main thread and no other handler is set, exits with status 143 through
Python's unwinding instead of killing the process outright). Only ``SIGKILL`` or a power cut
can leave one behind; it is safe to delete.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import signal
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from s2bnn_plugin.errors import UsageError

__all__ = [
    "PARTIAL_PATTERN",
    "OutputError",
    "atomic_file",
    "atomic_files",
    "atomic_open",
    "check_output",
    "is_partial",
    "write_text",
]

PARTIAL_SUFFIX = ".partial"
PARTIAL_PATTERN = ".<name>.<8 hex digits>.partial"
"""How a temporary is named (documented for the files a ``SIGKILL`` can leave behind)."""

_PARTIAL_RE = re.compile(r"\..*\.[0-9a-f]{8}\.partial", re.DOTALL)
_TOKEN_BYTES = 4  # 8 hex digits
# "." + name + "." + 8 hex digits + ".partial": the bytes a temporary's name adds to the target's
_PARTIAL_EXTRA = 1 + 1 + 2 * _TOKEN_BYTES + len(PARTIAL_SUFFIX)
_DEFAULT_NAME_MAX = 255
_DEFAULT_PATH_MAX = 4096
# what os.link raises where the file system has no hard links
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK}


class OutputError(UsageError):
    """An output path that cannot or must not be written (the message names it and the fix)."""


def is_partial(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is named like a temporary of this module (``.<name>.<hex>.partial``)."""
    return _PARTIAL_RE.fullmatch(Path(path).name) is not None


def _limit(folder: Path, name: str, default: int) -> int:
    try:
        return os.pathconf(folder, name)
    except (OSError, ValueError, AttributeError):
        return default


def _partial_name(target: Path) -> str:
    """A fresh temporary's name for ``target``: its name shortened so the whole fits the folder's
    file system (a 250-byte target name still gets a temporary)."""
    room = _limit(target.parent, "PC_NAME_MAX", _DEFAULT_NAME_MAX) - _PARTIAL_EXTRA
    name = os.fsencode(target.name)[: max(room, 1)].decode("utf-8", "ignore") or "out"
    return f".{name}.{secrets.token_hex(_TOKEN_BYTES)}{PARTIAL_SUFFIX}"


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def check_output(
    path: str | os.PathLike[str],
    *,
    force: bool = False,
    option: str = "output",
    inputs: Iterable[str | os.PathLike[str]] = (),
) -> Path:
    """``path`` as a :class:`Path` if a command may write it; else :class:`OutputError`, one line
    naming ``option``, the path and the fix. Call it before the work whose result the file
    holds, so that nothing is computed for a file that cannot be written. ``inputs`` are the
    command's input files, which an output must never replace, even with ``force``."""
    out = Path(path)
    where = f"{option} {out}"
    parent = out.parent
    if not parent.is_dir():
        raise OutputError(f"{where}: the folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(
            f"{where}: the folder {parent} is not writable; give a path in a folder you can write"
        )
    name_max = _limit(parent, "PC_NAME_MAX", _DEFAULT_NAME_MAX)
    if len(os.fsencode(out.name)) > name_max:
        raise OutputError(
            f"{where}: the file name is {len(os.fsencode(out.name))} bytes long, more than the "
            f"{name_max} this file system allows; give a shorter name"
        )
    path_max = _limit(parent, "PC_PATH_MAX", _DEFAULT_PATH_MAX)
    if len(os.fsencode(os.path.abspath(out))) >= path_max:
        raise OutputError(
            f"{where}: the path is longer than the {path_max} bytes this system allows; give a "
            "shorter path"
        )
    if out.is_dir():
        raise OutputError(f"{where} is a folder; give a file name, e.g. {out / 'out'}")
    for source in inputs:
        if out.exists() and _same_file(out, Path(source)):
            raise OutputError(
                f"{where} is also this command's input {source}; writing it would destroy that "
                "input: give another output path"
            )
    if os.path.lexists(out) and not force:
        if out.is_symlink() and not out.exists():
            raise OutputError(
                f"{where} is a symbolic link to a missing file ({os.readlink(out)}); remove it, "
                "or pass --force to replace the link"
            )
        raise OutputError(f"{where} exists; pass --force to overwrite it")
    return out


# ---------------------------------------------------------------------------------- signals


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """While the block runs, ``SIGTERM`` raises :class:`SystemExit` (status 143), so that the
    temporaries' clean-up runs; only in the main thread, and only where no handler is set."""
    if threading.current_thread() is not threading.main_thread() or (
        signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


# ---------------------------------------------------------------------------------- writing


def _create_partial(target: Path) -> Path:
    """An empty new temporary beside ``target``, mode 0666 less the umask, as ``open()`` gives."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = target.with_name(_partial_name(target))
        try:
            os.close(os.open(tmp, flags, 0o666))
            return tmp
        except FileExistsError:
            continue


def _fsync(path: Path, *, folder: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if folder else 0))
    except OSError:
        if folder:  # some systems cannot open a folder; its entries are then synced as a whole
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not folder:
            raise
    finally:
        os.close(fd)


def _occupied(target: Path, what: str) -> OutputError:
    """The error for a target that something occupies when the output is moved into place (it
    appeared while the work ran, unless the caller skipped :func:`check_output`)."""
    folder = target.is_dir() and not target.is_symlink()
    kind = "folder" if folder else "symbolic link" if target.is_symlink() else "file"
    fix = "move it away and run again" if folder else "run again with --force to overwrite it"
    return OutputError(
        f"{target}: a {kind} is there now, which {what} does not replace (it appeared while the "
        f"work ran); nothing was written: {fix}"
    )


def _link_exclusive(tmp: Path, target: Path, what: str) -> None:
    """Put ``tmp``'s file at ``target`` only if nothing (no file, folder or link) is there."""
    try:
        os.link(tmp, target)
        return
    except FileExistsError:
        raise _occupied(target, what) from None
    except OSError as e:
        if e.errno not in _NO_HARD_LINKS:
            raise
    # no hard links here: claim the name exclusively with an empty file, then move onto it
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        os.close(os.open(target, flags, 0o600))
    except FileExistsError:
        raise _occupied(target, what) from None
    os.replace(tmp, target)


def _publish(pairs: Sequence[tuple[Path, Path]], force: bool, what: str) -> None:
    """Move each temporary to its target: all of them, or (on any failure) none, every target
    as it was before."""
    for _, target in pairs:
        if target.is_dir() and not target.is_symlink():
            raise _occupied(target, what)
    # (target, a link to the file it replaces (groups only), whether the target was created)
    done: list[tuple[Path, Path | None, bool]] = []
    try:
        for tmp, target in pairs:
            if force and os.path.lexists(target):
                backup = None
                if len(pairs) > 1:  # kept until the whole group is in place
                    backup = target.with_name(_partial_name(target))
                    os.link(target, backup, follow_symlinks=False)
                done.append((target, backup, False))
                os.replace(tmp, target)
            else:
                _link_exclusive(tmp, target, what)
                done.append((target, None, True))
    except BaseException:
        for target, backup, created in reversed(done):
            with contextlib.suppress(OSError):
                if created:
                    os.unlink(target)
                elif backup is not None:
                    os.replace(backup, target)
        raise
    finally:
        for _, backup, _ in done:
            if backup is not None:
                with contextlib.suppress(OSError):
                    os.unlink(backup)


@contextlib.contextmanager
def atomic_file(
    path: str | os.PathLike[str], *, force: bool = False, what: str = "the command"
) -> Iterator[Path]:
    """Yield a new temporary file's path beside ``path``; write the output there. When the block
    ends without an exception the temporary is flushed to disk and moved to ``path`` (created
    exclusively unless ``force``; see the module's docstring); on any exit it is removed.
    ``what`` names the work in an error (``"s2bnn pack"``)."""
    target = Path(path)
    with _sigterm_unwinds():
        tmp = _create_partial(target)
        try:
            yield tmp
            _fsync(tmp)
            _publish([(tmp, target)], force, what)
            _fsync(target.parent, folder=True)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


@contextlib.contextmanager
def atomic_files(
    paths: Sequence[str | os.PathLike[str]], *, force: bool = False, what: str = "the command"
) -> Iterator[list[Path]]:
    """Yield paths with the same names as ``paths`` (files in one folder) inside a new temporary
    folder beside them; write the outputs there. When the block ends without an exception every
    one is flushed and moved into place, all of them or (if one cannot be) none; on any exit
    the temporary folder is removed."""
    targets = [Path(p) for p in paths]
    folders = {t.parent for t in targets}
    if len(folders) != 1 or len({t.name for t in targets}) != len(targets):
        raise ValueError(f"a group of outputs has distinct names in one folder, got {targets}")
    with _sigterm_unwinds():
        while True:
            work = targets[0].with_name(_partial_name(targets[0]))
            try:
                work.mkdir()
                break
            except FileExistsError:
                continue
        try:
            inside = [work / t.name for t in targets]
            yield inside
            for tmp in inside:
                _fsync(tmp)
            _publish(list(zip(inside, targets)), force, what)
            _fsync(targets[0].parent, folder=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike[str], *, force: bool = False, what: str = "the command"
) -> Iterator[BinaryIO]:
    """:func:`atomic_file` as an open binary file (for writers that take one: ``np.save``,
    ``np.savez``, ``Figure.savefig``); closed before the temporary is moved into place."""
    with atomic_file(path, force=force, what=what) as tmp, tmp.open("wb") as f:
        yield f


def write_text(
    path: str | os.PathLike[str], text: str, *, force: bool = False, what: str = "the command"
) -> Path:
    """``text`` as the file ``path`` (UTF-8), through :func:`atomic_file`."""
    with atomic_file(path, force=force, what=what) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
