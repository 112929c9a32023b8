"""The tap loops of the binary convolution: popcount(a ^ w) summed over a block's taps and input
words, one scheme per kernel variant (:mod:`.variants`).

:func:`wide` returns the 16 accumulators of 4 output positions x 32 channels (four 8-lane vectors
per position, position-major) of a layer with more than 32 input channels; :func:`narrow` those of
8 positions x 32 channels (two 16-lane vectors of 32 bits per position) of a layer with at most 32.
The micro-kernels (:mod:`.micro`) and the fused epilogue (:mod:`.epilogue`) run on them. The
variant is a compile-time constant: each driver is compiled once per variant, with one scheme.

Schemes:

- ``vpopcnt``: a 64-bit (32-bit) lane popcount per step, all 16 accumulators in registers
  (``vpopcntq`` / ``vpopcntd`` with AVX-512 VPOPCNTDQ; 32 zmm registers hold them).
- ``carrysave`` (AVX-512BW): for two positions and 8 channels at a time, four steps' ``a ^ w``
  vectors are reduced by carry-save adders (Harley-Seal, two ``vpternlogq`` each) to one vector
  of fours, whose byte popcount is added in bytes; the ones and twos left are counted at the
  end. Which layers take it: :func:`.variants.wide_scheme`.
- ``bytes``: 4 positions x 8 channels a pass: byte popcounts added in bytes, widened to 64-bit
  lane sums (``vpsadbw``) once for a kernel of at most 31 steps (every 1x1 layer, 3x3 ones of
  up to 192 channels), else every 31 steps at most and at the end of each row of taps.
- ``nibbles`` (AVX2): ``bytes`` on inputs and weights whose words were split into their low and
  high nibbles beforehand (:func:`.bitpack.split_nibbles`, :func:`tap_input`): each nibble of
  ``a ^ w`` is then one XOR and one ``vpshufb`` lookup, with no masking or shifting in the loop
  (6 vector operations per 256 bits of ``a ^ w``, against 8 for byte counts and 6.5 for
  carry-save adders built of AVX2's two-input logic ops).

The pass-wise schemes leave each pass's vectors in the job's scratch (:data:`.table.RESULTS`) and
return them read back; a layer's weights are then grouped 8 channels at a time
(:func:`.bitpack.kernel_weights`): group ``j`` of a weight block holds, for every step (tap, word)
in order, its 8 channels' words, so a pass reads one contiguous run.

Taps of one row of a 3x3 (or 1x1) kernel are contiguous in the padded input (``k * words``
words from the row's first tap), which is what the pass-wise loops walk.
"""

from __future__ import annotations

from numba import njit
from numba.extending import overload

from .bitpack import GROUP, LANES, NARROW_CHANNELS, split_nibbles
from .bytelanes import (
    as_i32x16,
    as_i64x8,
    vand,
    vbxor,
    vbxor32,
    vcount_bytes,
    vcount_bytes32,
    vcount_nibbles,
    vor,
    vwiden32_add,
    vwiden_add,
    vxor,
)
from .simd import (
    load_u64,
    vload,
    vload32,
    vstore,
    vxor_popcount_add,
    vxor_popcount_add32,
    vzero,
    vzero32,
)
from .table import RESULTS
from .variants import VariantType

__all__ = ["nibble_layer", "tap_input", "narrow", "wide", "weight_factor"]

CHUNK = 31  # steps of byte counts before they are widened (8 * 31 < 256)


@njit(cache=True, inline="always")
def _wide_vpopcnt(bits, b0, b1, b2, b3, wt, wofs, k, rowstride, words):
    """:func:`wide` with ``vpopcntq``: all 16 accumulators in registers, each activation word
    loaded once for 32 channels and each weight vector once for 4 positions.

    ``b0..b3``: flat offsets of the 4 positions' top-left taps in ``bits``; ``wofs``: offset of
    the weight block.
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
    return (c00, c01, c02, c03, c10, c11, c12, c13, c20, c21, c22, c23, c30, c31, c32, c33)


@njit(cache=True, inline="always")
def _narrow_vpopcnt(bits, b0, b1, b2, b3, b4, b5, b6, b7, wt, wofs, k, rowstride):
    """:func:`narrow` with ``vpopcntd``: 8 positions x 2 vectors of 16 channels in registers.

    ``wt``: the narrow layout of :func:`.bitpack.kernel_weights`, 32 uint32 per tap and block;
    ``wofs`` counts uint32 elements.
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
    return (c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51, c60, c61, c70, c71)


