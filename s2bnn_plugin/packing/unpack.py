"""From a packed network back to an equivalent float PyTorch backbone (its "float twin").

Why: ``s2bnn check FILE`` and the torch reference engine need the float model, and a packed file
alone does not contain the latent weights. It does not need them: a binary conv's effective
weight is ``sign(w) * mean|w|``, so latent weights ``sign * scale`` reproduce it exactly, and a
BatchNorm with running mean 0 and variance ``1 - eps`` multiplies by its weight exactly. The twin
computes what the packed network computes, up to float summation order.
"""

from __future__ import annotations

import torch
from torch import nn

from s2bnn_plugin.backbones import create_backbone
from s2bnn_plugin.packing import rules as _rules  # noqa: F401  (registers the built-in rules)
from s2bnn_plugin.packing.walker import PackError, walk_model
from s2bnn_plugin.runtime import PackedNetwork
from s2bnn_plugin.runtime import reference as ref
from s2bnn_plugin.runtime.format import PackedFormatError

__all__ = ["float_twin"]


def _set_bn(bn: nn.BatchNorm2d, mul: torch.Tensor, add: torch.Tensor) -> None:
    """Make ``bn`` (eval) compute ``x * mul + add``: 1 / sqrt((1 - eps) + eps) == 1 exactly."""
    bn.running_mean.zero_()
    bn.running_var.fill_(1.0 - bn.eps)
    bn.weight.copy_(mul)
    bn.bias.copy_(add)


def _set_rprelu(act: nn.Module, params: torch.Tensor) -> None:
    act.shift_in.bias.copy_(params[0])
    act.prelu.weight.copy_(params[1].expand_as(act.prelu.weight))
    act.shift_out.bias.copy_(params[2])


def float_twin(net: PackedNetwork) -> nn.Module:
    """Rebuild the backbone named in the file and load the packed values into it (eval mode)."""
    spec, a = net.spec, {k: torch.from_numpy(v.copy()) for k, v in net.arrays.items()}
    name, kwargs = spec["backbone"]["name"], spec["backbone"]["kwargs"]
    try:
        model = create_backbone(name, **kwargs)
    except (KeyError, TypeError, ValueError) as e:
        raise PackedFormatError(
            f"the file's backbone {name}({kwargs}) cannot be rebuilt: {e}. The file names a "
            "backbone or settings this version of s2bnn-plugin does not have (written by "
            "another version, or edited); pack the checkpoint again with this version"
        ) from e
    activations = _activations(model.eval(), spec["units"])
    try:
        _load_values(model, net, a, activations)
    except RuntimeError as e:  # a tensor of another shape: spec and rebuilt backbone disagree
        raise PackedFormatError(
            f"file and backbone disagree: the file's arrays do not fit {name}({kwargs}) "
            f"({str(e).splitlines()[0]}); pack the checkpoint again with this version"
        ) from e
    return model.eval()


def _load_values(
    model: nn.Module,
    net: PackedNetwork,
    a: dict[str, torch.Tensor],
    activations: list[nn.Module | None],
) -> None:
    """Copy the file's values into the rebuilt ``model`` (see :func:`float_twin`)."""
    spec = net.spec
    modules = dict(model.named_modules())
    with torch.no_grad():
        stem = model.stem
        stem[0].weight.copy_(a["stem.weight"].permute(3, 0, 1, 2))
        if stem[0].bias is not None:  # the packer folded it into the affine below
            stem[0].bias.zero_()
        _set_bn(stem[1], a["stem.affine"][0], a["stem.affine"][1])
        for i, u in enumerate(spec["units"]):
            p = f"units.{i}."
            convs = _unit_modules(modules, u["name"], u["groups"])
            signs = ref.unpack_weights(
                net.arrays[p + "weight"],
                u["kernel"],
                u["in_channels"],
                u["groups"],
                u["group_channels"],
            )
            signs = torch.from_numpy(signs).float()
            cg = u["group_channels"]
            for g, unit in enumerate(convs):
                sl = slice(g * cg, (g + 1) * cg)
                scale = a[p + "affine"][0, sl]
                unit.conv.weight.copy_(signs[sl] * scale[:, None, None, None])
                unit.conv.input_quantizer.shift.bias.copy_(a[p + "rsign"][g])
                _set_bn(unit.bn, a[p + "affine"][1, sl], a[p + "affine"][2, sl])
                if u["residual"] == "projection":
                    unit.shortcut.proj.weight.copy_(a[p + "proj_weight"].t()[:, :, None, None])
                    pa = a[p + "proj_affine"]
                    _set_bn(unit.shortcut.bn, pa[0], pa[1])
            if u["activation"]:
                _set_rprelu(activations[i], a[p + "activation"])


def _unit_modules(modules: dict[str, nn.Module], name: str, groups: int) -> list[nn.Module]:
    m = modules.get(name)
    if m is None:
        raise PackedFormatError(f"the backbone has no layer {name!r} (file and backbone disagree)")
    units = list(m) if isinstance(m, nn.ModuleList) else [m]
    if len(units) != groups:
        raise PackedFormatError(f"layer {name!r}: {len(units)} convolutions, the file has {groups}")
    return units


def _activations(model: nn.Module, units: list[dict]) -> list[nn.Module | None]:
    """Per unit of the file, the RPReLU module after it in ``model``: found by walking the
    rebuilt backbone with the same pack rules that wrote the file, so any layout they can pack
    can be unpacked."""
    try:
        walked = walk_model(model)
    except PackError as e:
        raise PackedFormatError(
            f"the file's backbone cannot be rebuilt by the pack rules: {e}"
        ) from e
    names = [u["name"] for u in walked.units]
    if names != [u["name"] for u in units]:
        raise PackedFormatError(
            f"file and backbone disagree: the file has units {[u['name'] for u in units]}, the "
            f"rebuilt backbone {names}"
        )
    modules = dict(model.named_modules())
    return [None if p is None else modules[p] for p in walked.activation_paths]
