"""What ``s2bnn pack`` and ``s2bnn check`` report of a packed network: its features against the
float model's, and the size of its file against the fp32 state dict's."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from torch import nn

    from s2bnn_plugin.export.network import PackedNetwork

__all__ = ["agreement", "file_sizes"]


def file_sizes(net: PackedNetwork, model: nn.Module) -> tuple[int, int]:
    """Bytes of the packed file and of the model's fp32 state dict saved with ``torch.save``."""
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        packed = net.save(Path(tmp) / "net.s2bnn").stat().st_size
    buf = io.BytesIO()
    torch.save({k: v.float() for k, v in model.state_dict().items()}, buf)
    return packed, buf.getbuffer().nbytes


def agreement(
    model: nn.Module, net: PackedNetwork, size: int, batch: int, seed: int = 0
) -> dict[str, float]:
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
