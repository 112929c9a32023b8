"""What the compiled micro-kernel looks like on this machine (no cache: inspection needs a fresh
compile, cached code has no assembly attached).

Why: the speed of the binary layers rests on the vector popcount (``vpopcntq`` on zmm registers
with AVX-512 VPOPCNTDQ); this reports whether the code Numba generated here actually uses it.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .micro import micro_kernel, micro_kernel_narrow
from .simd import address

__all__ = ["micro_kernel_asm", "popcount_report"]


def micro_kernel_asm(narrow: bool = False) -> str:
    """Assembly of a binary-convolution micro-kernel (64-bit lanes, or with ``narrow`` the
    32-bit one of layers with at most 32 input channels), compiled now for the current target."""
    kernel = micro_kernel_narrow if narrow else micro_kernel
    fresh = njit(cache=False)(kernel.py_func)

    # One call on small buffers (a 1x1 tap, one word, the positions one word apart, popcounts
    # to ``acc``): it compiles the kernel for these argument types, whatever the values.
    @njit(cache=False)
    def call(bits, acc, out):
        pb, pa, po = address(bits), address(acc), address(out)
        if narrow:
            fresh(
                bits=pb, b0=0, b1=1, b2=2, b3=3, b4=4, b5=5, b6=6, b7=7, wt=pb, wofs=0, k=1,
                rowstride=1, acc=pa, out=po, direct=False, ktot=1, aofs=0, astride=32,
            )  # fmt: skip
        else:
            fresh(
                bits=pb, b0=0, b1=1, b2=2, b3=3, wt=pb, wofs=0, k=1, rowstride=1, words=1,
                acc=pa, out=po, direct=False, ktot=1, aofs=0, astride=32,
            )  # fmt: skip

    call(np.zeros(64, np.uint64), np.zeros(8 * 32, np.float32), np.zeros(8 * 32, np.int32))
    return "\n".join(fresh.inspect_asm().values())


def popcount_report() -> dict[str, object]:
    """Counts of the popcount instructions in the two micro-kernels and the target CPU name."""
    import llvmlite.binding as llvm
    from numba.core import config

    lines = [line.strip() for line in micro_kernel_asm().splitlines()]
    narrow = [line.strip() for line in micro_kernel_asm(narrow=True).splitlines()]
    return {
        "cpu": config.CPU_NAME or llvm.get_host_cpu_name(),
        "vpopcntq": sum(1 for line in lines if line.startswith("vpopcntq")),
        "vpopcntq_zmm": sum(1 for line in lines if line.startswith("vpopcntq") and "zmm" in line),
        "vpopcntd_zmm": sum(1 for line in narrow if line.startswith("vpopcntd") and "zmm" in line),
        "popcnt_scalar": sum(1 for line in lines + narrow if line.startswith("popcnt")),
    }
