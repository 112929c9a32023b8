"""Bit-packed export of binary students: exact, fast CPU inference without PyTorch.

``pack(model)`` turns an eval-mode binary backbone with binary weights (``reactnet_a``,
``reactnet18``, or any one built from blocks that have pack rules) into a
:class:`PackedNetwork`; ``net(x)`` maps a float32 NCHW numpy batch to (N, num_features) features;
``net.save(path)`` writes one self-describing file and ``load(path)`` reads it back (format:
:mod:`s2bnn_plugin.export.format`). Kernels: :mod:`s2bnn_plugin.kernels`.

Importing this package does not import torch (``pack`` does, when called) nor compile anything.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from s2bnn_plugin.export.format import FORMAT, FORMAT_VERSION, PackedFormatError
from s2bnn_plugin.export.network import PackedNetwork, load

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "PackError",
    "PackedFormatError",
    "PackedNetwork",
    "load",
    "pack",
]


def pack(model: nn.Module, *, progress: bool = False) -> PackedNetwork:
    """Bit-pack an eval-mode binary backbone (:func:`.packer.pack_model`, imported when called)."""
    from s2bnn_plugin.export.packer import pack_model

    return pack_model(model, progress=progress)


def __getattr__(name: str) -> Any:
    if name == "PackError":
        from s2bnn_plugin.export.packer import PackError

        return PackError
    raise AttributeError(name)
