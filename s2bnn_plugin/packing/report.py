"""The size of a packed network's file against its float model's fp32 state dict (what
``s2bnn pack``, ``check`` and ``bench`` print)."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

    from s2bnn_plugin.runtime.network import PackedNetwork

__all__ = ["file_sizes"]


def file_sizes(net: PackedNetwork, model: nn.Module) -> tuple[int, int]:
    """Bytes of the packed file and of the model's fp32 state dict saved with ``torch.save``."""
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        packed = net.save(Path(tmp) / "net.s2bnn").stat().st_size
    buf = io.BytesIO()
    torch.save({k: v.float() for k, v in model.state_dict().items()}, buf)
    return packed, buf.getbuffer().nbytes
