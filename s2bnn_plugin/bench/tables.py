"""Markdown tables of the benchmark's figures (``s2bnn bench``, ``s2bnn check`` and
``benchmarks/bench_kernels.py``)."""

from __future__ import annotations

from collections.abc import Sequence

from s2bnn_plugin.bench.profile import Profile
from s2bnn_plugin.bench.timing import LayerTiming, VariantRates

__all__ = [
    "epilogue_table",
    "layer_table",
    "markdown_table",
    "profile_summary",
    "profile_table",
    "variant_table",
]


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table: first column left-aligned, the others (numbers) right-aligned."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        parts = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        return "| " + " | ".join(parts) + " |"

    rule = "|:" + "-" * (widths[0] + 1) + "|" + "|".join("-" * (w + 1) + ":" for w in widths[1:])
    return "\n".join([line(cells[0]), rule + "|", *(line(r) for r in cells[1:])])


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


def variant_table(rows: Sequence[VariantRates], ghz: float, bounds: dict[str, float | None]) -> str:
    """Per layer and kernel variant: binary GMAC/s, binary MACs per cycle at ``ghz``, and the
    share of the variant's bound (``bounds``: MACs per cycle, None where none is known)."""
    names = list(rows[0].seconds) if rows else []
    headers = ["layer", "input px", "threads"]
    for name in names:
        headers += [f"{name} GMAC/s", f"{name} MAC/cycle"]
        if bounds.get(name):
            headers.append(f"{name} % of bound")
    cells = []
    for r in rows:
        cell = [f"{r.kernel}x{r.kernel}/{r.stride} {r.in_channels}->{r.out_channels}", r.size]
        cell.append(r.threads)
        for name in names:
            rate = r.macs / r.seconds[name] / 1e9 / r.threads
            cell += [f"{rate * r.threads:.0f}", f"{rate / ghz:.0f}"]
            if bounds.get(name):
                cell.append(f"{100 * rate / ghz / bounds[name]:.0f} %")
        cells.append(cell)
    return markdown_table(headers, cells)


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
