"""``s2bnn pack``, ``s2bnn check`` and ``s2bnn bench``: typed functions the command line only
parses arguments for.

Each prints its report; user errors (missing or unreadable files, a model that cannot be packed,
an existing output) are raised as :class:`~s2bnn_plugin.errors.S2BNNError` subclasses.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from s2bnn_plugin.errors import UsageError

__all__ = ["bench", "check", "pack", "parse_kwargs"]


def parse_kwargs(text: str | None) -> dict[str, Any] | None:
    """``--backbone-kwargs`` (a JSON object) as a dict."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as e:
        raise UsageError(f"--backbone-kwargs is not JSON ({e}): {text!r}") from e
    if not isinstance(value, dict):
        raise UsageError(f"--backbone-kwargs must be a JSON object, got {text!r}")
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


def pack(
    checkpoint: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    force: bool = False,
    backbone: str | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
    check_size: int = 64,
    progress: bool = True,
) -> None:
    """``s2bnn pack CKPT -o FILE``: load, pack, check against the float model, save."""
    from tqdm.auto import tqdm

    from s2bnn_plugin.checkpoints import load_backbone
    from s2bnn_plugin.export.packer import pack as pack_model

    out = Path(output)
    if out.exists() and not force:
        raise UsageError(f"{out} exists; pass --force to overwrite it")
    if not out.parent.is_dir():
        raise UsageError(f"output folder {out.parent} does not exist")
    with tqdm(total=3, desc="pack", disable=not progress) as bar:
        bar.set_postfix_str("loading checkpoint")
        model, name, kwargs = load_backbone(checkpoint, backbone, backbone_kwargs)
        bar.update()
        bar.set_postfix_str("packing")
        net = pack_model(model, progress=progress)
        bar.update()
        bar.set_postfix_str("checking against the float model")
        agree = _agreement(model, net, check_size, 2)
        bar.update()
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
        f"  features vs the float model ({check_size} px, 2 images): max |diff| "
        f"{agree['max_abs']:.2e} (feature scale {agree['feature_scale']:.2e})"
    )


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

    from s2bnn_plugin.checkpoints import load_backbone, require_backbone
    from s2bnn_plugin.export import load
    from s2bnn_plugin.export.bench import end_to_end, file_sizes, markdown_table

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
        agree = _agreement(model, net, size, batch)
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
    from s2bnn_plugin.export.bench import (
        end_to_end,
        file_sizes,
        layer_table,
        layer_timings,
        markdown_table,
    )
    from s2bnn_plugin.export.packer import pack as pack_model

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
