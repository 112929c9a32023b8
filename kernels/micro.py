"""Micro-kernels of the binary convolution and the blocks of output positions they work on.

A block is a few output positions in row-major order (4, or 8 on narrow layers: at most 32 input
channels) times 32 output channels. Its tap loop (:mod:`.taps`, the kernel variant's scheme)
returns the block's popcounts as 16 vectors: wide layers on 8 lanes of 64 bits, narrow ones, whose
pixels fill only the low half of each word, on 16 lanes of 32 bits (twice the useful work per
instruction). The micro-kernels take raw pointers (:func:`.simd.address`): no reference counting
-- a runtime call that pushes every accumulator out of its register -- runs inside them. Results
go to a float32 block buffer as popcounts, or straight from the registers to an int32 map as dot
products ``K - 2 * popcount``.
"""

from __future__ import annotations

from typing import NamedTuple

from numba import njit

from .bitpack import LANES, NARROW_CHANNELS, words_for
from .simd import (
    address,
    vstore32_dot,
    vstore32_f32,
    vstore_dot,
    vstore_f32,
)
from .taps import narrow, wide

__all__ = [
    "POSITIONS",
    "ConvShape",
    "Geometry",
    "advance",
    "block_offsets",
    "block_positions",
    "geometry",
    "block_microkernels",
    "micro_kernel",
    "micro_kernel_narrow",
    "next_position",
    "out_size",
    "popcounts",
    "positions_for",
]


POSITIONS = 4  # output positions per block on wide layers (8 on narrow ones)