@njit(cache=True, inline="always")
def _csa(a, b, c):
    """Carry-save adder: (carry, sum) bit planes of ``a + b + c``."""
    u = vxor(a, b)
    return vor(vand(a, b), vand(u, c)), vxor(u, c)


@njit(cache=True, inline="always")
def _fours(ones, twos, y0, y1, y2, y3):
    """Four steps' ``a ^ w`` into the running ones and twos: (fours, ones, twos), the fours
    being the carry out of the twos (Harley-Seal: three carry-save adders)."""
    ta, ones = _csa(ones, y0, y1)
    tb, ones = _csa(ones, y2, y3)
    carry, twos = _csa(twos, ta, tb)
    return carry, ones, twos


@njit(cache=True, inline="always")
def _step(bits, a, wt, w):
    """``a ^ w``: the activation word at ``bits[a]`` against the weight vector at ``wt[w]``."""
    return vbxor(load_u64(bits, a), vload(wt, w))


@njit(cache=True, inline="always")
def _carrysave2(bits, b, c, wt, w0, k, rowstride, words):
    """popcount(a ^ w) summed over the taps of two positions (top-left taps ``b`` and ``c``)
    for the 8 channels whose steps start at ``w0`` (grouped layout), sharing each weight vector
    load: carry-save adders over four steps at a time, the fours counted in bytes and widened
    at the end of each row (or every 31 fours), a row's last steps counted in bytes."""
    ones_b = vzero()
    twos_b = vzero()
    total_b = vzero()
    ones_c = vzero()
    twos_c = vzero()
    total_c = vzero()
    seg = k * words
    for ky in range(k):
        ab = b + ky * rowstride
        ac = c + ky * rowstride
        w = w0 + ky * seg * GROUP
        i = 0
        while i + 4 <= seg:
            stop = min(seg, i + 4 * CHUNK)
            fours_b = vzero()
            fours_c = vzero()
            while i + 4 <= stop:
                v0 = vload(wt, w + i * GROUP)
                v1 = vload(wt, w + (i + 1) * GROUP)
                v2 = vload(wt, w + (i + 2) * GROUP)
                v3 = vload(wt, w + (i + 3) * GROUP)
                carry, ones_b, twos_b = _fours(
                    ones_b, twos_b, vbxor(load_u64(bits, ab + i), v0),
                    vbxor(load_u64(bits, ab + i + 1), v1), vbxor(load_u64(bits, ab + i + 2), v2),
                    vbxor(load_u64(bits, ab + i + 3), v3),
                )  # fmt: skip
                fours_b = vcount_bytes(fours_b, carry)
                carry, ones_c, twos_c = _fours(
                    ones_c, twos_c, vbxor(load_u64(bits, ac + i), v0),
                    vbxor(load_u64(bits, ac + i + 1), v1), vbxor(load_u64(bits, ac + i + 2), v2),
                    vbxor(load_u64(bits, ac + i + 3), v3),
                )  # fmt: skip
                fours_c = vcount_bytes(fours_c, carry)
                i += 4
            total_b = vwiden_add(total_b, fours_b, 2)
            total_c = vwiden_add(total_c, fours_c, 2)
        if i < seg:
            rest_b = vzero()
            rest_c = vzero()
            while i < seg:
                v = vload(wt, w + i * GROUP)
                rest_b = vcount_bytes(rest_b, vbxor(load_u64(bits, ab + i), v))
                rest_c = vcount_bytes(rest_c, vbxor(load_u64(bits, ac + i), v))
                i += 1
            total_b = vwiden_add(total_b, rest_b, 0)
            total_c = vwiden_add(total_c, rest_c, 0)
    total_b = vwiden_add(total_b, vcount_bytes(vzero(), ones_b), 0)
    total_b = vwiden_add(total_b, vcount_bytes(vzero(), twos_b), 1)
    total_c = vwiden_add(total_c, vcount_bytes(vzero(), ones_c), 0)
    return total_b, vwiden_add(total_c, vcount_bytes(vzero(), twos_c), 1)


