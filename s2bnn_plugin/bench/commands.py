"""``s2bnn check`` and ``s2bnn bench``: typed functions the command line only parses arguments
for. Here rather than beside ``s2bnn pack`` (:mod:`s2bnn_plugin.export.commands`, whose argument
checks and agreement bounds they share) because both time the packed network, and the runtime
does not import the benchmark.

Each prints its report; user errors (missing or unreadable files, an unknown backbone, numbers
out of range, features that disagree with the float model) are raised as
:class:`~s2bnn_plugin.errors.S2BNNError` subclasses.
"""

from __future__ import annotations

import os
from typing import Any

from s2bnn_plugin.errors import UsageError
from s2bnn_plugin.export.commands import (
    BATCH_RANGE,
    MAX_FLIPPED,
    MAX_WIDTH_MULT,
    MIN_COSINE,
    REPEATS_RANGE,
    SIZE_RANGE,
    Agreement,
    agreement,
    bounds_args,
    float_arg,
    int_arg,
    require_agreement,
    threads_arg,
)

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
    min_cosine: float = MIN_COSINE,
    max_flipped: float = MAX_FLIPPED,
    verbose: bool = False,
    progress: bool = True,
) -> Agreement:
    """``s2bnn check FILE [--ckpt CKPT]``: agreement, file size, speed; returns the agreement
    figures.

    The agreement compares ``max(batch, MIN_IMAGES)`` random images (``batch`` is what the
    speed is timed on): one image cannot tell a correct packing from a wrong student. Raises
    :class:`AgreementError` (exit code 2 from ``s2bnn``) after printing the agreement when any
    image's features have a cosine similarity below ``min_cosine`` with the float model's, or
    more than ``max_flipped`` of the images have a flipped sign bit. Sign flips near a
    threshold are expected of a correct packing (float rounding differs); the defaults pass
    those with a wide margin and fail another network's weights, or one layer of them, at every
    batch size."""
    size = int_arg("--size", size, *SIZE_RANGE)
    batch = int_arg("--batch", batch, *BATCH_RANGE)
    threads = threads_arg(threads)
    repeats = int_arg("--repeats", repeats, *REPEATS_RANGE)
    min_cosine, max_flipped = bounds_args(min_cosine, max_flipped)
    from tqdm.auto import tqdm

    from s2bnn_plugin.bench.tables import markdown_table
    from s2bnn_plugin.bench.timing import end_to_end
    from s2bnn_plugin.checkpoints import load_backbone, require_backbone
    from s2bnn_plugin.export import load
    from s2bnn_plugin.export.report import file_sizes

    net = load(file)
    if ckpt:
        model, _, _ = load_backbone(ckpt, backbone, backbone_kwargs)
        require_backbone(model, ckpt, net.backbone, net.backbone_kwargs)
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
        # above the bar, which stays for the stages that follow
        tqdm.write(f"agreement with {reference}, {agree.images} random images at {size} px:")
        tqdm.write(f"  {agree.summary()}")
        require_agreement(agree, f"{file}", reference, min_cosine, max_flipped)
        bar.set_postfix_str("sizes")
        packed, fp32 = file_sizes(net, model)
        bar.update()
        bar.set_postfix_str("speed")
        timing = end_to_end(model, net, size, batch, threads, repeats)
        bar.update()
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
    width_mult = float_arg("--width-mult", width_mult, 0.0, MAX_WIDTH_MULT, open_low=True)
    size = int_arg("--size", size, *SIZE_RANGE)
    if not batches or not threads:
        raise UsageError("--batch and --threads need at least one value each")
    batches = tuple(int_arg("--batch", b, *BATCH_RANGE) for b in batches)
    threads = tuple(threads_arg(t) for t in threads)
    repeats = int_arg("--repeats", repeats, *REPEATS_RANGE)
    from tqdm.auto import tqdm

    from s2bnn_plugin.backbones import create_backbone
    from s2bnn_plugin.bench.tables import layer_table, markdown_table
    from s2bnn_plugin.bench.timing import end_to_end, layer_timings
    from s2bnn_plugin.export.packer import pack_model
    from s2bnn_plugin.export.report import file_sizes

    # an unknown name or a bad setting: a BackboneError (S2BNNError), its message as it is
    model = create_backbone(backbone, width_mult=width_mult).eval()
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
