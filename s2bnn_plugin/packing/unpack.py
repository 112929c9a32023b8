"""From a packed network back to an equivalent float PyTorch backbone (its "float twin").

Why: ``s2bnn check FILE`` and the torch reference engine need the float model, and a packed file
alone does not contain the latent weights. It does not need them: a binary conv's effective
weight is ``sign(w) * mean|w|``, so latent weights ``sign * scale`` reproduce it exactly, and a
BatchNorm with running mean 0 and variance ``1 - eps`` multiplies by its weight exactly. The twin
computes what the packed network computes, up to float summation order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from s2bnn_plugin.backbones import backbone_bytes, create_backbone
from s2bnn_plugin.memory import require_memory
from s2bnn_plugin.packing import rules as _rules  # noqa: F401  (registers the built-in rules)
from s2bnn_plugin.packing.walker import PackError, walk_model
from s2bnn_plugin.runtime import PackedNetwork
from s2bnn_plugin.runtime.model import BatchNormValues, PackedModel, Unit, UnpackedUnit
from s2bnn_plugin.runtime.spec import PackedFormatError

__all__ = ["float_twin"]


def _set_bn(bn: nn.BatchNorm2d, mul: torch.Tensor, add: torch.Tensor) -> None:
    """Make ``bn`` (eval) compute ``x * mul + add``: 1 / sqrt((1 - eps) + eps) == 1 exactly."""
    bn.running_mean.zero_()
    bn.running_var.fill_(1.0 - bn.eps)
    bn.weight.copy_(mul)
    bn.bias.copy_(add)


def _load(module: nn.Module, values: Mapping[str, np.ndarray | BatchNormValues]) -> None:
    """Copy ``values`` (by name relative to ``module``, as a unit kind's ``unpack`` gives them)
    into ``module``'s parameters and buffers, or its BatchNorms."""
    for name, value in values.items():
        if isinstance(value, BatchNormValues):
            bn = module.get_submodule(name)
            _set_bn(bn, torch.from_numpy(value.mul.copy()), torch.from_numpy(value.add.copy()))
            continue
        owner, _, leaf = name.rpartition(".")
        target = getattr(module.get_submodule(owner), leaf)
        target.copy_(torch.from_numpy(np.array(value)).expand_as(target))


def float_twin(net: PackedNetwork) -> nn.Module:
    """Rebuild the backbone named in the file and load the packed values into it (eval mode)."""
    packed = net.model
    name, kwargs = packed.backbone.name, packed.backbone.kwargs
    try:
        cost = backbone_bytes(name, **kwargs)
        require_memory(cost, f"the float twin of the file's backbone {name}({kwargs})")
        model = create_backbone(name, **kwargs)
    except (KeyError, TypeError, ValueError) as e:
        raise PackedFormatError(
            f"the file's backbone {name}({kwargs}) cannot be rebuilt: {e}. The file names a "
            "backbone or settings this version of s2bnn-plugin does not have (written by "
            "another version, or edited); pack the checkpoint again with this version"
        ) from e
    activations = _activations(model.eval(), packed.units)
    try:
        _load_values(model, packed, activations)
    except RuntimeError as e:  # a tensor of another shape: spec and rebuilt backbone disagree
        raise PackedFormatError(
            f"file and backbone disagree: the file's arrays do not fit {name}({kwargs}) "
            f"({str(e).splitlines()[0]}); pack the checkpoint again with this version"
        ) from e
    return model.eval()


def _load_values(
    model: nn.Module, packed: PackedModel, activations: list[nn.Module | None]
) -> None:
    """Copy the file's values into the rebuilt ``model`` (see :func:`float_twin`)."""
    modules = dict(model.named_modules())
    stem = packed.stem
    with torch.no_grad():
        conv = model.stem[0]
        conv.weight.copy_(torch.from_numpy(stem.weight.copy()).permute(3, 0, 1, 2))
        if conv.bias is not None:  # the packer folded it into the affine below
            conv.bias.zero_()
        affine = torch.from_numpy(stem.affine.copy())
        _set_bn(model.stem[1], affine[0], affine[1])
        for unit, activation in zip(packed.units, activations):
            values = unit.unpack()
            for module, group in zip(_unit_modules(modules, unit.name, values), values.groups):
                _load(module, group)
            if values.activation is not None:
                if activation is None:
                    raise PackedFormatError(
                        f"file and backbone disagree: unit {unit.name!r} has an activation in "
                        "the file, none in the rebuilt backbone"
                    )
                _load(activation, values.activation)


def _unit_modules(
    modules: dict[str, nn.Module], name: str, values: UnpackedUnit
) -> list[nn.Module]:
    """The rebuilt backbone's modules that read unit ``name``'s input, one per group."""
    m = modules.get(name)
    if m is None:
        raise PackedFormatError(f"the backbone has no layer {name!r} (file and backbone disagree)")
    units = list(m) if isinstance(m, nn.ModuleList) else [m]
    groups = len(values.groups)
    if len(units) != groups:
        raise PackedFormatError(f"layer {name!r}: {len(units)} convolutions, the file has {groups}")
    return units


def _activations(model: nn.Module, units: Sequence[Unit]) -> list[nn.Module | None]:
    """Per unit of the file, the RPReLU module after it in ``model``: found by walking the
    rebuilt backbone with the same pack rules that wrote the file, so any layout they can pack
    can be unpacked."""
    try:
        walked = walk_model(model)
    except PackError as e:
        raise PackedFormatError(
            f"the file's backbone cannot be rebuilt by the pack rules: {e}"
        ) from e
    names = [u.name for u in walked.units]
    if names != [u.name for u in units]:
        raise PackedFormatError(
            f"file and backbone disagree: the file has units {[u.name for u in units]}, the "
            f"rebuilt backbone {names}"
        )
    modules = dict(model.named_modules())
    return [None if p is None else modules[p] for p in walked.activation_paths]