@njit(cache=True, inline="always")
def _count4(bits, b0, b1, b2, b3, off, wt, w, c0, c1, c2, c3):
    """One step of 4 positions (top-left taps ``b0..b3``, the step ``off`` words on) against
    the weight vector at ``wt[w]``: its byte popcounts added to the byte counters ``c0..c3``."""
    v = vload(wt, w)
    return (
        vcount_bytes(c0, vbxor(load_u64(bits, b0 + off), v)),
        vcount_bytes(c1, vbxor(load_u64(bits, b1 + off), v)),
        vcount_bytes(c2, vbxor(load_u64(bits, b2 + off), v)),
        vcount_bytes(c3, vbxor(load_u64(bits, b3 + off), v)),
    )


@njit(cache=True, inline="always")
def _nib(c, bits, a, lo, hi):
    """``c`` plus the nibble counts of the split activation word at ``bits[a]`` (low nibbles;
    ``bits[a + 1]``: high) against one step's low and high weight nibbles."""
    return vcount_nibbles(c, vbxor(load_u64(bits, a), lo), vbxor(load_u64(bits, a + 1), hi))


@njit(cache=True, inline="always")
def _nib4(bits, b0, b1, b2, b3, off, wt, w, c0, c1, c2, c3):
    """:func:`_count4` on nibble-split inputs and weights (:func:`.bitpack.split_nibbles`):
    ``b0..b3`` and ``off`` in split words (twice the packed offsets), ``wt[w]`` the step's low
    nibbles and ``wt[w + 8]`` its high ones."""
    lo = vload(wt, w)
    hi = vload(wt, w + GROUP)
    return (
        _nib(c0, bits, b0 + off, lo, hi),
        _nib(c1, bits, b1 + off, lo, hi),
        _nib(c2, bits, b2 + off, lo, hi),
        _nib(c3, bits, b3 + off, lo, hi),
    )


@njit(cache=True, inline="always")
def _step4(nibbles, bits, b0, b1, b2, b3, off, wt, w, c0, c1, c2, c3):
    """One step of :func:`_counts4`: :func:`_nib4` on split inputs, else :func:`_count4`
    (``nibbles`` is a constant of each caller: the other branch folds away)."""
    if nibbles:
        return _nib4(bits, b0, b1, b2, b3, off, wt, w, c0, c1, c2, c3)
    return _count4(bits, b0, b1, b2, b3, off, wt, w, c0, c1, c2, c3)


