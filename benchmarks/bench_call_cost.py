"""What one micro-kernel call costs besides its tap loop, per kernel variant this CPU runs.

Run: ``python benchmarks/bench_call_cost.py`` (about a minute once the kernels are compiled).
A micro-kernel call computes one block, 4 output positions x 32 output channels
(:mod:`s2bnn_plugin.kernels.micro`): its tap loop runs over ``k * k * words`` input words, and
around it come the passes' set-up, the reductions, the block's results and the block loop of the
driver. This times :func:`~s2bnn_plugin.kernels.binary_conv_acc` (bound to its arguments, as the
network calls it: :func:`~s2bnn_plugin.kernels.bind`) on 1x1 layers of one size and
output width with more and more input channels (random packed input and weights, batch 1,
1 thread, best of ``--repeats`` bursts of 3 calls, variants alternating), and fits

    seconds = calls x (fixed + per_word x words)

by least squares, ``calls`` being the layer's micro-kernel calls. ``fixed`` is the cost of a call
besides its tap loop, ``per_word`` the tap loop's cost per input word of the 4 x 32 block, both
in core cycles (the clock measured in the same run, :mod:`s2bnn_plugin.bench.clock`); the loop's
binary MACs per cycle follow from ``per_word``. The last column is the share of each layer's time
the fixed cost takes. A short-row layer (few input words per call) is bound by ``fixed``, a long
one by the loop. The default input widths (2-10 words) keep every variant on one tap loop:
``avx512bw`` switches from byte counts to carry-save adders at 12 words a row
(:func:`~s2bnn_plugin.kernels.variants.wide_scheme`), and a fit across the switch mixes the
two.

    python benchmarks/bench_call_cost.py                  # 1x1 layers at 14 px, 512 outputs
    python benchmarks/bench_call_cost.py --cin 768 1024 1536 2048 --variants avx2   # longer rows

Prints markdown tables. On a shared machine, run it pinned to one CPU with nothing else running
(``taskset -c 1``): the fit needs steady times.
"""

from __future__ import annotations

import argparse

import numpy as np
from s2bnn_plugin.kernels import (
    LANES,
    POSITIONS,
    VARIANTS,
    ConvShape,
    binary_conv_acc,
    binary_weights,
    bind,
    pack_weights,
    words_for,
)
from s2bnn_plugin.kernels import variants as kernel_variants

from s2bnn_plugin.bench.clock import core_ghz
from s2bnn_plugin.bench.machine import cpu_name
from s2bnn_plugin.bench.tables import markdown_table
from s2bnn_plugin.bench.timing import best_times, set_threads


def _layer_calls(size: int, cin: int, cout: int, variant_names: list[str], repeats: int):
    """Seconds of one 1x1 ``cin`` -> ``cout`` layer at ``size`` px under each variant, and its
    micro-kernel calls."""
    rng = np.random.default_rng(cin)
    words = words_for(cin)
    bits = rng.integers(0, 2**63, size=size * size * words, dtype=np.uint64)
    stored = pack_weights((rng.standard_normal((cout, cin, 1, 1)) < 0).astype(np.uint8), 1)
    shape = ConvShape(1, size, size, cin, 1, 1, 1, cout)
    out = np.empty((1, size, size, cout), np.int32)
    blocks = -(-(size * size) // POSITIONS)
    fns = []
    for name in variant_names:
        weights = binary_weights(stored, cin, 1, 1, cout, VARIANTS[name])
        fns.append(bind(binary_conv_acc, bits, shape, weights, blocks, out))
    return best_times(fns, repeats), blocks * (cout // LANES)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=14, help="input size in pixels")
    p.add_argument("--cout", type=int, default=512, help="output channels (a multiple of 32)")
    p.add_argument("--cin", type=int, nargs="+", default=[128, 256, 384, 512, 640],
                   help="input channel counts (more than 32, at least two)")  # fmt: skip
    p.add_argument("--variants", nargs="+", help="kernel variants (default: all this CPU runs)")
    p.add_argument("--repeats", type=int, default=100, help="best of this many bursts")
    args = p.parse_args(argv)
    tgt = kernel_variants.target()
    runnable = [v.name for v in VARIANTS.values() if not v.requires or v.requires in tgt.isa]
    names = args.variants or runnable
    bad = [n for n in names if n not in runnable]
    if bad:
        p.error(
            f"--variants: {', '.join(bad)} not among those this CPU runs ({', '.join(runnable)})"
        )
    if args.cout % LANES or args.cout < LANES:
        p.error(f"--cout {args.cout}: a positive multiple of {LANES}")
    if len(set(args.cin)) < 2 or min(args.cin) <= 32:
        p.error("--cin: at least two different counts, each above 32 (wide layers)")
    if args.size < 1 or args.repeats < 1:
        p.error("--size and --repeats: at least 1")

    set_threads(1)
    ghz = core_ghz()
    print(f"CPU: {cpu_name()}; LLVM target {tgt.cpu}; core clock {ghz:.2f} GHz (measured)")
    print(f"1x1 layers at {args.size} px, {args.cout} outputs, batch 1, 1 thread, best of "
          f"{args.repeats} bursts of 3\n")  # fmt: skip
    cins = sorted(set(args.cin))
    seconds = {name: [] for name in names}
    calls = 0
    for cin in cins:
        times, calls = _layer_calls(args.size, cin, args.cout, names, args.repeats)
        for name, t in zip(names, times):
            seconds[name].append(t)
    words = np.array([words_for(c) for c in cins], float)
    rows, fits = [], []
    for name in names:
        cycles = np.array(seconds[name]) * ghz * 1e9 / calls  # per micro-kernel call
        per_word, fixed = np.polyfit(words, cycles, 1)
        loop_rate = POSITIONS * LANES * 64 / per_word  # binary MACs per cycle of the tap loop
        fits.append([name, f"{fixed:.0f}", f"{per_word:.1f}", f"{loop_rate:.0f}"])
        for cin, w, t, c in zip(cins, words, seconds[name], cycles):
            rows.append(
                [name, cin, int(w), f"{t * 1e3:.3f}", f"{c:.0f}", f"{100 * fixed / c:.0f} %"]
            )
    print(markdown_table(["variant", "cin", "words", "ms", "cycles per call",
                          "fixed cost's share"], rows))  # fmt: skip
    print()
    print(markdown_table(["variant", "fixed cycles per call", "cycles per input word",
                          "tap loop binary MACs per cycle"], fits))  # fmt: skip
    print(f"\n{calls} micro-kernel calls per layer (4 positions x 32 channels each)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
