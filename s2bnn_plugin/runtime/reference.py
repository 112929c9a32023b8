"""The packed network's operations in plain numpy: no compiled code, slow, easy to read.

Why keep it: it runs a packed file where Numba is unavailable, and it is an independent
implementation of the packed semantics to test the kernels against. Each unit kind composes its
reference from these (``Unit.reference``). Integer accumulations are
exact (float64 matrix products of +-1 values); every float operation is the same float32
operation, in the same order, as in the kernels, so both engines give the same sign bits.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "LANES",
    "avgpool2",
    "binary_conv",
    "conv_nchw_bn",
    "global_avgpool",
    "maxpool3x3s2",
    "pack_signs",
    "projection_shortcut",
    "unpack_signs",
    "unpack_weights",
]

LANES = 32  # output channels per weight block (must equal s2bnn_plugin.kernels.LANES: tested)


def _out(size: int, k: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - k) // stride + 1


def pack_signs(x: np.ndarray, thr: np.ndarray, pad: int) -> np.ndarray:
    """NHWC float32 ``x`` and ``thr`` (T, C) -> uint64 (T, N, H + 2 pad, W + 2 pad, words)."""
    n, h, w, c = x.shape
    words = (c + 63) // 64
    neg = ~(x[None] + thr[:, None, None, None, :] >= np.float32(0))
    neg = np.concatenate([neg, np.zeros((*neg.shape[:-1], words * 64 - c), bool)], axis=-1)
    packed = np.packbits(neg, axis=-1, bitorder="little").view("<u8")
    out = np.zeros((thr.shape[0], n, h + 2 * pad, w + 2 * pad, words), np.uint64)
    out[:, :, pad : pad + h, pad : pad + w] = packed
    return out


def unpack_signs(bits: np.ndarray, channels: int) -> np.ndarray:
    """uint64 words (..., words) -> +-1 float64 (..., channels) (set bit = -1)."""
    b = np.unpackbits(np.ascontiguousarray(bits, "<u8").view(np.uint8), axis=-1, bitorder="little")
    return 1.0 - 2.0 * b[..., :channels].astype(np.float64)


def unpack_weights(wt: np.ndarray, k: int, cin: int, groups: int, cg: int) -> np.ndarray:
    """The kernels' block layout -> +-1 float64 (groups * cg, cin, k, k)."""
    bpg = (cg + LANES - 1) // LANES
    words = (cin + 63) // 64
    blocks = wt.reshape(groups, bpg, k * k, words, LANES)
    signs = unpack_signs(np.moveaxis(blocks, 3, -1), cin)  # (g, bpg, kk, LANES, cin)
    signs = np.moveaxis(signs, 3, 2).reshape(groups, bpg * LANES, k * k, cin)[:, :cg]
    return signs.reshape(groups * cg, k, k, cin).transpose(0, 3, 1, 2)


def conv_nchw_bn(x: np.ndarray, wt: np.ndarray, stride: int, pad: int, aff: np.ndarray):
    """Stem convolution + BatchNorm, summed over (ci, ky, kx) in the kernels' order; NHWC out."""
    n, cin, h, w = x.shape
    k, cout = wt.shape[1], wt.shape[3]
    ho, wo = _out(h, k, stride, pad), _out(w, k, stride, pad)
    xp = np.zeros((n, cin, h + 2 * pad, w + 2 * pad), np.float32)
    xp[:, :, pad : pad + h, pad : pad + w] = x
    acc = np.zeros((n, ho, wo, cout), np.float32)
    for ci in range(cin):
        for ky in range(k):
            for kx in range(k):
                tap = xp[:, ci, ky : ky + stride * ho : stride, kx : kx + stride * wo : stride]
                rows = _inside(h, ky - pad, stride, ho)
                inside = rows[:, None] & _inside(w, kx - pad, stride, wo)
                contrib = tap[..., None] * wt[ci, ky, kx]
                acc = np.where(inside[None, :, :, None], acc + contrib, acc)
    return acc * aff[0] + aff[1]


def _inside(size: int, offset: int, stride: int, count: int) -> np.ndarray:
    pos = np.arange(count) * stride + offset
    return (pos >= 0) & (pos < size)


