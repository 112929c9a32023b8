"""The core clock while a benchmark runs: binary MACs per cycle need cycles, and a laptop or a
cloud VM runs anywhere between its base and boost clocks (this machine has no cycle counters to
read: ``perf`` reports them unsupported in most VMs).

Measured as the rate of a chain of dependent 64-bit integer additions, one per cycle on every x86
and Arm core since the first Pentium: ``inline asm`` so that no compiler folds it, timed best of
several rounds, like the kernels.
"""

from __future__ import annotations

import platform
import time

from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

__all__ = ["core_ghz"]

_CHAIN = 64  # dependent additions per call of the inline assembly


@intrinsic
def _add_chain(typingctx, x):
    """``x + 64``, as 64 additions of 1 that each wait for the one before."""
    if not isinstance(x, types.Integer):
        return None
    arm = platform.machine().lower() in ("aarch64", "arm64")
    one = "add $0, $0, #1" if arm else "addq $$1, $0"

    def codegen(context, builder, sig, args):
        fnty = ir.FunctionType(ir.IntType(64), [ir.IntType(64)])
        value = context.cast(builder, args[0], sig.args[0], types.int64)
        return builder.asm(fnty, "\n".join([one] * _CHAIN), "=r,0", [value], True)

    return types.int64(x), codegen


@njit(cache=False)
def _spin(n: int) -> int:
    x = 0
    for _ in range(n):
        x = _add_chain(x)
    return x


def core_ghz(seconds: float = 0.05, rounds: int = 7) -> float:
    """The core clock in GHz: dependent additions per second, best of ``rounds`` rounds of about
    ``seconds`` each (the first call compiles, in about a second)."""
    import llvmlite.binding as ll

    ll.initialize_native_asmparser()  # Numba sets up LLVM without it; inline asm needs it
    _spin(1)
    n = 1000
    t = 0.0
    while t < seconds / 4:
        n *= 4
        t0 = time.perf_counter()
        _spin(n)
        t = time.perf_counter() - t0
    n = int(n * seconds / t)
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        done = _spin(n)
        best = min(best, time.perf_counter() - t0)
    assert done == n * _CHAIN
    return n * _CHAIN / best / 1e9
