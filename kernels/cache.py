"""Where Numba caches these kernels: one folder per digest of all the kernel sources.

Numba keys each cached function by its own source file, not by the helpers it inlines from other
files: after a change to ``simd.py`` alone, a cached ``bconv`` driver would go on running the old
intrinsics and give silently wrong results (a git pull into an editable install does exactly
that). So the package registers its own cache locator (Numba's
``numba.core.caching.CacheImpl._locator_classes``) for the functions defined in this folder:
their machine code goes to ``<root>/s2bnn_kernels/<digest>/<target>``, where ``<digest>`` is a
SHA-256 over the names and contents of every ``.py`` file here and ``<target>`` names the CPU and
feature set Numba compiles for (:func:`.variants.target_key`). Code compiled from other sources,
or for another CPU (a cache folder shared between machines, a copied home folder), sits in
another folder and is never loaded -- Numba's own index also keys each entry by the target, so
even code copied into this folder would not be loaded. Nothing is ever deleted, and nothing is
written inside the installed package (importing it is safe from many processes at once: DDP
ranks, data-loader workers). ``<root>`` is ``NUMBA_CACHE_DIR`` when set, else the user-wide
cache folder Numba itself would use (``~/.cache/numba`` on Linux), else the system's temporary
folder.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
from pathlib import Path

from numba.core import caching, config
from numba.core.caching import _CacheLocator, _SourceFileBackedLocatorMixin

from .variants import target_key

# ``CacheImpl`` since Numba 0.61 or so, ``_CacheImpl`` before
_CACHE_IMPL = getattr(caching, "CacheImpl", None) or caching._CacheImpl

__all__ = [
    "FIRST_COMPILE",
    "SUBDIR",
    "KernelCacheLocator",
    "cache_dir",
    "compiled_in",
    "other_versions",
    "source_digest",
]

SUBDIR = "s2bnn_kernels"
# what compiling the kernels that ReActNet-A runs takes, measured (CONTRIBUTING.md; under
# qemu-user, docs/cpu-engine.md, "aarch64")
FIRST_COMPILE = (
    "about 1.5 minutes on an AMD Zen 3 core, less on faster ones; minutes under emulation"
)
HERE = Path(__file__).resolve().parent


def source_digest(directory: Path) -> str:
    """SHA-256 over the names and contents of the package's ``.py`` files."""
    h = hashlib.sha256()
    for path in sorted(Path(directory).glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


@functools.cache
def _digest(directory: Path) -> str:
    return source_digest(directory)


def _roots() -> list[str]:
    """Cache roots in order of preference (see the module docstring)."""
    if config.CACHE_DIR:  # NUMBA_CACHE_DIR, as Numba read it
        return [config.CACHE_DIR]
    from numba.misc.appdirs import AppDirs

    user = AppDirs(appname="numba", appauthor=False).user_cache_dir
    return [user, os.path.join(tempfile.gettempdir(), f"numba-{os.getuid()}")]


def cache_dir(directory: Path = HERE, root: str | None = None) -> Path:
    """The folder holding the machine code compiled from the sources in ``directory`` for the
    target Numba compiles for (:func:`.variants.target_key`: CPU name and features)."""
    base = root if root is not None else _roots()[0]
    return Path(base) / SUBDIR / _digest(Path(directory))[:32] / target_key()


def compiled_in(function: str = "bconv.binary_conv_fused", directory: Path = HERE) -> Path | None:
    """The cache folder holding machine code of ``function`` (``"module.name"``, as Numba names
    its index files; by default the fused-unit driver, most of a first compile) compiled from the
    sources in ``directory``, or None when its first call will compile it."""
    for root in _roots():
        folder = cache_dir(directory, root)
        if any(folder.glob(f"{function}-*.nbi")):
            return folder
    return None


def other_versions(directory: Path = HERE) -> list[Path]:
    """Cache folders compiled from other versions of the sources: never loaded again (see the
    module), so safe to delete. (Folders of other CPUs under the current version stay: a cache
    folder shared between machines serves each of them.)"""
    current = {cache_dir(directory, root).parent for root in _roots()}
    found = []
    for root in _roots():
        parent = Path(root) / SUBDIR
        if parent.is_dir():
            found += [p for p in sorted(parent.iterdir()) if p.is_dir() and p not in current]
    return found


class KernelCacheLocator(_SourceFileBackedLocatorMixin, _CacheLocator):
    """Numba cache locator for the functions of this package: :func:`cache_dir`."""

    def __init__(self, py_func, py_file, path):
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno
        self._cache_path = str(path)

    def get_cache_path(self):
        return self._cache_path

    @classmethod
    def from_function(cls, py_func, py_file):
        folder = Path(py_file).resolve().parent
        if folder != HERE:
            return None  # not a kernel: Numba's own locators decide
        for root in _roots():
            self = cls(py_func, py_file, cache_dir(folder, root))
            try:
                self.ensure_cache_path()
            except OSError:
                continue
            return self
        return None


def register() -> None:
    """Put :class:`KernelCacheLocator` first in Numba's list (once; before any kernel module is
    imported, since ``@njit(cache=True)`` picks its locator when it decorates)."""
    if KernelCacheLocator not in _CACHE_IMPL._locator_classes:
        _CACHE_IMPL._locator_classes.insert(0, KernelCacheLocator)


register()
