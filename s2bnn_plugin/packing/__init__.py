"""Packing a PyTorch binary backbone into a :class:`~s2bnn_plugin.runtime.PackedNetwork`, and
back (needs torch).

``pack(model)`` walks an eval-mode binary backbone with the pack rules (:mod:`.walker`, the
built-in rules in :mod:`.rules`, the driver :mod:`.packer`); ``float_twin(net)`` rebuilds the
float PyTorch twin of a packed network (:mod:`.unpack`); :mod:`.report` compares file sizes.

Importing this package does not import torch (``pack`` and ``float_twin`` do, when called).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from s2bnn_plugin.runtime import PackedNetwork

__all__ = ["PackError", "float_twin", "pack"]


def pack(model: nn.Module, *, progress: bool = False) -> PackedNetwork:
    """Bit-pack an eval-mode binary backbone (:func:`.packer.pack_model`, imported when called)."""
    from s2bnn_plugin.packing.packer import pack_model

    return pack_model(model, progress=progress)


def float_twin(net: PackedNetwork) -> nn.Module:
    """The float PyTorch twin of a packed network (:func:`.unpack.float_twin`, imported when
    called)."""
    from s2bnn_plugin.packing.unpack import float_twin as unpack_float_twin

    return unpack_float_twin(net)


def __getattr__(name: str) -> Any:
    if name == "PackError":
        from s2bnn_plugin.packing.walker import PackError

        return PackError
    raise AttributeError(name)
