"""The built-in pack rules: one per module type that the plugin's backbones are made of.

Containers (a :class:`~s2bnn_plugin.backbones.BinaryBackbone`, ``nn.Sequential``, the ReActNet
blocks) walk their children in the order their ``forward`` runs them; layers add their part of
the packed chain (:class:`~s2bnn_plugin.packing.walker.Packer`): the stem (``Conv2d``,
``BatchNorm2d``, an optional ``MaxPool2d``), binary units (:class:`ResidualBinaryConv`, or a
ReActNet-A block's concatenated 1x1 convolutions), the ``RPReLU`` after a unit, the global
average pool. A new block type needs a rule here or in the code that defines it (see
CONTRIBUTING.md, "Adding a backbone").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from s2bnn_plugin.backbones.base import BinaryBackbone
from s2bnn_plugin.backbones.blocks import ResidualBinaryConv, Shortcut
from s2bnn_plugin.backbones.reactnet import ReActNetBlock
from s2bnn_plugin.backbones.reactnet18 import ReActResBlock
from s2bnn_plugin.nn import QuantConv2d, RPReLU, RSign, ScaledSign
from s2bnn_plugin.packing.walker import Packer, pack_rule
from s2bnn_plugin.runtime.model import BackboneRef, Stem
from s2bnn_plugin.runtime.units.binary_conv import BinaryConv, Residual

__all__ = [
    "ShortcutPart",
    "UnitPart",
    "pack_backbone",
    "pack_binary_unit",
    "pack_global_pool",
    "pack_reactnet_a_block",
    "pack_rprelu",
    "pack_sequence",
    "pack_stem_batchnorm",
    "pack_stem_conv",
    "pack_stem_maxpool",
    "pack_two_unit_block",
    "binary_unit_part",
    "check_conv",
    "fold_batchnorm",
]


def _f32(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().to(torch.float32).cpu().numpy())


# ---------------------------------------------------------------------------------- containers


@pack_rule(BinaryBackbone, subclasses=True)
def pack_backbone(packer: Packer, model: BinaryBackbone, path: str) -> None:
    """``BinaryBackbone.forward``: ``pool(blocks(stem(x)))``; the file names the backbone by its
    ``name`` (its factory in the registry) and ``config``, to rebuild it."""
    if not model.name:
        packer.fail(
            path,
            f"{type(model).__name__}.name is empty: set it to the name its factory is registered "
            "under (register_backbone), which the packed file records",
        )
    packer.backbone = BackboneRef(model.name, dataclasses.asdict(model.config))
    packer.walk_children(model, path, ("stem", "blocks", "pool"))


@pack_rule(nn.Sequential)
def pack_sequence(packer: Packer, seq: nn.Sequential, path: str) -> None:
    """``nn.Sequential``: its children, in order."""
    packer.walk_children(seq, path)


@pack_rule(ReActResBlock)
def pack_two_unit_block(packer: Packer, block: ReActResBlock, path: str) -> None:
    """``act_b(conv_b(act_a(conv_a(x))))``."""
    packer.walk_children(block, path, ("conv_a", "act_a", "conv_b", "act_b"))


@pack_rule(ReActNetBlock)
def pack_reactnet_a_block(packer: Packer, block: ReActNetBlock, path: str) -> None:
    """``act1x1(cat([u(x) for u in conv1x1]))`` after ``act3x3(conv3x3(x))``: the 1x1
    convolutions read the same input and become one unit of ``len(conv1x1)`` groups."""
    packer.walk(block.conv3x3, packer.child_path(path, "conv3x3"))
    packer.walk(block.act3x3, packer.child_path(path, "act3x3"))
    group_path = packer.child_path(path, "conv1x1")
    packer.expect(block.conv1x1, nn.ModuleList, group_path)
    packer.visit(block.conv1x1)
    if not len(block.conv1x1):
        packer.fail(path, "no 1x1 convolution")
    paths = [packer.child_path(group_path, str(i)) for i in range(len(block.conv1x1))]
    _add_units(packer, list(block.conv1x1), paths, group_path)
    packer.walk(block.act1x1, packer.child_path(path, "act1x1"))


# ---------------------------------------------------------------------------------- the stem


def check_conv(
    packer: Packer, conv: nn.Conv2d, path: str, kernels: Iterable[int], strides: Iterable[int]
) -> None:
    """Square kernel and stride among those given, symmetric zero padding, no dilation/groups."""
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
        packer.fail(
            path,
            f"unsupported convolution settings (kernel {k}, stride {s}, padding {conv.padding}, "
            f"dilation {conv.dilation}, groups {conv.groups})",
        )


def fold_batchnorm(packer: Packer, bn: nn.Module, path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(multiplier, offset) of an eval-mode BatchNorm2d, computed in float32 like PyTorch's."""
    packer.expect(bn, nn.BatchNorm2d, path)
    if bn.running_mean is None or bn.running_var is None:
        packer.fail(path, "BatchNorm without running statistics")
    packer.visit(bn)
    var = bn.running_var.detach().float()
    mean = bn.running_mean.detach().float()
    invstd = 1.0 / torch.sqrt(var + bn.eps)
    gamma = bn.weight.detach().float() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.detach().float() if bn.bias is not None else torch.zeros_like(var)
    mul = invstd * gamma
    return mul, beta - mean * mul