@njit(cache=True, inline="always")
def _counts4(nibbles, bits, b0, b1, b2, b3, wt, w0, k, rowstride, words):
    """popcount(a ^ w) of 4 positions for the 8 channels whose steps start at ``w0`` (grouped
    layout), counted in bytes (:func:`_count4`) or, with ``nibbles``, in nibbles
    (:func:`_nib4`: ``bits`` split by :func:`.bitpack.split_nibbles`, ``wt`` in the nibble
    layout of 16 words a step; offsets as for the packed input). Byte counts are added in
    bytes: a kernel of at most 31 steps (every 1x1 layer; 3x3 ones of up to 192 channels) is
    counted in bytes throughout and widened once, with no running totals held through the
    loop (its 8 byte counters, the weight vectors and the lookup constants fit AVX2's 16
    registers); longer ones are widened every 31 steps and at the end of each row."""
    f = 2 if nibbles else 1  # words per packed word
    b0, b1, b2, b3 = f * b0, f * b1, f * b2, f * b3
    seg = k * words
    if k * seg <= CHUNK:
        c0 = vzero()
        c1 = vzero()
        c2 = vzero()
        c3 = vzero()
        for ky in range(k):
            r = f * ky * rowstride
            w = w0 + f * ky * seg * GROUP
            for i in range(seg):
                c0, c1, c2, c3 = _step4(
                    nibbles, bits, b0, b1, b2, b3, r + f * i, wt, w + f * i * GROUP, c0, c1,
                    c2, c3,
                )  # fmt: skip
        return (
            vwiden_add(vzero(), c0, 0),
            vwiden_add(vzero(), c1, 0),
            vwiden_add(vzero(), c2, 0),
            vwiden_add(vzero(), c3, 0),
        )
    t0 = vzero()
    t1 = vzero()
    t2 = vzero()
    t3 = vzero()
    for ky in range(k):
        r = f * ky * rowstride
        w = w0 + f * ky * seg * GROUP
        i = 0
        while i < seg:
            stop = min(seg, i + CHUNK)
            c0 = vzero()
            c1 = vzero()
            c2 = vzero()
            c3 = vzero()
            while i < stop:
                c0, c1, c2, c3 = _step4(
                    nibbles, bits, b0, b1, b2, b3, r + f * i, wt, w + f * i * GROUP, c0, c1,
                    c2, c3,
                )  # fmt: skip
                i += 1
            t0 = vwiden_add(t0, c0, 0)
            t1 = vwiden_add(t1, c1, 0)
            t2 = vwiden_add(t2, c2, 0)
            t3 = vwiden_add(t3, c3, 0)
    return t0, t1, t2, t3


@njit(cache=True, inline="always")
def _bytes4_32(bits, b0, b1, b2, b3, wt, w0, k, rowstride):
    """:func:`_counts4`'s byte counts on 32-bit lanes, 16 channels (narrow layout, ``w0`` in
    uint32 units): 4 positions over the ``k * k`` taps, one half-word each."""
    t0 = vzero32()
    t1 = vzero32()
    t2 = vzero32()
    t3 = vzero32()
    c0 = vzero32()
    c1 = vzero32()
    c2 = vzero32()
    c3 = vzero32()
    steps = 0
    for ky in range(k):
        for kx in range(k):
            off = ky * rowstride + kx
            v = vload32(wt, w0 + (ky * k + kx) * LANES)
            c0 = vcount_bytes32(c0, vbxor32(load_u64(bits, b0 + off), v))
            c1 = vcount_bytes32(c1, vbxor32(load_u64(bits, b1 + off), v))
            c2 = vcount_bytes32(c2, vbxor32(load_u64(bits, b2 + off), v))
            c3 = vcount_bytes32(c3, vbxor32(load_u64(bits, b3 + off), v))
            steps += 1
            if steps == CHUNK:
                t0 = vwiden32_add(t0, c0)
                t1 = vwiden32_add(t1, c1)
                t2 = vwiden32_add(t2, c2)
                t3 = vwiden32_add(t3, c3)
                c0 = vzero32()
                c1 = vzero32()
                c2 = vzero32()
                c3 = vzero32()
                steps = 0
    return (vwiden32_add(t0, c0), vwiden32_add(t1, c1), vwiden32_add(t2, c2), vwiden32_add(t3, c3))


@njit(cache=True, inline="always")
def _read16(scr):
    """The 16 result vectors a pass-wise loop left in the scratch, in order."""
    r = RESULTS
    return (
        vload(scr, r), vload(scr, r + 8), vload(scr, r + 16), vload(scr, r + 24),
        vload(scr, r + 32), vload(scr, r + 40), vload(scr, r + 48), vload(scr, r + 56),
        vload(scr, r + 64), vload(scr, r + 72), vload(scr, r + 80), vload(scr, r + 88),
        vload(scr, r + 96), vload(scr, r + 104), vload(scr, r + 112), vload(scr, r + 120),
    )  # fmt: skip


@njit(cache=True, inline="always")
def _at(b0, b1, b2, b3, p):
    """The ``p``-th of four offsets."""
    if p == 0:
        return b0
    if p == 1:
        return b1
    if p == 2:
        return b2
    return b3


