"""What the compiled micro-kernel looks like on this machine (no cache: inspection needs a fresh
compile, cached code has no assembly attached).

Why: the speed of the binary layers rests on the vector popcount (``vpopcntq`` on zmm registers
with AVX-512 VPOPCNTDQ); this reports whether the code Numba generated here actually uses it.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .bconv import _micro_kernel

__all__ = ["micro_kernel_asm", "popcount_report"]


def micro_kernel_asm() -> str:
    """Assembly of the binary-convolution micro-kernel, compiled now for the current target."""
    fresh = njit(cache=False)(_micro_kernel.py_func)
    bits = np.zeros(64, np.uint64)
    acc = np.zeros(4 * 32, np.float32)
    fresh(bits, 0, 1, 2, 3, bits, 0, 1, 1, 1, acc, 0, 32)
    return "\n".join(fresh.inspect_asm().values())


def popcount_report() -> dict[str, object]:
    """Counts of the popcount instructions in the micro-kernel and the target CPU name."""
    import llvmlite.binding as llvm
    from numba.core import config

    asm = micro_kernel_asm()
    lines = [line.strip() for line in asm.splitlines()]
    return {
        "cpu": config.CPU_NAME or llvm.get_host_cpu_name(),
        "vpopcntq": sum(1 for line in lines if line.startswith("vpopcntq")),
        "vpopcntq_zmm": sum(1 for line in lines if line.startswith("vpopcntq") and "zmm" in line),
        "popcnt_scalar": sum(1 for line in lines if line.startswith("popcnt")),
    }