@pack_rule(nn.Conv2d)
def pack_stem_conv(packer: Packer, conv: nn.Conv2d, path: str) -> None:
    """The real stem convolution (the only real-valued convolution of the chain): it waits for
    the BatchNorm2d that must follow it."""
    if packer.stem is not None or packer.stem_conv is not None:
        packer.fail(path, "a real Conv2d after the stem; the packed format has one, the stem")
    check_conv(packer, conv, path, range(1, 16, 2), range(1, 9))
    packer.stem_conv = conv


@pack_rule(nn.BatchNorm2d)
def pack_stem_batchnorm(packer: Packer, bn: nn.BatchNorm2d, path: str) -> None:
    """The stem's BatchNorm, folded with the stem convolution's bias into ``stem.affine``."""
    conv = packer.stem_conv
    if conv is None:
        packer.fail(path, "a BatchNorm2d outside a unit must directly follow the stem's Conv2d")
    mul, add = fold_batchnorm(packer, bn, path)
    if conv.bias is not None:  # (conv + b) * mul + add
        add = conv.bias.detach().float() * mul + add
    stem = Stem(
        kernel=conv.kernel_size[0],
        stride=conv.stride[0],
        padding=conv.padding[0],
        out_channels=conv.out_channels,
        maxpool=False,
        name=packer.path(conv).rpartition(".")[0] or packer.path(conv),
        weight=_f32(conv.weight.permute(1, 2, 3, 0)),
        affine=_f32(torch.stack([mul, add])),
    )
    packer.set_stem(stem, conv.in_channels)
    packer.stem_conv = None


@pack_rule(nn.MaxPool2d)
def pack_stem_maxpool(packer: Packer, mp: nn.MaxPool2d, path: str) -> None:
    """ResNet's 3x3 stride-2 max pool, directly after the stem."""
    if packer.stem is None or packer.has_units or packer.stem.maxpool:
        packer.fail(path, "a MaxPool2d must directly follow the stem's BatchNorm2d")
    settings = (mp.kernel_size, mp.stride, mp.padding, mp.dilation, mp.ceil_mode)
    if settings not in ((3, 2, 1, 1, False), ((3, 3), (2, 2), (1, 1), (1, 1), False)):
        packer.fail(path, "only MaxPool2d(3, 2, padding=1)")
    packer.add_maxpool(path)


# ---------------------------------------------------------------------------------- binary units


class ShortcutPart(NamedTuple):
    """A unit's real-valued shortcut: its residual kind and a projection's arrays."""

    residual: Residual
    proj_weight: np.ndarray | None = None  # (cin, cout)
    proj_affine: np.ndarray | None = None  # (2, cout): the folded BatchNorm


class UnitPart(NamedTuple):
    """What the packed format needs of one :class:`ResidualBinaryConv` (before units that read
    the same input are merged into groups)."""

    name: str
    kernel: int
    stride: int
    in_channels: int
    out_channels: int
    negative: torch.Tensor  # (cout, cin, k, k) bool: the weight's sign is -1
    rsign: torch.Tensor  # (cin,) the input's threshold shift
    affine: torch.Tensor  # (3, cout): weight scale, folded BatchNorm
    shortcut: ShortcutPart


def _shortcut(packer: Packer, sc: Shortcut, path: str, stride: int) -> ShortcutPart:
    """The residual kind and projection arrays of a unit's real-valued shortcut."""
    packer.expect(sc, Shortcut, path)
    packer.visit(sc)
    if sc.pool is not None:
        p, ppath = sc.pool, f"{path}.pool"
        packer.expect(p, nn.AvgPool2d, ppath)
        good = (
            p.kernel_size in (2, (2, 2))
            and p.stride in (2, (2, 2))
            and p.padding in (0, (0, 0))
            and p.ceil_mode
            and not p.count_include_pad
            and p.divisor_override is None
        )
        if not good or stride != 2:
            packer.fail(
                ppath,
                "only AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False) on a stride-2 unit",
            )
        packer.visit(p)
    elif stride != 1:
        packer.fail(path, f"a stride-{stride} unit needs a pooled shortcut")
    if sc.proj is None:
        return ShortcutPart(Residual.AVGPOOL if sc.pool is not None else Residual.IDENTITY)
    packer.expect(sc.proj, nn.Conv2d, f"{path}.proj")
    check_conv(packer, sc.proj, f"{path}.proj", (1,), (1,))
    packer.visit(sc.proj)
    mul, add = fold_batchnorm(packer, sc.bn, f"{path}.bn")
    if sc.proj.bias is not None:
        add = sc.proj.bias.detach().float() * mul + add
    return ShortcutPart(
        Residual.PROJECTION,
        proj_weight=_f32(sc.proj.weight[:, :, 0, 0].t()),
        proj_affine=_f32(torch.stack([mul, add])),
    )


