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
  are the same on every path (:func:`.epilogue._unit_value`).

Parallel over blocks of output positions (``prange`` on the outermost loop only; every job
writes disjoint output rows).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .bitpack import LANES, NARROW_CHANNELS, pack_row, words_for
from .border import _border_block, _border_block_direct, _border_table, _fix_position, _interior
from .epilogue import (
    _register_epilogue_fits,
    _residual_vec,
    _slice_params,
    _unit_block,
    _unit_value,
    pools_output,
)
from .micro import (
    POSITIONS,
    _advance,
    _block_positions,
    _kernel_calls,
    _next,
    _popcounts,
    block_positions,
    out_size,
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

__all__ = [
    "POSITIONS",
    "binary_conv_acc",
    "binary_conv_fused",
    "binary_gemm",
    "block_positions",
    "out_size",
]


@njit(cache=True, inline="always")
def _job_start(job, jobs_per_img, chunk, positions, wo):
    """Image, first block and its first output position of one parallel job (``chunk`` blocks
    of ``positions`` output positions each, row-major within an image)."""
    img = job // jobs_per_img
    first = (job % jobs_per_img) * chunk
    return img, first, (first * positions) // wo, (first * positions) % wo


@njit(cache=True, inline="always")
def _geometry(n, h, w, cin, k, stride, groups, cg, chunk):
    """Sizes both drivers derive from a convolution's shape: input words per pixel, padding,
    padded input size, output size, block kind and count, jobs per image, weight blocks per
    group, accumulator columns and the dot products' length ``K``."""
    words = words_for(cin)
    pad = k // 2
    ho = out_size(h, k, stride)
    wo = out_size(w, k, stride)
    narrow = cin <= NARROW_CHANNELS
    positions = _block_positions(narrow)
    nblocks = (ho * wo + positions - 1) // positions
    jobs_per_img = (nblocks + chunk - 1) // chunk
    bpg = (cg + LANES - 1) // LANES
    return (words, pad, h + 2 * pad, w + 2 * pad, ho, wo, narrow, positions, nblocks,
            jobs_per_img, bpg, groups * bpg * LANES, k * k * cin)  # fmt: skip


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
    words, pad, hp, wp, ho, wo, narrow, positions, nblocks, jobs_per_img, bpg, cols, ktot = (
        _geometry(n, h, w, cin, k, stride, groups, cg, chunk)
    )
    nq = ho * wo
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
    res_v = _residual_vec(res, r0, r1, r2, r3, taps, c, count)
    y = _unit_value(
        pop, res_v, scale, mul, add, shift_in, slope, shift_out, fsplat(ktot), fsplat(-2.0)
    )
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


@njit(cache=True)
def _epilogue_generic(
    acc, cols, n, img, by, bx, count, h, w, ho, wo, cg, cout, groups, bpg, ktot_f, prm, res,
    pooled, z, thr, t_sets, opad, obits, owords,
):  # fmt: skip
    """The output transform of one block's popcounts in ``acc`` for any channel count: position
    by position, then the next layer's signs packed from the stored float map. (This and
    :func:`_epilogue_sliced` are called once per block, not inlined: 9 s less to compile.)"""
    hpo = ho + 2 * opad
    wpo = wo + 2 * opad
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
                acc, aofs + g * bpg * LANES, ktot_f, cg, g * cg, cout, prm, res,
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
            pack_row(z, zoff, cout, thr, t * cout, obits, ooff, owords)


@njit(cache=True)
def _epilogue_sliced(
    acc, cols, n, img, by, bx, count, h, w, ho, wo, cg, cout, groups, bpg, ktot_f, prm, res,
    pooled, z, thr, t_sets, opad, obits, owords, pos,
):  # fmt: skip
    """:func:`_epilogue_generic` when every group has whole 16-channel slices: slice by slice,
    each slice's six parameters loaded once for the whole block, and the next layer's signs
    taken from the registers (one compare into a mask, 16 bits stored) rather than read back
    from the float map. Same float32 operations in the same order.

    ``pos``: scratch, 8 int64 per position (float map offset, residual taps, packed offset).
    """
    hpo = ho + 2 * opad
    wpo = wo + 2 * opad
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
                scale, mul, add, shift_in, slope, shift_out, thr0, thr1 = _slice_params(
                    prm, thr, co, cout, t_sets, m2
                )
                a = g * bpg * LANES + c
                for p in range(count):
                    pop = fload(acc, p * cols + a)
                    res_v = fload(res, (q0 + p) * cg + c)
                    y = _unit_value(
                        pop, res_v, scale, mul, add, shift_in, slope, shift_out, ktot_v, m2
                    )
                    fstore(z, (q0 + p) * cout + co, y)
                    o16 = o0 + p * owords * 4 + co // 16
                    if t_sets > 0:
                        store_u16(obits, o16, sign_mask16(y, thr0))
                    if t_sets > 1:
                        store_u16(obits, o16 + tstride, sign_mask16(y, thr1))
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
            oy, ox = _next(oy, ox, wo)
        r0, r1, r2, r3, taps = _residual_taps(img, hr, wr, cg, oy, ox, pooled)
        q = p * 8
        store(pos, q, ((img * ho + oy) * wo + ox) * cout)
        store(pos, q + 1, r0)
        store(pos, q + 2, r1)
        store(pos, q + 3, r2)
        store(pos, q + 4, r3)
        store(pos, q + 5, taps)
        store(pos, q + 6, (((img * hpo + oy + opad) * wpo + ox + opad) * owords) * 4)
    for g in range(groups):
        for c in range(0, cg, 16):
            co = g * cg + c
            # the slice's parameters and the next layers' thresholds, kept in registers
            scale, mul, add, shift_in, slope, shift_out, thr0, thr1 = _slice_params(
                prm, thr, co, cout, t_sets, m2
            )
            a = g * bpg * LANES + c
            for p in range(count):
                q = p * 8
                pop = fload(acc, p * cols + a)
                res_v = _residual_vec(
                    res, load(pos, q + 1), load(pos, q + 2), load(pos, q + 3), load(pos, q + 4),
                    load(pos, q + 5), c, 16,
                )  # fmt: skip
                y = _unit_value(pop, res_v, scale, mul, add, shift_in, slope, shift_out, ktot_v, m2)
                fstore(z, load(pos, q) + co, y)
                o16 = load(pos, q + 6) + co // 16
                if t_sets > 0:
                    store_u16(obits, o16, sign_mask16(y, thr0))
                if t_sets > 1:
                    store_u16(obits, o16 + tstride, sign_mask16(y, thr1))
    if cout % 64 != 0:  # the last word's channels past cout stay clear
        for p in range(count):
            o16 = load(pos, p * 8 + 6)
            for t in range(t_sets):
                for j in range((cout + 15) // 16, owords * 4):
                    store_u16(obits, o16 + t * tstride + j, 0)


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
    pool_out,
    chunk,
):
    """One residual binary unit in one pass: ``z = RPReLU(BN(scale * conv) + residual)``.

    ``prm`` (6, C) per output channel: weight scale, BatchNorm multiplier and offset, RPReLU's
    shift, slope, shift (``0, 1, 0`` is the identity); ``res``: flat NHWC
    float32 with ``cg`` channels, added to every group, at the same position or (``pooled``)
    2x2-average-pooled from a map of the input's size; ``z``: flat NHWC float32 output, or with
    ``pool_out`` (where :func:`.epilogue.pools_output` allows it) its 2x2 average
    (n, ho / 2, wo / 2, C), all a next unit with a pooled residual reads of it;
    ``thr`` (T, C): the next layer's RSign shifts -- for each row, packed signs of ``z + thr``
    go to ``obits``, flat (T, n, ho + 2 opad, wo + 2 opad, words(C)) whose border stays zero.
    """
    _check_conv(bits, n, h, w, cin, k, stride, wt, wsum, groups, cg, chunk)
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
        pair_blocks = 2 * wo // _block_positions(cin <= NARROW_CHANNELS)
        chunk = -(-chunk // pair_blocks) * pair_blocks  # jobs of whole row pairs
    if res.size != (n * h * w * cg if pooled else n * ho * wo * cg):
        raise ValueError("binary_conv_fused: the residual has the wrong size")
    if (thr.shape[0] > 0 and thr.shape[1] != cout) or opad < 0:
        raise ValueError("binary_conv_fused: thresholds of the wrong size")
    if obits.size < thr.shape[0] * n * (ho + 2 * opad) * (wo + 2 * opad) * words_for(cout):
        raise ValueError("binary_conv_fused: the packed output is too small")
    words, pad, hp, wp, ho, wo, narrow, positions, nblocks, jobs_per_img, bpg, cols, ktot = (
        _geometry(n, h, w, cin, k, stride, groups, cg, chunk)
    )
    nq = ho * wo
    t_sets = thr.shape[0]
    flat_thr = thr.ravel()
    owords = words_for(cout)
    flat_prm = prm.ravel()
    table = _border_table(wsum, k, cols)
    no_out = np.empty(0, np.int32)  # the popcounts go to acc, never straight to an int map
    ktot_f = np.float32(ktot)
    # whole 16-channel slices per group: the epilogue runs slice by slice with the slice's
    # parameters in registers, and packs the next layer's signs from the registers
    sliced = cg % 16 == 0 and t_sets <= 2
    # whole 32-channel weight blocks, 1x1 or 3x3: every block runs its epilogue straight from
    # the micro-kernel's registers (:mod:`.epilogue`); otherwise through ``acc``
    registers = sliced and _register_epilogue_fits(cg, k, t_sets, pooled, h, w)
    hpo = ho + 2 * opad
    wpo = wo + 2 * opad
    tst32 = n * hpo * wpo * owords * 2  # uint32 units between threshold sets
    rowstride = wp * words
    pbits, pwt, pprm, pthr = address(bits), address(wt), address(flat_prm), address(flat_thr)
    pres, pz, pob, ptab = address(res), address(z), address(obits), address(table)
    for job in prange(n * jobs_per_img):
        img, first, by, bx = _job_start(job, jobs_per_img, chunk, positions, wo)
        acc = np.empty(positions * cols, np.float32)
        pos = np.empty(8 * positions, np.int64)
        ppos = address(pos)
        for blk in range(first, min(first + chunk, nblocks)):
            count = min(positions, nq - blk * positions)
            if registers:
                _unit_block(
                    pbits, pwt, img, n, hp * rowstride, groups, bpg, k, stride, rowstride, words,
                    narrow, by, bx, count, pprm, pthr, cout, t_sets, ktot_f, pres, pooled, h, w,
                    ho, wo, cg, pz, pob, hpo, wpo, opad, owords, tst32, ptab, cols, ppos, pool_out,
                )  # fmt: skip
                by, bx = _advance(by, bx, count, wo)
                continue
            _popcounts(
                bits, img, n, hp, wp, words, k, stride, wo, by, bx, count, wt, narrow, groups,
                bpg, acc, no_out, False, ktot, 0,
            )  # fmt: skip
            if pad > 0 and not _interior(by, bx, count, k, stride, h, w, wo):
                _border_block(acc, cols, k, by, bx, count, stride, h, w, wo, table)
            if sliced:
                _epilogue_sliced(
                    acc, cols, n, img, by, bx, count, h, w, ho, wo, cg, cout, groups, bpg, ktot_f,
                    flat_prm, res, pooled, z, flat_thr, t_sets, opad, obits, owords, pos,
                )  # fmt: skip
            else:
                _epilogue_generic(
                    acc, cols, n, img, by, bx, count, h, w, ho, wo, cg, cout, groups, bpg, ktot_f,
                    flat_prm, res, pooled, z, flat_thr, t_sets, opad, obits, owords,
                )  # fmt: skip
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
