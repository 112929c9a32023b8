"""From an eval-mode PyTorch backbone to a :class:`PackedNetwork`.

The packer walks the backbone's known structure (stem, blocks of
:class:`~s2bnn_plugin.backbones.blocks.ResidualBinaryConv` + RPReLU, global pool), checks every
module's type and settings, and refuses anything else by name: a module it does not know could
change the computation, and a silently wrong packed network is worse than none. Every module of
the model must be accounted for.

What is folded where (all per output channel):

- binary conv: weights -> sign bits (``w >= 0`` is +1); ``mean |w|`` -> ``affine[0]``;
- BatchNorm (running statistics) -> ``y * affine[1] + affine[2]`` with
  ``affine[1] = gamma / sqrt(var + eps)`` and ``affine[2] = beta - mean * affine[1]``;
- RSign shift -> the threshold the producing layer packs its output with;
- RPReLU -> ``activation`` (shift, slope, shift).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from s2bnn_plugin.backbones.blocks import ResidualBinaryConv, Shortcut
from s2bnn_plugin.backbones.reactnet import ReActNetA, ReActNetBlock
from s2bnn_plugin.backbones.reactnet18 import ReActNet18, ReActResBlock
from s2bnn_plugin.errors import S2BNNError
from s2bnn_plugin.export.format import FORMAT, FORMAT_VERSION
from s2bnn_plugin.export.network import PackedNetwork
from s2bnn_plugin.nn import QuantConv2d, RPReLU, RSign, ScaledSign

__all__ = ["PackError", "pack"]


class PackError(S2BNNError, ValueError):
    """The model (or one of its layers) cannot be bit-packed."""


class _Walker:
    """Collects arrays and unit specs while recording which modules were understood."""

    def __init__(self, model: nn.Module) -> None:
        self.names = {m: n for n, m in model.named_modules()}
        self.seen: set[str] = set()
        self.arrays: dict[str, np.ndarray] = {}
        self.units: list[dict] = []

    def name(self, m: nn.Module) -> str:
        return self.names.get(m, "?") or "<model>"

    def expect(self, m: object, kind: type | tuple[type, ...], where: str) -> None:
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if type(m) not in kinds:
            want = " or ".join(k.__name__ for k in kinds)
            raise PackError(
                f"cannot pack layer {where!r}: it is {type(m).__name__}, expected {want}"
            )

    def visit(self, *modules: nn.Module | None) -> None:
        for m in modules:
            if m is not None:
                self.seen.add(self.names.get(m, ""))

    def leftovers(self, model: nn.Module) -> None:
        for name, m in model.named_modules():
            if name not in self.seen:
                raise PackError(
                    f"cannot pack layer {name!r} ({type(m).__name__}): it is not part of the "
                    "reactnet_a / reactnet18 structure the packed kernels implement"
                )


def _f32(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().to(torch.float32).cpu().numpy())


def _batchnorm(w: _Walker, bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(multiplier, offset) of an eval-mode BatchNorm2d, computed in float32 like PyTorch's."""
    where = w.name(bn)
    w.expect(bn, nn.BatchNorm2d, where)
    if bn.running_mean is None or bn.running_var is None:
        raise PackError(f"cannot pack {where!r}: BatchNorm without running statistics")
    w.visit(bn)
    var = bn.running_var.detach().float()
    mean = bn.running_mean.detach().float()
    invstd = 1.0 / torch.sqrt(var + bn.eps)
    gamma = bn.weight.detach().float() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.detach().float() if bn.bias is not None else torch.zeros_like(var)
    mul = invstd * gamma
    return mul, beta - mean * mul


def _check_conv(w: _Walker, conv: nn.Conv2d, kernels: Iterable[int], strides: Iterable[int]):
    where = w.name(conv)
    k, s = conv.kernel_size, conv.stride
    ok = (
        k[0] == k[1]
        and k[0] in kernels
        and s[0] == s[1]
        and s[0] in strides
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and conv.padding[0] == conv.padding[1]
    )
    if not ok:
        raise PackError(
            f"cannot pack {where!r}: unsupported convolution settings (kernel {k}, stride {s}, "
            f"padding {conv.padding}, dilation {conv.dilation}, groups {conv.groups})"
        )


