"""Timing the packed network against PyTorch fp32: ratios measured in one process.

Both sides get the same input and the same thread count (:func:`set_threads`); timings
alternate between the callables and keep the best of several runs, which filters out other
processes on a shared machine. Timings are never asserted by the tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from s2bnn_plugin.runtime import PackedNetwork
from s2bnn_plugin.runtime.units.binary_conv import Residual

__all__ = [
    "LayerTiming",
    "Scaling",
    "Timing",
    "VariantRates",
    "best_times",
    "comparison_bytes",
    "compare",
    "end_to_end",
    "layer_timings",
    "set_threads",
    "thread_scaling",
    "variant_rates",
]


def set_threads(threads: int) -> None:
    """The same number of threads for PyTorch and Numba."""
    import numba

    torch.set_num_threads(threads)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))


def compare(
    reference: Callable[[], object], packed: Callable[[], object], repeats: int = 5
) -> tuple[float, float]:
    """Best-of-``repeats`` seconds of two callables, measured alternately after a warm-up."""
    best_ref, best_packed = best_times([reference, packed], repeats, burst=1)
    return best_ref, best_packed


def best_times(
    fns: Sequence[Callable[[], object]], repeats: int = 5, burst: int = 3
) -> list[float]:
    """Best seconds per call of each callable: ``repeats`` rounds, each running every callable
    ``burst`` times in a row (``burst > 1``: each is timed with its own data warm in cache, as a
    layer in a network or a repeated micro-benchmark sees it; the rounds alternate, so a slow
    spell of a shared machine hits every callable alike)."""
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            for _ in range(burst):
                t = time.perf_counter()
                fn()
                best[i] = min(best[i], time.perf_counter() - t)
    return best


@dataclass
class Timing:
    """End-to-end seconds per batch."""

    batch: int
    threads: int
    torch_s: float
    packed_s: float

    @property
    def speedup(self) -> float:
        return self.torch_s / self.packed_s


@dataclass
class LayerTiming:
    """One binary unit, batch 1: the binary convolution alone and the whole fused unit, against
    ``F.conv2d`` fp32 of the same shape (NCHW, PyTorch's default, and channels-last)."""

    name: str
    kernel: int
    stride: int
    in_channels: int
    out_channels: int
    size: int
    macs: int
    threads: int
    torch_s: float  # F.conv2d fp32, NCHW
    torch_cl_s: float  # F.conv2d fp32, channels-last
    conv_s: float  # packed binary convolution alone: exact int32 accumulations, NHWC
    packed_s: float  # packed fused unit: conv, scale, BN, residual, RPReLU, next layer's signs
    pooled_output: bool = False  # the fused unit writes only its map's 2x2 average

    @property
    def speedup(self) -> float:
        """Binary convolution vs ``F.conv2d`` NCHW: the per-layer figure."""
        return self.torch_s / self.conv_s

    @property
    def speedup_cl(self) -> float:
        """Binary convolution vs the faster channels-last ``F.conv2d``."""
        return self.torch_cl_s / self.conv_s

    @property
    def unit_speedup(self) -> float:
        """Whole fused unit vs ``F.conv2d`` NCHW alone (the float side does less work)."""
        return self.torch_s / self.packed_s


def comparison_bytes(net: PackedNetwork, size: int, batch: int) -> int:
    """What running the float model and the packed network on the same random batch takes
    (:func:`end_to_end`, and ``s2bnn check``'s agreement): the input, the float model's forward
    (estimated from the packed network's maps) and the packed engine's buffers."""
    model = net.model
    batch_input = 4 * batch * model.in_channels * size * size
    float_forward = model.float_forward_bytes(batch, size, size)
    return batch_input + float_forward + net.memory_needed(batch, size, size)


def end_to_end(
    model: nn.Module,
    net: PackedNetwork,
    size: int,
    batch: int,
    threads: int,
    repeats: int = 5,
    seed: int = 0,
) -> Timing:
    """Features of the same random batch: the float model in eval vs the packed network."""
    set_threads(threads)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, net.in_channels, size, size, generator=gen)
    xn = x.numpy()
    model.eval()

    def reference() -> None:
        with torch.no_grad():
            model(x)

    t_ref, t_packed = compare(reference, lambda: net(xn), repeats)
    return Timing(batch, threads, t_ref, t_packed)


