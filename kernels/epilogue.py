"""The fused unit's float epilogue run straight from the micro-kernels' accumulator registers.

Why: through a block buffer every 16 channels' popcounts are converted and stored by the
micro-kernel, then loaded back by the epilogue (on wide layers as two 8-lane stores read by one
16-lane load, which store forwarding cannot serve). Here the micro-kernel's tap loop
(:func:`.micro._taps_narrow` / :func:`.micro._taps_wide`) is followed by the epilogue of its 32
output channels for each of its positions (:func:`_y32`, called with the popcounts in
registers): popcounts to float in the register, weight scale, BatchNorm, the residual
(optionally the 2x2 average of the input-sized map), RPReLU, the float map store, and the next
layer's signs (one compare into a mask register per 16 channels, 32 bits per store). Same
float32 operations in the same order as the buffered epilogue and the numpy reference: the
results are bit for bit the same.

Every block of a unit takes this path when its groups are whole 32-channel weight blocks, its
kernel is 1x1 or 3x3 (the zero-padding correction is added to the popcounts in the register,
from the same table and with the same float addition as :mod:`.border`), it has at most two
threshold sets, and a pooled residual has all four taps everywhere (even input size); the
driver (:func:`.bconv.binary_conv_fused`) runs other units through the block buffer.
"""

from __future__ import annotations

from numba import njit

from .bitpack import LANES
from .border import _border_class
from .micro import (
    _block_offsets,
    _block_positions,
    _next,
    _taps_narrow,
    _taps_wide,
    block_positions,
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
    fneg,
    fprelu,
    fsplat,
    fstore,
    load,
    sign_mask16,
    store,
    store_u32,
)


@njit(cache=True, inline="always")
def _slice_params(prm, thr, co, cout, t_sets, m2):
    """The epilogue's parameters of the 16 channels from ``co`` on: the six rows of ``prm``
    (weight scale, BatchNorm multiplier and offset, RPReLU shift, slope, shift) and the
    negated thresholds of up to two sets (:func:`.simd.sign_mask16`), ``m2`` standing in for a
    missing set."""
    return (
        fload(prm, co), fload(prm, cout + co), fload(prm, 2 * cout + co),
        fload(prm, 3 * cout + co), fload(prm, 4 * cout + co), fload(prm, 5 * cout + co),
        fneg(fload(thr, co)) if t_sets > 0 else m2,
        fneg(fload(thr, cout + co)) if t_sets > 1 else m2,
    )  # fmt: skip


@njit(cache=True, inline="always")
def _params32(pprm, pthr, co, cout, t_sets, m2):
    """:func:`_slice_params` of the two 16-channel slices of channels ``co .. co + 32``."""
    return (
        _slice_params(pprm, pthr, co, cout, t_sets, m2),
        _slice_params(pprm, pthr, co + 16, cout, t_sets, m2),
    )


@njit(cache=True, inline="always")
def _unit_value(pop, res_v, scale, mul, add, shift_in, slope, shift_out, ktot_v, m2):
    """The fused unit's output from its popcounts (a float vector): weight scale, BatchNorm,
    residual, RPReLU -- the float32 operations of PyTorch's model in its order (and of the
    numpy reference); ``ktot - 2 * pop`` is exact, so one fused multiply-add computes it."""
    y = fmul(ffma(pop, m2, ktot_v), scale)
    y = fadd(fmul(y, mul), add)
    return fadd(fprelu(fadd(fadd(y, res_v), shift_in), slope), shift_out)


@njit(cache=True, inline="always")
def _avg4(a, b, c, d):
    """The 2x2 average of four float vectors in PyTorch's order, ``(((a + b) + c) + d) * 0.25``
    (bit for bit ``/ 4``: a power of two, and far cheaper than a division)."""
    return fmul(fadd(fadd(fadd(a, b), c), d), fsplat(0.25))