def _stem(w: _Walker, model: nn.Module) -> dict:
    stem = model.stem
    w.expect(stem, nn.Sequential, "stem")
    w.visit(stem)
    layers = list(stem)
    if len(layers) not in (2, 3):
        raise PackError("cannot pack 'stem': expected Conv2d, BatchNorm2d[, MaxPool2d]")
    conv, bn = layers[0], layers[1]
    w.expect(conv, nn.Conv2d, w.name(conv))
    _check_conv(w, conv, range(1, 16, 2), range(1, 9))
    w.visit(conv)
    mul, add = _batchnorm(w, bn)
    if conv.bias is not None:  # (conv + b) * mul + add
        add = conv.bias.detach().float() * mul + add
    maxpool = len(layers) == 3
    if maxpool:
        mp = layers[2]
        w.expect(mp, nn.MaxPool2d, w.name(mp))
        settings = (mp.kernel_size, mp.stride, mp.padding, mp.dilation, mp.ceil_mode)
        if settings not in ((3, 2, 1, 1, False), ((3, 3), (2, 2), (1, 1), (1, 1), False)):
            raise PackError(f"cannot pack {w.name(mp)!r}: only MaxPool2d(3, 2, padding=1)")
        w.visit(mp)
    w.arrays["stem.weight"] = _f32(conv.weight.permute(1, 2, 3, 0))
    w.arrays["stem.affine"] = _f32(torch.stack([mul, add]))
    return {
        "kernel": conv.kernel_size[0],
        "stride": conv.stride[0],
        "padding": conv.padding[0],
        "out_channels": conv.out_channels,
        "maxpool": maxpool,
        "name": "stem",
    }


def _rprelu(w: _Walker, act: nn.Module, channels: int) -> np.ndarray:
    where = w.name(act)
    w.expect(act, RPReLU, where)
    slope = act.prelu.weight.detach().float()
    if slope.numel() not in (1, channels) or act.shift_in.bias.numel() != channels:
        raise PackError(f"cannot pack {where!r}: RPReLU has the wrong number of channels")
    w.visit(act, act.shift_in, act.prelu, act.shift_out)
    rows = [act.shift_in.bias.detach().float(), slope.expand(channels), act.shift_out.bias.float()]
    return _f32(torch.stack([r.detach() for r in rows]))


def _shortcut(w: _Walker, sc: Shortcut, stride: int) -> tuple[str, dict[str, np.ndarray]]:
    where = w.name(sc)
    w.expect(sc, Shortcut, where)
    w.visit(sc)
    if sc.pool is not None:
        p = sc.pool
        w.expect(p, nn.AvgPool2d, w.name(p))
        good = (
            p.kernel_size in (2, (2, 2))
            and p.stride in (2, (2, 2))
            and p.padding in (0, (0, 0))
            and p.ceil_mode
            and not p.count_include_pad
            and p.divisor_override is None
        )
        if not good or stride != 2:
            raise PackError(
                f"cannot pack {w.name(p)!r}: only AvgPool2d(2, 2, ceil_mode=True, "
                "count_include_pad=False) on a stride-2 unit"
            )
        w.visit(p)
    elif stride != 1:
        raise PackError(f"cannot pack {where!r}: a stride-{stride} unit needs a pooled shortcut")
    if sc.proj is None:
        return ("avgpool" if sc.pool is not None else "identity"), {}
    w.expect(sc.proj, nn.Conv2d, w.name(sc.proj))
    _check_conv(w, sc.proj, (1,), (1,))
    w.visit(sc.proj)
    mul, add = _batchnorm(w, sc.bn)
    if sc.proj.bias is not None:
        add = sc.proj.bias.detach().float() * mul + add
    arrays = {
        "proj_weight": _f32(sc.proj.weight[:, :, 0, 0].t()),
        "proj_affine": _f32(torch.stack([mul, add])),
    }
    return "projection", arrays


def _binary_conv(w: _Walker, unit: ResidualBinaryConv) -> dict:
    """Per-unit arrays of one ResidualBinaryConv (before groups are merged)."""
    where = w.name(unit)
    w.expect(unit, ResidualBinaryConv, where)
    conv = unit.conv
    cwhere = w.name(conv)
    w.expect(conv, QuantConv2d, cwhere)
    _check_conv(w, conv, (1, 3), (1, 2))
    k = conv.kernel_size[0]
    if conv.padding[0] != k // 2 or conv.bias is not None:
        raise PackError(f"cannot pack {cwhere!r}: needs padding {k // 2} and no bias")
    rsign = conv.input_quantizer
    if type(rsign) is not RSign or rsign.sign is None or not rsign.sign.binary:
        raise PackError(
            f"cannot pack {cwhere!r}: its input quantizer is {type(rsign).__name__}, expected "
            "RSign (binary activations)"
        )
    if conv.kernel_quantizer is None:
        raise PackError(
            f"cannot pack {cwhere!r}: it has real-valued weights (binary_weights=False, step 1 of "
            "the two-step recipe); only students with binary weights can be bit-packed"
        )
    w.expect(conv.kernel_quantizer, ScaledSign, f"{cwhere}.kernel_quantizer")
    w.visit(unit, conv, rsign, rsign.shift, rsign.sign, conv.kernel_quantizer)
    weight = conv.weight.detach().float()
    scale = ScaledSign.scale(weight).flatten()
    mul, add = _batchnorm(w, unit.bn)
    residual, proj = _shortcut(w, unit.shortcut, conv.stride[0])
    return {
        "name": where,
        "kernel": k,
        "stride": conv.stride[0],
        "in_channels": conv.in_channels,
        "out_channels": conv.out_channels,
        "residual": residual,
        "negative": ~(weight >= 0),  # binary_sign: +1 where w >= 0 (NaN gives -1)
        "rsign": rsign.shift.bias.detach().float(),
        "affine": torch.stack([scale, mul, add]),
        "proj": proj,
    }


