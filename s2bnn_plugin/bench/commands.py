"""``s2bnn check`` and ``s2bnn bench``: typed functions the command line only parses arguments
for. Here rather than beside ``s2bnn pack`` (:mod:`s2bnn_plugin.export.commands`) because both
time the packed network, and the runtime does not import the benchmark.

Each prints its report; user errors (missing or unreadable files, an unknown backbone) are
raised as :class:`~s2bnn_plugin.errors.S2BNNError` subclasses.
"""

from __future__ import annotations

import os
from typing import Any

from s2bnn_plugin.errors import UsageError

__all__ = ["bench", "check"]


def check(
    file: str | os.PathLike[str],
    *,
    ckpt: str | os.PathLike[str] | None = None,
    backbone: str | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
    size: int = 224,
    batch: int = 8,
    threads: int = 1,
    repeats: int = 3,
    verbose: bool = False,
    progress: bool = True,
) -> dict[str, float]:
    """``s2bnn check FILE [--ckpt CKPT]``: agreement, file size, speed; returns the agreement
    figures."""
    from tqdm.auto import tqdm

    from s2bnn_plugin.bench.tables import markdown_table
    from s2bnn_plugin.bench.timing import end_to_end
    from s2bnn_plugin.checkpoints import load_backbone
    from s2bnn_plugin.export import load
    from s2bnn_plugin.export.report import agreement, file_sizes

    net = load(file)
    if ckpt:
        model, _, _ = load_backbone(ckpt, backbone, backbone_kwargs)
        reference = f"the float model of {ckpt}"
    else:
        model = net.to_torch()
        reference = "the float twin rebuilt from the file (no --ckpt given)"
    print(f"{file}: {net!r}")
    if verbose:
        print(net.describe())
    with tqdm(total=3, desc="check", disable=not progress) as bar:
        bar.set_postfix_str("agreement")
        agree = agreement(model, net, size, batch)
        bar.update()
        bar.set_postfix_str("sizes")
        packed, fp32 = file_sizes(net, model)
        bar.update()
        bar.set_postfix_str("speed")
        timing = end_to_end(model, net, size, batch, threads, repeats)
        bar.update()
    print(f"agreement with {reference}, {batch} random images at {size} px:")
    print(
        f"  max |diff| {agree['max_abs']:.3e}, mean |diff| {agree['mean_abs']:.3e}, "
        f"feature scale {agree['feature_scale']:.3e}, largest per-image relative difference "
        f"{agree['max_rel_per_image']:.2e}; images with a flipped sign bit: "
        f"{agree['images_with_a_flip']}/{agree['images']}"
    )
    rows = [
        [
            "file size",
            f"{packed / 1e6:.3f} MB",
            f"{fp32 / 1e6:.3f} MB (fp32 state dict)",
            f"1/{fp32 / packed:.1f}",
        ],
        [
            f"batch {batch}, {threads} thread(s)",
            f"{timing.packed_s * 1e3:.2f} ms",
            f"{timing.torch_s * 1e3:.2f} ms (PyTorch fp32)",
            f"{timing.speedup:.1f}x",
        ],
    ]
    print(markdown_table(["", "packed", "float", "ratio"], rows))
    return agree


def bench(
    backbone: str = "reactnet_a",
    *,
    width_mult: float = 1.0,
    size: int = 224,
    batches: tuple[int, ...] = (1, 32),
    threads: tuple[int, ...] = (1, 2),
    repeats: int = 3,
    layers: bool = False,
    progress: bool = True,
) -> None:
    """``s2bnn bench``: end-to-end (and per-layer) speed table on a random-weight model."""
    from tqdm.auto import tqdm

    from s2bnn_plugin.backbones import create_backbone
    from s2bnn_plugin.bench.tables import layer_table, markdown_table
    from s2bnn_plugin.bench.timing import end_to_end, layer_timings
    from s2bnn_plugin.export.packer import pack as pack_model
    from s2bnn_plugin.export.report import file_sizes

    try:
        model = create_backbone(backbone, width_mult=width_mult).eval()
    except (KeyError, TypeError, ValueError) as e:
        raise UsageError(str(e).strip("'\"")) from e
    net = pack_model(model)
    jobs = [(b, t) for t in threads for b in batches]
    rows = []
    for batch, n_threads in tqdm(jobs, desc="bench", disable=not progress):
        t = end_to_end(model, net, size, batch, n_threads, repeats)
        ms = (f"{t.torch_s * 1e3:.1f}", f"{t.packed_s * 1e3:.2f}", f"{t.speedup:.1f}x")
        rows.append([f"{backbone} {size} px", batch, n_threads, *ms])
    print(
        markdown_table(
            ["model", "batch", "threads", "PyTorch fp32 ms", "packed ms", "speedup"], rows
        )
    )
    if layers:
        timings = [r for t in threads for r in layer_timings(net, size, t, repeats)]
        print()
        print(layer_table(timings))
    packed, fp32 = file_sizes(net, model)
    print(
        f"\nfile: {packed / 1e6:.3f} MB packed vs {fp32 / 1e6:.3f} MB fp32 state dict "
        f"(1/{fp32 / packed:.1f})"
    )
