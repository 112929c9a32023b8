"""Packed XNOR-popcount engine vs PyTorch fp32 on this CPU: per layer and end to end.

Run: ``python benchmarks/bench_kernels.py`` (about 5 minutes on 2 cores; ``--quick`` for a short
run). Everything is measured in one process, on the same input and with the same thread count
for both engines (``torch.set_num_threads`` / ``numba.set_num_threads``), best of ``--repeats``
runs taken alternately. The model has random weights: speed does not depend on their values.

- Per layer: every distinct binary unit of ReActNet-A at 224 px, batch 1, against
  ``torch.nn.functional.conv2d`` fp32 of the same shape on the same input (NCHW, the default,
  and channels-last), each timed in bursts of 3 consecutive calls (warm caches) in alternating
  rounds. Two packed figures: the binary convolution alone (exact int32 accumulations, the
  per-layer speedup) and the whole fused unit (convolution, scale, BatchNorm, residual, RPReLU,
  next layer's packed signs) against the same convolution alone.
- Where the time goes: every compiled call of the packed network (stem, input signs, each fused
  unit with its binary convolution alone beside it -- the difference is the float epilogue --,
  pooling) timed inside the full sequence, and what lies outside the compiled calls (Python,
  dispatch); then end to end against the sum of its binary convolutions alone over the same
  layers (batch 1 and 32, 1 and 2 threads).
- End to end: ReActNet-A features at 224 px, batch 1 and 32 (the packed engine timed in rounds
  of its own: the float engines' OpenMP workers spin after each call and would take its cores),
  against the same model in PyTorch fp32 eval mode, against a copy whose weights were binarised
  once beforehand (the training model re-binarises its weights on every forward, a large share
  of batch-1 time), and against that copy exported to ONNX Runtime fp32 (``pip install
  's2bnn-plugin[bench]'``; the column is skipped, with the reason printed, when ``onnxruntime``
  is absent), in OpenVINO fp32 and bf16 (bf16 only where the CPU lists BF16 among its
  capabilities), and the packed network exported as an OpenVINO BinaryConvolution IR (``pip
  install 's2bnn-plugin[openvino]'``; skipped with the reason when absent); the last column is
  the ratio to the fastest of them, named.
- File: the packed file against the fp32 state dict.
- Kernel variants (``--variants``, part of the default run): every micro-kernel variant this CPU
  runs (:mod:`s2bnn_plugin.kernels.variants`), per layer as binary MACs per cycle (the core
  clock measured in the same run, :mod:`s2bnn_plugin.bench.clock`) against that instruction
  set's bound (:mod:`s2bnn_plugin.bench.bounds`, derivation printed), and end to end against
  OpenVINO's 1-bit IR in the same process. A variant below the CPU's best (AVX2 on an AVX-512
  machine) also runs against OpenVINO at the same instruction set, in a child process of this
  script: ``ONEDNN_MAX_CPU_ISA`` caps OpenVINO's BinaryConvolution (the table names the
  primitive it ran) and ``NUMBA_CPU_NAME`` compiles the kernels for a CPU of that set alone.

Prints markdown tables.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from functools import partial

import numba
import numpy as np
import torch
from s2bnn_plugin.kernels import VARIANTS, variants
from s2bnn_plugin.kernels.assembly import popcount_report

from s2bnn_plugin.backbones import create_backbone
from s2bnn_plugin.bench.baselines import (
    onnx_export,
    onnx_session,
    openvino_baselines,
    openvino_binary,
    prebinarised,
)
from s2bnn_plugin.bench.bounds import bound
from s2bnn_plugin.bench.clock import core_ghz
from s2bnn_plugin.bench.machine import cpu_name
from s2bnn_plugin.bench.profile import profile, unit_epilogues
from s2bnn_plugin.bench.tables import (
    epilogue_table,
    layer_table,
    markdown_table,
    profile_summary,
    profile_table,
    variant_table,
)
from s2bnn_plugin.bench.timing import (
    best_times,
    layer_timings,
    set_threads,
    thread_scaling,
    variant_rates,
)
from s2bnn_plugin.packing import pack
from s2bnn_plugin.packing.report import file_sizes
from s2bnn_plugin.runtime import PackedNetwork

# A variant below the CPU's best against OpenVINO at the same instruction set: OpenVINO capped by
# ONEDNN_MAX_CPU_ISA, the kernels compiled for an LLVM CPU of that instruction set alone
CAPPED = {
    "avx2": ("AVX2", "haswell"),
    "avx512bw": ("AVX512_CORE", "skylake-avx512"),
    "portable": ("SSE41", "x86-64-v2"),
}


def _features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def _variants_section(args: argparse.Namespace, net: PackedNetwork) -> None:
    """Every kernel variant this CPU runs: per layer against its bound, end to end against
    OpenVINO's 1-bit IR (capped to the variant's instruction set in a child process where the
    variant is not the CPU's best)."""
    tgt = variants.target()
    runnable = [v.name for v in VARIANTS.values() if not v.requires or v.requires in tgt.isa]
    best = variants.best(tgt).name
    ghz = core_ghz()
    print(
        f"### Kernel variants: {tgt.cpu} ({', '.join(sorted(tgt.isa)) or 'no SIMD popcount'})\n"
        f"\nruns {', '.join(runnable)}; the default is {best}; core clock measured at "
        f"{ghz:.2f} GHz (dependent integer additions, best of 7 rounds)\n"
    )
    bounds = {name: bound(name, tgt.cpu) for name in runnable}
    rows = variant_rates(net, runnable, args.size, 1, args.repeats)
    print(variant_table(rows, ghz, {n: b.macs_per_cycle if b else None for n, b in bounds.items()}))
    print()
    for name, b in bounds.items():
        if b is not None:
            print(f"- {name} bound {b.macs_per_cycle:.0f} MAC/cycle: {b.derivation}")
    three = [r for r in rows if r.kernel == 3]
    for name in runnable:
        convs = sum(r.seconds[name] for r in rows)
        rate = sum(r.macs for r in three) / sum(r.seconds[name] for r in three) / 1e9
        line = f"\n{name}: 3x3 layers {rate:.0f} GMAC/s ({rate / ghz:.0f} MAC/cycle"
        if bounds[name]:
            line += f", {100 * rate / ghz / bounds[name].macs_per_cycle:.0f} % of the bound"
        print(line + f"); every distinct layer once: {convs * 1e3:.2f} ms")
    _variant_end_to_end(args, net, runnable, best)