def layer_timings(
    net: PackedNetwork, size: int, threads: int, repeats: int = 5, seed: int = 0
) -> list[LayerTiming]:
    """Each distinct binary unit of ``net`` at ``size`` px, batch 1, on the input it really gets.

    Four callables per unit, timed by :func:`best_times` (bursts of 3, warm caches): PyTorch's
    ``F.conv2d`` fp32 in NCHW and in channels-last; the packed binary convolution alone
    (:func:`binary_conv_acc`: exact int32 accumulations, NHWC, the same micro-kernel and driver
    as the fused unit); the fused unit as the network runs it.
    """
    from s2bnn_plugin.kernels import binary_conv_acc, bind

    set_threads(threads)
    x = np.random.default_rng(seed).standard_normal((1, net.in_channels, size, size))
    calls, _ = net.kernel_calls(x.astype(np.float32))
    rows, seen = [], set()
    for i, call in enumerate(calls):
        b = call.binary
        if b is None:
            continue
        unit = net.model.units[call.unit]
        n, h, w, cin, k, s = b.shape[:6]
        cout = b.out_channels
        key = (k, s, cin, cout, h, w, b.unit.pool_out)
        if key in seen:
            continue
        seen.add(key)
        for prev in calls[:i]:  # this unit's inputs as the network leaves them (maps share
            prev.fn(*prev.args)  # two buffers: later units overwrite earlier inputs)
        res = b.unit.res if unit.residual is not Residual.PROJECTION else None
        if res is not None and res.size == n * h * w * cin:
            xin = torch.from_numpy(res.reshape(n, h, w, -1).copy()).permute(0, 3, 1, 2)
        else:
            xin = torch.randn(n, cin, h, w)
        xin = xin.contiguous()
        xcl = xin.contiguous(memory_format=torch.channels_last)
        weight = torch.randn(cout, cin, k, k)
        wcl = weight.contiguous(memory_format=torch.channels_last)
        acc = np.empty(b.out_shape, np.int32)
        t_nchw, t_cl, t_conv, t_unit = best_times(
            [
                partial(F.conv2d, xin, weight, None, s, k // 2),
                partial(F.conv2d, xcl, wcl, None, s, k // 2),
                bind(binary_conv_acc, *b.conv_args(acc)),
                call.bound(),
            ],
            repeats,
        )
        _, ho, wo, _ = b.out_shape
        macs = n * ho * wo * cout * cin * k * k
        rows.append(
            LayerTiming(
                name=call.name,
                kernel=k,
                stride=s,
                in_channels=cin,
                out_channels=cout,
                size=h,
                macs=macs,
                threads=threads,
                torch_s=t_nchw,
                torch_cl_s=t_cl,
                conv_s=t_conv,
                packed_s=t_unit,
                pooled_output=b.unit.pool_out,
            )
        )
    return rows


@dataclass
class VariantRates:
    """One distinct binary layer's convolution alone (:func:`binary_conv_acc`) under each kernel
    variant: seconds per call by variant name."""

    kernel: int
    stride: int
    in_channels: int
    out_channels: int
    size: int
    macs: int
    threads: int
    seconds: dict[str, float]


def variant_rates(
    net: PackedNetwork, variants: Sequence[str], size: int, threads: int, repeats: int = 5
) -> list[VariantRates]:
    """Each distinct binary layer of ``net`` at ``size`` px, batch 1, its binary convolution
    alone under every kernel variant named (weights laid out for each, the same input), timed
    alternately by :func:`best_times` (bursts of 3)."""
    from s2bnn_plugin.kernels import VARIANTS, binary_conv_acc, binary_weights, bind

    set_threads(threads)
    x = np.random.default_rng(0).standard_normal((1, net.in_channels, size, size))
    calls, _ = net.kernel_calls(x.astype(np.float32))
    for call in calls:  # every unit's input as the network leaves it
        call.fn(*call.args)
    rows, seen = [], set()
    for call in calls:
        b = call.binary
        if b is None or tuple(b.shape) in seen:
            continue
        seen.add(tuple(b.shape))
        n, h, w, cin, k, s, groups, cg = b.shape
        stored = net.model.units[call.unit].weight
        acc = np.empty(b.out_shape, np.int32)
        fns = []
        for name in variants:
            weights = binary_weights(stored, cin, k, groups, cg, VARIANTS[name])
            fns.append(bind(binary_conv_acc, b.bits, b.shape, weights, b.blocks_per_job, acc))
        times = best_times(fns, repeats)
        _, ho, wo, cout = b.out_shape
        rows.append(
            VariantRates(
                kernel=k,
                stride=s,
                in_channels=cin,
                out_channels=cout,
                size=h,
                macs=n * ho * wo * cout * cin * k * k,
                threads=threads,
                seconds=dict(zip(variants, times)),
            )  # fmt: skip
        )
    return rows


@dataclass
class Scaling:
    """Seconds per call of ``net(x)`` at each thread count: the median of ``calls`` consecutive
    calls, best of ``rounds`` rounds (``median_s``), and the single fastest call (``best_s``):
    what a program that runs only the packed engine sees."""

    batch: int
    calls: int
    rounds: int
    median_s: dict[int, float]
    best_s: dict[int, float]


def thread_scaling(
    net: PackedNetwork,
    size: int,
    batch: int,
    threads: Sequence[int],
    calls: int,
    rounds: int = 5,
    seed: int = 0,
) -> Scaling:
    """End-to-end time per thread count, each round and count measured over ``calls``
    consecutive calls after a warm-up at that count, the counts taking turns round by round.

    Why not single calls alternating like the other figures: switching the thread count costs
    the first calls after each switch, and the float engines' OpenMP workers, still spinning
    after their own calls, take the cores of a small machine; neither happens to a program that
    just runs the packed engine. Why rounds: a slow spell of a shared host then costs one
    round, not the figure."""
    x = np.random.default_rng(seed).standard_normal((batch, net.in_channels, size, size))
    x = x.astype(np.float32)
    median = {t: float("inf") for t in threads}
    best = dict(median)
    for _ in range(rounds):
        for t in threads:
            set_threads(t)
            for _ in range(3):
                net(x)
            times = []
            for _ in range(calls):
                start = time.perf_counter()
                net(x)
                times.append(time.perf_counter() - start)
            median[t] = min(median[t], float(np.median(times)))
            best[t] = min(best[t], min(times))
    return Scaling(batch, calls, rounds, median, best)
