"""Load a trained backbone: a solo-learn checkpoint or a plain state dict (the one loader that
``s2bnn pack``, ``s2bnn check``, ``s2bnn eval`` and the demo share).

A solo-learn pretraining ``.ckpt`` stores weights only (``state_dict`` with ``backbone.*`` keys,
next to the projector, momentum encoder, ...); the run's ``args.json`` beside it names the
backbone (``backbone.name``, ``backbone.kwargs``). A plain state dict needs the name and kwargs
given explicitly. Files are read with ``torch.load(weights_only=True)``: no code runs on load.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from s2bnn_plugin.backbones import create_backbone, list_backbones
from s2bnn_plugin.compat.solo import SoloLearnNotFound, require_solo
from s2bnn_plugin.errors import S2BNNError

__all__ = ["CheckpointError", "CheckpointNotFound", "load_backbone", "read_args_json"]


class CheckpointError(S2BNNError, ValueError):
    """A checkpoint that cannot be read or does not fit the backbone it names."""


class CheckpointNotFound(S2BNNError, FileNotFoundError):
    """A checkpoint (or the ``args.json`` beside it) that is not there."""


PREFIXES = ("backbone.", "module.backbone.", "module.")


def read_args_json(ckpt: Path) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """``backbone.name``, ``backbone.kwargs`` and the whole ``args.json`` beside ``ckpt``."""
    path = ckpt.parent / "args.json"
    if not path.is_file():
        raise CheckpointNotFound(
            f"{ckpt}: no args.json beside it to name the backbone; pass --backbone NAME "
            "[--backbone-kwargs JSON]"
        )
    try:
        args = json.loads(path.read_text())
        backbone = args["backbone"]
        name, kwargs = backbone["name"], dict(backbone.get("kwargs") or {})
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: not a solo-learn args.json with backbone.name ({e})") from e
    if not isinstance(name, str):
        raise CheckpointError(f"{path}: backbone.name must be a string, got {name!r}")
    return name, kwargs, args


def _build(name: str, kwargs: dict[str, Any], args: dict[str, Any]) -> nn.Module:
    """The plugin's backbone ``name``, or solo-learn's (e.g. a real ResNet teacher) with
    solo-learn's ResNet adjustments (no ``fc``; the 3x3 stem on CIFAR)."""
    if name in list_backbones():
        return create_backbone(name, **kwargs)
    try:
        registry = require_solo().BaseMethod._BACKBONES
    except SoloLearnNotFound as e:
        raise CheckpointError(
            f"unknown backbone {name!r}; the plugin has {list_backbones()} (solo-learn's "
            f"backbones need solo-learn: {e})"
        ) from e
    if name not in registry:
        raise CheckpointError(
            f"unknown backbone {name!r}; the plugin has {list_backbones()}, solo-learn has "
            f"{sorted(registry)}"
        )
    model = registry[name](args.get("method"), **kwargs)
    if name.startswith("resnet"):
        model.fc = nn.Identity()
        if (args.get("data") or {}).get("dataset") in ("cifar10", "cifar100"):
            model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=2, bias=False)
            model.maxpool = nn.Identity()
    return model


def _state_dict(obj: Any, where: Path) -> dict[str, torch.Tensor]:
    """The backbone's tensors out of a Lightning checkpoint or a (prefixed) state dict."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{where}: neither a checkpoint with 'state_dict' nor a state dict")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    for prefix in PREFIXES:
        picked = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        if picked:
            return picked
    return tensors


def load_backbone(
    path: str | os.PathLike,
    backbone: str | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
) -> tuple[nn.Module, str, dict[str, Any]]:
    """Build the backbone and load its weights (``strict=True``); returns it in eval mode with
    its name and kwargs. ``backbone`` / ``backbone_kwargs`` override ``args.json``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFound(f"checkpoint {path} does not exist")
    args: dict[str, Any] = {}
    if backbone is None:
        name, kwargs, args = read_args_json(path)
        if backbone_kwargs is not None:
            kwargs = backbone_kwargs
    else:
        name, kwargs = backbone, dict(backbone_kwargs or {})
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle / zip errors: report the file, not a traceback
        raise CheckpointError(f"{path}: cannot read it as a torch checkpoint ({e})") from e
    state = _state_dict(obj, path)
    model = _build(name, kwargs, args)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(
            f"{path}: the weights do not fit the backbone {name}({kwargs}) -- wrong backbone "
            f"name or kwargs? {str(e).splitlines()[0]}"
        ) from e
    return model.eval(), name, kwargs
