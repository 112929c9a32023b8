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
    "Profile",
    "Stage",
    "Timing",
    "best_times",
    "compare",
    "end_to_end",
    "file_sizes",
    "layer_table",
    "layer_timings",
    "markdown_table",
    "onnx_export",
    "onnx_session",
    "prebinarised",
    "profile",
    "profile_summary",
    "profile_table",
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
    rows, seen = [], set()
    for i, call in enumerate(calls):
        if call.unit is None:
            continue
        u = net.spec["units"][call.unit]
        a = call.args
        n, h, w = a[1], a[2], a[3]
        cout = u["groups"] * u["group_channels"]
        key = (u["kernel"], u["stride"], u["in_channels"], cout, h, w, bool(a[18]))
        if key in seen:
            continue
        seen.add(key)
        for prev in calls[:i]:  # this unit's inputs as the network leaves them (maps share
            prev.fn(*prev.args)  # two buffers: later units overwrite earlier inputs)
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
                bool(a[18]),
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
            f"{r.kernel}x{r.kernel}/{r.stride} {r.in_channels}->{r.out_channels}"
            + (" (writes the 2x2 average)" if r.pooled_output else ""),
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


@dataclass
class Stage:
    """One compiled call of the packed forward pass, timed inside the full sequence (batch of
    one chunk): ``total_s``; for a binary unit also its binary convolution alone (``conv_s``,
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
    largest = max(hh * ww * c for hh, ww, c in net._shapes(size, size))
    return [np.empty(images * largest, np.int32) for _ in range(2)]


def _conv_args(net: PackedNetwork, calls: Sequence, spare: list[np.ndarray]) -> list[tuple]:
    """:func:`binary_conv_acc` arguments for each binary unit among ``calls``, writing their
    int32 accumulations to two shared buffers in turn (as the network does with its maps)."""
    from s2bnn_plugin.kernels import out_size

    out = []
    for call in calls:
        if call.unit is None:
            continue
        u = net.spec["units"][call.unit]
        a = call.args
        n, h, w, k, s = a[1], a[2], a[3], u["kernel"], u["stride"]
        size = n * out_size(h, k, s) * out_size(w, k, s) * u["groups"] * u["group_channels"]
        buf = spare[len(out) % 2]
        out.append((*a[:11], a[-1], buf[:size]))  # bits .. group_channels, chunk, out
    return out


def profile(
    net: PackedNetwork, size: int, batch: int, threads: int, repeats: int = 5, seed: int = 0
) -> Profile:
    """Per-stage profile of ``net`` on a random batch, and end to end against the sum of its
    binary convolutions alone (:func:`binary_conv_acc` over the same layers and the same chunks
    of images as the network runs), all in one process.

    Every round runs, in turn: the network (``net(x)``); the binary convolutions alone in
    sequence; the network's compiled calls in sequence; the same calls one by one (timed each,
    the first chunk's), each binary unit followed by its convolution alone on the same input.
    Best of ``repeats`` rounds for each figure: a stage's best alone is a little lower than its
    share of the best sequence, so the stages sum to a little less than ``calls_s``.
    """
    from s2bnn_plugin.kernels import binary_conv_acc

    set_threads(threads)
    x = np.random.default_rng(seed).standard_normal((batch, net.in_channels, size, size))
    x = x.astype(np.float32)
    chunk = net._images_per_chunk(size, size)
    spare = _spare_maps(net, size, min(chunk, batch))
    # the compiled calls of every chunk the network runs (at most two shapes: full, last)
    plans = []
    for start in range(0, batch, chunk):
        calls, _ = net.kernel_calls(x[start : start + chunk])
        plans.append((calls, _conv_args(net, calls, spare)))
    first_calls, first_convs = plans[0]

    def convs() -> None:
        for _, conv_args in plans:
            for args in conv_args:
                binary_conv_acc(*args)

    def calls() -> None:
        for plan, _ in plans:
            for call in plan:
                call.fn(*call.args)

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
        for i, call in enumerate(first_calls):
            t = time.perf_counter()
            call.fn(*call.args)
            stage_t[i] = min(stage_t[i], time.perf_counter() - t)
            if call.unit is not None:
                t = time.perf_counter()
                binary_conv_acc(*first_convs[j])
                conv_t[j] = min(conv_t[j], time.perf_counter() - t)
                j += 1
    scale = batch / min(chunk, batch)  # stages: the first chunk's, times the chunks
    stages, j = [], 0
    for call, t in zip(first_calls, stage_t):
        conv = px = None
        if call.unit is not None:
            conv = conv_t[j] * scale
            px = call.args[2]
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
    from s2bnn_plugin.kernels import binary_conv_acc

    x = np.random.default_rng(seed).standard_normal((1, net.in_channels, size, size))
    calls, _ = net.kernel_calls(x.astype(np.float32))
    conv_args = iter(_conv_args(net, calls, _spare_maps(net, size, 1)))
    rows = []
    for call in calls:
        if call.unit is not None:  # the inputs as the calls before leave them
            args = next(conv_args)
            t_unit, t_conv = best_times(
                [partial(call.fn, *call.args), partial(binary_conv_acc, *args)], repeats, burst
            )
            rows.append((call.name, t_unit, t_conv))
        call.fn(*call.args)
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


def epilogue_table(rows: Sequence[tuple[str, float, float]]) -> str:
    """The markdown table of :func:`unit_epilogues`: each unit, its binary convolution alone and
    the difference (its epilogue), then all units summed."""
    cells = [[n, f"{u * 1e3:.3f}", f"{c * 1e3:.3f}", f"{(u - c) * 1e3:.3f}"] for n, u, c in rows]
    unit, conv = sum(r[1] for r in rows), sum(r[2] for r in rows)
    total = f"**{(unit - conv) * 1e3:.3f}**"
    cells.append(["**all units**", f"{unit * 1e3:.3f}", f"{conv * 1e3:.3f}", total])
    headers = ["unit", "fused unit ms", "binary conv alone ms", "epilogue ms"]
    return markdown_table(headers, cells)


def profile_table(p: Profile) -> str:
    """The per-stage markdown table of a :class:`Profile`."""
    e2e = p.end_to_end_s
    rows = []
    for s in p.stages:
        conv = "" if s.conv_s is None else f"{s.conv_s * 1e3:.3f}"
        epi = "" if s.epilogue_s is None else f"{s.epilogue_s * 1e3:.3f}"
        rows.append([s.name, f"{s.total_s * 1e3:.3f}", conv, epi, f"{s.total_s / e2e:.1%}"])
    conv_total = sum(s.conv_s for s in p.stages if s.conv_s is not None)
    epi_total = sum(s.epilogue_s for s in p.stages if s.epilogue_s is not None)
    staged = sum(s.total_s for s in p.stages)
    rows += [
        [
            "stages, summed",
            f"{staged * 1e3:.3f}",
            f"{conv_total * 1e3:.3f}",
            f"{epi_total * 1e3:.3f}",
            f"{staged / e2e:.1%}",
        ],
        ["compiled calls in sequence", f"{p.calls_s * 1e3:.3f}", "", "", f"{p.calls_s / e2e:.1%}"],
        ["outside the compiled calls", f"{p.glue_s * 1e3:.3f}", "", "", f"{p.glue_s / e2e:.1%}"],
        ["**end to end**", f"**{e2e * 1e3:.3f}**", "", "", "100%"],
    ]
    headers = ["stage", "ms", "binary conv alone ms", "epilogue ms", "share"]
    return markdown_table(headers, rows)


def profile_summary(p: Profile) -> str:
    """:func:`profile_table` with the binary units summed by input size."""
    rows, groups = [], {}
    for s in p.stages:
        if s.px is None:
            rows.append([s.name, s.total_s, None, None])
            continue
        if s.px not in groups:
            groups[s.px] = [f"binary units at {s.px} px", 0.0, 0.0, 0.0, 0]
            rows.append(groups[s.px])
        g = groups[s.px]
        g[1] += s.total_s
        g[2] += s.conv_s
        g[3] += s.epilogue_s
        g[4] += 1
    e2e = p.end_to_end_s
    cells = []
    for r in rows:
        name = r[0] if len(r) == 4 else f"{r[0]} ({r[4]})"
        conv = "" if r[2] is None else f"{r[2] * 1e3:.3f}"
        epi = "" if r[3] is None else f"{r[3] * 1e3:.3f}"
        cells.append([name, f"{r[1] * 1e3:.3f}", conv, epi, f"{r[1] / e2e:.1%}"])
    staged = sum(s.total_s for s in p.stages)
    convs = sum(s.conv_s for s in p.stages if s.conv_s is not None)
    epis = sum(s.epilogue_s for s in p.stages if s.epilogue_s is not None)
    cells += [
        ["stages, summed", f"{staged * 1e3:.3f}", f"{convs * 1e3:.3f}", f"{epis * 1e3:.3f}",
         f"{staged / e2e:.1%}"],
        ["outside the compiled calls", f"{p.glue_s * 1e3:.3f}", "", "", f"{p.glue_s / e2e:.1%}"],
        ["**end to end**", f"**{e2e * 1e3:.3f}**", "", "", "100%"],
    ]  # fmt: skip
    headers = ["stage", "ms", "binary conv alone ms", "epilogue ms", "share"]
    return markdown_table(headers, cells)


def onnx_export(model: nn.Module, size: int) -> tuple[bytes | None, str]:
    """``model`` (eval mode) as an ONNX graph (``torch.onnx.export``, TorchScript exporter, a
    dynamic batch axis), or ``None`` and the reason; the second item names the runtime."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None, "onnxruntime not installed (pip install 's2bnn-plugin[bench]')"
    import warnings

    buf = io.BytesIO()
    x = torch.zeros(1, 3, size, size)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model.eval(),
                (x,),
                buf,
                dynamo=False,
                input_names=["x"],
                output_names=["features"],
                dynamic_axes={"x": {0: "batch"}},
                opset_version=17,
            )
    except Exception as e:  # any exporter failure only drops the column
        return None, f"torch.onnx.export failed: {type(e).__name__}: {e}"
    return buf.getvalue(), f"onnxruntime {ort.__version__}"


def onnx_session(graph: bytes, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """An ONNX Runtime CPU session (fp32, default graph optimisations, ``threads`` intra-op
    threads) of an :func:`onnx_export` graph, as a callable on NCHW float32 batches."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
    return lambda xn: session.run(None, {"x": xn})[0]
