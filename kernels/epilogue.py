"""The fused unit's float epilogue run straight from the micro-kernels' accumulator registers.

Why: through a block buffer every 16 channels' popcounts are converted and stored by the
micro-kernel, then loaded back by the epilogue (on wide layers as two 8-lane stores read by one
16-lane load, which store forwarding cannot serve). Here each 32 output channels' tap loop
(:func:`.taps.narrow` / :func:`.taps.wide`) is followed by their epilogue for each of the
block's positions (:func:`_y32`, called with the popcounts in registers; one compiled call runs
all of a block's weight blocks, :func:`unit_block`): popcounts to float in the register, weight
scale, BatchNorm, the residual (optionally the 2x2 average of the input-sized map), RPReLU, the
float map store, and the next layer's signs (one compare into a mask register per 16 channels,
32 bits per store). Same float32 operations in the same order as the buffered epilogue and the
numpy reference: the results are bit for bit the same.

Every block of a unit takes this path when its groups are whole 32-channel weight blocks, its
kernel is 1x1 or 3x3 (the zero-padding correction is added to the popcounts in the register,
from the same table and with the same float addition as :mod:`.border`), it has at most two
threshold sets, and a pooled residual has all four taps everywhere (even input size); the
driver (:func:`.bconv.binary_conv_fused`) runs other units through the block buffer.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from numba import njit

from .bitpack import LANES
from .border import border_class
from .micro import (
    block_offsets,
    block_positions,
    next_position,
    out_size,
)
from .simd import (
    fadd,
    ffma,
    ffrom_i32,
    ffrom_i64x2,
    fload,
    fload_n,
    fmul,
    fprelu,
    fsplat,
    fstore,
    load,
    sign_mask16,
    store,
    store_u32,
)
from .table import AT_BITS, AT_BORDER, AT_PARITY, AT_RES, AT_Z, ROW
from .taps import narrow, wide

__all__ = [
    "PARAM_ROWS",
    "BlockContext",
    "Epilogue",
    "SliceParams",
    "block_params",
    "param_block",
    "pools_output",
    "register_epilogue_fits",
    "residual_vec",
    "unit_block",
    "unit_value",
]


class SliceParams(NamedTuple):
    """The epilogue's parameters of 16 output channels, as float vectors (:func:`block_params`)."""

    scale: Any  # weight scale
    mul: Any  # BatchNorm multiplier
    add: Any  # BatchNorm offset
    shift_in: Any  # RPReLU: shift, slope, shift
    slope: Any
    shift_out: Any
    thr0: Any  # negated thresholds of the next layer's first sign set (:func:`.simd.sign_mask16`)
    thr1: Any  # and of its second


class Epilogue(NamedTuple):
    """What a fused unit's epilogue reads and writes besides its popcounts, the same for every
    block of one call (raw pointers: :func:`.simd.address`)."""

    pblk: Any  # the parameters of every 16 channels (:func:`param_block`)
    t_sets: int  # threshold sets (0: the last unit, no signs)
    ktot: Any  # float32: the dot products' length K
    pres: Any  # the residual, flat NHWC float32 with cg channels
    pooled: bool  # the residual is the 2x2 average of an input-sized map
    pz: Any  # the output float map (its 2x2 average with pool_out)
    pool_out: bool
    pob: Any  # the next layer's packed signs, as uint32
    cout: int
    opad: int  # zero border of the packed output
    owords: int  # uint64 words per packed output pixel
    hpo: int  # padded output size
    wpo: int
    tst32: int  # uint32 units between threshold sets
    ptab: Any  # the zero-padding table (:func:`.border.border_table`)


class BlockContext(NamedTuple):
    """What :func:`_y32` needs of one weight block of one block of positions."""

    ppos: Any  # the position table (:mod:`.table`)
    pblk: Any  # the parameters (:func:`param_block`)
    pres: Any
    cg: int
    rw: int  # floats per row of the residual (pooled: of the input-sized map)
    pooled: bool
    pz: Any
    pob: Any
    tst32: int
    t_sets: int
    edge: bool  # some position sees the zero padding
    ptab: Any
    tcol: int  # the weight block's first column of the border table
    pool_out: bool
    cout: int


PARAM_ROWS = 8  # float vectors of one 16-channel slice in :func:`param_block`