@njit(cache=True, inline="always")
def _passes(nibbles, bits, b0, b1, b2, b3, wt, wofs, k, rowstride, words, scr):
    """:func:`wide` by byte (or, with ``nibbles``, nibble) counts: 4 passes of 4 positions x
    8 channels (:func:`_counts4`) into the scratch. ``wofs`` as for the packed layout (the
    nibble layout's blocks are twice as long)."""
    steps = k * k * words
    f = 2 if nibbles else 1
    for j in range(4):
        t0, t1, t2, t3 = _counts4(
            nibbles, bits, b0, b1, b2, b3, wt, f * (wofs + j * steps * GROUP), k, rowstride,
            words,
        )  # fmt: skip
        vstore(scr, RESULTS + j * GROUP, t0)
        vstore(scr, RESULTS + (4 + j) * GROUP, t1)
        vstore(scr, RESULTS + (8 + j) * GROUP, t2)
        vstore(scr, RESULTS + (12 + j) * GROUP, t3)


@njit(cache=True, inline="always")
def _carrysave_passes(bits, b0, b1, b2, b3, wt, wofs, k, rowstride, words, scr):
    """:func:`wide` by carry-save adders: 8 passes of 2 positions x 8 channels
    (:func:`_carrysave2`) into the scratch, the positions of a channel group one pass after the
    other (its weights stay in L1)."""
    steps = k * k * words
    for j in range(4):
        w0 = wofs + j * steps * GROUP
        for p in range(0, 4, 2):
            tb, tc = _carrysave2(
                bits, _at(b0, b1, b2, b3, p), _at(b0, b1, b2, b3, p + 1), wt, w0, k, rowstride,
                words,
            )  # fmt: skip
            vstore(scr, RESULTS + (p * 4 + j) * GROUP, tb)
            vstore(scr, RESULTS + ((p + 1) * 4 + j) * GROUP, tc)


def wide(variant, bits, b0, b1, b2, b3, wt, wofs, k, rowstride, words, scr):
    """The 16 accumulators (4 positions x 4 vectors of 8 channels, position-major) of
    popcount(a ^ w) summed over taps and words, for ``variant``'s scheme.

    ``bits``, ``wt``, ``scr``: raw pointers (:func:`.simd.address`) to the packed input, the
    weights (:func:`.bitpack.kernel_weights` for this variant) and the job's scratch;
    ``b0..b3``: offsets of the 4 positions' top-left taps in ``bits``; ``wofs``: offset of the
    weight block. (Compiled code only: resolved by the overload below.)
    """
    raise NotImplementedError("taps.wide runs inside compiled kernels only")


@overload(wide, inline="always")
def _wide(variant, bits, b0, b1, b2, b3, wt, wofs, k, rowstride, words, scr):
    if not isinstance(variant, VariantType):
        return None
    v = variant.variant
    if v.wide == "vpopcnt":

        def vpopcnt(variant, bits, b0, b1, b2, b3, wt, wofs, k, rowstride, words, scr):
            return _wide_vpopcnt(bits, b0, b1, b2, b3, wt, wofs, k, rowstride, words)

        return vpopcnt

    if v.wide == "bytes":

        def bytes_only(variant, bits, b0, b1, b2, b3, wt, wofs, k, rowstride, words, scr):
            _passes(False, bits, b0, b1, b2, b3, wt, wofs, k, rowstride, words, scr)
            return _read16(scr)

        return bytes_only
    if v.wide == "nibbles":

        def nibbles(variant, bits, b0, b1, b2, b3, wt, wofs, k, rowstride, words, scr):
            _passes(True, bits, b0, b1, b2, b3, wt, wofs, k, rowstride, words, scr)
            return _read16(scr)

        return nibbles
    # carry-save: the rule of .variants.wide_scheme, which also chose the weights' layout
    carrysave_from = v.carrysave_from

    def carrysave(variant, bits, b0, b1, b2, b3, wt, wofs, k, rowstride, words, scr):
        if k * words < carrysave_from:
            _passes(False, bits, b0, b1, b2, b3, wt, wofs, k, rowstride, words, scr)
        else:
            _carrysave_passes(bits, b0, b1, b2, b3, wt, wofs, k, rowstride, words, scr)
        return _read16(scr)

    return carrysave


