"""XOR-popcount binary convolution (k x k, stride 1 or 2, any channel count, any batch).

For +-1 vectors packed as bits (set = -1), ``dot(a, w) = K - 2 * popcount(a ^ w)``. The work is
split as in a float GEMM micro-kernel: a block of 4 output positions x 32 output channels keeps
its 16 accumulators (8 lanes of 64 bits each) in registers while the loop runs over taps and
input words; each activation word is loaded once and reused for 32 output channels, each weight
vector for 4 positions. Layers with at most 32 input channels fill only half of each word: they
use 16 lanes of 32 bits (``vpopcntd``) and blocks of 8 positions x 32 channels instead, twice the
useful work per instruction. The micro-kernels take raw pointers (:func:`.simd.address`), so no
reference counting -- a runtime call that pushes every accumulator out of its register -- runs
inside them.

Inputs of a 3x3 convolution carry a one-pixel border of zero words, so the inner loop has no
bounds checks; a zero word reads as +1 in every channel where the model's zero padding
contributes 0, and the weight sums of the missing taps are subtracted afterwards (only at border
positions, from a table with one row per kind of border position), which makes the accumulation
exact.

Two drivers share the micro-kernels: :func:`binary_conv_acc` returns the exact integer
accumulations (the tests compare them with ``F.conv2d`` on +-1 tensors; stored straight from the
registers, and along padding-free rows without per-block bookkeeping); :func:`binary_conv_fused`
applies the whole output transform in the same pass -- weight scale, BatchNorm, the residual
(optionally 2x2-average-pooled), RPReLU -- writes the float map needed by the next residual and
packs the next layer's sign bits directly. Parallel over blocks of output positions (``prange``
on the outermost loop only; every job writes disjoint output rows).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .bitpack import LANES, NARROW_CHANNELS, pack_row, words_for
from .simd import (
    address,
    fadd,
    fdiv,
    fload,
    fload_n,
    fmul,
    fprelu,
    fsplat,
    fstore,
    fstore_i32,
    fstore_n,
    iadd16,
    load,
    load_u64,
    store,
    vload,
    vload32,
    vstore32_dot,
    vstore32_f32,
    vstore_dot,
    vstore_f32,
    vxor_popcount_add,
    vxor_popcount_add32,
    vzero,
    vzero32,
)

__all__ = [
    "POSITIONS",
    "binary_conv_acc",
    "binary_conv_fused",
    "binary_gemm",
    "block_positions",
    "out_size",
]

POSITIONS = 4  # output positions per micro-kernel call


@njit(cache=True)
def out_size(size, k, stride):
    """Output length of a convolution with padding ``k // 2`` (``ceil(size / stride)`` for k=3)."""
    return (size + 2 * (k // 2) - k) // stride + 1


@njit(cache=True)
def _micro_kernel(
    bits, b0, b1, b2, b3, wt, wofs, k, rowstride, words, acc, out, direct, ktot, aofs, astride
):
    """popcount(a ^ w) summed over taps and words for 4 positions x 32 channels.

    ``b0..b3``: flat offsets of the 4 positions' top-left taps in ``bits``; ``wofs``: offset of
    the weight block. Results of position ``p``, lane ``l`` go to ``[aofs + p * astride + l]`` of
    the float32 ``acc`` as popcounts (exact: they stay far below 2**24), or with ``direct`` of
    the int32 ``out`` as the dot products ``ktot - 2 * popcount``.
    """
    c00 = vzero()
    c01 = vzero()
    c02 = vzero()
    c03 = vzero()
    c10 = vzero()
    c11 = vzero()
    c12 = vzero()
    c13 = vzero()
    c20 = vzero()
    c21 = vzero()
    c22 = vzero()
    c23 = vzero()
    c30 = vzero()
    c31 = vzero()
    c32 = vzero()
    c33 = vzero()
    for ky in range(k):
        for kx in range(k):
            toff = ky * rowstride + kx * words
            wtap = wofs + (ky * k + kx) * words * LANES
            for w in range(words):
                a0 = load_u64(bits, b0 + toff + w)
                a1 = load_u64(bits, b1 + toff + w)
                a2 = load_u64(bits, b2 + toff + w)
                a3 = load_u64(bits, b3 + toff + w)
                wi = wtap + w * LANES
                v0 = vload(wt, wi)
                v1 = vload(wt, wi + 8)
                v2 = vload(wt, wi + 16)
                v3 = vload(wt, wi + 24)
                c00 = vxor_popcount_add(c00, a0, v0)
                c01 = vxor_popcount_add(c01, a0, v1)
                c02 = vxor_popcount_add(c02, a0, v2)
                c03 = vxor_popcount_add(c03, a0, v3)
                c10 = vxor_popcount_add(c10, a1, v0)
                c11 = vxor_popcount_add(c11, a1, v1)
                c12 = vxor_popcount_add(c12, a1, v2)
                c13 = vxor_popcount_add(c13, a1, v3)
                c20 = vxor_popcount_add(c20, a2, v0)
                c21 = vxor_popcount_add(c21, a2, v1)
                c22 = vxor_popcount_add(c22, a2, v2)
                c23 = vxor_popcount_add(c23, a2, v3)
                c30 = vxor_popcount_add(c30, a3, v0)
                c31 = vxor_popcount_add(c31, a3, v1)
                c32 = vxor_popcount_add(c32, a3, v2)
                c33 = vxor_popcount_add(c33, a3, v3)
    if direct:
        _store4(out, aofs, astride, ktot, c00, c01, c02, c03, c10, c11, c12, c13, c20, c21, c22,
                c23, c30, c31, c32, c33)  # fmt: skip
        return
    vstore_f32(acc, aofs, c00)
    vstore_f32(acc, aofs + 8, c01)
    vstore_f32(acc, aofs + 16, c02)
    vstore_f32(acc, aofs + 24, c03)
    o = aofs + astride
    vstore_f32(acc, o, c10)
    vstore_f32(acc, o + 8, c11)
    vstore_f32(acc, o + 16, c12)
    vstore_f32(acc, o + 24, c13)
    o += astride
    vstore_f32(acc, o, c20)
    vstore_f32(acc, o + 8, c21)
    vstore_f32(acc, o + 16, c22)
    vstore_f32(acc, o + 24, c23)
    o += astride
    vstore_f32(acc, o, c30)
    vstore_f32(acc, o + 8, c31)
    vstore_f32(acc, o + 16, c32)
    vstore_f32(acc, o + 24, c33)


@njit(cache=True, inline="always")
def _store4(out, o, stride, ktot, c00, c01, c02, c03, c10, c11, c12, c13, c20, c21, c22, c23,
            c30, c31, c32, c33):  # fmt: skip
    """Dot products of :func:`_micro_kernel`'s 16 accumulators straight into int32 ``out``."""
    vstore_dot(out, o, c00, ktot)
    vstore_dot(out, o + 8, c01, ktot)
    vstore_dot(out, o + 16, c02, ktot)
    vstore_dot(out, o + 24, c03, ktot)
    o += stride
    vstore_dot(out, o, c10, ktot)
    vstore_dot(out, o + 8, c11, ktot)
    vstore_dot(out, o + 16, c12, ktot)
    vstore_dot(out, o + 24, c13, ktot)
    o += stride
    vstore_dot(out, o, c20, ktot)
    vstore_dot(out, o + 8, c21, ktot)
    vstore_dot(out, o + 16, c22, ktot)
    vstore_dot(out, o + 24, c23, ktot)
    o += stride
    vstore_dot(out, o, c30, ktot)
    vstore_dot(out, o + 8, c31, ktot)
    vstore_dot(out, o + 16, c32, ktot)
    vstore_dot(out, o + 24, c33, ktot)


@njit(cache=True)
def _micro_kernel_narrow(
    bits, b0, b1, b2, b3, b4, b5, b6, b7, wt, wofs, k, rowstride, acc, out, direct, ktot, aofs,
    astride,
):  # fmt: skip
    """:func:`_micro_kernel` for at most 32 input channels: 8 positions x 32 channels on 16-lane
    32-bit vectors (each pixel's word holds its bits in the low half).

    ``wt``: the narrow layout of :func:`.bitpack.kernel_weights`, 32 uint32 per tap and block;
    ``wofs`` counts uint32 elements. Results as in :func:`_micro_kernel`.
    """
    c00 = vzero32()
    c01 = vzero32()
    c10 = vzero32()
    c11 = vzero32()
    c20 = vzero32()
    c21 = vzero32()
    c30 = vzero32()
    c31 = vzero32()
    c40 = vzero32()
    c41 = vzero32()
    c50 = vzero32()
    c51 = vzero32()
    c60 = vzero32()
    c61 = vzero32()
    c70 = vzero32()
    c71 = vzero32()
    for ky in range(k):
        for kx in range(k):
            toff = ky * rowstride + kx
            wi = wofs + (ky * k + kx) * LANES
            v0 = vload32(wt, wi)
            v1 = vload32(wt, wi + 16)
            a = load_u64(bits, b0 + toff)
            c00 = vxor_popcount_add32(c00, a, v0)
            c01 = vxor_popcount_add32(c01, a, v1)
            a = load_u64(bits, b1 + toff)
            c10 = vxor_popcount_add32(c10, a, v0)
            c11 = vxor_popcount_add32(c11, a, v1)
            a = load_u64(bits, b2 + toff)
            c20 = vxor_popcount_add32(c20, a, v0)
            c21 = vxor_popcount_add32(c21, a, v1)
            a = load_u64(bits, b3 + toff)
            c30 = vxor_popcount_add32(c30, a, v0)
            c31 = vxor_popcount_add32(c31, a, v1)
            a = load_u64(bits, b4 + toff)
            c40 = vxor_popcount_add32(c40, a, v0)
            c41 = vxor_popcount_add32(c41, a, v1)
            a = load_u64(bits, b5 + toff)
            c50 = vxor_popcount_add32(c50, a, v0)
            c51 = vxor_popcount_add32(c51, a, v1)
            a = load_u64(bits, b6 + toff)
            c60 = vxor_popcount_add32(c60, a, v0)
            c61 = vxor_popcount_add32(c61, a, v1)
            a = load_u64(bits, b7 + toff)
            c70 = vxor_popcount_add32(c70, a, v0)
            c71 = vxor_popcount_add32(c71, a, v1)
    if direct:
        o = aofs
        vstore32_dot(out, o, c00, ktot)
        vstore32_dot(out, o + 16, c01, ktot)
        o += astride
        vstore32_dot(out, o, c10, ktot)
        vstore32_dot(out, o + 16, c11, ktot)
        o += astride
        vstore32_dot(out, o, c20, ktot)
        vstore32_dot(out, o + 16, c21, ktot)
        o += astride
        vstore32_dot(out, o, c30, ktot)
        vstore32_dot(out, o + 16, c31, ktot)
        o += astride
        vstore32_dot(out, o, c40, ktot)
        vstore32_dot(out, o + 16, c41, ktot)
        o += astride
        vstore32_dot(out, o, c50, ktot)
        vstore32_dot(out, o + 16, c51, ktot)
        o += astride
        vstore32_dot(out, o, c60, ktot)
        vstore32_dot(out, o + 16, c61, ktot)
        o += astride
        vstore32_dot(out, o, c70, ktot)
        vstore32_dot(out, o + 16, c71, ktot)
        return
    o = aofs
    vstore32_f32(acc, o, c00)
    vstore32_f32(acc, o + 16, c01)
    o += astride
    vstore32_f32(acc, o, c10)
    vstore32_f32(acc, o + 16, c11)
    o += astride
    vstore32_f32(acc, o, c20)
    vstore32_f32(acc, o + 16, c21)
    o += astride
    vstore32_f32(acc, o, c30)
    vstore32_f32(acc, o + 16, c31)
    o += astride
    vstore32_f32(acc, o, c40)
    vstore32_f32(acc, o + 16, c41)
    o += astride
    vstore32_f32(acc, o, c50)
    vstore32_f32(acc, o + 16, c51)
    o += astride
    vstore32_f32(acc, o, c60)
    vstore32_f32(acc, o + 16, c61)
    o += astride
    vstore32_f32(acc, o, c70)
    vstore32_f32(acc, o + 16, c71)


@njit(cache=True, inline="always")
def _next(oy, ox, wo):
    """The output position after (oy, ox) in row-major order."""
    if ox + 1 == wo:
        return oy + 1, 0
    return oy, ox + 1


@njit(cache=True, inline="always")
def _offset(oy, ox, stride, rowstride, words):
    return oy * stride * rowstride + ox * stride * words


@njit(cache=True, inline="always")
def _block_offsets(oy, ox, count, positions, wo, stride, rowstride, words):
    """Offsets of the top-left taps of up to 8 positions from (oy, ox) on, in row-major order;
    those past ``count`` repeat the last real one (same work, no branches in the micro-kernel)."""
    o0 = _offset(oy, ox, stride, rowstride, words)
    step = stride * words
    if ox + positions <= wo:  # the usual case: the whole block lies in one row
        return (o0, o0 + step, o0 + 2 * step, o0 + 3 * step, o0 + 4 * step, o0 + 5 * step,
                o0 + 6 * step, o0 + 7 * step)  # fmt: skip
    o1 = o0
    if count > 1:
        oy, ox = _next(oy, ox, wo)
        o1 = _offset(oy, ox, stride, rowstride, words)
    o2 = o1
    if count > 2:
        oy, ox = _next(oy, ox, wo)
        o2 = _offset(oy, ox, stride, rowstride, words)
    o3 = o2
    if count > 3:
        oy, ox = _next(oy, ox, wo)
        o3 = _offset(oy, ox, stride, rowstride, words)
    o4 = o3
    if count > 4:
        oy, ox = _next(oy, ox, wo)
        o4 = _offset(oy, ox, stride, rowstride, words)
    o5 = o4
    if count > 5:
        oy, ox = _next(oy, ox, wo)
        o5 = _offset(oy, ox, stride, rowstride, words)
    o6 = o5
    if count > 6:
        oy, ox = _next(oy, ox, wo)
        o6 = _offset(oy, ox, stride, rowstride, words)
    o7 = o6
    if count > 7:
        oy, ox = _next(oy, ox, wo)
        o7 = _offset(oy, ox, stride, rowstride, words)
    return o0, o1, o2, o3, o4, o5, o6, o7


@njit(cache=True, inline="always")
def _popcounts(
    bits, img, n, hp, wp, words, k, stride, wo, oy, ox, count, wt, narrow, groups, bpg, acc, out,
    direct, ktot, obase,
):  # fmt: skip
    """Popcounts of ``count`` positions from (oy, ox) on (at most :func:`_block_positions`),
    for every weight block: into ``acc`` (positions, columns) or, with ``direct``, as dot
    products into the int32 ``out`` from ``obase`` on (then ``count`` must be a full block and
    the columns the output channels).
    """
    rowstride = wp * words
    positions = _block_positions(narrow)
    o0, o1, o2, o3, o4, o5, o6, o7 = _block_offsets(
        oy, ox, count, positions, wo, stride, rowstride, words
    )
    _kernel_calls(
        address(bits), address(wt), address(acc), address(out), direct, ktot,
        obase if direct else 0, o0, o1, o2, o3, o4, o5, o6, o7, img, n, hp * rowstride, groups,
        bpg, k, rowstride, words, narrow,
    )  # fmt: skip


@njit(cache=True, inline="always")
def _kernel_calls(
    pbits, pwt, pacc, pout, direct, ktot, dst, o0, o1, o2, o3, o4, o5, o6, o7, img, n, plane,
    groups, bpg, k, rowstride, words, narrow,
):  # fmt: skip
    """One block: the micro-kernel for every weight block of every group. ``o0..o7``: the
    positions' top-left taps within an image plane (``plane`` words; the 4-position kernel
    reads the first four); results to ``dst + block * LANES`` of ``acc``/``out`` (raw pointers,
    see :func:`.simd.address`: nothing is reference-counted in here)."""
    cols = groups * bpg * LANES
    kk = k * k
    for g in range(groups):
        base = (g * n + img) * plane
        for j in range(bpg):
            blk = g * bpg + j
            if narrow:
                _micro_kernel_narrow(
                    pbits, base + o0, base + o1, base + o2, base + o3, base + o4, base + o5,
                    base + o6, base + o7, pwt, blk * kk * LANES, k, rowstride, pacc, pout, direct,
                    ktot, dst + blk * LANES, cols,
                )  # fmt: skip
            else:
                _micro_kernel(
                    pbits, base + o0, base + o1, base + o2, base + o3, pwt,
                    blk * kk * words * LANES, k, rowstride, words, pacc, pout, direct, ktot,
                    dst + blk * LANES, cols,
                )  # fmt: skip


@njit(cache=True, inline="always")
def _block_positions(narrow):
    """Output positions per micro-kernel call: 8 on narrow layers, else :data:`POSITIONS`."""
    return 2 * POSITIONS if narrow else POSITIONS


@njit(cache=True)
def block_positions(cin):
    """Output positions per block (the unit of ``chunk``) of a convolution over ``cin`` input
    channels."""
    return _block_positions(cin <= NARROW_CHANNELS)


@njit(cache=True)
def _border_table(wsum, k, cols):
    """Zero-padding corrections in popcount units, flat float32 (16, cols) for a 3x3 kernel.

    A tap outside the image read zero words (+1 in every channel) and so added ``wsum`` (the
    tap's +-1 weight sum) to ``K - 2 * popcount``; adding ``wsum / 2`` to the popcount takes it
    back out exactly (half-integers are exact in float32). Row ``4 * ym + xm`` sums the taps a
    position misses: ``ym`` bit 0 the top row of taps, bit 1 the bottom one (``xm``: left,
    right columns). Other kernel sizes: one row per tap (:func:`_border_generic`).
    """
    kk = k * k
    flat = wsum.ravel()
    if k == 1:
        return np.zeros(1, np.float32)
    if k != 3:
        out = np.empty(max(1, kk * cols), np.float32)
        for i in range(kk * cols):
            out[i] = np.float32(flat[i]) * np.float32(0.5)
        return out
    out = np.zeros(16 * cols, np.float32)
    for cls in range(16):
        ym = cls // 4
        xm = cls % 4
        for t in range(9):
            ky = t // 3
            kx = t % 3
            missing = (ky == 0 and ym & 1) or (ky == 2 and ym & 2)
            missing = missing or (kx == 0 and xm & 1) or (kx == 2 and xm & 2)
            if missing:
                for col in range(cols):
                    out[cls * cols + col] += np.float32(flat[t * cols + col]) * np.float32(0.5)
    return out


@njit(cache=True, inline="always")
def _border_class(oy, ox, stride, h, w):
    """Row of :func:`_border_table` for output (oy, ox) of a 3x3 kernel (0: no padding seen)."""
    y0 = oy * stride - 1
    x0 = ox * stride - 1
    ym = (1 if y0 < 0 else 0) + (2 if y0 + 3 > h else 0)
    xm = (1 if x0 < 0 else 0) + (2 if x0 + 3 > w else 0)
    return ym * 4 + xm


@njit(cache=True, inline="always")
def _border_generic(acc, aofs, cols, k, oy, ox, stride, h, w, table):
    """The correction of one position for any odd ``k`` (``table``: per-tap half sums)."""
    pad = k // 2
    y0 = oy * stride - pad
    x0 = ox * stride - pad
    for ky in range(k):
        for kx in range(k):
            iy = y0 + ky
            ix = x0 + kx
            if iy < 0 or iy >= h or ix < 0 or ix >= w:
                t = ky * k + kx
                for col in range(0, cols, 16):
                    v = fadd(fload(acc, aofs + col), fload(table, t * cols + col))
                    fstore(acc, aofs + col, v)


@njit(cache=True, inline="always")
def _border_block(acc, cols, k, oy, ox, count, stride, h, w, wo, table):
    """Zero-padding corrections of a block's popcounts in ``acc`` (rows of ``cols``)."""
    y0 = oy * stride - 1
    if k == 3 and ox + count <= wo and y0 >= 0 and y0 + 3 <= h:
        # one row away from the top and bottom: only its first and last position can see
        # padding (on the left or right)
        _fix_popcounts(acc, 0, cols, oy, ox, stride, h, w, table)
        last = count - 1
        if last > 0:
            _fix_popcounts(acc, last * cols, cols, oy, ox + last, stride, h, w, table)
        return
    for p in range(count):
        if p > 0:
            oy, ox = _next(oy, ox, wo)
        if k == 3:
            _fix_popcounts(acc, p * cols, cols, oy, ox, stride, h, w, table)
        else:
            _border_generic(acc, p * cols, cols, k, oy, ox, stride, h, w, table)


@njit(cache=True, inline="always")
def _fix_popcounts(acc, aofs, cols, oy, ox, stride, h, w, table):
    """One position's correction in popcount units (3x3)."""
    cls = _border_class(oy, ox, stride, h, w)
    if cls != 0:
        for col in range(0, cols, 16):
            v = fadd(fload(acc, aofs + col), fload(table, cls * cols + col))
            fstore(acc, aofs + col, v)


@njit(cache=True, inline="always")
def _border_block_direct(out, obase, cout, oy, ox, count, stride, h, w, wo, fix):
    """:func:`_border_block` for dot products already in the int32 ``out`` (3x3 only); ``fix``:
    flat int32 (16, cout), ``-2 *`` :func:`_border_table` (minus the missing taps' sums)."""
    y0 = oy * stride - 1
    if ox + count <= wo and y0 >= 0 and y0 + 3 <= h:
        # one row away from the top and bottom: only its first and last position can see
        # padding (on the left or right)
        _fix_position(out, obase, cout, oy, ox, stride, h, w, fix)
        last = count - 1
        if last > 0:
            _fix_position(out, obase + last * cout, cout, oy, ox + last, stride, h, w, fix)
        return
    for p in range(count):
        if p > 0:
            oy, ox = _next(oy, ox, wo)
        _fix_position(out, obase + p * cout, cout, oy, ox, stride, h, w, fix)


@njit(cache=True, inline="always")
def _fix_position(out, o, cout, oy, ox, stride, h, w, fix):
    """One position's correction of dot products in ``out`` (3x3)."""
    cls = _border_class(oy, ox, stride, h, w)
    if cls != 0:
        for col in range(0, cout, 16):
            iadd16(out, o + col, fix, cls * cout + col)


@njit(cache=True, inline="always")
def _job_start(job, jobs_per_img, chunk, positions, wo):
    """Image, first block and its first output position of one parallel job (``chunk`` blocks
    of ``positions`` output positions each, row-major within an image)."""
    img = job // jobs_per_img
    first = (job % jobs_per_img) * chunk
    return img, first, (first * positions) // wo, (first * positions) % wo


@njit(cache=True, inline="always")
def _advance(oy, ox, count, wo):
    """The position ``count`` steps after (oy, ox) in row-major order."""
    ox += count
    while ox >= wo:
        ox -= wo
        oy += 1
    return oy, ox


@njit(cache=True, inline="always")
def _interior(oy, ox, count, k, stride, h, w, wo):
    """Whether the ``count`` positions from (oy, ox) on lie in one row and see no padding."""
    pad = k // 2
    y0 = oy * stride - pad
    last = ox + count - 1
    return (
        last < wo
        and y0 >= 0
        and y0 + k <= h
        and ox * stride - pad >= 0
        and last * stride - pad + k <= w
    )


@njit(cache=True)
def _check_conv(bits, n, h, w, cin, k, stride, wt, wsum, groups, cg, chunk):
    """Shapes and buffer sizes, checked once per call: the loops themselves have no bounds
    checks, so a wrong buffer must be refused here rather than read or written past."""
    if n < 1 or h < 1 or w < 1 or cin < 1 or cg < 1 or groups < 1 or chunk < 1:
        raise ValueError("binary conv: sizes must be positive")
    if k < 1 or k % 2 == 0 or stride < 1:
        raise ValueError("binary conv: odd kernel size and positive stride expected")
    pad = k // 2
    words = words_for(cin)
    bpg = (cg + LANES - 1) // LANES
    if bits.size < groups * n * (h + 2 * pad) * (w + 2 * pad) * words:
        raise ValueError("binary conv: the packed input is too small for its shape")
    if cin <= NARROW_CHANNELS:
        if wt.size != groups * bpg * k * k * LANES // 2:
            raise ValueError(
                "binary conv: at most 32 input channels read the 32-bit weight layout; "
                "convert pack_weights' output with bitpack.kernel_weights"
            )
    elif wt.size != groups * bpg * k * k * words * LANES:
        raise ValueError("binary conv: the packed weights do not match the shape")
    if k > 1 and (wsum.shape[0] != k * k or wsum.shape[1] != groups * bpg * LANES):
        raise ValueError("binary conv: the tap sums do not match the weights")


@njit(cache=True, parallel=True)
def binary_conv_acc(bits, n, h, w, cin, k, stride, wt, wsum, groups, cg, chunk, out):
    """Exact integer accumulations ``sum(sign(a) * sign(w))`` of a binary convolution.

    ``bits``: flat (groups, n, h + 2p, w + 2p, words) packed input (p = k // 2, zero border);
    ``wt``: :func:`.bitpack.kernel_weights` layout; ``wsum``: :func:`.bitpack.tap_sums`;
    ``out``: int32 (n, ho, wo, groups * cg). ``chunk``: blocks of :func:`_block_positions`
    positions per parallel job.
    """
    _check_conv(bits, n, h, w, cin, k, stride, wt, wsum, groups, cg, chunk)
    if out.size != n * out_size(h, k, stride) * out_size(w, k, stride) * groups * cg:
        raise ValueError("binary_conv_acc: out has the wrong size")
    words = words_for(cin)
    pad = k // 2
    hp = h + 2 * pad
    wp = w + 2 * pad
    ho = out_size(h, k, stride)
    wo = out_size(w, k, stride)
    nq = ho * wo
    narrow = cin <= NARROW_CHANNELS
    positions = _block_positions(narrow)
    nblocks = (nq + positions - 1) // positions
    jobs_per_img = (nblocks + chunk - 1) // chunk
    bpg = (cg + LANES - 1) // LANES
    cols = groups * bpg * LANES
    ktot = k * k * cin
    ktot_f = np.float32(ktot)  # float32 arithmetic on popcounts < 2**24 is exact
    cout = groups * cg
    table = _border_table(wsum, k, cols)
    fix = (np.float32(-2.0) * table).astype(np.int32)  # the same, as dot products
    flat_out = out.ravel()
    # Dot products straight from the registers into ``out`` when a block's rows are exactly
    # its outputs (no padding lanes); otherwise through ``acc``.
    direct_ok = cols == cout and (k == 1 or k == 3)
    rowstride = wp * words
    step = stride * words
    pbits, pwt, pout = address(bits), address(wt), address(flat_out)
    for job in prange(n * jobs_per_img):
        img, first, by, bx = _job_start(job, jobs_per_img, chunk, positions, wo)
        acc = np.empty(positions * cols, np.float32)
        pacc = address(acc)
        last = min(first + chunk, nblocks)
        blk = first
        while blk < last:
            y0 = by * stride - pad
            if direct_ok and bx + positions <= wo and y0 >= 0 and y0 + k <= h:
                # the usual case: a run of whole blocks along a row that sees no padding above
                # or below -- incremental offsets, dot products straight into ``out``
                run = min(last - blk, (wo - bx) // positions)
                o0 = by * stride * rowstride + bx * step
                dst = ((img * ho + by) * wo + bx) * cout
                start = dst
                for _ in range(run):
                    _kernel_calls(
                        pbits, pwt, pacc, pout, True, ktot, dst, o0, o0 + step, o0 + 2 * step,
                        o0 + 3 * step, o0 + 4 * step, o0 + 5 * step, o0 + 6 * step,
                        o0 + 7 * step, img, n, hp * rowstride, groups, bpg, k, rowstride, words,
                        narrow,
                    )  # fmt: skip
                    o0 += positions * step
                    dst += positions * cout
                if pad > 0:  # only the run's ends can reach past the left or right edge
                    _fix_position(flat_out, start, cout, by, bx, stride, h, w, fix)
                    end = bx + run * positions - 1
                    _fix_position(flat_out, dst - cout, cout, by, end, stride, h, w, fix)
                blk += run
                by, bx = _advance(by, bx, run * positions, wo)
                continue
            count = min(positions, nq - blk * positions)
            obase = ((img * ho + by) * wo + bx) * cout
            direct = direct_ok and count == positions
            _popcounts(
                bits, img, n, hp, wp, words, k, stride, wo, by, bx, count, wt, narrow, groups,
                bpg, acc, flat_out, direct, ktot, obase,
            )  # fmt: skip
            edge = pad > 0 and not _interior(by, bx, count, k, stride, h, w, wo)
            if direct:
                if edge:
                    _border_block_direct(
                        flat_out, obase, cout, by, bx, count, stride, h, w, wo, fix
                    )
            else:
                if edge:
                    _border_block(acc, cols, k, by, bx, count, stride, h, w, wo, table)
                _store_dots(acc, flat_out, obase, count, cout, cols, groups, cg, bpg, ktot_f)
            blk += 1
            by, bx = _advance(by, bx, count, wo)


@njit(cache=True, inline="always")
def _store_dots(acc, out, obase, count, cout, cols, groups, cg, bpg, ktot_f):
    """Dot products ``ktot - 2 * popcount`` of a block's popcounts in ``acc`` into ``out``."""
    if cols == cout:  # the block's outputs are one contiguous run (16 | cols)
        for i in range(0, count * cout, 16):
            y = fadd(fmul(fload(acc, i), fsplat(-2.0)), fsplat(ktot_f))
            fstore_i32(out, obase + i, y)
        return
    for p in range(count):
        for g in range(groups):
            for c in range(cg):
                pop = load(acc, p * cols + g * bpg * LANES + c)
                v = np.int32(ktot_f - np.float32(2.0) * pop)
                store(out, obase + p * cout + g * cg + c, v)


@njit(cache=True, inline="always")
def _residual_taps(img, hr, wr, cg, oy, ox, pooled):
    """Where the residual of output (oy, ox) comes from: flat offsets ``r0..r3`` of up to four
    pixels of a (n, hr, wr, cg) map and how many of them count (``taps``: 4, 2 or 1).

    Not pooled: the pixel itself. Pooled: the 2x2 average (ceil mode, padding not counted)
    of the input-sized map -- ``((r0 + r1) + r2) + r3) / 4``, ``(r0 + r1) / 2`` or ``r0``.
    """
    if not pooled:
        r0 = ((img * hr + oy) * wr + ox) * cg
        return r0, r0, r0, r0, 1
    y0 = 2 * oy
    x0 = 2 * ox
    has_x = x0 + 1 < wr
    has_y = y0 + 1 < hr
    o00 = ((img * hr + y0) * wr + x0) * cg
    if has_x and has_y:
        return o00, o00 + cg, o00 + wr * cg, o00 + wr * cg + cg, 4
    if has_x:
        return o00, o00 + cg, o00, o00, 2
    if has_y:
        return o00, o00 + wr * cg, o00, o00, 2
    return o00, o00, o00, o00, 1


@njit(cache=True, inline="always")
def _residual_vec(res, r0, r1, r2, r3, taps, c, count):
    """Channels ``c .. c + count`` of the residual (see :func:`_residual_taps`), PyTorch's order
    of operations."""
    if count == 16:
        if taps == 1:
            return fload(res, r0 + c)
        s = fadd(fload(res, r0 + c), fload(res, r1 + c))
        if taps == 2:
            return fdiv(s, fsplat(2.0))
        s = fadd(fadd(s, fload(res, r2 + c)), fload(res, r3 + c))
        return fdiv(s, fsplat(4.0))
    if taps == 1:
        return fload_n(res, r0 + c, count)
    s = fadd(fload_n(res, r0 + c, count), fload_n(res, r1 + c, count))
    if taps == 2:
        return fdiv(s, fsplat(2.0))
    s = fadd(fadd(s, fload_n(res, r2 + c, count)), fload_n(res, r3 + c, count))
    return fdiv(s, fsplat(4.0))


@njit(cache=True, inline="always")
def _transform_step(acc, a, ktot, prm, co, cout, res, c, r0, r1, r2, r3, taps, z, zo, count):
    """Channels ``co .. co + count`` (count <= 16) of :func:`_transform`, as 16-lane vectors."""
    if count == 16:
        pop = fload(acc, a)
        scale, mul, add = fload(prm, co), fload(prm, cout + co), fload(prm, 2 * cout + co)
        shift_in, slope = fload(prm, 3 * cout + co), fload(prm, 4 * cout + co)
        shift_out = fload(prm, 5 * cout + co)
    else:
        pop = fload_n(acc, a, count)
        scale, mul = fload_n(prm, co, count), fload_n(prm, cout + co, count)
        add, shift_in = fload_n(prm, 2 * cout + co, count), fload_n(prm, 3 * cout + co, count)
        slope, shift_out = fload_n(prm, 4 * cout + co, count), fload_n(prm, 5 * cout + co, count)
    res_v = _residual_vec(res, r0, r1, r2, r3, taps, c, count)
    y = fmul(fadd(fmul(pop, fsplat(-2.0)), fsplat(ktot)), scale)  # ktot - 2 pop: exact
    y = fadd(fmul(y, mul), add)
    y = fadd(fprelu(fadd(fadd(y, res_v), shift_in), slope), shift_out)
    if count == 16:
        fstore(z, zo, y)
    else:
        fstore_n(z, zo, y, count)


@njit(cache=True, inline="always")
def _transform(acc, aofs, ktot, cg, cbase, cout, prm, res, r0, r1, r2, r3, taps, z, zoff):
    """Float output transform of one position and group: scale, BatchNorm, residual, RPReLU.

    ``prm``: flat (6, cout) -- weight scale, BN multiplier, BN offset, RPReLU shift, slope,
    shift; the residual: :func:`_residual_taps`, pooled on the fly. Explicit 16-lane vectors
    (the last step masked): no alias checks or scalar remainder loops, which dominated at
    32-128 channels per position. Same float32 operations, in the same order, as the numpy
    reference.
    """
    for c in range(0, cg, 16):
        _transform_step(
            acc, aofs + c, ktot, prm, cbase + c, cout, res, c, r0, r1, r2, r3, taps, z,
            zoff + cbase + c, min(16, cg - c),
        )  # fmt: skip


@njit(cache=True, parallel=True)
def binary_conv_fused(
    bits,
    n,
    h,
    w,
    cin,
    k,
    stride,
    wt,
    wsum,
    groups,
    cg,
    prm,
    res,
    pooled,
    z,
    thr,
    opad,
    obits,
    chunk,
):
    """One residual binary unit in one pass: ``z = RPReLU(BN(scale * conv) + residual)``.

    ``prm`` (6, C) per output channel: weight scale, BatchNorm multiplier and offset, RPReLU's
    shift, slope, shift (``0, 1, 0`` is the identity); ``res``: flat NHWC
    float32 with ``cg`` channels, added to every group, at the same position or (``pooled``)
    2x2-average-pooled from a map of the input's size; ``z``: flat NHWC float32 output;
    ``thr`` (T, C): the next layer's RSign shifts -- for each row, packed signs of ``z + thr``
    go to ``obits``, flat (T, n, ho + 2 opad, wo + 2 opad, words(C)) whose border stays zero.
    """
    _check_conv(bits, n, h, w, cin, k, stride, wt, wsum, groups, cg, chunk)
    ho = out_size(h, k, stride)
    wo = out_size(w, k, stride)
    cout = groups * cg
    if prm.shape[0] != 6 or prm.shape[1] != cout or z.size != n * ho * wo * cout:
        raise ValueError("binary_conv_fused: parameters or output of the wrong size")
    if res.size != (n * h * w * cg if pooled else n * ho * wo * cg):
        raise ValueError("binary_conv_fused: the residual has the wrong size")
    if (thr.shape[0] > 0 and thr.shape[1] != cout) or opad < 0:
        raise ValueError("binary_conv_fused: thresholds of the wrong size")
    if obits.size < thr.shape[0] * n * (ho + 2 * opad) * (wo + 2 * opad) * words_for(cout):
        raise ValueError("binary_conv_fused: the packed output is too small")
    words = words_for(cin)
    pad = k // 2
    hp = h + 2 * pad
    wp = w + 2 * pad
    nq = ho * wo
    narrow = cin <= NARROW_CHANNELS
    positions = _block_positions(narrow)
    nblocks = (nq + positions - 1) // positions
    jobs_per_img = (nblocks + chunk - 1) // chunk
    bpg = (cg + LANES - 1) // LANES
    cols = groups * bpg * LANES
    ktot = k * k * cin
    t_sets = thr.shape[0]
    flat_thr = thr.ravel()
    owords = words_for(cout)
    hpo = ho + 2 * opad
    wpo = wo + 2 * opad
    flat_prm = prm.ravel()
    table = _border_table(wsum, k, cols)
    no_out = np.empty(0, np.int32)  # the popcounts go to acc, never straight to an int map
    ktot_f = np.float32(ktot)
    for job in prange(n * jobs_per_img):
        img, first, by, bx = _job_start(job, jobs_per_img, chunk, positions, wo)
        acc = np.empty(positions * cols, np.float32)
        for blk in range(first, min(first + chunk, nblocks)):
            count = min(positions, nq - blk * positions)
            _popcounts(
                bits, img, n, hp, wp, words, k, stride, wo, by, bx, count, wt, narrow, groups,
                bpg, acc, no_out, False, ktot, 0,
            )  # fmt: skip
            if pad > 0 and not _interior(by, bx, count, k, stride, h, w, wo):
                _border_block(acc, cols, k, by, bx, count, stride, h, w, wo, table)
            oy, ox = by, bx
            for p in range(count):
                if p > 0:
                    oy, ox = _next(oy, ox, wo)
                aofs = p * cols
                zoff = ((img * ho + oy) * wo + ox) * cout
                hr, wr = (h, w) if pooled else (ho, wo)
                r0, r1, r2, r3, taps = _residual_taps(img, hr, wr, cg, oy, ox, pooled)
                for g in range(groups):
                    _transform(
                        acc, aofs + g * bpg * LANES, ktot_f, cg, g * cg, cout, flat_prm, res,
                        r0, r1, r2, r3, taps, z, zoff,
                    )  # fmt: skip
            # Pack the next layer's signs only now, once the block's float stores have left
            # the store buffer: reading a row back right after writing it stalls.
            oy, ox = by, bx
            for p in range(count):
                if p > 0:
                    oy, ox = _next(oy, ox, wo)
                zoff = ((img * ho + oy) * wo + ox) * cout
                for t in range(t_sets):
                    ooff = (((t * n + img) * hpo + oy + opad) * wpo + ox + opad) * owords
                    pack_row(z, zoff, cout, flat_thr, t * cout, obits, ooff, owords)
            by, bx = _advance(by, bx, count, wo)


@njit(cache=True)
def binary_gemm(a, wt, cin, cout, chunk):
    """Binary GEMM ``a (m, words) x W^T`` of +-1 matrices (a 1x1 convolution): int32 (m, cout).

    ``wt``: :func:`.bitpack.kernel_weights` of a packed (cout, cin, 1, 1) weight.
    """
    m = a.shape[0]
    out = np.empty((1, m, 1, cout), np.int32)
    wsum = np.zeros((1, 1), np.int64)
    binary_conv_acc(a.ravel(), 1, m, 1, cin, 1, 1, wt, wsum, 1, cout, chunk, out)
    return out.reshape(m, cout)
