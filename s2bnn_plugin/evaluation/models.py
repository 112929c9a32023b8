"""Models to evaluate: a solo-learn checkpoint (PyTorch engine) or a packed file (CPU engine).

A solo-learn ``.ckpt`` holds no architecture, only weights; the run's ``args.json``, which
solo-learn writes beside it, names the backbone and its keyword arguments. The backbone is
rebuilt from those, the ``backbone.`` weights are loaded with ``strict=True`` (solo-learn's own
``main_linear`` loads with ``strict=False``, which silently skips misnamed weights), and
checkpoints are read with ``weights_only=True`` (no pickled code runs).

The packed engine lives in ``s2bnn_plugin.export``, imported only when it is asked for.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from s2bnn_plugin.backbones import BACKBONES, create_backbone
from s2bnn_plugin.evaluation.features import FeatureExtractor, TorchExtractor

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "ENGINES",
    "is_checkpoint",
    "load_engines",
    "load_solo_backbone",
    "read_solo_args",
]

#: Files read as solo-learn checkpoints; anything else is taken for a packed network file.
CHECKPOINT_SUFFIXES = (".ckpt",)
ENGINES = ("auto", "packed", "torch", "both")
_PREFIX = "backbone."


def is_checkpoint(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix in CHECKPOINT_SUFFIXES


def read_solo_args(ckpt: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``args.json`` of a solo-learn run, found beside its checkpoint."""
    path = Path(ckpt).parent / "args.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{ckpt}: no args.json beside it. solo-learn writes the run's args.json next to its "
            "checkpoints; copy it into the checkpoint's folder (it names the backbone)"
        )
    try:
        args = json.loads(path.read_text())
        backbone = args["backbone"]["name"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a solo-learn args.json with backbone.name ({e})") from e
    if not isinstance(backbone, str):
        raise ValueError(f"{path}: backbone.name must be a string, got {backbone!r}")
    return args


def _build(args: dict[str, Any]) -> nn.Module:
    """The backbone ``args`` describe: the plugin's own, or solo-learn's (e.g. a ResNet teacher),
    with solo-learn's ResNet adjustments (no ``fc``; a 3x3 stem on CIFAR)."""
    name = args["backbone"]["name"]
    kwargs = dict(args["backbone"].get("kwargs") or {})
    if name in BACKBONES:
        return create_backbone(name, **kwargs)
    from s2bnn_plugin.solo import require_solo

    registry = require_solo().BaseMethod._BACKBONES
    if name not in registry:
        raise ValueError(
            f"unknown backbone {name!r} in args.json (the plugin has {sorted(BACKBONES)}; "
            f"solo-learn has {sorted(registry)})"
        )
    model = registry[name](args.get("method"), **kwargs)
    if name.startswith("resnet"):
        model.fc = nn.Identity()
        if (args.get("data") or {}).get("dataset") in ("cifar10", "cifar100"):
            model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=2, bias=False)
            model.maxpool = nn.Identity()
    return model


def load_solo_backbone(ckpt: str | os.PathLike[str]) -> nn.Module:
    """The eval-mode backbone of a solo-learn checkpoint (see the module docstring)."""
    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise FileNotFoundError(f"checkpoint {ckpt} does not exist")
    args = read_solo_args(ckpt)
    try:
        checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for unreadable files
        raise ValueError(f"cannot read {ckpt} as a weights-only torch checkpoint: {e}") from e
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{ckpt}: no state_dict inside; not a solo-learn checkpoint")
    weights = {k[len(_PREFIX) :]: v for k, v in state.items() if k.startswith(_PREFIX)}
    if not weights:
        raise ValueError(f"{ckpt}: no '{_PREFIX}*' weights in its state_dict")
    model = _build(args)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise ValueError(
            f"{ckpt}: the weights do not fit the backbone its args.json describes "
            f"({args['backbone']['name']}, {args['backbone'].get('kwargs') or {}}): {e}"
        ) from e
    return model.eval()


def _export() -> Any:
    try:
        import s2bnn_plugin.export as export
    except ImportError as e:
        raise RuntimeError(
            f"the packed engine needs s2bnn_plugin.export and its Numba kernels ({e}); use "
            "--engine torch with a solo-learn checkpoint meanwhile"
        ) from e
    return export


def load_engines(
    model: str | os.PathLike[str], engine: str = "auto"
) -> tuple[dict[str, FeatureExtractor], list[str]]:
    """Feature extractors by engine name for ``model``, and notes on choices made.

    A packed file runs on the ``packed`` engine only (it holds no float weights). A checkpoint
    runs on ``torch``, on ``packed`` (packed in memory), or ``both``; ``auto`` means ``packed``
    for a packed file and ``both`` for a checkpoint, falling back to ``torch`` alone when the
    backbone cannot be packed (e.g. a real-valued teacher).
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    path = Path(model)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    if not is_checkpoint(path):
        if engine in ("torch", "both"):
            raise ValueError(
                f"{path} is a packed network (no float weights): the torch engine needs the "
                f"solo-learn checkpoint ({'/'.join(CHECKPOINT_SUFFIXES)}) it was packed from"
            )
        return {"packed": _export().load(path)}, []
    module = load_solo_backbone(path)
    engines: dict[str, FeatureExtractor] = {"torch": TorchExtractor(module)}
    notes: list[str] = []
    if engine in ("packed", "both"):
        engines["packed"] = _export().pack(module)
    elif engine == "auto":
        try:
            engines["packed"] = _export().pack(module)
        except (RuntimeError, ValueError, TypeError) as e:  # not packable, or no kernels
            notes.append(f"torch engine only: {e}")
    if engine == "packed":
        del engines["torch"]
    return engines, notes