@njit(cache=True)
def out_size(size, k, stride):
    """Output length of a convolution with padding ``k // 2`` (``ceil(size / stride)`` for k=3)."""
    return (size + 2 * (k // 2) - k) // stride + 1


@njit(cache=True, inline="always")
def positions_for(narrow):
    """Output positions per micro-kernel call: 8 on narrow layers, else :data:`POSITIONS`."""
    return 2 * POSITIONS if narrow else POSITIONS


@njit(cache=True)
def block_positions(cin):
    """Output positions per block (the unit of ``blocks_per_job``) of a convolution over ``cin``
    input channels."""
    return positions_for(cin <= NARROW_CHANNELS)


class ConvShape(NamedTuple):
    """A binary convolution's sizes, as the public kernels take them: ``n`` images of ``h`` x
    ``w`` pixels with ``cin`` input channels, a ``k`` x ``k`` kernel (odd; zero padding
    ``k // 2``) with ``stride``, and ``groups`` groups of ``cg`` output channels, each group
    reading its own packed copy of all ``cin`` inputs."""

    n: int
    h: int
    w: int
    cin: int
    k: int
    stride: int
    groups: int
    cg: int


class Geometry(NamedTuple):
    """Sizes the binary convolution drivers derive from a convolution's shape (:func:`geometry`),
    passed whole to the helpers that walk its blocks."""

    n: int  # images
    h: int  # input size
    w: int
    cin: int  # input channels
    k: int  # kernel size (odd)
    stride: int
    groups: int
    cg: int  # output channels per group
    words: int  # uint64 words per input pixel
    pad: int  # k // 2
    hp: int  # padded input size
    wp: int
    ho: int  # output size
    wo: int
    narrow: bool  # at most NARROW_CHANNELS input channels: the 8-position micro-kernel
    positions: int  # output positions per block
    nblocks: int  # blocks per image
    jobs_per_img: int  # parallel jobs per image (``blocks_per_job`` blocks each)
    bpg: int  # 32-channel weight blocks per group
    cols: int  # accumulator columns per position (groups * bpg * LANES)
    ktot: int  # the dot products' length K = k * k * cin
    rowstride: int  # words per padded input row
    plane: int  # words per padded image plane of one group


@njit(cache=True, inline="always")
def geometry(shape, blocks_per_job):
    """The :class:`Geometry` of a convolution (:class:`ConvShape`), ``blocks_per_job`` blocks
    per parallel job."""
    n, h, w, cin, k, stride, groups, cg = shape
    words = words_for(cin)
    pad = k // 2
    wp = w + 2 * pad
    ho = out_size(h, k, stride)
    wo = out_size(w, k, stride)
    narrow = cin <= NARROW_CHANNELS
    positions = positions_for(narrow)
    nblocks = (ho * wo + positions - 1) // positions
    bpg = (cg + LANES - 1) // LANES
    return Geometry(
        n=n, h=h, w=w, cin=cin, k=k, stride=stride, groups=groups, cg=cg, words=words, pad=pad,
        hp=h + 2 * pad, wp=wp, ho=ho, wo=wo, narrow=narrow, positions=positions,
        nblocks=nblocks, jobs_per_img=(nblocks + blocks_per_job - 1) // blocks_per_job, bpg=bpg,
        cols=groups * bpg * LANES, ktot=k * k * cin, rowstride=wp * words,
        plane=(h + 2 * pad) * wp * words,
    )  # fmt: skip


@njit(cache=True, inline="always")
def next_position(oy, ox, wo):
    """The output position after (oy, ox) in row-major order."""
    if ox + 1 == wo:
        return oy + 1, 0
    return oy, ox + 1


@njit(cache=True, inline="always")
def advance(oy, ox, count, wo):
    """The position ``count`` steps after (oy, ox) in row-major order."""
    ox += count
    while ox >= wo:
        ox -= wo
        oy += 1
    return oy, ox


@njit(cache=True, inline="always")
def _offset(oy, ox, stride, rowstride, words):
    return oy * stride * rowstride + ox * stride * words


@njit(cache=True, inline="always")
def block_offsets(geo, oy, ox, count):
    """Offsets of the top-left taps of up to 8 positions from (oy, ox) on, in row-major order,
    within an image plane; those past ``count`` repeat the last real one (same work, no
    branches in the micro-kernel)."""
    stride, rowstride, words, wo = geo.stride, geo.rowstride, geo.words, geo.wo
    o0 = _offset(oy, ox, stride, rowstride, words)
    step = stride * words
    if ox + geo.positions <= wo:  # the usual case: the whole block lies in one row
        return (o0, o0 + step, o0 + 2 * step, o0 + 3 * step, o0 + 4 * step, o0 + 5 * step,
                o0 + 6 * step, o0 + 7 * step)  # fmt: skip
    o1 = o0
    if count > 1:
        oy, ox = next_position(oy, ox, wo)
        o1 = _offset(oy, ox, stride, rowstride, words)
    o2 = o1
    if count > 2:
        oy, ox = next_position(oy, ox, wo)
        o2 = _offset(oy, ox, stride, rowstride, words)
    o3 = o2
    if count > 3:
        oy, ox = next_position(oy, ox, wo)
        o3 = _offset(oy, ox, stride, rowstride, words)
    o4 = o3
    if count > 4:
        oy, ox = next_position(oy, ox, wo)
        o4 = _offset(oy, ox, stride, rowstride, words)
    o5 = o4
    if count > 5:
        oy, ox = next_position(oy, ox, wo)
        o5 = _offset(oy, ox, stride, rowstride, words)
    o6 = o5
    if count > 6:
        oy, ox = next_position(oy, ox, wo)
        o6 = _offset(oy, ox, stride, rowstride, words)
    o7 = o6
    if count > 7:
        oy, ox = next_position(oy, ox, wo)
        o7 = _offset(oy, ox, stride, rowstride, words)
    return o0, o1, o2, o3, o4, o5, o6, o7


@njit(cache=True)
def micro_kernel(
    variant, bits, b0, b1, b2, b3, wt, wofs, k, rowstride, words, acc, out, direct, ktot, aofs,
    astride, scr,
):  # fmt: skip
    """popcount(a ^ w) summed over taps and words for 4 positions x 32 channels
    (:func:`.taps.wide` of ``variant``; ``scr``: the job's scratch).

    Results of position ``p``, lane ``l`` go to ``[aofs + p * astride + l]`` of the float32
    ``acc`` as popcounts (exact: they stay far below 2**24), or with ``direct`` of the int32
    ``out`` as the dot products ``ktot - 2 * popcount``.
    """
    c00, c01, c02, c03, c10, c11, c12, c13, c20, c21, c22, c23, c30, c31, c32, c33 = wide(
        variant, bits, b0, b1, b2, b3, wt, wofs, k, rowstride, words, scr
    )
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
    """Dot products of :func:`micro_kernel`'s 16 accumulators straight into int32 ``out``."""
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
def micro_kernel_narrow(
    variant, bits, b0, b1, b2, b3, b4, b5, b6, b7, wt, wofs, k, rowstride, acc, out, direct, ktot,
    aofs, astride, scr,
):  # fmt: skip
    """:func:`micro_kernel` for at most 32 input channels: 8 positions x 32 channels
    (:func:`.taps.narrow`). Results as in :func:`micro_kernel`.
    """
    c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51, c60, c61, c70, c71 = narrow(
        variant, bits, b0, b1, b2, b3, b4, b5, b6, b7, wt, wofs, k, rowstride, scr
    )
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
def block_microkernels(variant, geo, pbits, pwt, pacc, pout, direct, dst, offsets, img, pscr):
    """One block: the micro-kernel for every weight block of every group. ``offsets``: the
    positions' top-left taps within an image plane (:func:`block_offsets`; the 4-position
    kernel reads the first four); results to ``dst + block * LANES`` of ``acc``/``out`` (raw
    pointers, see :func:`.simd.address`: nothing is reference-counted in here; ``pscr``: the
    job's scratch, :func:`.table.block_scratch`)."""
    o0, o1, o2, o3, o4, o5, o6, o7 = offsets
    kk = geo.k * geo.k
    for g in range(geo.groups):
        base = (g * geo.n + img) * geo.plane
        for j in range(geo.bpg):
            blk = g * geo.bpg + j
            if geo.narrow:
                micro_kernel_narrow(
                    variant, pbits, base + o0, base + o1, base + o2, base + o3, base + o4,
                    base + o5, base + o6, base + o7, pwt, blk * kk * LANES, geo.k, geo.rowstride,
                    pacc, pout, direct, geo.ktot, dst + blk * LANES, geo.cols, pscr,
                )  # fmt: skip
            else:
                micro_kernel(
                    variant, pbits, base + o0, base + o1, base + o2, base + o3, pwt,
                    blk * kk * geo.words * LANES, geo.k, geo.rowstride, geo.words, pacc, pout,
                    direct, geo.ktot, dst + blk * LANES, geo.cols, pscr,
                )  # fmt: skip


@njit(cache=True, inline="always")
def popcounts(variant, geo, bits, wt, img, oy, ox, count, acc, out, direct, obase, scr):
    """Popcounts of ``count`` positions from (oy, ox) on (at most ``geo.positions``), for every
    weight block: into ``acc`` (positions, columns) or, with ``direct``, as dot products into
    the int32 ``out`` from ``obase`` on (then ``count`` must be a full block and the columns the
    output channels). ``scr``: the job's scratch (:func:`.table.block_scratch`).
    """
    offsets = block_offsets(geo, oy, ox, count)
    block_microkernels(
        variant, geo, address(bits), address(wt), address(acc), address(out), direct,
        obase if direct else 0, offsets, img, address(scr),
    )  # fmt: skip