@njit(cache=True, inline="always")
def _residual_vec(res, r0, r1, r2, r3, taps, c, count):
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
    the 2x2 average of a map ``rw`` floats per row. Not through :func:`_residual_vec`, whose
    every branch Numba inlines before it can fold ``count`` (a first compile 3-5 s longer now
    that :func:`_y32` is its only caller; 39 s longer when the micro-kernels inlined it)."""
    if not pooled:
        return fload(pres, r)
    return _avg4(fload(pres, r), fload(pres, r + cg), fload(pres, r + rw), fload(pres, r + rw + cg))


@njit(cache=True)
def _y32(pop0, pop1, P, E, p, co, c, kv, m2):
    """Position ``p``'s 32 output values ``co .. co + 32`` (residual channels ``c ..``) from its
    popcounts (float vectors), as two vectors; the next layer's signs (32 bits per threshold
    set) are stored on the way.

    ``E``: the block's context (:func:`_unit_block`): its position table ``ppos`` holds, per
    position, the float map, residual, packed-sign (uint32) and border-table offsets and the
    row's parity.

    Compiled on its own and called, not inlined by Numba: inlined at Numba's IR level 16 times
    per micro-kernel it took half of the first compile (75 -> 38 s without), and the epilogue
    ran no faster (0.645-0.674 ms against 0.635-0.678, alternating runs).
    """
    ppos, pres, cg, rw, pooled, pz, pob, tst32, t_sets, edge, ptab, tcol, pool_out, cout = E
    (s0, mu0, ad0, si0, sl0, so0, ta0, tb0), (s1, mu1, ad1, si1, sl1, so1, ta1, tb1) = P
    q = 8 * p
    if edge:  # zero padding: the missing taps' half weight sums (row 0: interior, zeros)
        t = load(ppos, q + 3) + tcol
        pop0 = fadd(pop0, fload(ptab, t))
        pop1 = fadd(pop1, fload(ptab, t + 16))
    r = load(ppos, q + 1) + c
    res0 = _residual16(pres, r, cg, rw, pooled)
    res1 = _residual16(pres, r + 16, cg, rw, pooled)
    y0 = _unit_value(pop0, res0, s0, mu0, ad0, si0, sl0, so0, kv, m2)
    y1 = _unit_value(pop1, res1, s1, mu1, ad1, si1, sl1, so1, kv, m2)
    o32 = load(ppos, q + 2) + co // 32
    if cout % 64 == 32 and co + 32 == cout:
        # the last word holds only these 32 channels: one 64-bit store also clears the rest
        if t_sets > 0:
            store(pob, o32 // 2, sign_mask16(y0, ta0) | (sign_mask16(y1, ta1) << 16))
        if t_sets > 1:
            store(pob, (o32 + tst32) // 2, sign_mask16(y0, tb0) | (sign_mask16(y1, tb1) << 16))
        return y0, y1
    if t_sets > 0:
        store_u32(pob, o32, sign_mask16(y0, ta0) | (sign_mask16(y1, ta1) << 16))
    if t_sets > 1:
        store_u32(pob, o32 + tst32, sign_mask16(y0, tb0) | (sign_mask16(y1, tb1) << 16))
    return y0, y1


@njit(cache=True, inline="always")
def _out32(pop0, pop1, P, E, p, co, c, kv, m2):
    """Position ``p``'s 32 channels (:func:`_y32`) into the float map."""
    y0, y1 = _y32(pop0, pop1, P, E, p, co, c, kv, m2)
    zo = load(E[0], 8 * p) + co
    fstore(E[5], zo, y0)
    fstore(E[5], zo + 16, y1)


@njit(cache=True, inline="always")
def _pair32(pa0, pa1, pb0, pb1, P, E, p, co, c, kv, m2, count):
    """Positions ``p`` and ``p + 1`` (the two columns of a 2x2 window) into the 2x2-averaged
    map: an even row stores their sum, the odd row below adds its two and scales, which is
    ``(((r00 + r01) + r10) + r11) * 0.25`` -- what the next unit's pooled residual computes,
    in its order, from a quarter of the bytes. Pairs past ``count`` are a block's unused
    positions and are skipped (their sum would overwrite a real one)."""
    if p >= count:
        return
    ya0, ya1 = _y32(pa0, pa1, P, E, p, co, c, kv, m2)
    yb0, yb1 = _y32(pb0, pb1, P, E, p + 1, co, c, kv, m2)
    pz = E[5]
    zo = load(E[0], 8 * p) + co
    if load(E[0], 8 * p + 4) == 0:
        fstore(pz, zo, fadd(ya0, yb0))
        fstore(pz, zo + 16, fadd(ya1, yb1))
    else:
        quarter = fsplat(0.25)
        fstore(pz, zo, fmul(fadd(fadd(fload(pz, zo), ya0), yb0), quarter))
        fstore(pz, zo + 16, fmul(fadd(fadd(fload(pz, zo + 16), ya1), yb1), quarter))