def _add_unit(w: _Walker, parts: list[dict], act: nn.Module, name: str) -> None:
    """One packed unit: ``len(parts)`` binary convs reading the same input (concatenated)."""
    from s2bnn_plugin.kernels import pack_weights

    first = parts[0]
    for p in parts[1:]:
        same = all(p[key] == first[key] for key in ("kernel", "stride", "in_channels"))
        same = same and p["out_channels"] == first["out_channels"]
        if not same or p["residual"] == "projection" or first["residual"] == "projection":
            raise PackError(f"cannot pack {p['name']!r}: concatenated units must match")
    groups, cg = len(parts), first["out_channels"]
    negative = torch.cat([p["negative"] for p in parts]).to(torch.uint8).numpy()
    i = len(w.units)
    w.arrays[f"units.{i}.weight"] = pack_weights(np.ascontiguousarray(negative), groups)
    w.arrays[f"units.{i}.rsign"] = _f32(torch.stack([p["rsign"] for p in parts]))
    w.arrays[f"units.{i}.affine"] = _f32(torch.cat([p["affine"] for p in parts], dim=1))
    w.arrays[f"units.{i}.activation"] = _rprelu(w, act, groups * cg)
    for key, value in first["proj"].items():
        w.arrays[f"units.{i}.{key}"] = value
    w.units.append(
        {
            "name": name,
            "kernel": first["kernel"],
            "stride": first["stride"],
            "in_channels": first["in_channels"],
            "groups": groups,
            "group_channels": cg,
            "residual": first["residual"],
            "activation": True,
        }
    )


def _blocks(w: _Walker, model: nn.Module, progress: bool) -> None:
    from tqdm.auto import tqdm

    w.expect(model.blocks, nn.Sequential, "blocks")
    w.visit(model.blocks)
    for block in tqdm(list(model.blocks), desc="packing blocks", disable=not progress):
        bname = w.name(block)
        if type(block) is ReActNetBlock:
            w.visit(block)
            _add_unit(w, [_binary_conv(w, block.conv3x3)], block.act3x3, f"{bname}.conv3x3")
            w.expect(block.conv1x1, nn.ModuleList, f"{bname}.conv1x1")
            w.visit(block.conv1x1)
            parts = [_binary_conv(w, u) for u in block.conv1x1]
            if not parts:
                raise PackError(f"cannot pack {bname!r}: no 1x1 convolution")
            _add_unit(w, parts, block.act1x1, f"{bname}.conv1x1")
        elif type(block) is ReActResBlock:
            w.visit(block)
            _add_unit(w, [_binary_conv(w, block.conv_a)], block.act_a, f"{bname}.conv_a")
            _add_unit(w, [_binary_conv(w, block.conv_b)], block.act_b, f"{bname}.conv_b")
        else:
            raise PackError(
                f"cannot pack layer {bname!r}: it is {type(block).__name__}, expected "
                "ReActNetBlock or ReActResBlock"
            )


def pack(model: nn.Module, *, progress: bool = False) -> PackedNetwork:
    """Bit-pack an eval-mode ``reactnet_a`` / ``reactnet18`` with binary weights.

    Raises :class:`PackError` naming the first layer that cannot be packed (training mode, real
    weights, an unknown or modified module).
    """
    kinds = {ReActNetA: "reactnet_a", ReActNet18: "reactnet18"}
    if type(model) not in kinds:
        raise PackError(
            f"cannot pack a {type(model).__name__}: supported backbones are reactnet_a and "
            "reactnet18 (s2bnn_plugin.backbones)"
        )
    training = [n or "<model>" for n, m in model.named_modules() if m.training]
    if training:
        raise PackError(
            f"cannot pack a model in training mode (layer {training[0]!r} has training=True; "
            "BatchNorm would use batch statistics); call model.eval() first"
        )
    w = _Walker(model)
    w.visit(model)
    with torch.no_grad():
        stem = _stem(w, model)
        _blocks(w, model, progress)
        w.expect(model.pool, nn.AdaptiveAvgPool2d, "pool")
        if model.pool.output_size not in (1, (1, 1)):
            raise PackError("cannot pack 'pool': only a global average pool (output size 1)")
        w.visit(model.pool)
    w.leftovers(model)
    spec = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "backbone": {"name": kinds[type(model)], "kwargs": dataclasses.asdict(model.config)},
        "in_channels": model.stem[0].in_channels,
        "num_features": int(model.num_features),
        "stem": stem,
        "units": w.units,
    }
    return PackedNetwork(spec, w.arrays)
