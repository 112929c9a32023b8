"""Where the packed network's time goes: every compiled call timed inside the full sequence,
each binary unit beside its binary convolution alone (the difference is the float epilogue), and
end to end against the sum of the binary convolutions (``benchmarks/bench_kernels.py``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from s2bnn_plugin.bench.timing import best_times, set_threads
from s2bnn_plugin.runtime import PackedNetwork
from s2bnn_plugin.runtime.calls import KernelCall

__all__ = ["Profile", "Stage", "profile", "unit_epilogues"]


@dataclass
class Stage:
    """One compiled call of the packed forward pass, timed inside the full sequence (batch of
    one pass): ``total_s``; for a binary unit also its binary convolution alone (``conv_s``,
    :func:`binary_conv_acc` on the same input) -- the rest, ``total_s - conv_s``, is the float
    epilogue (scale, BatchNorm, residual, RPReLU, the next layer's signs)."""

    name: str
    total_s: float
    conv_s: float | None = None
    px: int | None = None  # a binary unit's input size

    @property
    def epilogue_s(self) -> float | None:
        return None if self.conv_s is None else self.total_s - self.conv_s


@dataclass
class Profile:
    """Where the end-to-end time goes: every stage, the sum of the binary convolutions alone over
    the same layers, the network's own time (``net(x)``) and what lies outside the compiled calls
    (``glue_s``: input checks, building the call list, dispatch)."""

    batch: int
    threads: int
    stages: list[Stage]
    end_to_end_s: float
    convs_s: float  # the binary convolutions alone, run in sequence over the same layers
    calls_s: float  # the network's compiled calls run in sequence, no Python layer around them

    @property
    def glue_s(self) -> float:
        """``net(x)`` minus its compiled calls run back to back: input checks, the call list,
        dispatch."""
        return self.end_to_end_s - self.calls_s

    @property
    def ratio(self) -> float:
        """End to end over the binary convolutions alone (1.0: nothing but binary arithmetic)."""
        return self.end_to_end_s / self.convs_s


def _spare_maps(net: PackedNetwork, size: int, images: int) -> list[np.ndarray]:
    """The two int32 buffers that :func:`_conv_args` writes in turn: each holds the largest map
    of ``images`` images at ``size`` px."""
    largest = max(hh * ww * c for hh, ww, c in net.shapes(size, size))
    return [np.empty(images * largest, np.int32) for _ in range(2)]


def _conv_args(calls: Sequence[KernelCall], spare: list[np.ndarray]) -> list[tuple]:
    """:func:`binary_conv_acc` arguments for each binary unit among ``calls``, writing their
    int32 accumulations to two shared buffers in turn (as the network does with its maps)."""
    out = []
    for call in calls:
        if call.binary is None:
            continue
        buf = spare[len(out) % 2]
        out.append(call.binary.conv_args(buf[: math.prod(call.binary.out_shape)]))
    return out


def profile(
    net: PackedNetwork, size: int, batch: int, threads: int, repeats: int = 5, seed: int = 0
) -> Profile:
    """Per-stage profile of ``net`` on a random batch, and end to end against the sum of its
    binary convolutions alone (:func:`binary_conv_acc` over the same layers and the same passes
    of images as the network runs), all in one process.

    Every round runs, in turn: the network (``net(x)``); the binary convolutions alone in
    sequence; the network's compiled calls in sequence; the same calls one by one (timed each,
    the first pass's), each binary unit followed by its convolution alone on the same input.
    Best of ``repeats`` rounds for each figure: a stage's best alone is a little lower than its
    share of the best sequence, so the stages sum to a little less than ``calls_s``.
    """
    from s2bnn_plugin.kernels import binary_conv_acc, bind

    set_threads(threads)
    x = np.random.default_rng(seed).standard_normal((batch, net.in_channels, size, size))
    x = x.astype(np.float32)
    per_pass = net.images_per_pass(size, size)
    spare = _spare_maps(net, size, min(per_pass, batch))
    # the compiled calls of every pass the network runs (at most two shapes: full, last)
    # every call bound to its arguments, as the network runs it (no per-call type resolution)
    plans = []
    for start in range(0, batch, per_pass):
        calls, _ = net.kernel_calls(x[start : start + per_pass])
        conv_runs = [bind(binary_conv_acc, *args) for args in _conv_args(calls, spare)]
        plans.append((calls, [c.bound() for c in calls], conv_runs))
    first_calls, first_runs, first_convs = plans[0]

    def convs() -> None:
        for _, _, plan in plans:
            for conv in plan:
                conv()

    def calls() -> None:
        for _, plan, _ in plans:
            for call in plan:
                call()

    net(x)
    convs()
    best_net = best_convs = best_calls = float("inf")
    stage_t = [float("inf")] * len(first_calls)
    conv_t = [float("inf")] * len(first_convs)
    for _ in range(repeats):
        t = time.perf_counter()
        net(x)
        best_net = min(best_net, time.perf_counter() - t)
        t = time.perf_counter()
        convs()
        best_convs = min(best_convs, time.perf_counter() - t)
        t = time.perf_counter()
        calls()
        best_calls = min(best_calls, time.perf_counter() - t)
        j = 0
        for i, (call, run) in enumerate(zip(first_calls, first_runs)):
            t = time.perf_counter()
            run()
            stage_t[i] = min(stage_t[i], time.perf_counter() - t)
            if call.binary is not None:
                t = time.perf_counter()
                first_convs[j]()
                conv_t[j] = min(conv_t[j], time.perf_counter() - t)
                j += 1
    scale = batch / min(per_pass, batch)  # stages: the first pass's, times the passes
    stages, j = [], 0
    for call, t in zip(first_calls, stage_t):
        conv = px = None
        if call.binary is not None:
            conv = conv_t[j] * scale
            px = call.binary.shape.h
            j += 1
        stages.append(Stage(call.name, t * scale, conv, px))
    return Profile(batch, threads, stages, best_net, best_convs, best_calls)


def unit_epilogues(
    net: PackedNetwork, size: int, repeats: int = 30, burst: int = 3, seed: int = 0
) -> list[tuple[str, float, float]]:
    """``(name, fused unit s, binary convolution alone s)`` of every binary unit of ``net`` at
    ``size`` px, batch 1, on the current thread count: each unit timed on its own, on the input
    it really gets, by :func:`best_times` against its :func:`binary_conv_acc` (``repeats``
    rounds of ``burst`` calls). Why: the per-stage profile times each call once per round inside
    the sequence; a change to the epilogue of a few percent needs the steadier figure."""
    from s2bnn_plugin.kernels import binary_conv_acc, bind

    x = np.random.default_rng(seed).standard_normal((1, net.in_channels, size, size))
    calls, _ = net.kernel_calls(x.astype(np.float32))
    conv_args = iter(_conv_args(calls, _spare_maps(net, size, 1)))
    rows = []
    for call in calls:
        run = call.bound()
        if call.binary is not None:  # the inputs as the calls before leave them
            conv = bind(binary_conv_acc, *next(conv_args))
            t_unit, t_conv = best_times([run, conv], repeats, burst)
            rows.append((call.name, t_unit, t_conv))
        run()
    return rows