@njit(cache=True)
def _unit_kernel_narrow(
    pbits, b0, b1, b2, b3, b4, b5, b6, b7, pwt, wofs, k, rowstride, pprm, pthr, co, c, cout,
    ktot, E, count,
):  # fmt: skip
    """8 positions (top-left taps ``b0 .. b7``) x 32 channels of a layer with at most 32 input
    channels, from the tap loop to the float map and the next layer's signs."""
    c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51, c60, c61, c70, c71 = _taps_narrow(
        pbits, b0, b1, b2, b3, b4, b5, b6, b7, pwt, wofs, k, rowstride
    )
    m2 = fsplat(-2.0)
    kv = fsplat(ktot)
    P = _params32(pprm, pthr, co, cout, E[8], m2)
    if E[12]:
        _pair32(ffrom_i32(c00), ffrom_i32(c01), ffrom_i32(c10), ffrom_i32(c11), P, E, 0, co, c,
                kv, m2, count)  # fmt: skip
        _pair32(ffrom_i32(c20), ffrom_i32(c21), ffrom_i32(c30), ffrom_i32(c31), P, E, 2, co, c,
                kv, m2, count)  # fmt: skip
        _pair32(ffrom_i32(c40), ffrom_i32(c41), ffrom_i32(c50), ffrom_i32(c51), P, E, 4, co, c,
                kv, m2, count)  # fmt: skip
        _pair32(ffrom_i32(c60), ffrom_i32(c61), ffrom_i32(c70), ffrom_i32(c71), P, E, 6, co, c,
                kv, m2, count)  # fmt: skip
        return
    _out32(ffrom_i32(c00), ffrom_i32(c01), P, E, 0, co, c, kv, m2)
    _out32(ffrom_i32(c10), ffrom_i32(c11), P, E, 1, co, c, kv, m2)
    _out32(ffrom_i32(c20), ffrom_i32(c21), P, E, 2, co, c, kv, m2)
    _out32(ffrom_i32(c30), ffrom_i32(c31), P, E, 3, co, c, kv, m2)
    _out32(ffrom_i32(c40), ffrom_i32(c41), P, E, 4, co, c, kv, m2)
    _out32(ffrom_i32(c50), ffrom_i32(c51), P, E, 5, co, c, kv, m2)
    _out32(ffrom_i32(c60), ffrom_i32(c61), P, E, 6, co, c, kv, m2)
    _out32(ffrom_i32(c70), ffrom_i32(c71), P, E, 7, co, c, kv, m2)


@njit(cache=True)
def _unit_kernel_wide(
    pbits, b0, b1, b2, b3, pwt, wofs, k, rowstride, words, pprm, pthr, co, c, cout, ktot, E,
    count,
):  # fmt: skip
    """:func:`_unit_kernel_narrow` for wider layers: 4 positions x 32 channels on 64-bit lanes
    (two 8-lane accumulators make one 16-channel float vector)."""
    c00, c01, c02, c03, c10, c11, c12, c13, c20, c21, c22, c23, c30, c31, c32, c33 = _taps_wide(
        pbits, b0, b1, b2, b3, pwt, wofs, k, rowstride, words
    )
    m2 = fsplat(-2.0)
    kv = fsplat(ktot)
    P = _params32(pprm, pthr, co, cout, E[8], m2)
    f00, f01 = ffrom_i64x2(c00, c01), ffrom_i64x2(c02, c03)
    f10, f11 = ffrom_i64x2(c10, c11), ffrom_i64x2(c12, c13)
    f20, f21 = ffrom_i64x2(c20, c21), ffrom_i64x2(c22, c23)
    f30, f31 = ffrom_i64x2(c30, c31), ffrom_i64x2(c32, c33)
    if E[12]:
        _pair32(f00, f01, f10, f11, P, E, 0, co, c, kv, m2, count)
        _pair32(f20, f21, f30, f31, P, E, 2, co, c, kv, m2, count)
        return
    _out32(f00, f01, P, E, 0, co, c, kv, m2)
    _out32(f10, f11, P, E, 1, co, c, kv, m2)
    _out32(f20, f21, P, E, 2, co, c, kv, m2)
    _out32(f30, f31, P, E, 3, co, c, kv, m2)


@njit(cache=True, inline="always")
def _register_epilogue_fits(cg, k, t_sets, pooled, h, w):
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
    fits = _register_epilogue_fits(cg, k, t_sets, pooled, h, w)
    return fits and ho % 2 == 0 and wo % 2 == 0 and (2 * wo) % positions == 0


