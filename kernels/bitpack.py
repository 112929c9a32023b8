"""Bit-packing: signs along channels into uint64 words, and the weights' block layout.

Convention (shared with :mod:`s2bnn_plugin.nn.quantizers`): a set bit means -1, a clear bit +1,
and ``sign(0) = +1``. Activations: bit ``c % 64`` of word ``c // 64`` of pixel ``(n, y, x)`` is
set when ``not (x[n, y, x, c] + bias[c] >= 0)`` -- the RSign of the layer that reads them (NaN
gives -1, as ``torch.where(x >= 0, 1, -1)`` does). Channels past ``C`` in the last word are 0 in
activations *and* weights, so they XOR to 0 and never count.

Packed activations are NHWC-like, ``(T, N, H + 2 * pad, W + 2 * pad, words)`` flattened: ``T``
threshold sets (two 1x1 convolutions reading the same tensor with different RSigns), and a
border of zero words for a 3x3 convolution (corrected for in :mod:`.border`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from numba import njit, prange

from .simd import popcount64, sign_bits32, sign_bits64, sign_bits_partial
from .variants import KernelVariant, select, wide_scheme

__all__ = [
    "GROUP",
    "LANES",
    "NARROW_CHANNELS",
    "BinaryWeights",
    "aligned",
    "binary_weights",
    "kernel_weights",
    "pack_signs",
    "pack_weights",
    "split_nibbles",
    "tap_sums",
    "words_for",
]

LANES = 32  # output channels per weight block: four 8-lane vectors in the micro-kernel
GROUP = 8  # output channels of one 8-lane vector (a pass of the grouped tap loops)
NARROW_CHANNELS = 32  # at most this many input channels: 32-bit popcount lanes (kernel_weights)


class BinaryWeights(NamedTuple):
    """A binary layer's weights as the convolution kernels read them (:func:`binary_weights`),
    with the kernel variant they are laid out for: the drivers run that variant's tap loop."""

    wt: Any  # the variant's layout (:func:`kernel_weights`), 64-byte aligned
    wsum: Any  # each tap's +-1 weight sum per output column (:func:`tap_sums`), (k * k, columns)
    variant: Any  # the :class:`.variants.KernelVariant`


@njit(cache=True)
def words_for(channels: int) -> int:
    """uint64 words holding ``channels`` bits."""
    return (channels + 63) // 64


@njit(cache=True, inline="always")
def pack_row(z, zoff, channels, thr, toff, out, ooff, words):
    """Pack ``not (z[zoff + c] + thr[toff + c] >= 0)`` for ``c < channels`` into ``words``.

    One vector compare per word (:func:`.simd.sign_bits64`; masked for a partial last word).
    """
    full = channels // 64
    for w in range(full):
        out[ooff + w] = sign_bits64(z, zoff + w * 64, thr, toff + w * 64)
    if full < words:
        c0 = full * 64
        if channels - c0 == 32:  # e.g. the first blocks of ReActNet-A: no masked loads needed
            out[ooff + full] = sign_bits32(z, zoff + c0, thr, toff + c0)
        else:
            out[ooff + full] = sign_bits_partial(z, zoff + c0, thr, toff + c0, channels - c0)


