"""``s2bnn pack``: a typed function the command line only parses arguments for (``s2bnn check``
and ``s2bnn bench``, which time the network, are in :mod:`s2bnn_plugin.bench.commands`).

Each prints its report; user errors (missing or unreadable files, a model that cannot be packed,
an existing output) are raised as :class:`~s2bnn_plugin.errors.S2BNNError` subclasses.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from s2bnn_plugin.errors import UsageError

__all__ = ["pack", "parse_kwargs"]


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
    from s2bnn_plugin.export.report import agreement, file_sizes

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
        agree = agreement(model, net, check_size, 2)
        bar.update()
    net.save(out)
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
