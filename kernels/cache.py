"""Keeps Numba's on-disk cache of these kernels from going stale.

Numba keys each cached function by its own source file, not by the helpers it inlines from other
files: after a change to ``simd.py`` alone, a cached ``bconv`` driver would go on running the old
intrinsics and give silently wrong results (a git pull into an editable install does exactly
that). So the package stamps its cache with a digest of all its sources and drops the cached
machine code whenever that digest changes; the next call recompiles (about 20 s).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["drop_stale_cache", "source_digest"]

STAMP = "s2bnn_kernels.sha256"


def source_digest(directory: Path) -> str:
    """SHA-256 over the names and contents of the package's ``.py`` files."""
    h = hashlib.sha256()
    for path in sorted(directory.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def drop_stale_cache(directory: Path) -> bool:
    """Delete ``directory/__pycache__``'s Numba files (``*.nbi``, ``*.nbc``) unless they were
    compiled from the current sources; returns whether anything was dropped.

    Unwritable caches (read-only installs, where Numba caches elsewhere) and a custom
    ``NUMBA_CACHE_DIR`` are left alone: sources there do not change under a running install.
    """
    if os.environ.get("NUMBA_CACHE_DIR"):
        return False
    cache = directory / "__pycache__"
    digest = source_digest(directory)
    stamp = cache / STAMP
    try:
        if stamp.read_text() == digest:
            return False
    except OSError:
        pass
    dropped = False
    try:
        for f in list(cache.glob("*.nbi")) + list(cache.glob("*.nbc")):
            f.unlink(missing_ok=True)
            dropped = True
        cache.mkdir(exist_ok=True)
        stamp.write_text(digest)
    except OSError:
        return dropped
    return dropped
