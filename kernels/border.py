"""Zero padding of a 3x3 binary convolution, corrected exactly after the fact.

Inputs carry a one-pixel border of zero words, so the micro-kernels need no bounds checks; a
zero word reads as +1 in every channel where the model's zero padding contributes 0. The weight
sums of the taps a position misses are taken back out afterwards -- only at border positions,
from a table with one row per kind of border position (top, bottom, left, right and their
corners).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .micro import next_position
from .simd import fadd, fload, fstore, iadd16

__all__ = [
    "border_block",
    "border_block_direct",
    "border_class",
    "border_table",
    "fix_position",
    "interior",
]


@njit(cache=True, inline="always")
def interior(oy, ox, count, k, stride, h, w, wo):
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
def border_table(wsum, k, cols):
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
def border_class(oy, ox, stride, h, w):
    """Row of :func:`border_table` for output (oy, ox) of a 3x3 kernel (0: no padding seen)."""
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
def border_block(acc, cols, k, oy, ox, count, stride, h, w, wo, table):
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
            oy, ox = next_position(oy, ox, wo)
        if k == 3:
            _fix_popcounts(acc, p * cols, cols, oy, ox, stride, h, w, table)
        else:
            _border_generic(acc, p * cols, cols, k, oy, ox, stride, h, w, table)


@njit(cache=True, inline="always")
def _fix_popcounts(acc, aofs, cols, oy, ox, stride, h, w, table):
    """One position's correction in popcount units (3x3)."""
    cls = border_class(oy, ox, stride, h, w)
    if cls != 0:
        for col in range(0, cols, 16):
            v = fadd(fload(acc, aofs + col), fload(table, cls * cols + col))
            fstore(acc, aofs + col, v)


@njit(cache=True, inline="always")
def border_block_direct(out, obase, cout, oy, ox, count, stride, h, w, wo, fix):
    """:func:`border_block` for dot products already in the int32 ``out`` (3x3 only); ``fix``:
    flat int32 (16, cout), ``-2 *`` :func:`border_table` (minus the missing taps' sums)."""
    y0 = oy * stride - 1
    if ox + count <= wo and y0 >= 0 and y0 + 3 <= h:
        # one row away from the top and bottom: only its first and last position can see
        # padding (on the left or right)
        fix_position(out, obase, cout, oy, ox, stride, h, w, fix)
        last = count - 1
        if last > 0:
            fix_position(out, obase + last * cout, cout, oy, ox + last, stride, h, w, fix)
        return
    for p in range(count):
        if p > 0:
            oy, ox = next_position(oy, ox, wo)
        fix_position(out, obase + p * cout, cout, oy, ox, stride, h, w, fix)


@njit(cache=True, inline="always")
def fix_position(out, o, cout, oy, ox, stride, h, w, fix):
    """One position's correction of dot products in ``out`` (3x3)."""
    cls = border_class(oy, ox, stride, h, w)
    if cls != 0:
        for col in range(0, cout, 16):
            iadd16(out, o + col, fix, cls * cout + col)