def narrow(variant, bits, b0, b1, b2, b3, b4, b5, b6, b7, wt, wofs, k, rowstride, scr):
    """The 16 accumulators (8 positions x 2 vectors of 16 channels on 32-bit lanes,
    position-major) of a layer with at most 32 input channels, whose pixels fill the low half of
    their word; ``wt``: the 32-bit lane layout, ``wofs`` in uint32 units. As :func:`wide`
    otherwise. (Compiled code only.)"""
    raise NotImplementedError("taps.narrow runs inside compiled kernels only")


@overload(narrow, inline="always")
def _narrow(variant, bits, b0, b1, b2, b3, b4, b5, b6, b7, wt, wofs, k, rowstride, scr):
    if not isinstance(variant, VariantType):
        return None
    if variant.variant.narrow == "vpopcnt":

        def vpopcnt(variant, bits, b0, b1, b2, b3, b4, b5, b6, b7, wt, wofs, k, rowstride, scr):
            return _narrow_vpopcnt(bits, b0, b1, b2, b3, b4, b5, b6, b7, wt, wofs, k, rowstride)

        return vpopcnt

    def passes(variant, bits, b0, b1, b2, b3, b4, b5, b6, b7, wt, wofs, k, rowstride, scr):
        for half in range(2):
            p0 = _at(b0, b4, b0, b0, half)
            p1 = _at(b1, b5, b1, b1, half)
            p2 = _at(b2, b6, b2, b2, half)
            p3 = _at(b3, b7, b3, b3, half)
            for j in range(2):
                t0, t1, t2, t3 = _bytes4_32(bits, p0, p1, p2, p3, wt, wofs + 16 * j, k, rowstride)
                q = RESULTS + (4 * half * 2 + j) * GROUP  # position 4 * half, vector j
                vstore(scr, q, as_i64x8(t0))
                vstore(scr, q + 2 * GROUP, as_i64x8(t1))
                vstore(scr, q + 4 * GROUP, as_i64x8(t2))
                vstore(scr, q + 6 * GROUP, as_i64x8(t3))
        c = _read16(scr)
        return (
            as_i32x16(c[0]), as_i32x16(c[1]), as_i32x16(c[2]), as_i32x16(c[3]),
            as_i32x16(c[4]), as_i32x16(c[5]), as_i32x16(c[6]), as_i32x16(c[7]),
            as_i32x16(c[8]), as_i32x16(c[9]), as_i32x16(c[10]), as_i32x16(c[11]),
            as_i32x16(c[12]), as_i32x16(c[13]), as_i32x16(c[14]), as_i32x16(c[15]),
        )  # fmt: skip

    return passes


def nibble_layer(variant, cin):
    """Whether ``variant``'s tap loop counts nibbles on a layer over ``cin`` input channels
    (:func:`.variants.wide_scheme`'s ``"nibbles"``). (Compiled code only.)"""
    raise NotImplementedError("taps.nibble_layer runs inside compiled kernels only")


@overload(nibble_layer, inline="always")
def _nibble_layer(variant, cin):
    if not isinstance(variant, VariantType):
        return None
    if variant.variant.wide == "nibbles":
        return lambda variant, cin: cin > NARROW_CHANNELS
    return lambda variant, cin: False


@njit(cache=True, inline="always")
def tap_input(variant, bits, cin):
    """The packed input as the layer's tap loop reads it: ``bits`` itself, or its nibble-split
    copy (:func:`.bitpack.split_nibbles`) where the loop counts nibbles."""
    if nibble_layer(variant, cin):
        return split_nibbles(bits)
    return bits


@njit(cache=True, inline="always")
def weight_factor(variant, cin):
    """uint64 words of the variant's weight layout per word of :func:`.bitpack.pack_weights`'
    (2 where the tap loop counts nibbles)."""
    return 2 if nibble_layer(variant, cin) else 1
