"""Reading checkpoints: the one home of weights-only loading, key prefixes, a run's ``args.json``
and solo-learn's CIFAR stem, which teachers (:mod:`s2bnn_plugin.teachers`), ``s2bnn pack``,
``s2bnn check``, ``s2bnn eval`` and the demo share; and loading a trained backbone
(:func:`load_backbone`).

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
from typing import Any, NamedTuple

import torch
from torch import nn

from s2bnn_plugin.backbones import (
    BackboneError,
    BinaryBackbone,
    backbone_bytes,
    create_backbone,
    list_backbones,
)
from s2bnn_plugin.errors import S2BNNError, name_a_few
from s2bnn_plugin.memory import require_memory
from s2bnn_plugin.solo_learn.locate import SoloLearnNotFound
from s2bnn_plugin.solo_learn.registry import solo_backbones

__all__ = [
    "ARGS_JSON",
    "SOLO_CIFAR_STEM_PADDING",
    "BackboneSpec",
    "backbone_spec",
    "CheckpointError",
    "CheckpointNotFound",
    "UnreadableWeights",
    "drop_prefix",
    "find_args_json",
    "load_backbone",
    "load_weights",
    "read_args_json",
    "require_backbone",
    "select_prefix",
    "state_dict_mismatch",
    "state_dict_of",
    "use_cifar_stem",
]

#: The file solo-learn writes beside a run's checkpoints: the run's whole config.
ARGS_JSON = "args.json"
#: The padding of the 3x3 stem solo-learn gives its ResNets on CIFAR (the usual CIFAR ResNet: 1).
SOLO_CIFAR_STEM_PADDING = 2
CIFAR_DATASETS = ("cifar10", "cifar100")
#: Where a backbone's keys sit in the checkpoints the loader reads, tried in this order.
PREFIXES = ("backbone.", "module.backbone.", "module.")


class CheckpointError(S2BNNError, ValueError):
    """A checkpoint that cannot be read or does not fit the backbone it names."""


class CheckpointNotFound(S2BNNError, FileNotFoundError):
    """A checkpoint (or the ``args.json`` beside it) that is not there."""


class UnreadableWeights(CheckpointError):
    """A file ``torch.load(weights_only=True)`` refuses (not a torch file, or one holding
    pickled objects); ``error`` is torch's exception, :attr:`reason` its informative line."""

    def __init__(self, path: Path, error: Exception) -> None:
        super().__init__(f"{path}: cannot read it as a torch checkpoint ({error})")
        self.path = path
        self.error = error

    @property
    def reason(self) -> str:
        """The informative line of torch's error: for a weights-only refusal, the line naming
        the class it would not unpickle (torch's first line is generic advice)."""
        lines = [line.strip() for line in str(self.error).splitlines() if line.strip()]
        for line in lines:
            if "WeightsUnpickler error" in line:
                return line.split(" Please use")[0]
        return lines[0][:200] if lines else "no details"


class BackboneSpec(NamedTuple):
    """A backbone's registry name and keyword arguments, as ``args.json`` records them."""

    name: str
    kwargs: dict[str, Any]


def load_weights(path: Path) -> Any:
    """What the torch file ``path`` holds, read weights-only onto the CPU (no code runs); raises
    :class:`UnreadableWeights`. Callers check that the file exists (their messages differ)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle / zip errors: report the file, not a traceback
        raise UnreadableWeights(path, e) from e


def state_dict_of(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    """The state dict inside a checkpoint: ``state_dict`` (Lightning), ``model``, else the top
    level."""
    for key in ("state_dict", "model"):
        if isinstance(obj.get(key), dict):
            return obj[key]
    return obj


def select_prefix(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The entries whose keys start with ``prefix``, with it removed (the others dropped)."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def drop_prefix(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Every entry, ``prefix`` removed from the keys that start with it."""
    return {k.removeprefix(prefix): v for k, v in state.items()}


def find_args_json(ckpt: Path) -> Path | None:
    """The ``args.json`` beside ``ckpt``, if there is one."""
    candidate = ckpt.parent / ARGS_JSON
    return candidate if candidate.is_file() else None


def read_args_json(path: Path) -> dict[str, Any]:
    """A run's ``args.json`` (a JSON object); raises :class:`CheckpointError` for anything else."""
    try:
        args = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable solo-learn args.json ({e})") from e
    if not isinstance(args, dict):
        raise CheckpointError(f"{path}: not a solo-learn args.json (a {type(args).__name__})")
    return args


