"""Load a trained backbone: a solo-learn checkpoint or a plain state dict (the one loader that
``s2bnn pack``, ``s2bnn check``, ``s2bnn eval`` and the demo share).

A solo-learn pretraining ``.ckpt`` stores weights only (``state_dict`` with ``backbone.*`` keys,
next to the projector, momentum encoder, ...); the run's ``args.json`` beside it names the
backbone (``backbone.name``, ``backbone.kwargs``). A plain state dict needs the name and kwargs
given explicitly. Files are read with ``torch.load(weights_only=True)``: no code runs on load.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from s2bnn_plugin.backbones import BackboneError, BinaryBackbone, create_backbone, list_backbones
from s2bnn_plugin.compat.solo import SoloLearnNotFound, require_solo
from s2bnn_plugin.errors import S2BNNError

__all__ = [
    "CheckpointError",
    "CheckpointNotFound",
    "load_backbone",
    "read_args_json",
    "require_backbone",
]


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


def _build(
    name: str, kwargs: dict[str, Any], args: dict[str, Any], source: tuple[str, str]
) -> nn.Module:
    """The plugin's backbone ``name``, or solo-learn's (e.g. a real ResNet teacher) with
    solo-learn's ResNet adjustments (no ``fc``; the 3x3 stem on CIFAR). ``source``: where the
    name and kwargs came from and how to change them, for the error messages."""
    where, fix = source
    if name in list_backbones():
        try:
            return create_backbone(name, **kwargs)
        except BackboneError as e:
            raise CheckpointError(f"{where}: {e}; {fix}") from e
    try:
        registry = require_solo().BaseMethod._BACKBONES
    except SoloLearnNotFound as e:
        raise CheckpointError(
            f"{where}: unknown backbone {name!r}; the plugin has {list_backbones()} (solo-learn's "
            f"backbones need solo-learn: {e})"
        ) from e
    if name not in registry:
        close = difflib.get_close_matches(name, [*list_backbones(), *registry], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise CheckpointError(
            f"{where}: unknown backbone {name!r}{hint}; the plugin has {list_backbones()}, "
            f"solo-learn has {sorted(registry)}; {fix}"
        )
    try:
        model = registry[name](args.get("method"), **kwargs)
    except (TypeError, ValueError) as e:  # solo-learn's (timm's, torchvision's) factories
        raise CheckpointError(
            f"{where}: solo-learn's {name}({kwargs}) cannot be built: {e}; {fix}"
        ) from e
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
        source = (
            f"{path.parent / 'args.json'}",
            "correct backbone.name / backbone.kwargs there (s2bnn pack and check also take "
            "--backbone NAME --backbone-kwargs JSON instead)",
        )
        if backbone_kwargs is not None:
            kwargs = backbone_kwargs
            source = ("--backbone-kwargs", "correct --backbone-kwargs")
    else:
        name, kwargs = backbone, dict(backbone_kwargs or {})
        source = ("--backbone / --backbone-kwargs", "correct --backbone / --backbone-kwargs")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle / zip errors: report the file, not a traceback
        raise CheckpointError(f"{path}: cannot read it as a torch checkpoint ({e})") from e
    state = _state_dict(obj, path)
    model = _build(name, kwargs, args, source)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(
            f"{path}: the weights do not fit the backbone {name}({kwargs}) -- wrong backbone "
            f"name or kwargs? {str(e).splitlines()[0]}"
        ) from e
    return model.eval(), name, kwargs


def require_backbone(
    model: nn.Module, where: str | os.PathLike, name: str, kwargs: Mapping[str, Any]
) -> None:
    """Refuse a loaded ``model`` that is not the binary backbone ``name(**kwargs)`` (what a packed
    file records): comparing features of two different networks would report a meaningless
    disagreement, or an agreement by chance."""
    expected = f"{name}({dict(kwargs)})"
    if not isinstance(model, BinaryBackbone):
        raise CheckpointError(
            f"{where} holds a {type(model).__name__}, not a binary backbone; the packed file was "
            f"packed from a {expected}: give the checkpoint it was packed from"
        )
    config = getattr(model, "config", None)
    got = {k: getattr(config, k, None) for k in kwargs}
    differ = [f"{k} {got[k]!r} vs {v!r}" for k, v in kwargs.items() if got[k] != v]
    if model.name != name or differ:
        detail = f" (differing: {', '.join(differ)})" if differ else ""
        raise CheckpointError(
            f"{where} holds a {model.name}({got}), the packed file a {expected}{detail}: give "
            "the checkpoint the file was packed from"
        )
