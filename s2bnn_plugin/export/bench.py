"""Speed of the packed network against PyTorch fp32, measured as ratios in one process.

Both sides get the same input and the same thread count (``torch.set_num_threads`` and
``numba.set_num_threads``); timings alternate between the two and keep the best of several runs,
which filters out other processes on a shared machine. Used by ``s2bnn bench``, ``s2bnn check``
and ``benchmarks/bench_kernels.py``. Timings are never asserted by the tests.
"""

from __future__ import annotations

import io
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from s2bnn_plugin.export.network import PackedNetwork

__all__ = [
    "LayerTiming",
    "Timing",
    "best_times",
    "compare",
    "end_to_end",
    "file_sizes",
    "layer_table",
    "layer_timings",
    "markdown_table",
    "prebinarised",
    "set_threads",
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


def prebinarised(model: nn.Module) -> nn.Module:
    """A copy whose binary convolutions hold ``sign(w) * mean|w|`` as plain weights.

    The training model re-binarises every weight on each forward (cheap next to a training
    step, but a large share of a batch-1 inference); this copy computes the same features with
    that work done once -- the fairer float baseline for inference speed.
    """
    import copy

    from s2bnn_plugin.nn import QuantConv2d

    twin = copy.deepcopy(model).eval()
    with torch.no_grad():
        for m in twin.modules():
            if isinstance(m, QuantConv2d) and m.kernel_quantizer is not None:
                m.weight.copy_(m.quantized_weight())
                m.kernel_quantizer = None
    return twin


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
    from s2bnn_plugin.kernels import binary_conv_acc, out_size

    set_threads(threads)
    x = np.random.default_rng(seed).standard_normal((1, net.in_channels, size, size))
    calls, _ = net.kernel_calls(x.astype(np.float32))
    for call in calls:  # fill every buffer with the real activations
        call.fn(*call.args)
    rows, seen = [], set()
    for call in calls:
        if call.unit is None:
            continue
        u = net.spec["units"][call.unit]
        a = call.args
        n, h, w = a[1], a[2], a[3]
        cout = u["groups"] * u["group_channels"]
        key = (u["kernel"], u["stride"], u["in_channels"], cout, h, w)
        if key in seen:
            continue
        seen.add(key)
        k, s = u["kernel"], u["stride"]
        res = a[12] if u["residual"] != "projection" else None
        if res is not None and res.size == n * h * w * u["in_channels"]:
            xin = torch.from_numpy(res.reshape(n, h, w, -1).copy()).permute(0, 3, 1, 2)
        else:
            xin = torch.randn(n, u["in_channels"], h, w)
        xin = xin.contiguous()
        xcl = xin.contiguous(memory_format=torch.channels_last)
        weight = torch.randn(cout, u["in_channels"], k, k)
        wcl = weight.contiguous(memory_format=torch.channels_last)
        ho, wo = out_size(h, k, s), out_size(w, k, s)
        acc = np.empty((n, ho, wo, cout), np.int32)
        conv_args = (*a[:11], a[-1], acc)  # bits .. group_channels, chunk, out
        t_nchw, t_cl, t_conv, t_unit = best_times(
            [
                partial(F.conv2d, xin, weight, None, s, k // 2),
                partial(F.conv2d, xcl, wcl, None, s, k // 2),
                partial(binary_conv_acc, *conv_args),
                partial(call.fn, *call.args),
            ],
            repeats,
        )
        macs = n * ho * wo * cout * u["in_channels"] * k * k
        rows.append(
            LayerTiming(
                call.name,
                k,
                s,
                u["in_channels"],
                cout,
                h,
                macs,
                threads,
                t_nchw,
                t_cl,
                t_conv,
                t_unit,
            )  # fmt: skip
        )
    return rows


def layer_table(rows: Sequence[LayerTiming]) -> str:
    """The per-layer markdown table of ``s2bnn bench --layers`` and the benchmark script."""
    headers = [
        "layer",
        "input px",
        "threads",
        "conv2d fp32 ms",
        "conv2d channels-last ms",
        "binary conv ms",
        "binary GMAC/s",
        "speedup",
        "speedup vs channels-last",
        "fused unit ms",
        "fused unit vs conv2d",
    ]
    cells = [
        [
            f"{r.kernel}x{r.kernel}/{r.stride} {r.in_channels}->{r.out_channels}",
            r.size,
            r.threads,
            f"{r.torch_s * 1e3:.3f}",
            f"{r.torch_cl_s * 1e3:.3f}",
            f"{r.conv_s * 1e3:.3f}",
            f"{r.macs / r.conv_s / 1e9:.0f}",
            f"{r.speedup:.1f}x",
            f"{r.speedup_cl:.1f}x",
            f"{r.packed_s * 1e3:.3f}",
            f"{r.unit_speedup:.1f}x",
        ]
        for r in rows
    ]
    return markdown_table(headers, cells)


def file_sizes(net: PackedNetwork, model: nn.Module) -> tuple[int, int]:
    """Bytes of the packed file and of the model's fp32 state dict saved with ``torch.save``."""
    with tempfile.TemporaryDirectory() as tmp:
        packed = net.save(Path(tmp) / "net.s2bnn").stat().st_size
    buf = io.BytesIO()
    torch.save({k: v.float() for k, v in model.state_dict().items()}, buf)
    return packed, buf.getbuffer().nbytes


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table: first column left-aligned, the others (numbers) right-aligned."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        parts = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        return "| " + " | ".join(parts) + " |"

    rule = "|:" + "-" * (widths[0] + 1) + "|" + "|".join("-" * (w + 1) + ":" for w in widths[1:])
    return "\n".join([line(cells[0]), rule + "|", *(line(r) for r in cells[1:])])
