"""Teachers stored as torchvision ResNet weights: MoCo v2 checkpoints and plain state dicts.

The architecture is read off the weights (block type, blocks per stage, width, stem, head), so any
torchvision-layout ResNet (18 to 152, wide variants, a 3x3 CIFAR stem, a Linear or MLP ``fc``)
loads without naming it.
"""

from __future__ import annotations

import re
import warnings

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from s2bnn_plugin.checkpoints import (
    SOLO_CIFAR_STEM_PADDING,
    state_dict_mismatch,
    use_cifar_stem,
)
from s2bnn_plugin.teachers.base import Teacher, TeacherError

__all__ = ["MOCO_PREFIX", "build_resnet", "looks_like_resnet", "resnet_teacher"]

MOCO_PREFIX = "module.encoder_q."


def looks_like_resnet(state: dict[str, torch.Tensor]) -> bool:
    return "conv1.weight" in state and "layer1.0.conv1.weight" in state


def _head(state: dict[str, torch.Tensor]) -> nn.Module | None:
    """The ``fc`` as stored: a Linear, or an MLP of Linears and ReLUs (MoCo v2's 2048-2048-128)."""
    if "fc.weight" in state:
        w = state["fc.weight"]
        return nn.Linear(w.shape[1], w.shape[0], bias="fc.bias" in state)
    indices = sorted({int(m.group(1)) for k in state if (m := re.match(r"fc\.(\d+)\.weight", k))})
    if not indices:
        return None
    layers: list[nn.Module] = []
    for pos in range(indices[-1] + 1):
        key = f"fc.{pos}.weight"
        if key in state:
            w = state[key]
            if w.dim() != 2:
                raise TeacherError(f"unsupported teacher head: {key} has shape {tuple(w.shape)}")
            layers.append(nn.Linear(w.shape[1], w.shape[0], bias=f"fc.{pos}.bias" in state))
        else:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def build_resnet(state: dict[str, torch.Tensor], stem_padding: int | None = None) -> ResNet:
    """A torchvision ResNet shaped like ``state`` (weights not loaded), ``fc`` as stored.

    A 3x3 (CIFAR) stem's padding is not recorded in a state dict: ``stem_padding`` sets it;
    ``None`` takes 1, the usual CIFAR ResNet, with a warning (solo-learn's use 2).
    """
    bottleneck = "layer1.0.conv3.weight" in state
    layers = []
    for stage in range(1, 5):
        blocks = {int(m.group(1)) for k in state if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
        if not blocks:
            raise TeacherError(f"ResNet weights without layer{stage}: not a torchvision ResNet")
        layers.append(max(blocks) + 1)
    stem = state["conv1.weight"]
    inplanes = stem.shape[0]
    width = state["layer1.0.conv1.weight"].shape[0]
    width_per_group = width * 64 // inplanes if bottleneck else 64
    model = ResNet(
        Bottleneck if bottleneck else BasicBlock, layers, width_per_group=width_per_group
    )
    if stem.shape[-1] == 3:  # CIFAR stem: 3x3 conv, no max-pool
        if stem_padding is None:
            warnings.warn(
                "teacher conv1 is 3x3 and a state dict does not record its padding: using 1, "
                "the usual CIFAR ResNet. solo-learn's CIFAR ResNets use "
                f"{SOLO_CIFAR_STEM_PADDING}: load their .ckpt with its args.json (format solo) "
                f"or set method_kwargs.teacher.stem_padding={SOLO_CIFAR_STEM_PADDING}.",
                stacklevel=3,
            )
            stem_padding = 1
        use_cifar_stem(model, stem_padding, channels=inplanes)
    elif stem_padding is not None:
        raise TeacherError(
            f"teacher.stem_padding={stem_padding} applies to 3x3 (CIFAR) stems only; this "
            f"teacher's conv1 is {stem.shape[-2]}x{stem.shape[-1]}: leave stem_padding unset"
        )
    head = _head(state)
    model.fc = head if head is not None else nn.Identity()
    return model


def resnet_teacher(
    state: dict[str, torch.Tensor], output: str, source: str, stem_padding: int | None = None
) -> Teacher:
    """Build, load (strictly: every key must match) and wrap a ResNet teacher."""
    model = build_resnet(state, stem_padding)
    mismatch = state_dict_mismatch(model.state_dict(), state)
    if mismatch:
        raise TeacherError(
            f"{source}: the weights do not fit a torchvision ResNet: keys {mismatch}"
        )
    model.load_state_dict(state, strict=True)
    head = None if isinstance(model.fc, nn.Identity) else model.fc
    model.fc = nn.Identity()
    return Teacher(model, head, output=output, source=source)
