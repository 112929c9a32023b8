"""``s2bnn pack``, ``s2bnn check`` and ``s2bnn bench``: what the command line runs.

Each returns a process exit code; user errors (missing or unreadable files, a model that cannot
be packed, an existing output) print one line to stderr and return 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["bench", "check", "pack"]


def _fail(command: str, message: object) -> int:
    print(f"s2bnn {command}: {message}", file=sys.stderr)
    return 2


def _kwargs(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as e:
        raise ValueError(f"--backbone-kwargs is not JSON ({e}): {text!r}") from e
    if not isinstance(value, dict):
        raise ValueError(f"--backbone-kwargs must be a JSON object, got {text!r}")
    return value


def _agreement(model: Any, net: Any, size: int, batch: int, seed: int = 0) -> dict[str, float]:
    """Feature differences between the float model and the packed network on a random batch."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, net.in_channels, size, size, generator=gen)
    with torch.no_grad():
        ref = model.eval()(x).numpy()
    got = net(x.numpy())
    diff = np.abs(ref - got)
    scale = np.abs(ref).max(axis=1) + 1e-12
    return {
        "max_abs": float(diff.max()),
        "mean_abs": float(diff.mean()),
        "feature_scale": float(np.abs(ref).mean()),
        "max_rel_per_image": float((diff.max(axis=1) / scale).max()),
        # above float rounding (~1e-6): a sign bit came out differently somewhere
        "images_with_a_flip": int((diff.max(axis=1) / scale > 1e-4).sum()),
        "images": batch,
    }


def pack(args: argparse.Namespace) -> int:
    """``s2bnn pack CKPT -o FILE``."""
    from tqdm.auto import tqdm

    from s2bnn_plugin.export import PackedFormatError
    from s2bnn_plugin.export.checkpoint import load_backbone
    from s2bnn_plugin.export.packer import PackError
    from s2bnn_plugin.export.packer import pack as pack_model

    out = Path(args.output)
    if out.exists() and not args.force:
        return _fail("pack", f"{out} exists; pass --force to overwrite it")
    if not out.parent.is_dir():
        return _fail("pack", f"output folder {out.parent} does not exist")
    progress = not args.no_progress
    try:
        with tqdm(total=3, desc="pack", disable=not progress) as bar:
            bar.set_postfix_str("loading checkpoint")
            model, name, kwargs = load_backbone(
                args.checkpoint, args.backbone, _kwargs(args.backbone_kwargs)
            )
            bar.update()
            bar.set_postfix_str("packing")
            net = pack_model(model, progress=progress)
            bar.update()
            bar.set_postfix_str("checking against the float model")
            agree = _agreement(model, net, args.check_size, 2)
            bar.update()
    except (OSError, ValueError, PackError, PackedFormatError) as e:
        return _fail("pack", e)
    net.save(out)
    from s2bnn_plugin.export.bench import file_sizes

    packed, fp32 = file_sizes(net, model)
    print(f"{name}({json.dumps(kwargs)}) -> {out}")
    print(f"  {len(net.spec['units'])} binary units, {net.num_features}-d features")
    print(
        f"  size: {packed / 1e6:.3f} MB packed vs {fp32 / 1e6:.3f} MB fp32 state dict "
        f"(1/{fp32 / packed:.1f})"
    )
    print(
        f"  features vs the float model ({args.check_size} px, 2 images): max |diff| "
        f"{agree['max_abs']:.2e} (feature scale {agree['feature_scale']:.2e})"
    )
    return 0


def check(args: argparse.Namespace) -> int:
    """``s2bnn check FILE [--ckpt CKPT]``: agreement, file size, speed."""
    from tqdm.auto import tqdm

    from s2bnn_plugin.export import PackedFormatError, load
    from s2bnn_plugin.export.bench import end_to_end, file_sizes, markdown_table
    from s2bnn_plugin.export.checkpoint import load_backbone

    progress = not args.no_progress
    try:
        net = load(args.file)
        if args.ckpt:
            model, _, _ = load_backbone(args.ckpt, args.backbone, _kwargs(args.backbone_kwargs))
            reference = f"the float model of {args.ckpt}"
        else:
            model = net.to_torch()
            reference = "the float twin rebuilt from the file (no --ckpt given)"
    except (OSError, ValueError, PackedFormatError) as e:
        return _fail("check", e)
    print(f"{args.file}: {net!r}")
    if args.verbose:
        print(net.describe())
    with tqdm(total=3, desc="check", disable=not progress) as bar:
        bar.set_postfix_str("agreement")
        agree = _agreement(model, net, args.size, args.batch)
        bar.update()
        bar.set_postfix_str("sizes")
        packed, fp32 = file_sizes(net, model)
        bar.update()
        bar.set_postfix_str("speed")
        timing = end_to_end(model, net, args.size, args.batch, args.threads, args.repeats)
        bar.update()
    print(f"agreement with {reference}, {args.batch} random images at {args.size} px:")
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
            f"batch {args.batch}, {args.threads} thread(s)",
            f"{timing.packed_s * 1e3:.2f} ms",
            f"{timing.torch_s * 1e3:.2f} ms (PyTorch fp32)",
            f"{timing.speedup:.1f}x",
        ],
    ]
    print(markdown_table(["", "packed", "float", "ratio"], rows))
    return 0


def bench(args: argparse.Namespace) -> int:
    """``s2bnn bench``: end-to-end (and per-layer) speed table on a random-weight model."""
    from tqdm.auto import tqdm

    from s2bnn_plugin.backbones import create_backbone
    from s2bnn_plugin.export.bench import (
        end_to_end,
        file_sizes,
        layer_table,
        layer_timings,
        markdown_table,
    )
    from s2bnn_plugin.export.packer import pack as pack_model

    try:
        model = create_backbone(args.backbone, width_mult=args.width_mult).eval()
    except (KeyError, TypeError, ValueError) as e:
        return _fail("bench", e)
    net = pack_model(model)
    jobs = [(b, t) for t in args.threads for b in args.batch]
    rows = []
    for batch, threads in tqdm(jobs, desc="bench", disable=args.no_progress):
        t = end_to_end(model, net, args.size, batch, threads, args.repeats)
        ms = (f"{t.torch_s * 1e3:.1f}", f"{t.packed_s * 1e3:.2f}", f"{t.speedup:.1f}x")
        rows.append([f"{args.backbone} {args.size} px", batch, threads, *ms])
    print(
        markdown_table(
            ["model", "batch", "threads", "PyTorch fp32 ms", "packed ms", "speedup"], rows
        )
    )
    if args.layers:
        layers = [r for t in args.threads for r in layer_timings(net, args.size, t, args.repeats)]
        print()
        print(layer_table(layers))
    packed, fp32 = file_sizes(net, model)
    print(
        f"\nfile: {packed / 1e6:.3f} MB packed vs {fp32 / 1e6:.3f} MB fp32 state dict "
        f"(1/{fp32 / packed:.1f})"
    )
    return 0
