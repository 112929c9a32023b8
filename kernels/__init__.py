"""Bit-packed XNOR-popcount kernels (Numba only). Installed as ``s2bnn_plugin.kernels``.

Modules: :mod:`.simd` (LLVM intrinsics: popcount, 8 x int64, 16 x int32 and 16 x float32
vector values, masked loads, raw pointers), :mod:`.bitpack` (sign packing, weight layouts),
:mod:`.micro` (the micro-kernels and their blocks of output positions), :mod:`.border` (exact
zero-padding corrections), :mod:`.epilogue` (the fused unit's float epilogue inside the
micro-kernel, on its accumulator registers), :mod:`.table` (a block's position table, the
epilogues' per-position offsets), :mod:`.bconv` (the binary convolution drivers:
exact accumulation, fused unit), :mod:`.realops` (stem convolution, pooling, projection
shortcut), :mod:`.assembly` (does the compiled code use ``vpopcntq`` / ``vpopcntd``?),
:mod:`.dispatch` (a compiled call bound to its arguments: no per-call type resolution).

All functions are ``@njit(cache=True)``: the first call in a fresh environment compiles them
(:data:`.cache.FIRST_COMPILE` for what a ReActNet-A runs; ``PackedNetwork`` says so first),
later processes load the cached machine code. :mod:`.cache` keeps that code in one
folder per digest of all the kernel sources (under ``NUMBA_CACHE_DIR`` when set, else Numba's
user-wide cache folder), so code compiled from other sources is never loaded (Numba alone
would keep code that inlined an edited helper), and importing writes nothing in the package. The
parallel ones run on Numba's thread pool (``numba.set_num_threads``); only their outermost loop
is a ``prange`` and every iteration writes its own output rows. ``NUMBA_CPU_NAME=generic``
compiles portable code for CPUs without AVX-512 (the vector popcount and masked loads are then
emulated).

Layouts (see :mod:`.bitpack`): float maps are flat NHWC float32; sign bits are packed along
channels into uint64 words, flat ``(T, N, H + 2 pad, W + 2 pad, words)``; binary weights are in
blocks of 32 output channels, flat ``(blocks, k * k, words, 32)`` as stored, and as the kernels
read them after :func:`kernel_weights` (which keeps only the low 32 bits per lane when there are
at most 32 input channels). The inner loops have no bounds checks; each public kernel checks
its buffer sizes first and raises ``ValueError``. The safe, validated entry point is
:class:`s2bnn_plugin.runtime.PackedNetwork`.
"""

# First: Numba picks a function's cache locator when ``@njit(cache=True)`` decorates it.
from .cache import KernelCacheLocator as _KernelCacheLocator  # noqa: F401 (registers itself)

# isort: split
from .bconv import (
    POSITIONS,
    FusedOutput,
    binary_conv_acc,
    binary_conv_fused,
    binary_gemm,
    block_positions,
    out_size,
)
from .bitpack import (
    LANES,
    NARROW_CHANNELS,
    BinaryWeights,
    aligned,
    binary_weights,
    kernel_weights,
    pack_signs,
    pack_weights,
    tap_sums,
    words_for,
)
from .dispatch import bind
from .epilogue import pools_output
from .micro import ConvShape
from .realops import conv_nchw_bn, global_avgpool, maxpool3x3s2, projection_shortcut
from .simd import popcount64
from .variants import VARIANTS, KernelVariant
from .variants import select as select_variant

__all__ = [
    "LANES",
    "NARROW_CHANNELS",
    "POSITIONS",
    "VARIANTS",
    "BinaryWeights",
    "ConvShape",
    "FusedOutput",
    "KernelVariant",
    "aligned",
    "binary_conv_acc",
    "binary_conv_fused",
    "binary_gemm",
    "binary_weights",
    "bind",
    "block_positions",
    "conv_nchw_bn",
    "global_avgpool",
    "kernel_weights",
    "maxpool3x3s2",
    "out_size",
    "pack_signs",
    "pack_weights",
    "popcount64",
    "pools_output",
    "projection_shortcut",
    "select_variant",
    "tap_sums",
    "words_for",
]