def binary_unit_part(packer: Packer, unit: nn.Module, path: str) -> UnitPart:
    """What the packed format needs of one :class:`ResidualBinaryConv`."""
    packer.expect(unit, ResidualBinaryConv, path)
    conv, cpath = unit.conv, f"{path}.conv"
    packer.expect(conv, QuantConv2d, cpath)
    check_conv(packer, conv, cpath, (1, 3), (1, 2))
    k = conv.kernel_size[0]
    if conv.padding[0] != k // 2 or conv.bias is not None:
        packer.fail(cpath, f"needs padding {k // 2} and no bias")
    rsign = conv.input_quantizer
    if type(rsign) is not RSign or rsign.sign is None or not rsign.sign.binary:
        packer.fail(
            cpath,
            f"its input quantizer is {type(rsign).__name__}, expected RSign (binary activations)",
        )
    if conv.kernel_quantizer is None:
        packer.fail(
            cpath,
            "it has real-valued weights (binary_weights=False, step 1 of the two-step recipe); "
            "only students with binary weights can be bit-packed",
        )
    packer.expect(conv.kernel_quantizer, ScaledSign, f"{cpath}.kernel_quantizer")
    packer.visit(unit, conv, rsign, rsign.shift, rsign.sign, conv.kernel_quantizer)
    weight = conv.weight.detach().float()
    scale = ScaledSign.scale(weight).flatten()
    mul, add = fold_batchnorm(packer, unit.bn, f"{path}.bn")
    return UnitPart(
        name=path,
        kernel=k,
        stride=conv.stride[0],
        in_channels=conv.in_channels,
        out_channels=conv.out_channels,
        negative=~(weight >= 0),  # binary_sign: +1 where w >= 0 (NaN gives -1)
        rsign=rsign.shift.bias.detach().float(),
        affine=torch.stack([scale, mul, add]),
        shortcut=_shortcut(packer, unit.shortcut, f"{path}.shortcut", conv.stride[0]),
    )


def _add_units(packer: Packer, units: list[nn.Module], paths: list[str], name: str) -> None:
    """One packed unit: ``len(units)`` binary convs reading the same input (concatenated)."""
    from s2bnn_plugin.kernels import pack_weights

    parts = [binary_unit_part(packer, u, p) for u, p in zip(units, paths, strict=True)]
    first = parts[0]
    shape = (first.kernel, first.stride, first.in_channels, first.out_channels)
    projection = Residual.PROJECTION
    for p in parts[1:]:
        same = (p.kernel, p.stride, p.in_channels, p.out_channels) == shape
        if not same or projection in (p.shortcut.residual, first.shortcut.residual):
            packer.fail(p.name, "concatenated units must match")
    negative = torch.cat([p.negative for p in parts]).to(torch.uint8).numpy()
    unit = BinaryConv(
        name=name,
        in_channels=first.in_channels,
        kernel=first.kernel,
        stride=first.stride,
        groups=len(parts),
        group_channels=first.out_channels,
        residual=first.shortcut.residual,
        has_activation=False,
        weight=pack_weights(np.ascontiguousarray(negative), len(parts)),
        rsign=_f32(torch.stack([p.rsign for p in parts])),
        affine=_f32(torch.cat([p.affine for p in parts], dim=1)),
        proj_weight=first.shortcut.proj_weight,
        proj_affine=first.shortcut.proj_affine,
    )
    packer.add_unit(unit)


@pack_rule(ResidualBinaryConv)
def pack_binary_unit(packer: Packer, unit: ResidualBinaryConv, path: str) -> None:
    """``BN(QuantConv(RSign(x))) + shortcut(x)``: one binary unit."""
    _add_units(packer, [unit], [path], path)


@pack_rule(RPReLU)
def pack_rprelu(packer: Packer, act: RPReLU, path: str) -> None:
    """The activation of the unit just before it (shift, per-channel slope, shift)."""
    if not packer.awaits_activation:
        packer.fail(path, "an RPReLU must directly follow a binary unit (ResidualBinaryConv)")
    channels = packer.channels
    slope = act.prelu.weight.detach().float()
    if slope.numel() not in (1, channels) or act.shift_in.bias.numel() != channels:
        packer.fail(path, "RPReLU has the wrong number of channels")
    packer.visit(act.shift_in, act.prelu, act.shift_out)
    rows = [act.shift_in.bias, slope.expand(channels), act.shift_out.bias]
    packer.add_activation(_f32(torch.stack([r.detach().float() for r in rows])), path)


# ---------------------------------------------------------------------------------- the head


@pack_rule(nn.AdaptiveAvgPool2d)
def pack_global_pool(packer: Packer, pool: nn.AdaptiveAvgPool2d, path: str) -> None:
    """The global average pool, last."""
    if pool.output_size not in (1, (1, 1)):
        packer.fail(path, "only a global average pool (output size 1)")
    packer.add_global_pool(path)
