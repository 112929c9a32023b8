"""The float glue around the binary layers: stem convolution, pooling, projection shortcuts.

These run once per network (stem, global pool) or a few times (projection shortcuts of
ReActNet-18), so they favour simple, vectorisable loops over channels in NHWC. Their summation
orders follow PyTorch's CPU kernels where that is cheap (pooling), so the sign bits they feed stay
as close as possible to the float model's.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .bconv import out_size
from .simd import fadd, fload, fload_n, fmul, fsplat, fstore, fstore_n, load

__all__ = ["conv_nchw_bn", "maxpool3x3s2", "projection_shortcut", "global_avgpool"]


@njit(cache=True, inline="always")
def _madd32(a0, a1, x, xi, w0, w1):
    """One tap of one position: ``a + x[xi] * w`` for its two 16-channel accumulators (a
    multiply, then an add: PyTorch's order, no fused rounding)."""
    xv = fsplat(load(x, xi))
    return fadd(a0, fmul(xv, w0)), fadd(a1, fmul(xv, w1))


@njit(cache=True, inline="always")
def _stem_block(x, xbase, h, w, iy0, ix0, wt, k, cout, c0, cin, count):
    """One output position, channels ``c0 .. c0 + count`` (count <= 32): two 16-lane register
    accumulators summed over (ci, ky, kx) in order, taps outside the image skipped."""
    a0 = fsplat(0.0)
    a1 = fsplat(0.0)
    n0 = min(16, count)
    n1 = count - n0
    for ci in range(cin):
        for ky in range(k):
            iy = iy0 + ky
            if iy < 0 or iy >= h:
                continue
            for kx in range(k):
                ix = ix0 + kx
                if ix < 0 or ix >= w:
                    continue
                xv = fsplat(load(x, xbase + (ci * h + iy) * w + ix))
                wo = ((ci * k + ky) * k + kx) * cout + c0
                w0 = fload(wt, wo) if n0 == 16 else fload_n(wt, wo, n0)
                a0 = fadd(a0, fmul(xv, w0))
                if n1 > 0:
                    w1 = fload(wt, wo + 16) if n1 == 16 else fload_n(wt, wo + 16, n1)
                    a1 = fadd(a1, fmul(xv, w1))
    return a0, a1


@njit(cache=True, inline="always")
def _stem_block4(x, xbase, h, w, iy0, ix0, stride, wt, k, cout, c0, cin, count):
    """Four outputs along a row (ix0, ix0 + stride, ...), all taps inside the image in x:
    eight independent accumulators hide the add latency and share each tap's weight loads and
    loop overhead between four positions (eight positions' sixteen would not fit AVX2's
    registers: measured 1.16x slower on Zen 3). Same summation order as :func:`_stem_block`
    for each output."""
    a00 = fsplat(0.0)
    a01 = fsplat(0.0)
    a10 = fsplat(0.0)
    a11 = fsplat(0.0)
    a20 = fsplat(0.0)
    a21 = fsplat(0.0)
    a30 = fsplat(0.0)
    a31 = fsplat(0.0)
    n0 = min(16, count)
    n1 = count - n0
    for ci in range(cin):
        for ky in range(k):
            iy = iy0 + ky
            if iy < 0 or iy >= h:
                continue
            xrow = xbase + (ci * h + iy) * w + ix0
            for kx in range(k):
                wo = ((ci * k + ky) * k + kx) * cout + c0
                w0 = fload(wt, wo) if n0 == 16 else fload_n(wt, wo, n0)
                w1 = fload(wt, wo + 16) if n1 == 16 else fload_n(wt, wo + 16, n1)
                xi = xrow + kx
                a00, a01 = _madd32(a00, a01, x, xi, w0, w1)
                a10, a11 = _madd32(a10, a11, x, xi + stride, w0, w1)
                a20, a21 = _madd32(a20, a21, x, xi + 2 * stride, w0, w1)
                a30, a31 = _madd32(a30, a31, x, xi + 3 * stride, w0, w1)
    return (a00, a01, a10, a11, a20, a21, a30, a31)


@njit(cache=True, inline="always")
def _bn16(a, aff, cout, c, n, out, o):
    """``a * aff[0] + aff[1]`` of ``n`` (<= 16) channels from ``c``, stored at ``out[o:]``:
    plain vector loads and stores for 16 channels (masked ones, slow on AMD's cores, only for
    a partial last slice)."""
    if n == 16:
        fstore(out, o, fadd(fmul(a, fload(aff, c)), fload(aff, cout + c)))
    else:
        fstore_n(out, o, fadd(fmul(a, fload_n(aff, c, n)), fload_n(aff, cout + c, n)), n)


@njit(cache=True, inline="always")
def _stem_store(a0, a1, aff, cout, c0, count, out, obase):
    """BatchNorm ``y * aff[0] + aff[1]`` of one position's ``count`` channels, stored."""
    _bn16(a0, aff, cout, c0, min(16, count), out, obase + c0)
    if count > 16:
        _bn16(a1, aff, cout, c0 + 16, count - 16, out, obase + c0 + 16)


@njit(cache=True, parallel=True)
def conv_nchw_bn(x, wt, stride, pad, aff, out):
    """Real convolution of an NCHW float32 batch, then the BatchNorm ``y * aff[0] + aff[1]``.

    ``wt``: (cin, k, k, cout); ``out``: flat NHWC float32 (n, ho, wo, cout). Each output sums
    over (ci, ky, kx) in that order with out-of-image taps skipped (zero padding); up to 32
    output channels of 4 positions stay in vector registers.
    """
    n, cin, h, w = x.shape
    k = wt.shape[1]
    cout = wt.shape[3]
    ho = (h + 2 * pad - k) // stride + 1
    wo = (w + 2 * pad - k) // stride + 1
    if wt.shape[0] != cin or wt.shape[2] != k or aff.shape[0] != 2 or aff.shape[1] != cout:
        raise ValueError("conv_nchw_bn: weights or BatchNorm of the wrong shape")
    if ho < 1 or wo < 1 or stride < 1 or pad < 0 or out.size != n * ho * wo * cout:
        raise ValueError("conv_nchw_bn: output of the wrong size")
    flat_x = x.ravel()
    flat_w = wt.ravel()
    flat_aff = aff.ravel()
    # output columns whose taps all fall inside the image horizontally
    lo = min(wo, (pad + stride - 1) // stride)
    hi = max(lo, min(wo, (w - k + pad) // stride + 1))
    for row in prange(n * ho):
        img = row // ho
        oy = row % ho
        xbase = img * cin * h * w
        iy0 = oy * stride - pad
        for c0 in range(0, cout, 32):
            count = min(32, cout - c0)
            ox = 0
            while ox < wo:
                obase = (row * wo + ox) * cout
                if lo <= ox and ox + 4 <= hi:
                    acc = _stem_block4(
                        flat_x, xbase, h, w, iy0, ox * stride - pad, stride, flat_w, k, cout, c0,
                        cin, count,
                    )  # fmt: skip
                    _stem_store(acc[0], acc[1], flat_aff, cout, c0, count, out, obase)
                    _stem_store(acc[2], acc[3], flat_aff, cout, c0, count, out, obase + cout)
                    _stem_store(acc[4], acc[5], flat_aff, cout, c0, count, out, obase + 2 * cout)
                    _stem_store(acc[6], acc[7], flat_aff, cout, c0, count, out, obase + 3 * cout)
                    ox += 4
                else:
                    a0, a1 = _stem_block(
                        flat_x, xbase, h, w, iy0, ox * stride - pad, flat_w, k, cout, c0, cin, count
                    )
                    _stem_store(a0, a1, flat_aff, cout, c0, count, out, obase)
                    ox += 1


@njit(cache=True, parallel=True)
def maxpool3x3s2(x, n, h, w, c, out):
    """3x3 max pool, stride 2, padding 1 (padding never wins), NHWC flat; NaN propagates."""
    ho = out_size(h, 3, 2)
    wo = out_size(w, 3, 2)
    if x.size != n * h * w * c or out.size != n * ho * wo * c:
        raise ValueError("maxpool3x3s2: input or output of the wrong size")
    for row in prange(n * ho):
        img = row // ho
        oy = row % ho
        for ox in range(wo):
            obase = ((img * ho + oy) * wo + ox) * c
            first = True
            for ky in range(3):
                iy = 2 * oy + ky - 1
                if iy < 0 or iy >= h:
                    continue
                for kx in range(3):
                    ix = 2 * ox + kx - 1
                    if ix < 0 or ix >= w:
                        continue
                    ibase = ((img * h + iy) * w + ix) * c
                    if first:
                        for ch in range(c):
                            out[obase + ch] = x[ibase + ch]
                        first = False
                    else:
                        for ch in range(c):
                            v = x[ibase + ch]
                            m = out[obase + ch]
                            out[obase + ch] = v if (v > m or np.isnan(v)) else m


@njit(cache=True, parallel=True)
def projection_shortcut(x, n, h, w, cin, pool, wt, aff, out):
    """ReActNet-18's downsampling shortcut: [2x2 avg pool,] 1x1 conv (``wt``: cin, cout), BN.

    ``x``, ``out``: flat NHWC float32. The pool is ceil-mode without counting padding.
    """
    cout = wt.shape[1]
    ho = (h + 1) // 2 if pool else h
    wo = (w + 1) // 2 if pool else w
    if x.size != n * h * w * cin or wt.shape[0] != cin or out.size != n * ho * wo * cout:
        raise ValueError("projection_shortcut: input, weights or output of the wrong size")
    if aff.shape[0] != 2 or aff.shape[1] != cout:
        raise ValueError("projection_shortcut: BatchNorm of the wrong shape")
    for row in prange(n * ho):
        img = row // ho
        oy = row % ho
        pooled = np.empty(cin, np.float32)
        acc = np.empty(cout, np.float32)
        for ox in range(wo):
            if pool:
                y0 = 2 * oy
                x0 = 2 * ox
                has_x = x0 + 1 < w
                has_y = y0 + 1 < h
                o00 = ((img * h + y0) * w + x0) * cin
                o01 = o00 + cin
                o10 = o00 + w * cin
                o11 = o10 + cin
                for c in range(cin):
                    if has_x and has_y:
                        s = ((x[o00 + c] + x[o01 + c]) + x[o10 + c]) + x[o11 + c]
                        pooled[c] = s / np.float32(4)
                    elif has_x:
                        pooled[c] = (x[o00 + c] + x[o01 + c]) / np.float32(2)
                    elif has_y:
                        pooled[c] = (x[o00 + c] + x[o10 + c]) / np.float32(2)
                    else:
                        pooled[c] = x[o00 + c]
            else:
                o00 = ((img * h + oy) * w + ox) * cin
                for c in range(cin):
                    pooled[c] = x[o00 + c]
            acc[:] = 0
            for c in range(cin):
                v = pooled[c]
                for co in range(cout):
                    acc[co] += v * wt[c, co]
            obase = ((img * ho + oy) * wo + ox) * cout
            for co in range(cout):
                out[obase + co] = acc[co] * aff[0, co] + aff[1, co]


@njit(cache=True, parallel=True)
def global_avgpool(x, n, hw, c, out):
    """Mean over all positions of a flat NHWC map: ``out`` (n, c), summed in position order."""
    if x.size != n * hw * c or out.shape[0] != n or out.shape[1] != c:
        raise ValueError("global_avgpool: input or output of the wrong size")
    for img in prange(n):
        acc = np.zeros(c, np.float32)
        base = img * hw * c
        for q in range(hw):
            for ch in range(c):
                acc[ch] += x[base + q * c + ch]
        for ch in range(c):
            out[img, ch] = acc[ch] / np.float32(hw)
