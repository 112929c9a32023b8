"""XOR-popcount binary convolution (k x k, stride 1 or 2, any channel count, any batch).

For +-1 vectors packed as bits (set = -1), ``dot(a, w) = K - 2 * popcount(a ^ w)``. The work is
split as in a float GEMM micro-kernel: a block of 4 output positions x 32 output channels keeps
its 16 accumulators (8 lanes each) in registers while the loop runs over taps and input words;
each activation word is loaded once and reused for 32 output channels, each weight vector for 4
positions. Inputs of a 3x3 convolution carry a one-pixel border of zero words, so the inner loop
has no bounds checks; a zero word reads as +1 in every channel where the model's zero padding
contributes 0, and the per-tap weight sums of the missing taps are subtracted afterwards (only at
border positions), which makes the accumulation exact.

Two drivers share the micro-kernel: :func:`binary_conv_acc` returns the exact integer
accumulations (the tests compare them with ``F.conv2d`` on +-1 tensors); :func:`binary_conv_fused`
applies the whole output transform in the same pass -- weight scale, BatchNorm, the residual
(optionally 2x2-average-pooled), RPReLU -- writes the float map needed by the next residual and
packs the next layer's sign bits directly. Parallel over blocks of output positions (``prange``
on the outermost loop only; every job writes disjoint output rows).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .bitpack import LANES, pack_row, words_for
from .simd import (
    fadd,
    fdiv,
    fload,
    fload_n,
    fmul,
    fprelu,
    fsplat,
    fstore,
    fstore_n,
    load,
    load_u64,
    store,
    vload,
    vstore_f32,
    vxor_popcount_add,
    vzero,
)

__all__ = ["POSITIONS", "binary_conv_acc", "binary_conv_fused", "binary_gemm", "out_size"]

POSITIONS = 4  # output positions per micro-kernel call


@njit(cache=True)
def out_size(size, k, stride):
    """Output length of a convolution with padding ``k // 2`` (``ceil(size / stride)`` for k=3)."""
    return (size + 2 * (k // 2) - k) // stride + 1


@njit(cache=True)
def _micro_kernel(bits, b0, b1, b2, b3, wt, wofs, k, rowstride, words, acc, aofs, astride):
    """popcount(a ^ w) summed over taps and words for 4 positions x 32 channels, into ``acc``.

    ``b0..b3``: flat offsets of the 4 positions' top-left taps in ``bits``; ``wofs``: offset of
    the weight block; results go to the float32 ``acc[aofs + p * astride + lane]`` (exact:
    popcounts stay far below 2**24).
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
def _next(oy, ox, wo):
    """The output position after (oy, ox) in row-major order."""
    if ox + 1 == wo:
        return oy + 1, 0
    return oy, ox + 1


@njit(cache=True)
def _popcounts(bits, img, n, hp, wp, words, k, stride, wo, oy, ox, count, wt, groups, bpg, acc):
    """Popcounts of ``count`` (1..4) positions from (oy, ox) on, for every weight block.

    Results: ``acc`` (4, columns); missing positions repeat the last one (same work, no
    branches in the micro-kernel).
    """
    rowstride = wp * words
    cols = groups * bpg * LANES
    kk = k * k
    o0 = oy * stride * rowstride + ox * stride * words
    oy, ox = _next(oy, ox, wo)
    o1 = oy * stride * rowstride + ox * stride * words if count > 1 else o0
    oy, ox = _next(oy, ox, wo)
    o2 = oy * stride * rowstride + ox * stride * words if count > 2 else o1
    oy, ox = _next(oy, ox, wo)
    o3 = oy * stride * rowstride + ox * stride * words if count > 3 else o2
    for g in range(groups):
        base = (g * n + img) * hp * rowstride
        for j in range(bpg):
            blk = g * bpg + j
            _micro_kernel(
                bits,
                base + o0,
                base + o1,
                base + o2,
                base + o3,
                wt,
                blk * kk * words * LANES,
                k,
                rowstride,
                words,
                acc,
                blk * LANES,
                cols,
            )


@njit(cache=True, inline="always")
def _border(acc, aofs, cols, k, oy, ox, stride, h, w, wsum):
    """Zero-padding correction of one position, in popcount units: ``+ wsum / 2`` per missing tap.

    A tap outside the image read zero words (+1 everywhere) and so added ``wsum`` (the tap's
    +-1 weight sum) to ``K - 2 * popcount``; adding ``wsum / 2`` to the popcount removes it
    exactly (half-integers are exact in float32). ``wsum``: flat (k * k, cols) int64.
    """
    pad = k // 2
    y0 = oy * stride - pad
    x0 = ox * stride - pad
    if pad == 0 or (y0 >= 0 and x0 >= 0 and y0 + k <= h and x0 + k <= w):
        return
    for ky in range(k):
        for kx in range(k):
            iy = y0 + ky
            ix = x0 + kx
            if iy < 0 or iy >= h or ix < 0 or ix >= w:
                t = ky * k + kx
                for col in range(cols):
                    half = np.float32(load(wsum, t * cols + col)) * np.float32(0.5)
                    store(acc, aofs + col, load(acc, aofs + col) + half)


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
    if wt.size != groups * bpg * k * k * words * LANES:
        raise ValueError("binary conv: the packed weights do not match the shape")
    if k > 1 and (wsum.shape[0] != k * k or wsum.shape[1] != groups * bpg * LANES):
        raise ValueError("binary conv: the tap sums do not match the weights")


@njit(cache=True, parallel=True)
def binary_conv_acc(bits, n, h, w, cin, k, stride, wt, wsum, groups, cg, chunk, out):
    """Exact integer accumulations ``sum(sign(a) * sign(w))`` of a binary convolution.

    ``bits``: flat (groups, n, h + 2p, w + 2p, words) packed input (p = k // 2, zero border);
    ``wt``: :func:`.bitpack.pack_weights` layout; ``wsum``: :func:`.bitpack.tap_sums`;
    ``out``: int32 (n, ho, wo, groups * cg). ``chunk``: 4-position blocks per parallel job.
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
    nblocks = (nq + POSITIONS - 1) // POSITIONS
    jobs_per_img = (nblocks + chunk - 1) // chunk
    bpg = (cg + LANES - 1) // LANES
    cols = groups * bpg * LANES
    ktot = k * k * cin
    flat_wsum = wsum.ravel()
    flat_out = out.ravel()
    for job in prange(n * jobs_per_img):
        img = job // jobs_per_img
        first = (job % jobs_per_img) * chunk
        acc = np.empty(POSITIONS * cols, np.float32)
        by = (first * POSITIONS) // wo
        bx = (first * POSITIONS) % wo
        for blk in range(first, min(first + chunk, nblocks)):
            count = min(POSITIONS, nq - blk * POSITIONS)
            _popcounts(
                bits, img, n, hp, wp, words, k, stride, wo, by, bx, count, wt, groups, bpg, acc
            )
            oy, ox = by, bx
            for p in range(count):
                if p > 0:
                    oy, ox = _next(oy, ox, wo)
                _border(acc, p * cols, cols, k, oy, ox, stride, h, w, flat_wsum)
                obase = ((img * ho + oy) * wo + ox) * groups * cg
                for g in range(groups):
                    for c in range(cg):
                        pop = load(acc, p * cols + g * bpg * LANES + c)
                        store(flat_out, obase + g * cg + c, ktot - np.int64(2 * pop))
            by, bx = _next(oy, ox, wo)


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
    nblocks = (nq + POSITIONS - 1) // POSITIONS
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
    flat_wsum = wsum.ravel()
    ktot_f = np.float32(ktot)
    for job in prange(n * jobs_per_img):
        img = job // jobs_per_img
        first = (job % jobs_per_img) * chunk
        acc = np.empty(POSITIONS * cols, np.float32)
        by = (first * POSITIONS) // wo
        bx = (first * POSITIONS) % wo
        for blk in range(first, min(first + chunk, nblocks)):
            count = min(POSITIONS, nq - blk * POSITIONS)
            _popcounts(
                bits, img, n, hp, wp, words, k, stride, wo, by, bx, count, wt, groups, bpg, acc
            )
            oy, ox = by, bx
            for p in range(count):
                if p > 0:
                    oy, ox = _next(oy, ox, wo)
                aofs = p * cols
                _border(acc, aofs, cols, k, oy, ox, stride, h, w, flat_wsum)
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
            by, bx = _next(oy, ox, wo)


@njit(cache=True)
def binary_gemm(a, wt, cin, cout, chunk):
    """Binary GEMM ``a (m, words) x W^T`` of +-1 matrices (a 1x1 convolution): int32 (m, cout).

    ``wt`` in the :func:`.bitpack.pack_weights` layout of a (cout, cin, 1, 1) weight.
    """
    m = a.shape[0]
    out = np.empty((1, m, 1, cout), np.int32)
    wsum = np.zeros((1, 1), np.int64)
    binary_conv_acc(a.ravel(), 1, m, 1, cin, 1, 1, wt, wsum, 1, cout, chunk, out)
    return out.reshape(m, cout)