def _variant_end_to_end(
    args: argparse.Namespace, net: PackedNetwork, runnable: list[str], best: str
) -> None:
    """Packed (each variant) against OpenVINO's 1-bit IR, 1 thread, in this process; then each
    variant below the best against OpenVINO capped to its instruction set, in a child."""
    engine, primitive = openvino_binary(net, args.size)
    if engine is None:
        print(f"\nOpenVINO comparison skipped: {primitive}")
        return
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA")
    cap = f", capped by ONEDNN_MAX_CPU_ISA={isa}" if isa else ""
    print(f"\n#### End to end, {args.size} px, 1 thread: OpenVINO's BinaryConvolution runs "
          f"{primitive}{cap}\n")  # fmt: skip
    nets = {name: PackedNetwork(net.model, kernels=name) for name in runnable}
    set_threads(1)
    cells = []
    for batch in args.batch:
        xn = np.random.default_rng(0).random((batch, net.in_channels, args.size, args.size))
        xn = xn.astype(np.float32)
        repeats = args.repeats if batch <= 8 else max(2, args.repeats // 2)
        t_ov = best_times([partial(engine.make(batch, 1), xn)], repeats, burst=1)[0]
        times = best_times([partial(n, xn) for n in nets.values()], repeats, burst=3)
        for name, t in zip(nets, times):
            cells.append([batch, name, f"{t_ov * 1e3:.1f}", f"{t * 1e3:.2f}",
                          f"**{t_ov / t:.2f}x**"])  # fmt: skip
    print(markdown_table(["batch", "packed variant", "OpenVINO 1-bit IR ms", "packed ms",
                          "packed vs OpenVINO"], cells))  # fmt: skip
    if isa:
        return
    for name in runnable:
        if name == best or name not in CAPPED:
            continue
        isa, cpu = CAPPED[name]
        print(f"\n{name}, compiled for {cpu}, against OpenVINO capped to {isa} (a child process):")
        env = dict(os.environ, ONEDNN_MAX_CPU_ISA=isa, OV_CPU_MAX_ISA=isa)
        env.update(NUMBA_CPU_NAME=cpu, NUMBA_CPU_FEATURES="")
        cmd = [sys.executable, __file__, "--variants-only", "--only", name]
        cmd += ["--size", str(args.size), "--repeats", str(args.repeats)]
        cmd += ["--batch", *map(str, args.batch)]
        sys.stdout.flush()
        subprocess.run(cmd, env=env, check=False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=5, help="best of (end to end: fewer for 32)")
    p.add_argument("--quick", action="store_true", help="2 repeats, batch 1 and 8")
    p.add_argument(
        "--epilogue",
        action="store_true",
        help="only each fused unit timed alone against its binary convolution (batch 1, best of "
        "30 bursts of 3 calls): the steadier figure for changes to the epilogue",
    )
    p.add_argument(
        "--variants-only",
        action="store_true",
        help="only the kernel-variants section (every variant this CPU runs, per layer against "
        "its bound and end to end against OpenVINO's 1-bit IR)",
    )
    p.add_argument(
        "--only",
        metavar="VARIANT",
        help="with --variants-only: end to end for this variant alone (no per-layer table)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.batch = 2, [1, 8]

    model = create_backbone("reactnet_a").eval()
    net = pack(model)
    if args.only:
        print(f"CPU: {cpu_name()}; kernels compiled for {variants.target().cpu}")
        _variant_end_to_end(args, net, [args.only], "")
        return 0
    net(torch.zeros(1, 3, 32, 32).numpy())  # compile (or load the cache), start the threads
    report = popcount_report()
    print(
        f"CPU: {cpu_name()}; LLVM target {report['cpu']}; numba {numba.__version__} "
        f"({numba.threading_layer()} threading layer); torch {torch.__version__}"
    )
    print(
        f"kernel variant {report['variant']} ({VARIANTS[report['variant']].description}); "
        f"wide micro-kernel assembly: {report['vpopcntq_zmm']} vpopcntq on zmm, "
        f"{report['vpshufb']} vpshufb ({report['vpshufb_zmm']} on zmm), {report['vpsadbw']} "
        f"vpsadbw; narrow: {report['vpopcntd_zmm']} vpopcntd on zmm"
    )
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"load average before the run: {load} ({os.cpu_count()} CPUs)")
    wait = os.environ.get("OMP_WAIT_POLICY")
    if wait:  # a passive policy puts Numba's workers to sleep between kernels: slow on 2 threads
        print(f"OMP_WAIT_POLICY={wait} (the README's figures use the default)")
    print()

    if args.variants_only:
        _variants_section(args, net)
        return 0
    if args.epilogue:
        for threads in args.threads:
            set_threads(threads)
            rows = unit_epilogues(net, args.size)
            print(f"### Each fused unit alone, {args.size} px, batch 1, {threads} thread(s)\n")
            print(epilogue_table(rows) + "\n")
        return 0

    profiles = [
        profile(net, args.size, batch, threads, args.repeats)
        for threads in args.threads
        for batch in args.batch
    ]
    for p in profiles:
        if p.batch == 1:
            title = f"ReActNet-A, {args.size} px, batch 1, {p.threads} thread(s)"
            print(f"### Where the time goes: {title}\n")
            print(profile_summary(p))
            print(
                f"\n<details><summary>every stage</summary>\n\n{profile_table(p)}\n\n</details>\n"
            )
    print(
        f"### End to end against its binary convolutions alone, {args.size} px\n\n"
        "(the same layers' binary_conv_acc calls in sequence, on the same passes of images)\n"
    )
    cells = [
        [
            p.batch,
            p.threads,
            f"{p.end_to_end_s * 1e3:.2f}",
            f"{p.convs_s * 1e3:.2f}",
            f"{p.glue_s * 1e3:.2f}",
            f"**{p.ratio:.2f}**",
        ]
        for p in profiles
    ]
    headers = [
        "batch",
        "threads",
        "end to end ms",
        "binary convs alone ms",
        "outside the compiled calls ms",
        "ratio",
    ]
    print(markdown_table(headers, cells))
    print()

    if len(args.threads) > 1:
        print(
            f"### Threads, end to end, {args.size} px\n\n(the packed engine alone: each thread "
            "count over consecutive calls after a warm-up at that count, the counts taking "
            "turns; median of a round's calls, best of 5 rounds)\n"
        )
        cells = []
        for batch in args.batch:
            calls = max(4, 50 // batch)  # about 0.2 s per round and thread count
            sc = thread_scaling(net, args.size, batch, args.threads, calls)
            one = args.threads[0]
            for t in args.threads:
                cells.append(
                    [
                        batch,
                        t,
                        f"{sc.rounds} x {calls}",
                        f"{sc.median_s[t] * 1e3:.2f}",
                        f"{sc.best_s[t] * 1e3:.2f}",
                        f"**{sc.median_s[one] / sc.median_s[t]:.2f}x**",
                        f"{sc.best_s[one] / sc.best_s[t]:.2f}x",
                    ]
                )
        headers = ["batch", "threads", "calls", "median ms", "best ms", "speed-up (medians)",
                   "speed-up (best calls)"]  # fmt: skip
        print(markdown_table(headers, cells))
        print()

    layers = [r for t in args.threads for r in layer_timings(net, args.size, t, args.repeats)]
    print(f"### ReActNet-A binary layers, {args.size} px, batch 1\n")
    print(layer_table(layers))
    print(
        "\nspeedup: the binary convolution alone (exact int32 accumulations) vs F.conv2d fp32 "
        "NCHW; fused unit: conv + scale + BN + residual + RPReLU + next layer's signs, vs the "
        "same F.conv2d alone."
    )
    three = [r for r in layers if r.kernel == 3]
    for threads in args.threads:
        worst = min((r for r in three if r.threads == threads), key=lambda r: r.speedup)
        print(
            f"{threads} thread(s): slowest 3x3 binary conv {worst.speedup:.1f}x "
            f"({worst.in_channels} ch, {worst.size} px, stride {worst.stride})"
        )

    fast = prebinarised(model)
    graph, runtime = onnx_export(fast, args.size)
    if graph is None:
        print(f"\nONNX Runtime column skipped: {runtime}")
    vinos, skipped = openvino_baselines(fast, net, args.size)
    for line in skipped:
        print(f"\n{line}")
    names = ["PyTorch fp32", "PyTorch, weights binarised once"]
    if graph is not None:
        names.append(f"ONNX Runtime fp32 ({runtime})")
    names += [v.name for v in vinos]
    rows, e2e = [], {}
    for threads in args.threads:
        ort_run = onnx_session(graph, threads) if graph is not None else None
        for batch in args.batch:
            repeats = args.repeats if batch <= 8 else max(2, args.repeats // 2)
            set_threads(threads)
            x = torch.randn(batch, net.in_channels, args.size, args.size)
            xn = x.numpy()
            fns = [partial(_features, model, x), partial(_features, fast, x)]
            if ort_run is not None:
                fns.append(partial(ort_run, xn))
            fns += [partial(v.make(batch, threads), xn) for v in vinos]
            times = best_times(fns, repeats, burst=1)
            # the packed engine in rounds of its own, three calls each: the other engines'
            # worker threads keep spinning for a while after each of their calls and, on a
            # 2-core machine, take the cores from Numba's threads (in the rounds above the
            # packed engine's 2-thread time came out 20 % high)
            t_packed = best_times([partial(net, xn)], repeats, burst=3)[0]
            e2e[batch, threads] = t_packed
            strongest = min(range(1, len(times)), key=lambda i: times[i])
            rows.append(
                [
                    batch,
                    threads,
                    *(f"{t * 1e3:.1f}" for t in times),
                    f"{t_packed * 1e3:.2f}",
                    f"{times[0] / t_packed:.1f}x",
                    f"**{times[strongest] / t_packed:.2f}x** ({names[strongest]})",
                ]
            )
    print(f"\n### End to end (features), ReActNet-A, {args.size} px\n")
    headers = [
        "batch",
        "threads",
        *(f"{n} ms" for n in names),
        "packed ms",
        "speedup vs PyTorch fp32",
        "speedup vs the strongest other engine",
    ]
    print(markdown_table(headers, rows))
    print(
        "\nOpenVINO: one stream, latency hint, INFERENCE_NUM_THREADS = threads; fp32 and the "
        "1-bit IR with INFERENCE_PRECISION_HINT f32, bf16 with bf16 (float model converted by "
        "ov.convert_model from the weights-binarised-once copy; the 1-bit IR is s2bnn "
        "export-openvino's graph)."
    )
    if len(args.threads) > 1:
        one, more = args.threads[0], args.threads[-1]
        for batch in args.batch:
            print(
                f"batch {batch}: {more} threads {e2e[batch, one] / e2e[batch, more]:.2f}x "
                f"{one} thread(s) end to end"
            )

    packed, fp32 = file_sizes(net, model)
    print(
        f"\n### File\n\npacked {packed / 1e6:.2f} MB vs fp32 state dict {fp32 / 1e6:.2f} MB "
        f"(1/{fp32 / packed:.1f})\n"
    )
    _variants_section(args, net)
    return 0


if __name__ == "__main__":
    sys.exit(main())
