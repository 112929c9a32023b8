"""The Numba kernels against independent references: exact integer accumulations.

Binary convolutions are compared with a plain integer convolution of +-1 arrays with zero padding
(:func:`_reference_acc`, itself checked against ``torch.nn.functional.conv2d`` where torch is
installed); the fused unit with the numpy reference engine (same float32 operations in the same
order, so bit-for-bit equal). Shapes come from
hypothesis: channel counts that are not multiples of 64 (or of the 32-channel weight blocks), odd
spatial sizes, stride 2, batches above 1, the two-group (concatenated 1x1) form.

The module imports no torch (nor does tests/conftest.py where torch is absent):
``tools/arm64-check`` runs it on aarch64 in a root that has only numpy, Numba and the plugin.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from numba import njit

from s2bnn_plugin import kernels as K
from s2bnn_plugin.runtime import reference as ref
from s2bnn_plugin.runtime.units.binary_conv import LANES as FORMAT_LANES
from s2bnn_plugin.runtime.units.binary_conv import BinaryConv, Residual

FAST = settings(max_examples=12, deadline=None)
V = K.select_variant()  # the kernel variant this CPU runs by default
VPOPCNT = K.VARIANTS["avx512_vpopcntdq"]  # weights in pack_weights' own layout


def _pack_input(x: np.ndarray, thr: np.ndarray, pad: int) -> np.ndarray:
    """Pack (G, N, H, W, C) float maps with one threshold row per group, via the kernel."""
    g, n, h, w, c = x.shape
    per = n * (h + 2 * pad) * (w + 2 * pad) * K.words_for(c)
    bits = np.zeros(g * per, np.uint64)
    for i in range(g):
        part = np.zeros(per, np.uint64)
        K.pack_signs(x[i].ravel(), n, h, w, c, np.ascontiguousarray(thr[i : i + 1]), pad, part)
        bits[i * per : (i + 1) * per] = part
    return bits


def _reference_acc(x, thr, weight, k, stride):
    """sign(x + thr) (sign(0) = +1, NaN -> -1) convolved with sign(weight), zero padded, per
    group: int64 sums over the taps, computed plainly in numpy."""
    groups, n, h, w, _ = x.shape
    cg = weight.shape[0] // groups
    pad = k // 2
    ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    outs = []
    for g in range(groups):
        s = np.where(x[g] + thr[g] >= 0, 1, -1).astype(np.int64)
        s = np.pad(s, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        ws = np.where(weight[g * cg : (g + 1) * cg] >= 0, 1, -1).astype(np.int64)
        acc = np.zeros((n, ho, wo, cg), np.int64)
        for ky in range(k):
            for kx in range(k):
                tap = s[:, ky : ky + stride * (ho - 1) + 1 : stride]
                tap = tap[:, :, kx : kx + stride * (wo - 1) + 1 : stride]
                acc += tap @ ws[:, :, ky, kx].T
        outs.append(acc)
    return np.concatenate(outs, axis=-1)


@pytest.mark.parametrize(
    "n, h, w, cin, cout, k, stride, groups",
    [(2, 5, 7, 70, 33, 3, 2, 1), (1, 4, 9, 5, 8, 3, 1, 2), (3, 1, 2, 64, 31, 1, 1, 1)],
)
def test_the_reference_convolution_is_torchs(n, h, w, cin, cout, k, stride, groups):
    """:func:`_reference_acc` equals ``F.conv2d`` on +-1 float tensors (exact: small integers).
    Needs torch (skipped where it is absent, as in tools/arm64-check's root)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(cin)
    x = rng.standard_normal((groups, n, h, w, cin)).astype(np.float32)
    x[0, 0, 0, 0, 0] = np.nan
    thr = (0.3 * rng.standard_normal((groups, cin))).astype(np.float32)
    weight = rng.standard_normal((groups * cout, cin, k, k)).astype(np.float32)
    weight[0, 0, 0, 0] = 0.0
    outs = []
    for g in range(groups):
        s = torch.from_numpy(np.where(x[g] + thr[g] >= 0, 1.0, -1.0).astype(np.float32))
        wg = weight[g * cout : (g + 1) * cout]
        ws = torch.from_numpy(np.where(wg >= 0, 1.0, -1.0).astype(np.float32))
        conv = torch.nn.functional.conv2d(s.permute(0, 3, 1, 2), ws, None, stride, k // 2)
        outs.append(conv.permute(0, 2, 3, 1))
    expected = torch.cat(outs, dim=-1).numpy().astype(np.int64)
    np.testing.assert_array_equal(_reference_acc(x, thr, weight, k, stride), expected)


def test_lanes_agree():
    assert K.LANES == FORMAT_LANES == ref.LANES


@njit
def _popcounts(a):
    out = np.empty(a.size, np.int64)
    for i in range(a.size):
        out[i] = K.popcount64(a[i])
    return out


@given(st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=20))
@settings(max_examples=30, deadline=None)
def test_popcount(values):
    a = np.array(values, dtype=np.uint64)
    assert _popcounts(a).tolist() == [bin(v).count("1") for v in values]


@njit
def _sign_masks(y, lo):
    out = np.empty(y.size // 16, np.uint64)
    for i in range(out.size):
        out[i] = K.simd.sign_mask16(K.simd.fload(y, 16 * i), K.simd.fload(lo, 16 * i))
    return out


def _next_floats(v, steps):
    """``v`` moved ``steps`` representable float32 values up (negative: down)."""
    out = np.float32(v)
    towards = np.float32(np.inf if steps > 0 else -np.inf)
    for _ in range(abs(steps)):
        out = np.nextafter(out, towards)
    return out


@given(
    thr=st.floats(-(2.0**100), 2.0**100, width=32)
    | st.sampled_from([0.0, -0.0, 1e-45, -1e-45, 3e38]),
    extra=st.lists(st.floats(width=32, allow_nan=True), min_size=16, max_size=16),
)
@FAST
def test_sign_mask16_is_the_sign_of_the_rounded_sum(thr, extra):
    """One compare against ``-thr`` gives the bits of ``not (y + thr >= 0)`` in float32 for
    every y: the floats around ``-thr`` (where the rounded sum is zero or tiny), NaN, zeros,
    infinities and arbitrary values."""
    t = np.float32(thr)
    near = [_next_floats(-t, s) for s in range(-6, 7)] + [np.float32(np.nan), 0.0, -0.0]
    y = np.array(near + extra, np.float32)
    y = np.concatenate([y, np.zeros(-y.size % 16, np.float32)])
    with np.errstate(over="ignore", invalid="ignore"):
        bits = ~(y + t >= np.float32(0))
    expected = [
        sum(int(b) << j for j, b in enumerate(bits[i : i + 16])) for i in range(0, y.size, 16)
    ]
    lo = np.full(y.size, -t, np.float32)
    assert _sign_masks(y, lo).tolist() == expected


@given(
    n=st.integers(1, 3),
    h=st.integers(1, 6),
    w=st.integers(1, 6),
    c=st.sampled_from([1, 5, 31, 32, 63, 64, 65, 100, 130]),
    t=st.integers(1, 2),
    pad=st.integers(0, 1),
    seed=st.integers(0, 2**16),
)
@FAST
def test_pack_signs_matches_reference(n, h, w, c, t, pad, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    x[rng.random(x.shape) < 0.05] = 0.0  # sign(0) = +1
    x[rng.random(x.shape) < 0.02] = np.nan  # NaN reads as -1, like torch.where(x >= 0, 1, -1)
    thr = rng.standard_normal((t, c)).astype(np.float32)
    expected = ref.pack_signs(x, thr, pad)
    got = np.zeros(expected.size, np.uint64)
    K.pack_signs(x.ravel(), n, h, w, c, thr, pad, got)
    np.testing.assert_array_equal(got.reshape(expected.shape), expected)


def test_pack_signs_bit_order():
    x = np.zeros((1, 1, 1, 70), np.float32)
    x[..., 3] = -1.0
    x[..., 66] = -0.5
    got = np.zeros(2, np.uint64)
    K.pack_signs(x.ravel(), 1, 1, 1, 70, np.zeros((1, 70), np.float32), 0, got)
    assert got.tolist() == [1 << 3, 1 << 2]


@given(
    cout=st.sampled_from([1, 7, 32, 33, 64, 100]),
    cin=st.sampled_from([1, 3, 63, 64, 65, 130]),
    k=st.sampled_from([1, 3]),
    groups=st.integers(1, 2),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=15, deadline=None)
def test_weight_layout_round_trip(cout, cin, k, groups, seed):
    rng = np.random.default_rng(seed)
    neg = rng.random((groups * cout, cin, k, k)) < 0.5
    wt = K.pack_weights(neg.astype(np.uint8), groups)
    signs = ref.unpack_weights(wt, k, cin, groups, cout)
    np.testing.assert_array_equal(signs, np.where(neg, -1.0, 1.0))


@given(
    n=st.integers(1, 3),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    cin=st.sampled_from([1, 5, 32, 63, 64, 65, 100, 129]),
    cout=st.sampled_from([1, 8, 31, 32, 33, 70]),
    k=st.sampled_from([1, 3]),
    stride=st.integers(1, 2),
    groups=st.integers(1, 2),
    seed=st.integers(0, 2**16),
)
@FAST
def test_binary_conv_acc_is_exact(n, h, w, cin, cout, k, stride, groups, seed):
    _check_acc(n, h, w, cin, cout, k, stride, groups, seed, V)


def _check_acc(
    n, h, w, cin, cout, k, stride, groups, seed, variant, blocks_per_job=2, opposite=False
):
    """binary_conv_acc of ``variant`` against the plain numpy convolution. With ``opposite``,
    every input sign is -1 and every weight +1: every bit of ``a ^ w`` is set, so every byte
    counter of the tap loops reaches the most it can hold before it is widened."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((groups, n, h, w, cin)).astype(np.float32)
    thr = (0.3 * rng.standard_normal((groups, cin))).astype(np.float32)
    weight = rng.standard_normal((groups * cout, cin, k, k)).astype(np.float32)
    weight[rng.random(weight.shape) < 0.05] = 0.0  # sign(0) = +1 for weights too
    if opposite:
        x = -np.abs(x) - 1.0
        thr[:] = 0.0
        weight = np.abs(weight)
    bits = _pack_input(x, thr, k // 2)
    wt = K.pack_weights((~(weight >= 0)).astype(np.uint8), groups)
    bpg = (cout + K.LANES - 1) // K.LANES
    wsum = K.tap_sums(wt, groups * bpg, k * k, K.words_for(cin), cin)
    ho, wo = K.out_size(h, k, stride), K.out_size(w, k, stride)
    out = np.full((n, ho, wo, groups * cout), -(2**30), np.int32)
    wk = K.kernel_weights(wt, cin, k, variant)  # 32-bit lanes for cin <= 32
    K.binary_conv_acc(
        bits,
        K.ConvShape(n, h, w, cin, k, stride, groups, cout),
        K.BinaryWeights(wk, wsum, variant),
        blocks_per_job,
        out,
    )
    np.testing.assert_array_equal(out, _reference_acc(x, thr, weight, k, stride))


@pytest.mark.parametrize("cin", [5, 64])
def test_binary_conv_acc_every_small_shape(cin):
    """Every small map (1..7 x 1..17), both strides, full and partial channel blocks, one block
    and many blocks per parallel job, on both micro-kernels: border classes, blocks across rows,
    short last blocks and runs along a row, exhaustively."""
    rng = np.random.default_rng(cin)
    for h in range(1, 8):
        for w in range(1, 18):
            x = rng.standard_normal((1, 2, h, w, cin)).astype(np.float32)
            thr = np.zeros((1, cin), np.float32)
            bits = _pack_input(x, thr, 1)
            for cout in (32, 33):
                weight = rng.standard_normal((cout, cin, 3, 3)).astype(np.float32)
                wt = K.pack_weights((weight < 0).astype(np.uint8), 1)
                wsum = K.tap_sums(wt, (cout + K.LANES - 1) // K.LANES, 9, K.words_for(cin), cin)
                wk = K.kernel_weights(wt, cin, 3, V)
                for stride in (1, 2):
                    expected = _reference_acc(x, thr, weight, 3, stride)
                    for blocks_per_job in (1, 64):
                        out = np.full(expected.shape, -(2**30), np.int32)
                        shape = K.ConvShape(2, h, w, cin, 3, stride, 1, cout)
                        weights = K.BinaryWeights(wk, wsum, V)
                        K.binary_conv_acc(bits, shape, weights, blocks_per_job, out)
                        np.testing.assert_array_equal(out, expected, err_msg=f"{h}x{w}/{stride}")


@given(
    m=st.integers(1, 13),
    cin=st.sampled_from([1, 40, 64, 200]),
    cout=st.sampled_from([1, 32, 45]),
    seed=st.integers(0, 2**16),
)
@FAST
def test_binary_gemm(m, cin, cout, seed):
    rng = np.random.default_rng(seed)
    a = rng.random((m, cin)) < 0.5
    b = rng.random((cout, cin)) < 0.5
    a_words = ref.pack_signs(
        np.where(a, -1.0, 1.0).astype(np.float32)[None, None], np.zeros((1, cin), np.float32), 0
    )[0, 0, 0]
    wt = K.pack_weights(b[:, :, None, None].astype(np.uint8), 1)
    weights = K.binary_weights(wt, cin, 1, 1, cout, V)
    got = K.binary_gemm(np.ascontiguousarray(a_words), weights, cin, cout, 1)
    expected = np.where(a, -1, 1) @ np.where(b, -1, 1).T
    np.testing.assert_array_equal(got, expected)


@given(
    n=st.integers(1, 2),
    h=st.integers(1, 7),
    w=st.integers(1, 30),
    cin=st.sampled_from([3, 32, 64, 70]),
    k=st.sampled_from([1, 3]),
    stride=st.integers(1, 2),
    groups=st.integers(1, 2),
    next_sets=st.integers(0, 2),
    opad=st.integers(0, 1),
    seed=st.integers(0, 2**16),
)
# always: the sliced epilogue with a half-empty last word and two threshold sets, along whole
# rows (blocks of 8 and 4 positions; slices in pairs, and single for 48 channels), and with a
# pooled residual and two groups
@example(n=1, h=5, w=7, cin=32, k=3, stride=1, groups=1, next_sets=2, opad=1, seed=1)
@example(n=2, h=3, w=16, cin=32, k=3, stride=1, groups=1, next_sets=2, opad=1, seed=3)
@example(n=1, h=3, w=12, cin=64, k=1, stride=1, groups=2, next_sets=1, opad=1, seed=4)
@example(n=1, h=2, w=9, cin=48, k=1, stride=1, groups=2, next_sets=2, opad=0, seed=5)
@example(n=2, h=7, w=6, cin=64, k=3, stride=2, groups=2, next_sets=1, opad=0, seed=2)
# the epilogue from the micro-kernel's registers (whole 32-channel weight blocks, 1x1 or 3x3):
# narrow and wide, plain and pooled residual, a half-empty last word; and writing the 2x2
# average of the output instead (even output sizes; row pairs of whole blocks, with blocks
# that span two rows)
@example(n=2, h=5, w=26, cin=32, k=3, stride=1, groups=2, next_sets=2, opad=1, seed=6)
@example(n=1, h=8, w=24, cin=64, k=3, stride=2, groups=1, next_sets=1, opad=1, seed=7)
@example(n=1, h=6, w=40, cin=32, k=3, stride=2, groups=2, next_sets=2, opad=0, seed=8)
@example(n=2, h=2, w=8, cin=96, k=1, stride=1, groups=1, next_sets=2, opad=1, seed=9)
@example(n=2, h=4, w=12, cin=32, k=1, stride=1, groups=2, next_sets=1, opad=1, seed=10)
@example(n=2, h=6, w=14, cin=64, k=3, stride=1, groups=1, next_sets=2, opad=1, seed=11)
@example(n=1, h=8, w=12, cin=64, k=3, stride=2, groups=2, next_sets=1, opad=0, seed=12)
@FAST
def test_fused_unit_matches_reference(n, h, w, cin, k, stride, groups, next_sets, opad, seed):
    """Float output and next-layer bits of the fused kernel equal the numpy engine's exactly."""
    if stride == 2 and k == 1:
        k = 3
    _check_fused_unit(n, h, w, cin, k, stride, groups, next_sets, opad, seed, V)


def _check_fused_unit(n, h, w, cin, k, stride, groups, next_sets, opad, seed, variant):
    """One fused unit of ``variant`` against the numpy engine (and its 2x2-averaged output where
    the kernel can write that instead), bit for bit."""
    rng = np.random.default_rng(seed)
    cg = cin
    cout = groups * cg
    x = rng.standard_normal((n, h, w, cin)).astype(np.float32)
    rsign = (0.2 * rng.standard_normal((groups, cin))).astype(np.float32)
    bits = ref.pack_signs(x, rsign, k // 2)
    weight = rng.standard_normal((cout, cin, k, k)).astype(np.float32)
    wt = K.pack_weights((weight < 0).astype(np.uint8), groups)
    affine = rng.uniform(0.05, 2, (3, cout)).astype(np.float32)
    affine[2] = rng.standard_normal(cout)
    act = np.stack(
        [rng.standard_normal(cout), rng.uniform(-0.5, 1, cout), rng.standard_normal(cout)]
    ).astype(np.float32)
    thr = rng.standard_normal((next_sets, cout)).astype(np.float32)
    unit = BinaryConv(
        name="u",
        in_channels=cin,
        kernel=k,
        stride=stride,
        groups=groups,
        group_channels=cg,
        residual=Residual.AVGPOOL if stride == 2 else Residual.IDENTITY,
        has_activation=True,
        weight=wt,
        rsign=rsign,
        affine=affine,
        activation=act,
    )
    _, acc, y = unit.reference(x)

    bpg = (cg + K.LANES - 1) // K.LANES
    wsum = K.tap_sums(wt, groups * bpg, k * k, K.words_for(cin), cin)
    ho, wo = y.shape[1:3]
    z = np.zeros(n * ho * wo * cout, np.float32)
    # every interior word is written whole: start from set bits there (the border, by
    # contract, is already zero)
    obits = np.zeros((next_sets, n, ho + 2 * opad, wo + 2 * opad, K.words_for(cout)), np.uint64)
    obits[:, :, opad : opad + ho, opad : opad + wo] = np.uint64(2**64 - 1)
    obits = obits.ravel()
    shape = K.ConvShape(n, h, w, cin, k, stride, groups, cg)
    weights = K.BinaryWeights(K.kernel_weights(wt, cin, k, variant), wsum, variant)
    prm = np.concatenate([affine, act])
    unit = K.FusedOutput(prm, x.ravel(), stride == 2, z, thr, opad, obits, False)
    K.binary_conv_fused(bits.ravel(), shape, weights, unit, 1)
    np.testing.assert_array_equal(z.reshape(y.shape), y)
    np.testing.assert_array_equal(obits, ref.pack_signs(y, thr, opad).ravel())
    if K.pools_output(cin, cg, k, stride, next_sets, stride == 2, h, w):
        # the same unit writing only the 2x2 average of its map (what a next unit with a
        # pooled residual reads): that average, bit for bit, and the same signs
        zp = np.full(n * (ho // 2) * (wo // 2) * cout, np.nan, np.float32)
        obits[:] = 0
        pooled_unit = unit._replace(z=zp, pool_out=True)
        K.binary_conv_fused(bits.ravel(), shape, weights, pooled_unit, 1)
        np.testing.assert_array_equal(zp.reshape(n, ho // 2, wo // 2, cout), ref.avgpool2(y))
        np.testing.assert_array_equal(obits, ref.pack_signs(y, thr, opad).ravel())


# What each tap loop meets in a layer (n, h, w, cin, cout, k, stride, groups): long rows of
# taps (carry-save adders in the AVX-512BW variant, with leftover words), short rows (byte
# counts), rows of 125 words (fours widened mid-row after 31 carry-save groups; byte and nibble
# counts every 31 steps), stride 2 with two groups and a partial weight block, at most 32 input
# channels (32-bit lanes), one word a pixel; rows of whole fours: 12 words (3 fours a row), 48
# (31 fours widened in the middle of the third row) and one row of 128 (32 fours); byte and
# nibble counts of a whole kernel of 31 steps widened once at its end, and of 32 steps (the
# first widened every 31 steps).
VARIANT_LAYERS = [
    (1, 5, 9, 300, 64, 3, 1, 1),
    (2, 4, 7, 130, 33, 3, 2, 2),
    (1, 3, 4, 8000, 32, 1, 1, 1),
    (1, 3, 3, 2100, 40, 3, 1, 1),
    (2, 6, 6, 20, 40, 3, 1, 1),
    (1, 5, 5, 64, 64, 1, 1, 1),
    (1, 4, 5, 256, 40, 3, 1, 1),
    (1, 3, 4, 1024, 32, 3, 1, 1),
    (1, 3, 4, 8192, 32, 1, 1, 1),
    (1, 3, 4, 1984, 32, 1, 1, 1),
    (1, 3, 4, 2048, 32, 1, 1, 1),
]
# fused units (n, h, w, cin, k, stride, groups, next_sets, opad): carry-save rows with the
# epilogue in registers (plain and 2x2-pooled residual, pooled output), through the block buffer
# (channels not a multiple of 16), and a narrow layer
VARIANT_UNITS = [
    (1, 6, 8, 256, 3, 1, 1, 2, 1),
    (1, 8, 12, 256, 3, 2, 1, 1, 1),
    (2, 3, 5, 200, 3, 1, 1, 1, 0),
    (1, 5, 26, 32, 3, 1, 2, 2, 1),
]


def _one_variant_per_scheme() -> list[str]:
    """A variant's compiled code depends only on its tap-loop scheme (:class:`KernelVariant`'s
    ``wide``, ``narrow`` and ``carrysave_from``): variants with equal schemes, such
    as ``neon`` and ``portable`` (byte counts), compile to the same code for this CPU. One of
    each, the last listed (``portable`` stands for ``neon``, which is the default build on
    aarch64 and tested there by every test here: ``tools/arm64-check``)."""
    names = {(v.wide, v.narrow, v.carrysave_from): v.name for v in K.VARIANTS.values()}
    return list(names.values())


@pytest.mark.parametrize("name", _one_variant_per_scheme())
def test_every_variant_is_exact(name):
    """Every kernel variant's tap loops give the same integers as the numpy convolution, and its
    fused units the numpy engine's floats and signs, bit for bit, on layers that take each of its
    loops. Each variant's code is compiled for this CPU: a variant whose instruction set the CPU
    lacks runs the same algorithm with the instructions LLVM substitutes (the native builds of
    those: :func:`test_native_builds_of_other_variants`)."""
    variant = K.VARIANTS[name]
    for i, (n, h, w, cin, cout, k, stride, groups) in enumerate(VARIANT_LAYERS):
        _check_acc(n, h, w, cin, cout, k, stride, groups, i, variant, blocks_per_job=1)
    for i, unit in enumerate(VARIANT_UNITS):
        _check_fused_unit(*unit, i, variant)


@pytest.mark.parametrize("name", _one_variant_per_scheme())
def test_every_variant_counts_rows_of_set_bits(name):
    """Every input sign -1 against every weight +1: each step's ``a ^ w`` has all its bits set,
    so the byte counters of every tap loop fill to the most they hold before they are widened
    (31 steps of 8, 31 fours of 8); one step more per widening would wrap them."""
    variant = K.VARIANTS[name]
    for i, (n, h, w, cin, cout, k, stride, groups) in enumerate(VARIANT_LAYERS):
        _check_acc(n, h, w, cin, cout, k, stride, groups, i, variant, 1, opposite=True)


def test_a_variant_the_cpu_cannot_run_is_refused():
    """Forcing a variant names the CPU and what it can run, never compiles code it would stop
    on; an unknown name lists the variants."""
    from s2bnn_plugin.kernels.variants import UnsupportedVariant, select, target

    tgt = target()
    missing = [v for v in K.VARIANTS.values() if v.requires and v.requires not in tgt.isa]
    for v in missing:
        with pytest.raises(UnsupportedVariant, match=f"needs {v.requires}.*{tgt.cpu}"):
            select(v.name)
    assert select("portable").name == "portable"
    with pytest.raises(UnsupportedVariant, match="no kernel variant 'avx3'.*portable"):
        select("avx3")


def test_the_environment_variable_forces_a_variant(monkeypatch):
    from s2bnn_plugin.kernels.variants import ENV, best, select

    monkeypatch.setenv(ENV, "portable")
    assert select().name == "portable"
    monkeypatch.delenv(ENV)
    assert select() == best()


@given(
    n=st.integers(1, 2),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    cin=st.sampled_from([1, 3]),
    cout=st.sampled_from([5, 16]),
    k=st.sampled_from([1, 3, 7]),
    stride=st.integers(1, 2),
    seed=st.integers(0, 2**16),
)
# rows wide enough for the stem's 4-position blocks, with 32 + 8 output channels
@example(n=1, h=3, w=21, cin=3, cout=40, k=3, stride=1, seed=1)
@example(n=2, h=4, w=40, cin=3, cout=32, k=3, stride=2, seed=2)
@example(n=1, h=9, w=30, cin=1, cout=16, k=7, stride=2, seed=3)
@FAST
def test_float_glue_matches_reference(n, h, w, cin, cout, k, stride, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, cin, h, w)).astype(np.float32)
    wt = rng.standard_normal((cin, k, k, cout)).astype(np.float32)
    aff = rng.standard_normal((2, cout)).astype(np.float32)
    pad = k // 2
    expected = ref.conv_nchw_bn(x, wt, stride, pad, aff)
    got = np.zeros(expected.size, np.float32)
    K.conv_nchw_bn(x, wt, stride, pad, aff, got)
    np.testing.assert_array_equal(got.reshape(expected.shape), expected)

    m = expected
    pooled = ref.maxpool3x3s2(m)
    got = np.zeros(pooled.size, np.float32)
    K.maxpool3x3s2(m.ravel(), *m.shape, got)
    np.testing.assert_array_equal(got.reshape(pooled.shape), pooled)

    pw = rng.standard_normal((cout, 6)).astype(np.float32)
    for pool in (False, True):
        expected = ref.projection_shortcut(m, pool, pw, aff[:, :1].repeat(6, 1))
        got = np.zeros(expected.size, np.float32)
        K.projection_shortcut(m.ravel(), *m.shape, pool, pw, aff[:, :1].repeat(6, 1), got)
        np.testing.assert_array_equal(got.reshape(expected.shape), expected)

    feats = np.zeros((m.shape[0], m.shape[3]), np.float32)
    K.global_avgpool(m.ravel(), m.shape[0], m.shape[1] * m.shape[2], m.shape[3], feats)
    np.testing.assert_array_equal(feats, ref.global_avgpool(m))


def test_the_default_variant_uses_its_instructions():
    """The micro-kernel this CPU runs by default is built from its instruction set's popcount:
    ``vpopcntq`` / ``vpopcntd`` on zmm with VPOPCNTDQ, byte lookups (``vpshufb``) on zmm with
    AVX-512BW and on ymm with AVX2 -- not the emulation LLVM would substitute; and its popcounts
    become floats a vector at a time, not lane by lane."""
    from s2bnn_plugin.kernels.assembly import popcount_report

    report = popcount_report()
    assert report["variant"] == V.name, report
    assert report["vcvtsi2ss"] == 0, report
    if V.name == "avx512_vpopcntdq":
        assert report["vpopcntq_zmm"] >= 16, report  # 4 positions x 4 vectors of 8 x 64 bits
        assert report["vpopcntd_zmm"] >= 16, report  # narrow: 8 positions x 2 of 16 x 32
        assert report["popcnt_scalar"] == 0, report
    elif V.name == "avx512bw":
        assert report["vpshufb_zmm"] > 0 and report["vpopcntq"] == 0, report
    elif V.name == "avx2":
        assert report["vpshufb"] > 0 and report["vpshufb_zmm"] == 0, report
        assert report["vpsadbw"] > 0 and report["popcnt_scalar"] == 0, report


@pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64"),
    reason="NUMBA_CPU_NAME=generic here means any x86-64 CPU (on other CPUs it adds nothing)",
)
def test_portable_build_without_avx512():
    """``NUMBA_CPU_NAME=generic`` (any x86-64) compiles the portable variant and gives the same
    accumulations."""
    code = textwrap.dedent(
        """
        import numpy as np
        from s2bnn_plugin import kernels as K
        from s2bnn_plugin.kernels.assembly import popcount_report
        rng = np.random.default_rng(0)
        n, h, w, cin, cout, k, s = 2, 5, 7, 70, 33, 3, 2
        x = rng.standard_normal((n, h, w, cin)).astype(np.float32)
        bits = np.zeros(n * (h + 2) * (w + 2) * 2, np.uint64)
        K.pack_signs(x.ravel(), n, h, w, cin, np.zeros((1, cin), np.float32), 1, bits)
        neg = (rng.random((cout, cin, k, k)) < 0.5).astype(np.uint8)
        wt = K.pack_weights(neg, 1)
        wsum = K.tap_sums(wt, 2, 9, 2, cin)
        out = np.zeros((n, 3, 4, cout), np.int32)
        shape = K.ConvShape(n, h, w, cin, k, s, 1, cout)
        K.binary_conv_acc(bits, shape, K.binary_weights(wt, cin, k, 1, cout), 1, out)
        np.save("out.npy", out)
        np.save("x.npy", x)
        np.save("neg.npy", neg)
        # the narrow (32-bit lane) path: 20 input channels, stride 1
        xn = x[..., :20].copy()
        bn = np.zeros(n * (h + 2) * (w + 2), np.uint64)
        K.pack_signs(xn.ravel(), n, h, w, 20, np.zeros((1, 20), np.float32), 1, bn)
        wn = K.pack_weights(np.ascontiguousarray(neg[:, :20]), 1)
        sn = K.tap_sums(wn, 2, 9, 1, 20)
        outn = np.zeros((n, h, w, cout), np.int32)
        shape = K.ConvShape(n, h, w, 20, k, 1, 1, cout)
        K.binary_conv_acc(bn, shape, K.binary_weights(wn, 20, k, 1, cout), 1, outn)
        np.save("out_narrow.npy", outn)
        print(popcount_report())
        """
    )
    env = dict(os.environ, NUMBA_CPU_NAME="generic")
    tmp = os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "generic")
    os.makedirs(tmp, exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "'cpu': 'generic'" in done.stdout and "'vpopcntq': 0" in done.stdout, done.stdout
    assert "'variant': 'portable'" in done.stdout and "'vpshufb': 0" in done.stdout, done.stdout
    assert "'vpopcntd_zmm': 0" in done.stdout, done.stdout
    out = np.load(os.path.join(tmp, "out.npy"))
    x = np.load(os.path.join(tmp, "x.npy"))[None]
    neg = np.load(os.path.join(tmp, "neg.npy"))
    weight = np.where(neg, -1.0, 1.0).astype(np.float32)
    expected = _reference_acc(x, np.zeros((1, 70), np.float32), weight, 3, 2)
    np.testing.assert_array_equal(out, expected)
    narrow = np.load(os.path.join(tmp, "out_narrow.npy"))
    expected = _reference_acc(x[..., :20], np.zeros((1, 20), np.float32), weight[:, :20], 3, 1)
    np.testing.assert_array_equal(narrow, expected)


NATIVE_BUILDS = [
    ("haswell", "avx2"),
    ("skylake-avx512", "avx512bw"),
    ("icelake-server", "avx512_vpopcntdq"),
]


@pytest.mark.parametrize(("cpu", "name"), NATIVE_BUILDS)
def test_native_builds_of_other_variants(cpu, name, tmp_path):
    """A variant below this CPU's best, built for its own instruction set (``NUMBA_CPU_NAME`` with
    the CPU's default features, e.g. AVX2 on an AVX-512 machine), is the one the kernels pick
    there and gives the same integers as the numpy convolution on the variant layers."""
    from s2bnn_plugin.kernels.variants import target

    variant = K.VARIANTS[name]
    if variant.requires not in target().isa:
        pytest.skip(f"this CPU cannot execute {name} code ({target().cpu})")
    if name == V.name:
        pytest.skip(f"{name} is this CPU's own build, tested by every other test here")
    code = f"""
        import sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from s2bnn_plugin import kernels as K
        import test_kernels as T
        assert K.select_variant().name == {name!r}, K.select_variant()
        for i, layer in enumerate(T.VARIANT_LAYERS):
            T._check_acc(*layer, i, K.select_variant(), blocks_per_job=1)
        T._check_fused_unit(*T.VARIANT_UNITS[0], 0, K.select_variant())
        print("exact")
        """
    env = dict(os.environ, NUMBA_CPU_NAME=cpu, NUMBA_CPU_FEATURES="")
    assert _run(code, env, tmp_path).split() == ["exact"]


def test_a_job_scratch_holds_at_most_its_table_of_positions():
    """The epilogues and tap loops index a job's scratch without bounds checks: it is made only
    for 1 to MAX_POSITIONS positions a block, with room for a call's 16 result vectors."""
    from s2bnn_plugin.kernels.table import MAX_POSITIONS, RESULT_WORDS, RESULTS, block_scratch

    assert block_scratch(MAX_POSITIONS).size == RESULTS + RESULT_WORDS
    assert RESULTS == 9 * MAX_POSITIONS  # ROW slots for every position, then the results
    for bad in (0, MAX_POSITIONS + 1):
        with pytest.raises(ValueError, match="1 to 8 output positions"):
            block_scratch(bad)


def test_kernels_refuse_buffers_of_the_wrong_size():
    """The loops have no bounds checks; every public kernel checks its buffers first."""
    bits = np.zeros(2 * 7 * 7, np.uint64)
    stored = K.pack_weights(np.zeros((32, 64, 3, 3), np.uint8), 1)
    wsum = K.tap_sums(stored, 1, 9, 1, 64)
    wt = K.kernel_weights(stored, 64, 3, V)
    out = np.zeros((2, 5, 5, 32), np.int32)
    K.binary_conv_acc(
        bits, K.ConvShape(2, 5, 5, 64, 3, 1, 1, 32), K.BinaryWeights(wt, wsum, V), 1, out
    )  # fits
    with pytest.raises(ValueError, match="packed input"):
        K.binary_conv_acc(
            bits, K.ConvShape(3, 5, 5, 64, 3, 1, 1, 32), K.BinaryWeights(wt, wsum, V), 1, out
        )
    with pytest.raises(ValueError, match="packed weights"):
        K.binary_conv_acc(
            bits, K.ConvShape(2, 5, 5, 64, 3, 1, 1, 32), K.BinaryWeights(wt[:-1], wsum, V), 1, out
        )
    if V.wide == "nibbles":  # the stored layout, not split into nibbles: half the words
        with pytest.raises(ValueError, match="packed weights"):
            K.binary_conv_acc(
                bits, K.ConvShape(2, 5, 5, 64, 3, 1, 1, 32), K.BinaryWeights(stored, wsum, V), 1,
                out,
            )  # fmt: skip
    with pytest.raises(ValueError, match="out"):
        K.binary_conv_acc(
            bits, K.ConvShape(2, 5, 5, 64, 3, 1, 1, 32), K.BinaryWeights(wt, wsum, V), 1, out[:1]
        )
    prm = np.zeros((6, 32), np.float32)
    res = np.zeros(2 * 5 * 5 * 32, np.float32)
    z = np.zeros(2 * 5 * 5 * 32, np.float32)
    thr = np.zeros((1, 32), np.float32)
    obits = np.zeros(2 * 7 * 7, np.uint64)
    shape = K.ConvShape(2, 5, 5, 64, 3, 1, 1, 32)
    weights = K.BinaryWeights(wt, wsum, V)
    unit = K.FusedOutput(prm, res, False, z, thr, 1, obits, False)
    K.binary_conv_fused(bits, shape, weights, unit, 1)  # fits
    with pytest.raises(ValueError, match="residual"):
        K.binary_conv_fused(bits, shape, weights, unit._replace(res=res[:-1]), 1)
    with pytest.raises(ValueError, match="packed output"):
        K.binary_conv_fused(bits, shape, weights, unit._replace(obits=obits[:-1]), 1)
    with pytest.raises(ValueError, match="pool_out needs"):  # 5 x 5: odd, no whole windows
        pooled = unit._replace(z=z[: 2 * 2 * 2 * 32], pool_out=True)
        K.binary_conv_fused(bits, shape, weights, pooled, 1)
    with pytest.raises(ValueError, match="wrong size"):
        K.pack_signs(z, 2, 5, 5, 31, thr, 0, obits)


def test_narrow_layers_need_the_32_bit_weight_layout():
    """At most 32 input channels: the kernels read kernel_weights' layout, and say so."""
    wt = K.pack_weights(np.ones((32, 32, 3, 3), np.uint8), 1)
    wide = K.pack_weights(np.ones((32, 64, 3, 3), np.uint8), 1)
    np.testing.assert_array_equal(K.kernel_weights(wide, 64, 3, VPOPCNT), wide)  # unchanged
    narrow = K.kernel_weights(wt, 32, 3, V)
    assert narrow.dtype == np.uint64 and narrow.size * 2 == wt.size
    np.testing.assert_array_equal(narrow.view(np.uint32), wt.astype(np.uint32))
    bits = np.zeros(7 * 7, np.uint64)
    wsum = K.tap_sums(wt, 1, 9, 1, 32)
    out = np.zeros((1, 5, 5, 32), np.int32)
    with pytest.raises(ValueError, match="kernel_weights"):
        K.binary_conv_acc(
            bits, K.ConvShape(1, 5, 5, 32, 3, 1, 1, 32), K.BinaryWeights(wt, wsum, V), 1, out
        )
    K.binary_conv_acc(
        bits, K.ConvShape(1, 5, 5, 32, 3, 1, 1, 32), K.BinaryWeights(narrow, wsum, V), 1, out
    )
    assert out[0, 2, 2, 0] == -9 * 32  # all-+1 input, all--1 weights, interior position
    with pytest.raises(ValueError, match="bits above channel 32"):
        K.kernel_weights(K.pack_weights(np.ones((32, 40, 1, 1), np.uint8), 1), 32, 1, V)


def _run(code: str, env: dict, cwd) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_cache_compiled_from_other_kernel_sources_is_never_used(tmp_path):
    """Numba keys its cache by each function's own file; here ``tap_sums`` (bitpack.py) inlines
    ``popcount64`` (simd.py), and an edit to simd.py alone must not leave the old machine code
    running: the kernels' cache folder is keyed by a digest of all their sources."""
    from pathlib import Path

    import s2bnn_plugin.kernels as pkg
    from s2bnn_plugin.kernels.cache import cache_dir

    copy = tmp_path / "pkg" / "kcopy"
    copy.mkdir(parents=True)
    for f in Path(pkg.__file__).parent.glob("*.py"):
        (copy / f.name).write_text(f.read_text())
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"), PYTHONDONTWRITEBYTECODE="1")
    code = """
        import sys
        sys.path.insert(0, "pkg")
        import numpy as np
        import kcopy
        wt = np.zeros(32, np.uint64)
        wt[0] = 0b1011
        print(kcopy.tap_sums(wt, 1, 1, 1, 64)[0, 0])
        """
    assert _run(code, env, tmp_path).split() == ["58"]  # 64 - 2 * 3
    assert _run(code, env, tmp_path).split() == ["58"]  # from the cache
    simd = copy / "simd.py"
    old = "return builder.ctpop(args[0])"
    new = "return builder.add(builder.ctpop(args[0]), ir.Constant(_I64, 1))"
    assert old in simd.read_text()
    simd.write_text(simd.read_text().replace(old, new))  # only the inlined helper's file
    assert _run(code, env, tmp_path).split() == ["56"]  # recompiled: 64 - 2 * (3 + 1)
    folders = list((tmp_path / "numba" / "s2bnn_kernels").iterdir())  # one per version
    assert len(folders) == 2 and all(any(f.glob("*/bitpack.tap_sums*.nbi")) for f in folders)
    # what `s2bnn doctor` reports: compiled here or not, and the other version's folder
    report = """
        import sys
        sys.path.insert(0, "pkg")
        from kcopy.cache import cache_dir, compiled_in, other_versions
        print(compiled_in("bitpack.tap_sums") == cache_dir(), compiled_in("bconv.binary_gemm"))
        print(*[p.name for p in other_versions()])
        """
    here, old = _run(report, env, tmp_path).splitlines()
    assert here.split() == ["True", "None"]
    assert old.split() == [f.name for f in folders if f.name != cache_dir(copy).parent.name]


def test_machine_code_compiled_for_another_cpu_is_never_loaded(tmp_path):
    """One cache folder shared by two machines (here: two compile targets, the portable one and
    this CPU): each compiles and keeps its own machine code in a folder named for its CPU and
    features, and code of the other target, even copied into its folder, is not loaded
    (Numba's index keys each entry by the target too)."""
    import shutil

    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"), PYTHONDONTWRITEBYTECODE="1")
    portable = dict(env, NUMBA_CPU_NAME="generic", NUMBA_CPU_FEATURES="")
    code = """
        import numpy as np
        from s2bnn_plugin import kernels as K
        from s2bnn_plugin.kernels.cache import cache_dir
        wt = np.zeros(32, np.uint64)
        wt[0] = 0b1011
        print(K.tap_sums(wt, 1, 1, 1, 64)[0, 0], sum(K.tap_sums.stats.cache_hits.values()),
              cache_dir())
        """
    first = _run(code, portable, tmp_path).split()
    assert first[:2] == ["58", "0"]  # compiled
    assert _run(code, portable, tmp_path).split()[:2] == ["58", "1"]  # loaded from its folder
    here = _run(code, env, tmp_path).split()
    assert here[:2] == ["58", "0"]  # this CPU compiles its own: not the portable code
    assert here[2] != first[2] and Path(here[2]).parent == Path(first[2]).parent
    # the portable target's files copied over this CPU's: still not loaded here
    for f in Path(first[2]).glob("bitpack.tap_sums*"):
        shutil.copy2(f, Path(here[2]) / f.name)
    assert _run(code, env, tmp_path).split()[:2] == ["58", "0"]


def test_importing_the_kernels_writes_nothing_in_the_package(tmp_path):
    """No stamp, no deleted cache files: the package folder is the same after a process imported
    the kernels and compiled (and cached) one, with ``NUMBA_CACHE_DIR`` set (the cache goes in a
    digest folder under it) and unset (under the user's cache folder)."""
    from pathlib import Path

    import s2bnn_plugin.kernels as pkg
    from s2bnn_plugin.kernels.cache import SUBDIR, source_digest
    from s2bnn_plugin.kernels.variants import target_key

    here = Path(pkg.__file__).parent

    def snapshot():
        return {
            str(p.relative_to(here)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in here.rglob("*")
        }

    before = snapshot()
    code = """
        import numpy as np
        import s2bnn_plugin.kernels as K
        from s2bnn_plugin.kernels.cache import cache_dir
        print(K.tap_sums(np.zeros(32, np.uint64), 1, 1, 1, 5)[0, 0], cache_dir())
        """
    base = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    base.pop("NUMBA_CACHE_DIR", None)
    folder = Path(SUBDIR) / source_digest(here)[:32] / target_key()
    for env, root in [
        (dict(base, NUMBA_CACHE_DIR=str(tmp_path / "custom")), tmp_path / "custom"),
        (dict(base, XDG_CACHE_HOME=str(tmp_path / "xdg")), tmp_path / "xdg" / "numba"),
    ]:
        assert _run(code, env, tmp_path).split() == ["5", str(root / folder)]
        assert any((root / folder).glob("bitpack.tap_sums*.nbc"))
    assert snapshot() == before
