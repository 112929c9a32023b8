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

__all__ = ["conv_nchw_bn", "maxpool3x3s2", "projection_shortcut", "global_avgpool"]


@njit(cache=True, parallel=True)
def conv_nchw_bn(x, wt, stride, pad, aff, out):
    """Real convolution of an NCHW float32 batch, then the BatchNorm ``y * aff[0] + aff[1]``.

    ``wt``: (cin, k, k, cout); ``out``: flat NHWC float32 (n, ho, wo, cout). Summation order
    over (ci, ky, kx) per output, out-of-image taps skipped (zero padding).
    """
    n, cin, h, w = x.shape
    k = wt.shape[1]
    cout = wt.shape[3]
    ho = (h + 2 * pad - k) // stride + 1
    wo = (w + 2 * pad - k) // stride + 1
    for row in prange(n * ho):
        img = row // ho
        oy = row % ho
        acc = np.zeros(wo * cout, np.float32)
        for ci in range(cin):
            for ky in range(k):
                iy = oy * stride + ky - pad
                if iy < 0 or iy >= h:
                    continue
                for kx in range(k):
                    for ox in range(wo):
                        ix = ox * stride + kx - pad
                        if ix < 0 or ix >= w:
                            continue
                        xv = x[img, ci, iy, ix]
                        base = ox * cout
                        for co in range(cout):
                            acc[base + co] += xv * wt[ci, ky, kx, co]
        obase = row * wo * cout
        for ox in range(wo):
            for co in range(cout):
                out[obase + ox * cout + co] = acc[ox * cout + co] * aff[0, co] + aff[1, co]


@njit(cache=True, parallel=True)
def maxpool3x3s2(x, n, h, w, c, out):
    """3x3 max pool, stride 2, padding 1 (padding never wins), NHWC flat; NaN propagates."""
    ho = out_size(h, 3, 2)
    wo = out_size(w, 3, 2)
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
    for img in prange(n):
        acc = np.zeros(c, np.float32)
        base = img * hw * c
        for q in range(hw):
            for ch in range(c):
                acc[ch] += x[base + q * c + ch]
        for ch in range(c):
            out[img, ch] = acc[ch] / np.float32(hw)
