"""How much memory a command may ask for, and the one check every command runs before it
allocates what a file or an option asks for.

The limit is the machine's physical memory, or the memory limit of the control group the
process runs in when that is smaller (a container, a systemd slice); ``S2BNN_MEMORY_LIMIT``
(bytes, or with a unit: ``512M``, ``64G``, ``1.5T``) sets it instead. A command computes what
its work will take from the sizes it is given (a packed file's specification, a backbone's
keyword arguments, ``--batch`` and ``--size``), compares it with the limit before allocating
anything, and refuses with one line naming the value, the cost and the limit.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import NamedTuple

from s2bnn_plugin.errors import S2BNNError, UsageError

__all__ = [
    "MEMORY_LIMIT_ENV",
    "MemoryLimit",
    "MemoryLimitError",
    "format_bytes",
    "memory_limit",
    "parse_bytes",
    "require_memory",
]

MEMORY_LIMIT_ENV = "S2BNN_MEMORY_LIMIT"
UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
CGROUP_LIMITS = (
    Path("/sys/fs/cgroup/memory.max"),  # cgroup v2
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),  # cgroup v1
)


class MemoryLimitError(S2BNNError, MemoryError):
    """Work that would need more memory than the limit (:func:`memory_limit`)."""


class MemoryLimit(NamedTuple):
    """The limit in bytes and where it comes from (said in refusals)."""

    bytes: int
    source: str


def parse_bytes(text: str) -> int:
    """``"64G"`` (a number, optionally with K, M, G or T, powers of 1024; a trailing ``B`` or
    ``iB`` is allowed) as bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    value = float(m.group(1)) * UNITS[m.group(2).upper()] if m else math.nan
    if not math.isfinite(value) or value < 1:
        raise UsageError(
            f"{MEMORY_LIMIT_ENV}={text!r} is not a size; give bytes or a number with K, M, G or "
            f"T, e.g. {MEMORY_LIMIT_ENV}=64G"
        )
    return int(value)


def format_bytes(n: float) -> str:
    """``n`` bytes for a message: ``"51.5 GB"`` (powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):  # not a POSIX system that says
        return None


def _cgroup_limit() -> int | None:
    for path in CGROUP_LIMITS:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            return int(text)
    return None


def memory_limit() -> MemoryLimit:
    """What a command may allocate: ``S2BNN_MEMORY_LIMIT`` when set, else the smaller of the
    physical memory and the control group's limit (no limit when neither is known)."""
    text = os.environ.get(MEMORY_LIMIT_ENV)
    if text is not None:
        return MemoryLimit(parse_bytes(text), f"{MEMORY_LIMIT_ENV}={text}")
    physical, cgroup = _physical_memory(), _cgroup_limit()
    if cgroup is not None and (physical is None or cgroup < physical):
        return MemoryLimit(cgroup, "this process's control group limit")
    if physical is not None:
        return MemoryLimit(physical, "this machine's physical memory")
    return MemoryLimit(1 << 62, "no limit known")


def require_memory(cost: int, what: str) -> None:
    """Raise :class:`MemoryLimitError` when ``cost`` bytes (for ``what``: the value that asks
    for them) exceed :func:`memory_limit`; one line, with how to lift the limit."""
    limit = memory_limit()
    if cost > limit.bytes:
        raise MemoryLimitError(
            f"{what} would take about {format_bytes(cost)} of memory, more than the limit of "
            f"{format_bytes(limit.bytes)} ({limit.source}); make it smaller, or set "
            f"{MEMORY_LIMIT_ENV} (e.g. {MEMORY_LIMIT_ENV}=64G) if the machine has the memory"
        )
