"""What the compiled micro-kernel looks like on this machine (no cache: inspection needs a fresh
compile, cached code has no assembly attached).

Why: the speed of the binary layers rests on the tap loop's instructions -- the vector popcount
(``vpopcntq`` on zmm registers with AVX-512 VPOPCNTDQ), the byte lookups (``vpshufb``) and their
widening (``vpsadbw``) elsewhere -- and on the accumulators staying in registers; this reports
what the code Numba generated here actually uses.
"""

from __future__ import annotations

import numpy as np
from numba import njit, typeof

from .micro import micro_kernel, micro_kernel_narrow
from .simd import address
from .variants import KernelVariant
from .variants import select as select_variant

__all__ = ["micro_kernel_asm", "micro_kernel_llvm", "popcount_report"]


def micro_kernel_asm(variant: KernelVariant | None = None, narrow: bool = False) -> str:
    """Assembly of a binary-convolution micro-kernel of ``variant`` (default: the one this CPU
    runs), with 64-bit lanes or, with ``narrow``, the 32-bit one of layers with at most 32 input
    channels, compiled now for the current target without being run (so it also works for a
    target this CPU cannot execute, ``NUMBA_CPU_NAME``). Sizes are run-time values (no loop is
    unrolled away for them)."""
    return "\n".join(_compiled(variant, narrow).inspect_asm().values())


def micro_kernel_llvm(variant: KernelVariant | None = None, narrow: bool = False) -> str:
    """The optimised LLVM IR of the same micro-kernel (:func:`micro_kernel_asm`), for tools that
    compile it for another target (``tools/mca_estimate.py``)."""
    return "\n".join(_compiled(variant, narrow).inspect_llvm().values())


def _compiled(variant: KernelVariant | None, narrow: bool):
    """A fresh, uncached dispatcher of the micro-kernel, compiled for ``variant``."""
    variant = variant or select_variant()
    kernel = micro_kernel_narrow if narrow else micro_kernel
    fresh = njit(cache=False)(kernel.py_func)

    # A caller compiled (not run) for these argument types compiles the kernel too.
    @njit(cache=False)
    def call(v, bits, acc, out, scr, sizes):
        pb, pa, po, ps = address(bits), address(acc), address(out), address(scr)
        k, words, rowstride = sizes[0], sizes[1], sizes[2]
        if narrow:
            fresh(v, pb, 0, 1, 2, 3, 4, 5, 6, 7, pb, 0, k, rowstride, pa, po, False, 1, 0, 32, ps)
        else:
            fresh(v, pb, 0, 1, 2, 3, pb, 0, k, rowstride, words, pa, po, False, 1, 0, 32, ps)

    args = (
        variant, np.zeros(64, np.uint64), np.zeros(8 * 32, np.float32),
        np.zeros(8 * 32, np.int32), np.zeros(256, np.int64), np.array([1, 1, 1], np.int64),
    )  # fmt: skip
    call.compile(tuple(typeof(a) for a in args))
    return fresh


def _count(lines: list[str], op: str, reg: str = "") -> int:
    return sum(1 for line in lines if line.startswith(op) and reg in line)


def popcount_report(variant: KernelVariant | None = None) -> dict[str, object]:
    """Counts of the popcount instructions in the two micro-kernels of ``variant`` (default:
    the one this CPU runs), of their scalar integer-to-float conversions (``vcvtsi2ss``: the
    popcounts would be converted lane by lane), and the target CPU name."""
    import llvmlite.binding as llvm
    from numba.core import config

    variant = variant or select_variant()
    lines = [line.strip() for line in micro_kernel_asm(variant).splitlines()]
    narrow = [line.strip() for line in micro_kernel_asm(variant, narrow=True).splitlines()]
    return {
        "cpu": config.CPU_NAME or llvm.get_host_cpu_name(),
        "variant": variant.name,
        "vpopcntq": _count(lines, "vpopcntq"),
        "vpopcntq_zmm": _count(lines, "vpopcntq", "zmm"),
        "vpopcntd_zmm": _count(narrow, "vpopcntd", "zmm"),
        "vpshufb": _count(lines, "vpshufb"),
        "vpshufb_zmm": _count(lines, "vpshufb", "zmm"),
        "vpsadbw": _count(lines, "vpsadbw"),
        "popcnt_scalar": _count(lines + narrow, "popcnt"),
        "vcvtsi2ss": _count(lines + narrow, "vcvtsi2ss"),
    }