@njit(cache=True, parallel=True)
def pack_signs(x, n, h, w, c, thr, pad, out):
    """Pack an NHWC float32 map (flat ``x``) for each row of ``thr`` (T, C) into ``out``.

    ``out`` is the flat ``(T, n, h + 2 pad, w + 2 pad, words)`` buffer; only its interior is
    written (the border must already be zero).
    """
    t_sets = thr.shape[0]
    words = words_for(c)
    hp = h + 2 * pad
    wp = w + 2 * pad
    if x.size != n * h * w * c or thr.shape[1] != c or pad < 0:
        raise ValueError("pack_signs: input or thresholds of the wrong size")
    if out.size < t_sets * n * hp * wp * words:
        raise ValueError("pack_signs: the packed output is too small")
    flat_thr = thr.ravel()
    for row in prange(t_sets * n * h):
        t = row // (n * h)
        img = (row // h) % n
        y = row % h
        for xx in range(w):
            zoff = ((img * h + y) * w + xx) * c
            ooff = (((t * n + img) * hp + y + pad) * wp + xx + pad) * words
            pack_row(x, zoff, c, flat_thr, t * c, out, ooff, words)


@njit(cache=True)
def pack_weights(negative, groups):
    """Block layout of a binary weight ``negative[co, ci, ky, kx]`` (1 where ``w < 0``).

    Output channels split into ``groups`` equal groups (two 1x1 convs fused into one call); each
    group is padded to whole blocks of :data:`LANES` channels. Result: flat
    ``(blocks, k * k, words, LANES)`` so that the micro-kernel's inner loop reads four
    contiguous 8-lane vectors per input word.
    """
    cout, cin, k, _ = negative.shape
    cg = cout // groups
    blocks_per_group = (cg + LANES - 1) // LANES
    words = words_for(cin)
    kk = k * k
    out = np.zeros(groups * blocks_per_group * kk * words * LANES, np.uint64)
    for co in range(cout):
        g = co // cg
        local = co - g * cg
        blk = g * blocks_per_group + local // LANES
        lane = local % LANES
        for ky in range(k):
            for kx in range(k):
                t = ky * k + kx
                for ci in range(cin):
                    if negative[co, ci, ky, kx]:
                        idx = ((blk * kk + t) * words + ci // 64) * LANES + lane
                        out[idx] |= np.uint64(1) << np.uint64(ci % 64)
    return out


def kernel_weights(wt: np.ndarray, cin: int, k: int, variant: KernelVariant) -> np.ndarray:
    """The layout the convolution kernels of ``variant`` read, from :func:`pack_weights`' own
    (of a ``k`` x ``k`` kernel over ``cin`` input channels):

    - at most :data:`NARROW_CHANNELS` input channels, where each lane's word holds its bits in
      the low half: only the low 32 bits, as uint32 pairs in a uint64 array of half the length
      (the kernels then count 16 lanes of 32 bits instead of 8 half-empty ones of 64);
    - more, where the variant's tap loop for the layer works 8 channels at a time (byte counts
      or carry-save adders, :func:`.variants.wide_scheme`): each 32-channel block as 4 groups of
      8 channels, a group holding its words for every step (tap, word) in order, flat
      ``(blocks, 4, k * k * words, 8)``; where that loop counts nibbles (``"nibbles"``), each
      step's 8 words as their low nibbles then their high ones (:func:`split_nibbles`), flat
      ``(blocks, 4, k * k * words, 2, 8)``;
    - otherwise (lane popcounts) :func:`pack_weights`' layout itself.
    """
    wt = np.ascontiguousarray(wt, dtype=np.uint64).ravel()
    if cin > NARROW_CHANNELS:
        scheme = wide_scheme(variant, k, cin)
        if scheme == "vpopcnt":
            return wt
        steps = k * k * words_for(cin)
        blocks = wt.reshape(-1, steps, LANES // GROUP, GROUP).transpose(0, 2, 1, 3)
        if scheme == "nibbles":
            blocks = np.stack((blocks & _LOW_NIBBLES, (blocks >> np.uint64(4)) & _LOW_NIBBLES), 3)
        return np.ascontiguousarray(blocks).ravel()
    if np.any(wt >> np.uint64(NARROW_CHANNELS)):
        raise ValueError(
            f"kernel_weights: bits above channel 32 in a weight for {cin} input channels; "
            "expected pack_weights' output for this layer"
        )
    return wt.astype(np.uint32).view(np.uint64)


_LOW_NIBBLES = np.uint64(0x0F0F0F0F0F0F0F0F)


@njit(cache=True)
def split_nibbles(bits):
    """Each word of a packed input as two: its low nibbles, then its high nibbles shifted down
    (every byte at most 15), flat ``(..., words, 2)``. The nibble-counting tap loop reads these
    against weights split the same way (:func:`kernel_weights`), so ``a ^ w`` per nibble needs
    no masking or shifting in the loop: one XOR and one table lookup per 32 nibbles."""
    out = np.empty(2 * bits.size, np.uint64)
    m = _LOW_NIBBLES
    for i in range(bits.size):
        x = bits[i]
        out[2 * i] = x & m
        out[2 * i + 1] = (x >> np.uint64(4)) & m
    return out


@njit(cache=True)
def tap_sums(wt, blocks, kk, words, cin):
    """Sum of the +-1 weights of each tap and lane, ``cin - 2 * popcount``: shape (kk, columns).

    A 3x3 window hanging over the border reads zero words (= +1 in every channel) there, which
    adds exactly this sum per missing tap; the fused kernel subtracts it back.
    """
    out = np.empty((kk, blocks * LANES), np.int64)
    for blk in range(blocks):
        for t in range(kk):
            for lane in range(LANES):
                pc = 0
                for w in range(words):
                    pc += popcount64(wt[((blk * kk + t) * words + w) * LANES + lane])
                out[t, blk * LANES + lane] = cin - 2 * pc
    return out


def aligned(a: np.ndarray, align: int = 64) -> np.ndarray:
    """A C-contiguous copy of ``a`` whose data starts on an ``align``-byte boundary."""
    raw = np.empty(a.nbytes + align, np.uint8)
    start = (-raw.ctypes.data) % align
    out = raw[start : start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def binary_weights(
    stored: np.ndarray,
    cin: int,
    k: int,
    groups: int,
    cg: int,
    variant: KernelVariant | None = None,
) -> BinaryWeights:
    """The :class:`BinaryWeights` of a layer from :func:`pack_weights`' layout (as a packed file
    stores it): ``groups`` groups of ``cg`` output channels over ``cin`` inputs, a ``k`` x ``k``
    kernel, laid out for ``variant`` (default: :func:`.variants.select`)."""
    variant = variant or select()
    blocks = groups * ((cg + LANES - 1) // LANES)
    stored = np.ascontiguousarray(stored, dtype=np.uint64).ravel()
    wsum = tap_sums(stored, blocks, k * k, words_for(cin), cin)
    wt = aligned(kernel_weights(stored, cin, k, variant))
    return BinaryWeights(wt=wt, wsum=wsum, variant=variant)