def maxpool3x3s2(x: np.ndarray) -> np.ndarray:
    """3x3 / 2 max pool with padding 1 that never wins; NaN propagates."""
    n, h, w, c = x.shape
    ho, wo = _out(h, 3, 2, 1), _out(w, 3, 2, 1)
    xp = np.full((n, h + 2, w + 2, c), -np.inf, np.float32)
    xp[:, 1 : h + 1, 1 : w + 1] = x
    out = None
    for ky in range(3):
        for kx in range(3):
            tap = xp[:, ky : ky + 2 * ho : 2, kx : kx + 2 * wo : 2]
            out = tap.copy() if out is None else np.maximum(out, tap)
    return out


def avgpool2(x: np.ndarray) -> np.ndarray:
    """2x2 / 2 average pool, ceil mode, padding not counted: ((a + b) + c) + d, then divide."""
    n, h, w, c = x.shape
    ho, wo = (h + 1) // 2, (w + 1) // 2
    xp = np.zeros((n, 2 * ho, 2 * wo, c), np.float32)
    xp[:, :h, :w] = x
    a, b = xp[:, 0::2, 0::2], xp[:, 0::2, 1::2]
    cc, d = xp[:, 1::2, 0::2], xp[:, 1::2, 1::2]
    has_x = (np.arange(wo) * 2 + 1 < w)[None, None, :, None]
    has_y = (np.arange(ho) * 2 + 1 < h)[None, :, None, None]
    full = (((a + b) + cc) + d) / np.float32(4)
    row = (a + b) / np.float32(2)
    col = (a + cc) / np.float32(2)
    return np.where(has_x & has_y, full, np.where(has_x, row, np.where(has_y, col, a)))


def projection_shortcut(x: np.ndarray, pool: bool, wt: np.ndarray, aff: np.ndarray):
    """[2x2 avg pool,] 1x1 conv summed in channel order, BatchNorm."""
    if pool:
        x = avgpool2(x)
    acc = np.zeros((*x.shape[:3], wt.shape[1]), np.float32)
    for c in range(x.shape[3]):
        acc = acc + x[..., c : c + 1] * wt[c]
    return acc * aff[0] + aff[1]


def binary_conv(
    bits: np.ndarray, weights: np.ndarray, kernel: int, stride: int, in_channels: int
) -> np.ndarray:
    """Exact +-1 convolution(s) with zero padding ``kernel // 2``: int64 (N, Ho, Wo, C).

    ``bits``: (groups, N, H + 2p, W + 2p, words), one set of packed signs per group;
    ``weights``: +-1 (groups * cg, cin, k, k) (:func:`unpack_weights`); group ``g`` convolves
    its own signs with its ``cg`` output channels.
    """
    k, pad = kernel, kernel // 2
    groups = bits.shape[0]
    cg = weights.shape[0] // groups
    accs = []
    for g in range(groups):
        x = unpack_signs(bits[g], in_channels)
        n, hp, wp, _ = x.shape
        h, w = hp - 2 * pad, wp - 2 * pad
        x[:, :pad] = 0
        x[:, hp - pad :] = 0
        x[:, :, :pad] = 0
        x[:, :, wp - pad :] = 0
        ho, wo = _out(h, k, stride, pad), _out(w, k, stride, pad)
        acc = np.zeros((n, ho, wo, cg))
        wg = weights[g * cg : (g + 1) * cg]
        for ky in range(k):
            for kx in range(k):
                tap = x[:, ky : ky + stride * ho : stride, kx : kx + stride * wo : stride]
                acc += tap @ wg[:, :, ky, kx].T
        accs.append(acc)
    return np.concatenate(accs, axis=-1).astype(np.int64)


def global_avgpool(x: np.ndarray) -> np.ndarray:
    """Mean over positions, summed in position order like the kernel."""
    n, h, w, c = x.shape
    flat = x.reshape(n, h * w, c)
    acc = np.zeros((n, c), np.float32)
    for q in range(h * w):
        acc = acc + flat[:, q]
    return acc / np.float32(h * w)