def backbone_spec(args: Mapping[str, Any], path: Path) -> BackboneSpec:
    """``backbone.name`` and ``backbone.kwargs`` of the ``args.json`` read from ``path``."""
    try:
        backbone = args["backbone"]
        name, kwargs = backbone["name"], dict(backbone.get("kwargs") or {})
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{path}: not a solo-learn args.json with backbone.name ({e})") from e
    if not isinstance(name, str):
        raise CheckpointError(f"{path}: backbone.name must be a string, got {name!r}")
    return BackboneSpec(name, kwargs)


def use_cifar_stem(
    model: nn.Module, padding: int = SOLO_CIFAR_STEM_PADDING, channels: int | None = None
) -> None:
    """Give a torchvision ResNet the CIFAR stem: a 3x3 stride-1 ``conv1`` (``channels`` outputs,
    by default as many as it has) and no max-pool, as solo-learn builds its ResNets on CIFAR."""
    out = model.conv1.out_channels if channels is None else channels
    model.conv1 = nn.Conv2d(3, out, kernel_size=3, stride=1, padding=padding, bias=False)
    model.maxpool = nn.Identity()


def _build(
    name: str, kwargs: dict[str, Any], args: dict[str, Any], source: tuple[str, str]
) -> nn.Module:
    """The plugin's backbone ``name``, or solo-learn's (e.g. a real ResNet teacher) with
    solo-learn's ResNet adjustments (no ``fc``; the 3x3 stem on CIFAR). ``source``: where the
    name and kwargs came from and how to change them, for the error messages."""
    where, fix = source
    if name in list_backbones():
        try:
            cost = backbone_bytes(name, **kwargs)
            require_memory(cost, f"{where}: the backbone {name}({kwargs})")
            return create_backbone(name, **kwargs)
        except BackboneError as e:
            raise CheckpointError(f"{where}: {e}; {fix}") from e
    try:
        registry = solo_backbones()
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
        if (args.get("data") or {}).get("dataset") in CIFAR_DATASETS:
            use_cifar_stem(model)
    return model


def _state_dict(obj: Any, where: Path) -> dict[str, torch.Tensor]:
    """The backbone's tensors out of a Lightning checkpoint or a (prefixed) state dict."""
    if isinstance(obj, dict):
        obj = state_dict_of(obj)
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{where}: neither a checkpoint with 'state_dict' nor a state dict")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    for prefix in PREFIXES:
        picked = select_prefix(tensors, prefix)
        if picked:
            return picked
    return tensors


def state_dict_mismatch(
    expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]
) -> str:
    """What keeps ``given`` from loading into a model whose state dict is ``expected`` (empty when
    it loads): the missing keys, the unexpected keys and the keys of another shape, a few of
    each named and the rest counted (a whole other network differs in hundreds)."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    reshaped = [
        f"{k} {tuple(given[k].shape)} vs {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(given))
        if tuple(given[k].shape) != tuple(expected[k].shape)
    ]
    parts = [
        f"{len(keys)} {what}: {name_a_few(keys, 3)}"
        for what, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("of another shape (checkpoint vs model)", reshaped),
        )
        if keys
    ]
    return "; ".join(parts)


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
        args_json = find_args_json(path)
        if args_json is None:
            raise CheckpointNotFound(
                f"{path}: no args.json beside it to name the backbone; pass --backbone NAME "
                "[--backbone-kwargs JSON]"
            )
        args = read_args_json(args_json)
        name, kwargs = backbone_spec(args, args_json)
        source = (
            f"{args_json}",
            "correct backbone.name / backbone.kwargs there (s2bnn pack and check also take "
            "--backbone NAME --backbone-kwargs JSON instead)",
        )
        if backbone_kwargs is not None:
            kwargs = backbone_kwargs
            source = ("--backbone-kwargs", "correct --backbone-kwargs")
    else:
        name, kwargs = backbone, dict(backbone_kwargs or {})
        source = ("--backbone / --backbone-kwargs", "correct --backbone / --backbone-kwargs")
    state = _state_dict(load_weights(path), path)
    model = _build(name, kwargs, args, source)
    mismatch = state_dict_mismatch(model.state_dict(), state)
    if mismatch:
        raise CheckpointError(
            f"{path}: the weights do not fit the backbone {name}({kwargs}) -- wrong backbone "
            f"name or kwargs? Keys {mismatch}"
        )
    model.load_state_dict(state, strict=True)
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
