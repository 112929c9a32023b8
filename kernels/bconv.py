"""XOR-popcount binary convolution (k x k, stride 1 or 2, any channel count, any batch).

For +-1 vectors packed as bits (set = -1), ``dot(a, w) = K - 2 * popcount(a ^ w)``, computed by
the micro-kernels of :mod:`.micro` block by block, with the zero-padding correction of
:mod:`.border`. Two drivers:

- :func:`binary_conv_acc` returns the exact integer accumulations (the tests compare them with
  ``F.conv2d`` on +-1 tensors). Runs of whole blocks along a padding-free row take a lean path:
  incremental offsets, dot products stored straight from the registers, no per-block
  bookkeeping.
- :func:`binary_conv_fused` applies the whole output transform in the same pass -- weight scale,
  BatchNorm, the residual (optionally 2x2-average-pooled), RPReLU -- writes the float map needed
  by the next residual (or only its 2x2 average) and packs the next layer's sign bits directly.
  Where the groups have whole 32-channel weight blocks and the kernel is 1x1 or 3x3 (all of
  ReActNet-A), every block runs the epilogue inside its micro-kernel, on the accumulator
  registers (:mod:`.epilogue`). Otherwise the popcounts go through a block buffer; with whole
  16-channel slices the transform then runs slice by slice over a block's positions, the
  slice's parameters held in registers and the signs taken from the registers (one compare
  into a mask register per 16 channels), never read back from the map. The float operations
  are the same on every path (:func:`.epilogue.unit_value`).

Parallel over blocks of output positions (``prange`` on the outermost loop only; every job
writes disjoint output rows).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from numba import njit, prange

from .bitpack import LANES, NARROW_CHANNELS, pack_row, words_for
from .border import border_block, border_block_direct, border_table, fix_position, interior
from .epilogue import (
    Epilogue,
    SliceParams,
    block_params,
    param_block,
    pools_output,
    register_epilogue_fits,
    residual_vec,
    unit_block,
    unit_value,
)
from .micro import (
    POSITIONS,
    ConvShape,
    advance,
    block_microkernels,
    block_positions,
    geometry,
    next_position,
    out_size,
    popcounts,
    positions_for,
)
from .simd import (
    address,
    fadd,
    fload,
    fload_n,
    fmul,
    fsplat,
    fstore,
    fstore_i32,
    fstore_n,
    load,
    sign_mask16,
    store,
    store_u16,
)
from .table import (
    AT_BITS,
    AT_RES,
    AT_RES_BELOW,
    AT_RES_DIAG,
    AT_RES_RIGHT,
    AT_TAPS,
    AT_Z,
    ROW,
    block_scratch,
)
from .taps import tap_input, weight_factor

__all__ = [
    "POSITIONS",
    "FusedOutput",
    "binary_conv_acc",
    "binary_conv_fused",
    "binary_gemm",
    "block_positions",
    "out_size",
]


@njit(cache=True, inline="always")
def _job_start(job, jobs_per_img, blocks_per_job, positions, wo):
    """Image, first block and its first output position of one parallel job
    (``blocks_per_job`` blocks of ``positions`` output positions each, row-major within an
    image)."""
    img = job // jobs_per_img
    first = (job % jobs_per_img) * blocks_per_job
    return img, first, (first * positions) // wo, (first * positions) % wo


class FusedOutput(NamedTuple):
    """What a fused unit (:func:`binary_conv_fused`) does after its binary convolution: its
    parameters, residual and outputs (flat arrays unless said otherwise)."""

    prm: Any  # (6, C) float32: weight scale, BatchNorm multiplier and offset, RPReLU (3 rows)
    res: Any  # the residual, NHWC float32 with ``cg`` channels
    pooled: bool  # the residual is the 2x2 average of an input-sized map
    z: Any  # the output float map, NHWC float32 (its 2x2 average with ``pool_out``)
    thr: Any  # (T, C) float32: the next layer's RSign shifts, one row per packed sign set
    opad: int  # zero border of the packed output (the next kernel's padding)
    obits: Any  # the next layer's packed signs, (T, n, ho + 2 opad, wo + 2 opad, words(C))
    pool_out: bool  # write only the output map's 2x2 average (:func:`.epilogue.pools_output`)


@njit(cache=True)
def _check_conv(bits, shape, weights, blocks_per_job):
    """Shapes and buffer sizes, checked once per call: the loops themselves have no bounds
    checks, so a wrong buffer must be refused here rather than read or written past."""
    n, h, w, cin, k, stride, groups, cg = shape
    wt, wsum, _ = weights
    if n < 1 or h < 1 or w < 1 or cin < 1 or cg < 1 or groups < 1 or blocks_per_job < 1:
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
    elif wt.size != groups * bpg * k * k * words * LANES * weight_factor(weights.variant, cin):
        raise ValueError("binary conv: the packed weights do not match the shape")
    if k > 1 and (wsum.shape[0] != k * k or wsum.shape[1] != groups * bpg * LANES):
        raise ValueError("binary conv: the tap sums do not match the weights")


@njit(cache=True, parallel=True)
def binary_conv_acc(bits, shape, weights, blocks_per_job, out):
    """Exact integer accumulations ``sum(sign(a) * sign(w))`` of a binary convolution.

    ``bits``: flat (groups, n, h + 2p, w + 2p, words) packed input (p = k // 2, zero border);
    ``shape``: the :class:`.micro.ConvShape`; ``weights``: the layer's
    :class:`.bitpack.BinaryWeights`; ``out``: int32 (n, ho, wo, groups * cg).
    ``blocks_per_job``: blocks of :func:`.micro.positions_for` positions per parallel job.
    """
    _check_conv(bits, shape, weights, blocks_per_job)
    n, h, w, cin, k, stride, groups, cg = shape
    wt, wsum, variant = weights
    if out.size != n * out_size(h, k, stride) * out_size(w, k, stride) * groups * cg:
        raise ValueError("binary_conv_acc: out has the wrong size")
    geo = geometry(shape, blocks_per_job)
    ho, wo, pad, positions, cols = geo.ho, geo.wo, geo.pad, geo.positions, geo.cols
    nq = ho * wo
    ktot_f = np.float32(geo.ktot)  # float32 arithmetic on popcounts < 2**24 is exact
    cout = groups * cg
    table = border_table(wsum, k, cols)
    fix = (np.float32(-2.0) * table).astype(np.int32)  # the same, as dot products
    flat_out = out.ravel()
    # Dot products straight from the registers into ``out`` when a block's rows are exactly
    # its outputs (no padding lanes); otherwise through ``acc``.
    direct_ok = cols == cout and (k == 1 or k == 3)
    step = stride * geo.words
    src = tap_input(variant, bits, cin)
    pbits, pwt, pout = address(src), address(wt), address(flat_out)
    for job in prange(n * geo.jobs_per_img):
        img, first, by, bx = _job_start(job, geo.jobs_per_img, blocks_per_job, positions, wo)
        acc = np.empty(positions * cols, np.float32)
        pacc = address(acc)
        scr = block_scratch(positions)
        pscr = address(scr)
        last = min(first + blocks_per_job, geo.nblocks)
        blk = first
        while blk < last:
            y0 = by * stride - pad
            if direct_ok and bx + positions <= wo and y0 >= 0 and y0 + k <= h:
                # the usual case: a run of whole blocks along a row that sees no padding above
                # or below -- incremental offsets, dot products straight into ``out``
                run = min(last - blk, (wo - bx) // positions)
                o0 = by * stride * geo.rowstride + bx * step
                dst = ((img * ho + by) * wo + bx) * cout
                start = dst
                for _ in range(run):
                    offsets = (o0, o0 + step, o0 + 2 * step, o0 + 3 * step, o0 + 4 * step,
                               o0 + 5 * step, o0 + 6 * step, o0 + 7 * step)  # fmt: skip
                    block_microkernels(
                        variant, geo, pbits, pwt, pacc, pout, True, dst, offsets, img, pscr
                    )
                    o0 += positions * step
                    dst += positions * cout
                if pad > 0:  # only the run's ends can reach past the left or right edge
                    fix_position(flat_out, start, cout, by, bx, stride, h, w, fix)
                    end = bx + run * positions - 1
                    fix_position(flat_out, dst - cout, cout, by, end, stride, h, w, fix)
                blk += run
                by, bx = advance(by, bx, run * positions, wo)
                continue
            count = min(positions, nq - blk * positions)
            obase = ((img * ho + by) * wo + bx) * cout
            direct = direct_ok and count == positions
            popcounts(variant, geo, src, wt, img, by, bx, count, acc, flat_out, direct, obase, scr)
            edge = pad > 0 and not interior(by, bx, count, k, stride, h, w, wo)
            if direct:
                if edge:
                    border_block_direct(flat_out, obase, cout, by, bx, count, stride, h, w, wo, fix)
            else:
                if edge:
                    border_block(acc, cols, k, by, bx, count, stride, h, w, wo, table)
                _store_dots(acc, flat_out, obase, count, cout, cols, groups, cg, geo.bpg, ktot_f)
            blk += 1
            by, bx = advance(by, bx, count, wo)


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
    of the input-sized map -- ``((r0 + r1) + r2) + r3) / 4``, ``(r0 + r1) / 2`` or ``r0``
    (computed as ``* 0.25`` and ``* 0.5``: bit for bit the same for powers of two).
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
    res_v = residual_vec(res, r0, r1, r2, r3, taps, c, count)
    m2 = fsplat(-2.0)
    sp = SliceParams(
        scale=scale, mul=mul, add=add, shift_in=shift_in, slope=slope, shift_out=shift_out,
        thr0=m2, thr1=m2,
    )  # fmt: skip
    y = unit_value(pop, res_v, sp, fsplat(ktot), m2)
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


class UnitArrays(NamedTuple):
    """The arrays of a fused unit that the buffered epilogues read and write (flat)."""

    prm: Any  # (6, cout) float32: weight scale, BatchNorm multiplier, offset, RPReLU
    res: Any  # the residual, NHWC float32 with cg channels
    z: Any  # the output float map
    thr: Any  # (t_sets, cout) float32: the next layer's RSign shifts
    obits: Any  # the next layer's packed signs (uint64)
    params: Any  # :func:`.epilogue.param_block`: the sliced epilogue reads it, the register
    # epilogue through a raw pointer; held here, it lives as long as the loop that reads it (a
    # variable last used before the loop would not)


@njit(cache=True)
def _epilogue_generic(acc, geo, ep, arrays, img, by, bx, count):
    """The output transform of one block's popcounts in ``acc`` for any channel count: position
    by position, then the next layer's signs packed from the stored float map. (This and
    :func:`_epilogue_sliced` are called once per block, not inlined, which keeps the first
    compile short.)
    ``geo``: :class:`.micro.Geometry`; ``ep``: :class:`.epilogue.Epilogue` (its sizes);
    ``arrays``: :class:`UnitArrays`."""
    cols, n, h, w, ho, wo, cg = geo.cols, geo.n, geo.h, geo.w, geo.ho, geo.wo, geo.cg
    groups, bpg, cout, pooled, ktot_f = geo.groups, geo.bpg, ep.cout, ep.pooled, ep.ktot
    prm, res, z, thr, obits = arrays.prm, arrays.res, arrays.z, arrays.thr, arrays.obits
    t_sets, opad, owords, hpo, wpo = ep.t_sets, ep.opad, ep.owords, ep.hpo, ep.wpo
    oy, ox = by, bx
    for p in range(count):
        if p > 0:
            oy, ox = next_position(oy, ox, wo)
        aofs = p * cols
        zoff = ((img * ho + oy) * wo + ox) * cout
        hr, wr = (h, w) if pooled else (ho, wo)
        r0, r1, r2, r3, taps = _residual_taps(img, hr, wr, cg, oy, ox, pooled)
        for g in range(groups):
            _transform(
                acc, aofs + g * bpg * LANES, ktot_f, cg, g * cg, cout, prm, res,
                r0, r1, r2, r3, taps, z, zoff,
            )  # fmt: skip
    # Pack the next layer's signs only now, once the block's float stores have left
    # the store buffer: reading a row back right after writing it stalls.
    oy, ox = by, bx
    for p in range(count):
        if p > 0:
            oy, ox = next_position(oy, ox, wo)
        zoff = ((img * ho + oy) * wo + ox) * cout
        for t in range(t_sets):
            ooff = (((t * n + img) * hpo + oy + opad) * wpo + ox + opad) * owords
            pack_row(z, zoff, cout, thr, t * cout, obits, ooff, owords)


@njit(cache=True)
def _epilogue_sliced(acc, geo, ep, arrays, img, by, bx, count, pos):
    """:func:`_epilogue_generic` when every group has whole 16-channel slices: slice by slice,
    each slice's parameters (:func:`.epilogue.block_params`) loaded once for the whole block,
    and the next layer's signs taken from the registers (one compare into a mask, 16 bits
    stored) rather than read back from the float map. Same float32 operations in the same
    order.

    ``pos``: the block's position table (:mod:`.table`).
    """
    cols, n, h, w, ho, wo, cg = geo.cols, geo.n, geo.h, geo.w, geo.ho, geo.wo, geo.cg
    groups, bpg, cout, pooled, ktot_f = geo.groups, geo.bpg, ep.cout, ep.pooled, ep.ktot
    params, res, z, obits = arrays.params, arrays.res, arrays.z, arrays.obits
    t_sets, opad, owords, hpo, wpo = ep.t_sets, ep.opad, ep.owords, ep.hpo, ep.wpo
    tstride = n * hpo * wpo * owords * 4  # uint16 units between threshold sets
    ktot_v = fsplat(ktot_f)
    m2 = fsplat(-2.0)
    if not pooled and bx + count <= wo:
        # the usual case: the block lies along one row and the residual is the same position's
        # value: every offset steps by a constant from one position to the next
        q0 = (img * ho + by) * wo + bx
        o0 = ((img * hpo + by + opad) * wpo + bx + opad) * owords * 4
        for g in range(groups):
            for c in range(0, cg, 16):
                co = g * cg + c
                sp = block_params(params, co)
                a = g * bpg * LANES + c
                for p in range(count):
                    pop = fload(acc, p * cols + a)
                    res_v = fload(res, (q0 + p) * cg + c)
                    y = unit_value(pop, res_v, sp, ktot_v, m2)
                    fstore(z, (q0 + p) * cout + co, y)
                    o16 = o0 + p * owords * 4 + co // 16
                    if t_sets > 0:
                        store_u16(obits, o16, sign_mask16(y, sp.thr0))
                    if t_sets > 1:
                        store_u16(obits, o16 + tstride, sign_mask16(y, sp.thr1))
        if cout % 64 != 0:  # the last word's channels past cout stay clear
            for p in range(count):
                for t in range(t_sets):
                    for j in range((cout + 15) // 16, owords * 4):
                        store_u16(obits, o0 + p * owords * 4 + t * tstride + j, 0)
        return
    hr, wr = (h, w) if pooled else (ho, wo)
    oy, ox = by, bx
    for p in range(count):
        if p > 0:
            oy, ox = next_position(oy, ox, wo)
        r0, r1, r2, r3, taps = _residual_taps(img, hr, wr, cg, oy, ox, pooled)
        q = ROW * p
        store(pos, q + AT_Z, ((img * ho + oy) * wo + ox) * cout)
        store(pos, q + AT_RES, r0)
        store(pos, q + AT_RES_RIGHT, r1)
        store(pos, q + AT_RES_BELOW, r2)
        store(pos, q + AT_RES_DIAG, r3)
        store(pos, q + AT_TAPS, taps)
        store(pos, q + AT_BITS, (((img * hpo + oy + opad) * wpo + ox + opad) * owords) * 4)
    for g in range(groups):
        for c in range(0, cg, 16):
            co = g * cg + c
            # the slice's parameters and the next layers' thresholds, kept in registers
            sp = block_params(params, co)
            a = g * bpg * LANES + c
            for p in range(count):
                q = ROW * p
                pop = fload(acc, p * cols + a)
                res_v = residual_vec(
                    res, load(pos, q + AT_RES), load(pos, q + AT_RES_RIGHT),
                    load(pos, q + AT_RES_BELOW), load(pos, q + AT_RES_DIAG), load(pos, q + AT_TAPS),
                    c, 16,
                )  # fmt: skip
                y = unit_value(pop, res_v, sp, ktot_v, m2)
                fstore(z, load(pos, q + AT_Z) + co, y)
                o16 = load(pos, q + AT_BITS) + co // 16
                if t_sets > 0:
                    store_u16(obits, o16, sign_mask16(y, sp.thr0))
                if t_sets > 1:
                    store_u16(obits, o16 + tstride, sign_mask16(y, sp.thr1))
    if cout % 64 != 0:  # the last word's channels past cout stay clear
        for p in range(count):
            o16 = load(pos, ROW * p + AT_BITS)
            for t in range(t_sets):
                for j in range((cout + 15) // 16, owords * 4):
                    store_u16(obits, o16 + t * tstride + j, 0)


@njit(cache=True, parallel=True)
def binary_conv_fused(bits, shape, weights, unit, blocks_per_job):
    """One residual binary unit in one pass: ``z = RPReLU(BN(scale * conv) + residual)``.

    ``bits``, ``shape``, ``weights``, ``blocks_per_job``: as for :func:`binary_conv_acc`;
    ``unit``: the :class:`FusedOutput` -- ``prm`` (6, C) per output channel: weight scale,
    BatchNorm multiplier and offset, RPReLU's shift, slope, shift (``0, 1, 0`` is the identity);
    ``res``: flat NHWC float32 with ``cg`` channels, added to every group, at the same position
    or (``pooled``) 2x2-average-pooled from a map of the input's size; ``z``: flat NHWC float32
    output, or with ``pool_out`` (where :func:`.epilogue.pools_output` allows it) its 2x2
    average (n, ho / 2, wo / 2, C), all a next unit with a pooled residual reads of it;
    ``thr`` (T, C): the next layer's RSign shifts -- for each row, packed signs of ``z + thr``
    go to ``obits``, flat (T, n, ho + 2 opad, wo + 2 opad, words(C)) whose border stays zero.
    """
    _check_conv(bits, shape, weights, blocks_per_job)
    n, h, w, cin, k, stride, groups, cg = shape
    wt, wsum, variant = weights
    prm, res, pooled, z, thr, opad, obits, pool_out = unit
    ho = out_size(h, k, stride)
    wo = out_size(w, k, stride)
    cout = groups * cg
    zsize = n * (ho // 2) * (wo // 2) * cout if pool_out else n * ho * wo * cout
    if prm.shape[0] != 6 or prm.shape[1] != cout or z.size != zsize:
        raise ValueError("binary_conv_fused: parameters or output of the wrong size")
    if pool_out:
        if not pools_output(cin, cg, k, stride, thr.shape[0], pooled, h, w):
            raise ValueError(
                "binary_conv_fused: pool_out needs what epilogue.pools_output checks (whole "
                "32-channel groups, a 1x1 or 3x3 kernel, an even output size)"
            )
        pair_blocks = 2 * wo // positions_for(cin <= NARROW_CHANNELS)
        blocks_per_job = -(-blocks_per_job // pair_blocks) * pair_blocks  # jobs of whole row pairs
    if res.size != (n * h * w * cg if pooled else n * ho * wo * cg):
        raise ValueError("binary_conv_fused: the residual has the wrong size")
    if (thr.shape[0] > 0 and thr.shape[1] != cout) or opad < 0:
        raise ValueError("binary_conv_fused: thresholds of the wrong size")
    if obits.size < thr.shape[0] * n * (ho + 2 * opad) * (wo + 2 * opad) * words_for(cout):
        raise ValueError("binary_conv_fused: the packed output is too small")
    geo = geometry(shape, blocks_per_job)
    positions = geo.positions
    nq = ho * wo
    t_sets = thr.shape[0]
    flat_thr = thr.ravel()
    owords = words_for(cout)
    flat_prm = prm.ravel()
    table = border_table(wsum, k, geo.cols)
    no_out = np.empty(0, np.int32)  # the popcounts go to acc, never straight to an int map
    # whole 16-channel slices per group: the epilogue runs slice by slice with the slice's
    # parameters in registers, and packs the next layer's signs from the registers
    sliced = cg % 16 == 0 and t_sets <= 2
    # whole 32-channel weight blocks, 1x1 or 3x3: every block runs its epilogue straight from
    # the micro-kernel's registers (:mod:`.epilogue`); otherwise through ``acc``
    registers = sliced and register_epilogue_fits(cg, k, t_sets, pooled, h, w)
    hpo = ho + 2 * opad
    wpo = wo + 2 * opad
    pblock = param_block(flat_prm, flat_thr, cout, t_sets)
    ep = Epilogue(
        pblk=address(pblock), t_sets=t_sets, ktot=np.float32(geo.ktot),
        pres=address(res), pooled=pooled, pz=address(z), pool_out=pool_out, pob=address(obits),
        cout=cout, opad=opad, owords=owords, hpo=hpo, wpo=wpo,
        tst32=n * hpo * wpo * owords * 2,  # uint32 units between threshold sets
        ptab=address(table),
    )  # fmt: skip
    arrays = UnitArrays(prm=flat_prm, res=res, z=z, thr=flat_thr, obits=obits, params=pblock)
    src = tap_input(variant, bits, cin)
    pbits, pwt = address(src), address(wt)
    for job in prange(n * geo.jobs_per_img):
        img, first, by, bx = _job_start(job, geo.jobs_per_img, blocks_per_job, positions, wo)
        acc = np.empty(positions * geo.cols, np.float32)
        pos = block_scratch(positions)
        ppos = address(pos)
        for blk in range(first, min(first + blocks_per_job, geo.nblocks)):
            count = min(positions, nq - blk * positions)
            if registers:
                unit_block(variant, geo, ep, pbits, pwt, img, by, bx, count, ppos)
                by, bx = advance(by, bx, count, wo)
                continue
            popcounts(variant, geo, src, wt, img, by, bx, count, acc, no_out, False, 0, pos)
            if geo.pad > 0 and not interior(by, bx, count, k, stride, h, w, wo):
                border_block(acc, geo.cols, k, by, bx, count, stride, h, w, wo, table)
            if sliced:
                _epilogue_sliced(acc, geo, ep, arrays, img, by, bx, count, pos)
            else:
                _epilogue_generic(acc, geo, ep, arrays, img, by, bx, count)
            by, bx = advance(by, bx, count, wo)


@njit(cache=True)
def binary_gemm(a, weights, cin, cout, blocks_per_job):
    """Binary GEMM ``a (m, words) x W^T`` of +-1 matrices (a 1x1 convolution): int32 (m, cout).

    ``weights``: the :class:`.bitpack.BinaryWeights` of a packed (cout, cin, 1, 1) weight.
    """
    m = a.shape[0]
    out = np.empty((1, m, 1, cout), np.int32)
    shape = ConvShape(n=1, h=m, w=1, cin=cin, k=1, stride=1, groups=1, cg=cout)
    binary_conv_acc(a.ravel(), shape, weights, blocks_per_job, out)
    return out.reshape(m, cout)
