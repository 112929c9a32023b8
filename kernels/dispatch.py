"""Calling a compiled kernel without Numba's per-call type resolution.

A Numba dispatcher works out its arguments' types on every call: in C for arrays and scalars, but
in Python for the named tuples the drivers take (:class:`.micro.ConvShape`,
:class:`.bitpack.BinaryWeights` with its :class:`.variants.KernelVariant`,
:class:`.bconv.FusedOutput`), 40-140 microseconds a call on Zen 3: 2-4 ms of a 21-23 ms
ReActNet-A forward pass at batch 1, whose bound calls run it 5-9 % faster. A call whose
arguments stay the same objects from one forward pass to the next (the packed network's own
buffers) is resolved once by :func:`bind`, and each pass then calls the compiled entry point
directly.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from numba import typeof
from numba.core.typing.typeof import Purpose

__all__ = ["bind"]


def bind(fn: Any, *args: Any) -> Callable[[], Any]:
    """``fn(*args)`` as a call of no arguments that goes straight to the machine code compiled
    for these arguments' types (compiling it, or loading it from the cache, now if need be).

    ``fn``: a Numba dispatcher. The entry point checks nothing of what it is given, so the call
    holds on to ``args`` themselves: the same objects, their types fixed when bound (an array
    keeps its dtype, shape and layout; fill it in place to change its values).
    """
    signature = tuple(typeof(a, Purpose.argument) for a in args)
    return partial(fn.compile(signature), *args)