@njit(cache=True)
def param_block(prm, thr, cout, t_sets):
    """The epilogue's parameters (:class:`SliceParams`) of every whole 16-channel slice, each
    slice's :data:`PARAM_ROWS` vectors of 16 floats in a row: the six rows of ``prm`` (6, C),
    then the negated thresholds of the first two sets (:func:`.simd.sign_mask16`; ``-2.0``
    stands in for a missing set, whose signs are never stored). Built once per call of a unit:
    each position's epilogue (:func:`_y32`) loads its slices' vectors from here, where taking
    them as arguments would copy them onto the stack for every call (5-10 % of a 1x1 unit's
    time on Zen 3)."""
    slices = cout // 16
    out = np.empty(slices * PARAM_ROWS * 16, np.float32)
    for s in range(slices):
        base = s * PARAM_ROWS * 16
        for c in range(16):
            co = s * 16 + c
            for r in range(6):
                out[base + r * 16 + c] = prm[r * cout + co]
            for t in range(2):
                v = -thr[t * cout + co] if t < t_sets else np.float32(-2.0)
                out[base + (6 + t) * 16 + c] = v
    return out


@njit(cache=True, inline="always")
def block_params(pblk, co):
    """:class:`SliceParams` of the 16 channels from ``co`` on, from :func:`param_block` (the
    array or its :func:`.simd.address`)."""
    b = (co // 16) * PARAM_ROWS * 16
    return SliceParams(
        scale=fload(pblk, b),
        mul=fload(pblk, b + 16),
        add=fload(pblk, b + 32),
        shift_in=fload(pblk, b + 48),
        slope=fload(pblk, b + 64),
        shift_out=fload(pblk, b + 80),
        thr0=fload(pblk, b + 96),
        thr1=fload(pblk, b + 112),
    )


@njit(cache=True, inline="always")
def unit_value(pop, res_v, sp, ktot_v, m2):
    """The fused unit's output from its popcounts (a float vector) and :class:`SliceParams`:
    weight scale, BatchNorm, residual, RPReLU -- the float32 operations of PyTorch's model in
    its order (and of the numpy reference); ``ktot - 2 * pop`` is exact, so one fused
    multiply-add computes it."""
    y = fmul(ffma(pop, m2, ktot_v), sp.scale)
    y = fadd(fmul(y, sp.mul), sp.add)
    return fadd(fprelu(fadd(fadd(y, res_v), sp.shift_in), sp.slope), sp.shift_out)


@njit(cache=True, inline="always")
def _avg4(a, b, c, d):
    """The 2x2 average of four float vectors in PyTorch's order, ``(((a + b) + c) + d) * 0.25``
    (bit for bit ``/ 4``: a power of two, and far cheaper than a division)."""
    return fmul(fadd(fadd(fadd(a, b), c), d), fsplat(0.25))


@njit(cache=True, inline="always")
def residual_vec(res, r0, r1, r2, r3, taps, c, count):
    """Channels ``c .. c + count`` (count <= 16) of the residual: the pixel at ``r0`` (``taps``
    1), or the average of the pixels at ``r0, r1`` (2) or ``r0 .. r3`` (4, :func:`_avg4`), in
    PyTorch's order; ``(r0 + r1) * 0.5`` is bit for bit ``/ 2``."""
    if count == 16:
        if taps == 1:
            return fload(res, r0 + c)
        if taps == 2:
            return fmul(fadd(fload(res, r0 + c), fload(res, r1 + c)), fsplat(0.5))
        return _avg4(fload(res, r0 + c), fload(res, r1 + c), fload(res, r2 + c), fload(res, r3 + c))
    if taps == 1:
        return fload_n(res, r0 + c, count)
    if taps == 2:
        return fmul(fadd(fload_n(res, r0 + c, count), fload_n(res, r1 + c, count)), fsplat(0.5))
    return _avg4(
        fload_n(res, r0 + c, count),
        fload_n(res, r1 + c, count),
        fload_n(res, r2 + c, count),
        fload_n(res, r3 + c, count),
    )


@njit(cache=True, inline="always")
def _residual16(pres, r, cg, rw, pooled):
    """16 channels of the residual from flat offset ``r``: the value itself, or (``pooled``)
    the 2x2 average of a map ``rw`` floats per row. Not through :func:`residual_vec`, whose
    every branch Numba inlines before it can fold ``count``, which lengthens the first
    compile."""
    if not pooled:
        return fload(pres, r)
    return _avg4(fload(pres, r), fload(pres, r + cg), fload(pres, r + rw), fload(pres, r + rw + cg))


@njit(cache=True)
def _y32(pop0, pop1, E, p, co, c, kv, m2):
    """Position ``p``'s 32 output values ``co .. co + 32`` (residual channels ``c ..``) from its
    popcounts (float vectors) and its channels' parameters (:func:`param_block`), as two
    vectors; the next layer's signs (32 bits per threshold set) are stored on the way. ``E``:
    the :class:`BlockContext`.

    Compiled on its own and called, not inlined by Numba: inlined at Numba's IR level 16 times
    per micro-kernel it would double the first compile, and the epilogue runs no faster so.
    """
    q = ROW * p
    if E.edge:  # zero padding: the missing taps' half weight sums (row 0: interior, zeros)
        t = load(E.ppos, q + AT_BORDER) + E.tcol
        pop0 = fadd(pop0, fload(E.ptab, t))
        pop1 = fadd(pop1, fload(E.ptab, t + 16))
    r = load(E.ppos, q + AT_RES) + c
    res0 = _residual16(E.pres, r, E.cg, E.rw, E.pooled)
    res1 = _residual16(E.pres, r + 16, E.cg, E.rw, E.pooled)
    lo = block_params(E.pblk, co)
    hi = block_params(E.pblk, co + 16)
    y0 = unit_value(pop0, res0, lo, kv, m2)
    y1 = unit_value(pop1, res1, hi, kv, m2)
    o32 = (load(E.ppos, q + AT_BITS) >> 1) + co // 32
    t_sets, pob = E.t_sets, E.pob
    if E.cout % 64 == 32 and co + 32 == E.cout:
        # the last word holds only these 32 channels: one 64-bit store also clears the rest
        if t_sets > 0:
            store(pob, o32 // 2, sign_mask16(y0, lo.thr0) | (sign_mask16(y1, hi.thr0) << 16))
        if t_sets > 1:
            o = (o32 + E.tst32) // 2
            store(pob, o, sign_mask16(y0, lo.thr1) | (sign_mask16(y1, hi.thr1) << 16))
        return y0, y1
    if t_sets > 0:
        store_u32(pob, o32, sign_mask16(y0, lo.thr0) | (sign_mask16(y1, hi.thr0) << 16))
    if t_sets > 1:
        o = o32 + E.tst32
        store_u32(pob, o, sign_mask16(y0, lo.thr1) | (sign_mask16(y1, hi.thr1) << 16))
    return y0, y1


@njit(cache=True, inline="always")
def _out32(pop0, pop1, E, p, co, c, kv, m2):
    """Position ``p``'s 32 channels (:func:`_y32`) into the float map."""
    y0, y1 = _y32(pop0, pop1, E, p, co, c, kv, m2)
    zo = load(E.ppos, ROW * p + AT_Z) + co
    fstore(E.pz, zo, y0)
    fstore(E.pz, zo + 16, y1)


@njit(cache=True, inline="always")
def _pair32(pa0, pa1, pb0, pb1, E, p, co, c, kv, m2, count):
    """Positions ``p`` and ``p + 1`` (the two columns of a 2x2 window) into the 2x2-averaged
    map: an even row stores their sum, the odd row below adds its two and scales, which is
    ``(((r00 + r01) + r10) + r11) * 0.25`` -- what the next unit's pooled residual computes,
    in its order, from a quarter of the bytes. Pairs past ``count`` are a block's unused
    positions and are skipped (their sum would overwrite a real one)."""
    if p >= count:
        return
    ya0, ya1 = _y32(pa0, pa1, E, p, co, c, kv, m2)
    yb0, yb1 = _y32(pb0, pb1, E, p + 1, co, c, kv, m2)
    pz = E.pz
    zo = load(E.ppos, ROW * p + AT_Z) + co
    if load(E.ppos, ROW * p + AT_PARITY) == 0:
        fstore(pz, zo, fadd(ya0, yb0))
        fstore(pz, zo + 16, fadd(ya1, yb1))
    else:
        quarter = fsplat(0.25)
        fstore(pz, zo, fmul(fadd(fadd(fload(pz, zo), ya0), yb0), quarter))
        fstore(pz, zo + 16, fmul(fadd(fadd(fload(pz, zo + 16), ya1), yb1), quarter))


@njit(cache=True, inline="always")
def _narrow32(variant, pbits, offsets, pwt, wofs, k, rowstride, co, c, ktot, E, count):
    """8 positions (top-left taps ``offsets``) x 32 channels of a layer with at most 32 input
    channels, from the tap loop to the float map and the next layer's signs."""
    b0, b1, b2, b3, b4, b5, b6, b7 = offsets
    c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51, c60, c61, c70, c71 = narrow(
        variant, pbits, b0, b1, b2, b3, b4, b5, b6, b7, pwt, wofs, k, rowstride, E.ppos
    )
    m2 = fsplat(-2.0)
    kv = fsplat(ktot)
    if E.pool_out:
        _pair32(ffrom_i32(c00), ffrom_i32(c01), ffrom_i32(c10), ffrom_i32(c11), E, 0, co, c,
                kv, m2, count)  # fmt: skip
        _pair32(ffrom_i32(c20), ffrom_i32(c21), ffrom_i32(c30), ffrom_i32(c31), E, 2, co, c,
                kv, m2, count)  # fmt: skip
        _pair32(ffrom_i32(c40), ffrom_i32(c41), ffrom_i32(c50), ffrom_i32(c51), E, 4, co, c,
                kv, m2, count)  # fmt: skip
        _pair32(ffrom_i32(c60), ffrom_i32(c61), ffrom_i32(c70), ffrom_i32(c71), E, 6, co, c,
                kv, m2, count)  # fmt: skip
        return
    _out32(ffrom_i32(c00), ffrom_i32(c01), E, 0, co, c, kv, m2)
    _out32(ffrom_i32(c10), ffrom_i32(c11), E, 1, co, c, kv, m2)
    _out32(ffrom_i32(c20), ffrom_i32(c21), E, 2, co, c, kv, m2)
    _out32(ffrom_i32(c30), ffrom_i32(c31), E, 3, co, c, kv, m2)
    _out32(ffrom_i32(c40), ffrom_i32(c41), E, 4, co, c, kv, m2)
    _out32(ffrom_i32(c50), ffrom_i32(c51), E, 5, co, c, kv, m2)
    _out32(ffrom_i32(c60), ffrom_i32(c61), E, 6, co, c, kv, m2)
    _out32(ffrom_i32(c70), ffrom_i32(c71), E, 7, co, c, kv, m2)


@njit(cache=True, inline="always")
def _wide32(variant, pbits, offsets, pwt, wofs, k, rowstride, words, co, c, ktot, E, count):
    """:func:`_narrow32` for wider layers: 4 positions x 32 channels on 64-bit lanes (two
    8-lane accumulators make one 16-channel float vector)."""
    b0, b1, b2, b3 = offsets
    c00, c01, c02, c03, c10, c11, c12, c13, c20, c21, c22, c23, c30, c31, c32, c33 = wide(
        variant, pbits, b0, b1, b2, b3, pwt, wofs, k, rowstride, words, E.ppos
    )
    m2 = fsplat(-2.0)
    kv = fsplat(ktot)
    f00, f01 = ffrom_i64x2(c00, c01), ffrom_i64x2(c02, c03)
    f10, f11 = ffrom_i64x2(c10, c11), ffrom_i64x2(c12, c13)
    f20, f21 = ffrom_i64x2(c20, c21), ffrom_i64x2(c22, c23)
    f30, f31 = ffrom_i64x2(c30, c31), ffrom_i64x2(c32, c33)
    if E.pool_out:
        _pair32(f00, f01, f10, f11, E, 0, co, c, kv, m2, count)
        _pair32(f20, f21, f30, f31, E, 2, co, c, kv, m2, count)
        return
    _out32(f00, f01, E, 0, co, c, kv, m2)
    _out32(f10, f11, E, 1, co, c, kv, m2)
    _out32(f20, f21, E, 2, co, c, kv, m2)
    _out32(f30, f31, E, 3, co, c, kv, m2)


@njit(cache=True, inline="always")
def register_epilogue_fits(cg, k, t_sets, pooled, h, w):
    """Whether a fused unit takes the register epilogue for every block (see the module)."""
    whole_taps = not pooled or (h % 2 == 0 and w % 2 == 0)
    return cg % LANES == 0 and (k == 1 or k == 3) and t_sets <= 2 and whole_taps


@njit(cache=True)
def pools_output(cin, cg, k, stride, t_sets, pooled, h, w):
    """Whether :func:`.bconv.binary_conv_fused` can write the 2x2-averaged output map instead
    of the map itself (``pool_out``): the register epilogue, an even output size (whole 2x2
    windows; a window's two columns in one block) and row pairs that are whole blocks (a job
    then owns both rows of its windows)."""
    ho = out_size(h, k, stride)
    wo = out_size(w, k, stride)
    positions = block_positions(cin)
    fits = register_epilogue_fits(cg, k, t_sets, pooled, h, w)
    return fits and ho % 2 == 0 and wo % 2 == 0 and (2 * wo) % positions == 0


class Offsets(NamedTuple):
    """Where one output position's values go and its residual comes from (flat offsets)."""

    z: int  # the float map (of the 2x2-averaged map with ``pool_out``)
    res: int  # the residual (its 2x2 window's first pixel when pooled)
    bits: int  # the packed signs, in uint16 units


@njit(cache=True, inline="always")
def _position_offsets(geo, ep, img, oy, ox):
    """The :class:`Offsets` of output (oy, ox)."""
    ho, wo, cout, cg = geo.ho, geo.wo, ep.cout, geo.cg
    if ep.pool_out:
        z = ((img * (ho // 2) + oy // 2) * (wo // 2) + ox // 2) * cout
    else:
        z = ((img * ho + oy) * wo + ox) * cout
    if ep.pooled:
        r = ((img * geo.h + 2 * oy) * geo.w + 2 * ox) * cg
    else:
        r = ((img * ho + oy) * wo + ox) * cg
    o = ((img * ep.hpo + oy + ep.opad) * ep.wpo + ox + ep.opad) * ep.owords * 4
    return Offsets(z=z, res=r, bits=o)


@njit(cache=True, inline="always")
def _any_positions(ppos, geo, ep, img, by, bx, count):
    """The position table of a block of ``count`` positions from (by, bx) on, rows wrapping
    (unused positions repeat the last one); whether any position sees the zero padding."""
    oy, ox = by, bx
    edge = False
    for p in range(geo.positions):
        if 0 < p < count:
            oy, ox = next_position(oy, ox, geo.wo)
        q = ROW * p
        at = _position_offsets(geo, ep, img, oy, ox)
        cls = border_class(oy, ox, geo.stride, geo.h, geo.w) if geo.k == 3 else 0
        store(ppos, q + AT_Z, at.z)
        store(ppos, q + AT_RES, at.res)
        store(ppos, q + AT_BITS, at.bits)
        store(ppos, q + AT_BORDER, cls * geo.cols)
        store(ppos, q + AT_PARITY, oy % 2)
        edge |= cls != 0
    return edge


@njit(cache=True, inline="always")
def _row_table(ppos, geo, ep, img, by, bx):
    """:func:`_any_positions` of a whole block within one row that sees no zero padding, the
    usual case, by constant steps from its first position; False, writing nothing, for a block
    that sees the padding (only one at a row's ends or in the first or last row can) or starts
    at a 2x2 window's second column. Constant steps keep the table's cost small beside the short
    tap loops of the narrow layers, whose blocks hold 8 positions of only 32 input channels."""
    positions, stride = geo.positions, geo.stride
    if geo.k == 3:
        y0 = by * stride - 1
        if (
            y0 < 0
            or y0 + 3 > geo.h
            or bx * stride - 1 < 0
            or (bx + positions - 1) * stride + 2 > geo.w
        ):
            return False
    pool_out = ep.pool_out
    if pool_out and bx % 2 == 1:
        return False
    at = _position_offsets(geo, ep, img, by, bx)
    rs = 2 * geo.cg if ep.pooled else geo.cg
    for p in range(positions):
        q = ROW * p
        # pool_out: two columns a pixel
        store(ppos, q + AT_Z, at.z + (p // 2 if pool_out else p) * ep.cout)
        store(ppos, q + AT_RES, at.res + p * rs)
        store(ppos, q + AT_BITS, at.bits + p * ep.owords * 4)
        if pool_out:  # the row's parity: which half of the window's sum this row writes
            store(ppos, q + AT_PARITY, by % 2)
    return True


@njit(cache=True, inline="always")
def _context(geo, ep, edge, ppos, blk):
    """The :class:`BlockContext` of weight block ``blk`` of a block of positions."""
    return BlockContext(
        ppos=ppos, pblk=ep.pblk, pres=ep.pres, cg=geo.cg, rw=geo.w * geo.cg, pooled=ep.pooled,
        pz=ep.pz, pob=ep.pob, tst32=ep.tst32, t_sets=ep.t_sets, edge=edge, ptab=ep.ptab,
        tcol=blk * LANES, pool_out=ep.pool_out, cout=ep.cout,
    )  # fmt: skip


@njit(cache=True)
def _unit_kernel_narrow(variant, geo, ep, pbits, pwt, img, offsets, edge, count, ppos):
    """Every group and weight block of one block of a layer with at most 32 input channels
    (:func:`_narrow32` each). One compiled call per block, the loop over weight blocks inside
    it: a call per weight block would pass its thirty-odd arguments through the stack every
    time (about 5 % of a wide unit's time on Zen 3 at 14-56 px; within noise on the narrow
    112 px layers, whose blocks hold one or two weight blocks)."""
    kk = geo.k * geo.k
    o0, o1, o2, o3, o4, o5, o6, o7 = offsets
    for g in range(geo.groups):
        base = (g * geo.n + img) * geo.plane
        for j in range(geo.bpg):
            blk = g * geo.bpg + j
            _narrow32(
                variant,
                pbits,
                (base + o0, base + o1, base + o2, base + o3, base + o4, base + o5, base + o6,
                 base + o7),
                pwt, blk * kk * LANES, geo.k, geo.rowstride, g * geo.cg + j * LANES, j * LANES,
                ep.ktot, _context(geo, ep, edge, ppos, blk), count,
            )  # fmt: skip


@njit(cache=True)
def _unit_kernel_wide(variant, geo, ep, pbits, pwt, img, offsets, edge, count, ppos):
    """:func:`_unit_kernel_narrow` for wider layers (:func:`_wide32` each)."""
    kk = geo.k * geo.k
    o0, o1, o2, o3 = offsets[0], offsets[1], offsets[2], offsets[3]
    for g in range(geo.groups):
        base = (g * geo.n + img) * geo.plane
        for j in range(geo.bpg):
            blk = g * geo.bpg + j
            _wide32(
                variant, pbits, (base + o0, base + o1, base + o2, base + o3), pwt,
                blk * kk * geo.words * LANES, geo.k, geo.rowstride, geo.words,
                g * geo.cg + j * LANES, j * LANES, ep.ktot, _context(geo, ep, edge, ppos, blk),
                count,
            )  # fmt: skip


@njit(cache=True)
def unit_block(variant, geo, ep, pbits, pwt, img, by, bx, count, ppos):
    """One block of ``count`` positions from (by, bx) on (row-major; a block's unused
    positions repeat its last one: the same values written twice) of a fused unit, every group
    and weight block (:func:`_unit_kernel_wide`, :func:`_unit_kernel_narrow`): tap loop and
    epilogue straight from the accumulators, block by block of 32 channels. ``geo``: the
    convolution's :class:`.micro.Geometry`; ``ep``: the unit's :class:`Epilogue`; ``ppos``: the
    job's scratch (:func:`.table.block_scratch`). With ``ep.pool_out`` the float map is
    the 2x2-averaged one (:func:`pools_output`). ``variant``: the kernel variant
    (:mod:`.variants`) whose tap loop runs."""
    positions = geo.positions
    offsets = block_offsets(geo, by, bx, count)
    edge = False
    filled = False
    if count == positions and bx + positions <= geo.wo:
        filled = _row_table(ppos, geo, ep, img, by, bx)
    if not filled:
        edge = _any_positions(ppos, geo, ep, img, by, bx, count)
    if geo.narrow:
        _unit_kernel_narrow(variant, geo, ep, pbits, pwt, img, offsets, edge, count, ppos)
    else:
        _unit_kernel_wide(variant, geo, ep, pbits, pwt, img, offsets, edge, count, ppos)
