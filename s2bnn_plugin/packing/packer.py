"""From an eval-mode PyTorch backbone to a :class:`PackedNetwork`, by rules for blocks.

The packer knows no model class. It walks the backbone along its forward order and hands each
module to the *pack rule* registered for the module's type (:func:`pack_rule`, the built-in rules
are in :mod:`s2bnn_plugin.packing.rules`): a container's rule walks its children in the order its
``forward`` runs them, a layer's rule adds its part of the packed network through the
:class:`Packer` (the stem, a binary unit, the activation after it, the global pool). Rules are
looked up by exact type, because a subclass may compute something else; a module whose type has
no rule is refused by name, path and the list of types that have one, and so is a module the
walk never reached: a module the packer does not understand could change the computation, and a
silently wrong packed network is worse than none. Every module of the model must be accounted
for.

What is folded where (all per output channel):

- binary conv: weights -> sign bits (``w >= 0`` is +1); ``mean |w|`` -> ``affine[0]``;
- BatchNorm (running statistics) -> ``y * affine[1] + affine[2]`` with
  ``affine[1] = gamma / sqrt(var + eps)`` and ``affine[2] = beta - mean * affine[1]``;
- RSign shift -> the threshold the producing layer packs its output with;
- RPReLU -> ``activation`` (shift, slope, shift).

A model with NaN or infinity in a weight or statistic (a diverged run, a damaged checkpoint) is
refused naming the tensor: its packed network would compute NaN, or worse, a sign bit of NaN.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from s2bnn_plugin.packing import rules as _rules  # noqa: F401  (registers the built-in rules)
from s2bnn_plugin.packing.walker import (
    PACK_RULES,
    Packer,
    PackError,
    PackRule,
    find_pack_rule,
    pack_rule,
    walk_model,
)
from s2bnn_plugin.runtime.format import check_model
from s2bnn_plugin.runtime.model import PackedModel
from s2bnn_plugin.runtime.network import PackedNetwork

__all__ = [
    "PACK_RULES",
    "PackError",
    "PackRule",
    "Packer",
    "find_pack_rule",
    "pack_model",
    "pack_rule",
]


def pack_model(model: nn.Module, *, progress: bool = False) -> PackedNetwork:
    """Bit-pack an eval-mode binary backbone with binary weights (``reactnet_a``, ``reactnet18``
    or any :class:`~s2bnn_plugin.backbones.BinaryBackbone` made of blocks that have pack rules).

    Raises :class:`PackError` naming the first layer that cannot be packed (training mode, real
    weights, an unknown or modified module).
    """
    from s2bnn_plugin.backbones import BinaryBackbone

    if not isinstance(model, BinaryBackbone):
        raise PackError(
            f"cannot pack a {type(model).__name__}: supported backbones are BinaryBackbone "
            "subclasses (s2bnn_plugin.backbones: reactnet_a, reactnet18, or one built from the "
            "plugin's blocks)"
        )
    training = [n or "<model>" for n, m in model.named_modules() if m.training]
    if training:
        raise PackError(
            f"cannot pack a model in training mode (layer {training[0]!r} has training=True; "
            "BatchNorm would use batch statistics); call model.eval() first"
        )
    packer = walk_model(model, progress=progress)
    if not packer.pooled or packer.backbone is None:
        raise PackError(
            f"cannot pack a {type(model).__name__}: its rule must end with the global average "
            "pool and name the backbone (Packer.backbone)"
        )
    packer.leftovers()
    packed = PackedModel(
        backbone=packer.backbone,
        in_channels=packer.in_channels,
        num_features=int(model.num_features),
        stem=packer.stem,
        units=tuple(packer.units),
    )
    _refuse_non_finite(model, packed)
    if int(model.num_features) != packer.channels:
        raise PackError(
            f"cannot pack a {type(model).__name__}: num_features is {model.num_features}, its "
            f"last layer has {packer.channels} channels"
        )
    return PackedNetwork(check_model(packed))


def _refuse_non_finite(model: nn.Module, packed: PackedModel) -> None:
    """NaN or infinity in a floating-point parameter or buffer of the model (every module is
    part of the packed network once :meth:`Packer.leftovers` passed), then in the folded arrays
    (a finite but negative BatchNorm variance folds to NaN): refused by module path and name."""
    for name, t in (*model.named_parameters(), *model.named_buffers()):
        if t.is_floating_point():
            bad = int((~torch.isfinite(t.detach())).sum())
            if bad:
                module, _, tensor = name.rpartition(".")
                raise PackError(
                    f"cannot pack {module or '<model>'!r}: its {tensor!r} holds NaN or infinity "
                    f"({bad} of {t.numel()} values; tensor {name!r}); the model is broken (a "
                    "diverged run or a damaged checkpoint): use an earlier checkpoint or retrain"
                )
    for layer, key, a in packed.layers():
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise PackError(
                f"cannot pack {layer!r}: its values fold to NaN or infinity in the packed array "
                f"{key!r} (a negative BatchNorm running_var, or values too large for float32); "
                "the model is broken: use an earlier checkpoint or retrain"
            )