@njit(cache=True, inline="always")
def _position_offsets(img, oy, ox, h, w, ho, wo, cout, cg, hpo, wpo, opad, owords, pooled,
                      pool_out):  # fmt: skip
    """Output (oy, ox)'s float map offset (of the 2x2-averaged map with ``pool_out``), residual
    offset (its 2x2 window's first pixel when ``pooled``) and packed-sign offset (uint32)."""
    if pool_out:
        z = ((img * (ho // 2) + oy // 2) * (wo // 2) + ox // 2) * cout
    else:
        z = ((img * ho + oy) * wo + ox) * cout
    if pooled:
        r = ((img * h + 2 * oy) * w + 2 * ox) * cg
    else:
        r = ((img * ho + oy) * wo + ox) * cg
    return z, r, ((img * hpo + oy + opad) * wpo + ox + opad) * owords * 2


@njit(cache=True, inline="always")
def _any_positions(ppos, img, by, bx, count, positions, h, w, ho, wo, cout, cg, hpo, wpo, opad,
                   owords, k, stride, cols, pooled, pool_out):  # fmt: skip
    """The position table (see :func:`_y32`) of a block of ``count`` positions from (by, bx)
    on, rows wrapping (unused positions repeat the last one); whether any position sees the
    zero padding."""
    oy, ox = by, bx
    edge = False
    for p in range(positions):
        if 0 < p < count:
            oy, ox = _next(oy, ox, wo)
        q = 8 * p
        z, r, o = _position_offsets(
            img, oy, ox, h, w, ho, wo, cout, cg, hpo, wpo, opad, owords, pooled, pool_out
        )
        cls = _border_class(oy, ox, stride, h, w) if k == 3 else 0
        store(ppos, q, z)
        store(ppos, q + 1, r)
        store(ppos, q + 2, o)
        store(ppos, q + 3, cls * cols)
        store(ppos, q + 4, oy % 2)
        edge |= cls != 0
    return edge


@njit(cache=True, inline="always")
def _row_table(ppos, img, by, bx, positions, h, w, ho, wo, cout, cg, hpo, wpo, opad, owords, k,
               stride, pooled, pool_out):  # fmt: skip
    """:func:`_any_positions` of a whole block within one row that sees no zero padding, the
    usual case, by constant steps from its first position; False, writing nothing, for a block
    that sees the padding (only one at a row's ends or in the first or last row can) or starts
    at a 2x2 window's second column. (The general table's per-position arithmetic, timed alone,
    took 27 ns a block of 8 positions; with it the 3x3 32->32 unit at 112 px ran 7 % slower.)"""
    if k == 3:
        y0 = by * stride - 1
        if y0 < 0 or y0 + 3 > h or bx * stride - 1 < 0 or (bx + positions - 1) * stride + 2 > w:
            return False
    if pool_out and bx % 2 == 1:
        return False
    z, r, o = _position_offsets(
        img, by, bx, h, w, ho, wo, cout, cg, hpo, wpo, opad, owords, pooled, pool_out
    )
    rs = 2 * cg if pooled else cg
    for p in range(positions):
        q = 8 * p
        store(ppos, q, z + (p // 2 if pool_out else p) * cout)  # pool_out: two columns a pixel
        store(ppos, q + 1, r + p * rs)
        store(ppos, q + 2, o + p * owords * 2)
        if pool_out:  # the row's parity: which half of the window's sum this row writes
            store(ppos, q + 4, by % 2)
    return True


@njit(cache=True)
def _unit_block(
    pbits, pwt, img, n, plane, groups, bpg, k, stride, rowstride, words, narrow, by, bx, count,
    pprm, pthr, cout, t_sets, ktot, pres, pooled, h, w, ho, wo, cg, pz, pob, hpo, wpo, opad,
    owords, tst32, ptab, cols, ppos, pool_out,
):  # fmt: skip
    """One block of ``count`` positions from (by, bx) on (row-major; a block's unused
    positions repeat its last one: the same values written twice) of a fused unit, every group
    and weight block: tap loop and epilogue in one micro-kernel call each. ``pool_out``: ``pz``
    is the 2x2-averaged map (:func:`pools_output`)."""
    kk = k * k
    positions = _block_positions(narrow)
    o0, o1, o2, o3, o4, o5, o6, o7 = _block_offsets(
        by, bx, count, positions, wo, stride, rowstride, words
    )
    edge = False
    filled = False
    if count == positions and bx + positions <= wo:
        filled = _row_table(
            ppos, img, by, bx, positions, h, w, ho, wo, cout, cg, hpo, wpo, opad, owords, k,
            stride, pooled, pool_out,
        )  # fmt: skip
    if not filled:
        edge = _any_positions(
            ppos, img, by, bx, count, positions, h, w, ho, wo, cout, cg, hpo, wpo, opad, owords,
            k, stride, cols, pooled, pool_out,
        )  # fmt: skip
    for g in range(groups):
        base = (g * n + img) * plane
        for j in range(bpg):
            blk = g * bpg + j
            E = (ppos, pres, cg, w * cg, pooled, pz, pob, tst32, t_sets, edge, ptab, blk * LANES,
                 pool_out, cout)  # fmt: skip
            if narrow:
                _unit_kernel_narrow(
                    pbits, base + o0, base + o1, base + o2, base + o3, base + o4, base + o5,
                    base + o6, base + o7, pwt, blk * kk * LANES, k, rowstride, pprm, pthr,
                    g * cg + j * LANES, j * LANES, cout, ktot, E, count,
                )  # fmt: skip
            else:
                _unit_kernel_wide(
                    pbits, base + o0, base + o1, base + o2, base + o3, pwt,
                    blk * kk * words * LANES, k, rowstride, words, pprm, pthr, g * cg + j * LANES,
                    j * LANES, cout, ktot, E, count,
                )  # fmt: skip
