"""Loading frozen real-valued teachers from the checkpoint formats researchers have.

Formats (detected, or forced with ``format=``):
- ``solo``: a solo-learn pretraining ``.ckpt`` with its ``args.json`` beside it (any method);
- ``moco``: a MoCo v2-style checkpoint, ``state_dict`` with ``module.encoder_q.*`` keys (the
  torchvision ResNet whose ``fc`` is the MLP head), as S2-BNN's paper used;
- ``torchvision``: a plain torchvision ResNet state dict (optionally under ``state_dict`` /
  ``model``, optionally with a ``module.`` prefix).

Everything is read with ``torch.load(..., weights_only=True)``: no pickle runs.
"""

from __future__ import annotations

from pathlib import Path

import torch

from s2bnn_plugin.errors import FileMissing
from s2bnn_plugin.teachers.base import OUTPUTS, Teacher, TeacherError
from s2bnn_plugin.teachers.resnet import MOCO_PREFIX, looks_like_resnet, resnet_teacher
from s2bnn_plugin.teachers.solo_checkpoint import find_args_json, solo_teacher

__all__ = ["FORMATS", "OUTPUTS", "Teacher", "TeacherError", "detect_format", "load_teacher"]

FORMATS = ("auto", "solo", "moco", "torchvision")


def _reason(exc: Exception) -> str:
    """The informative line of torch.load's error (for weights-only refusals, the line naming
    the class it would not unpickle; torch's first line is generic advice)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if "WeightsUnpickler error" in line:
            return line.split(" Please use")[0]
    return lines[0][:200] if lines else "no details"


def _read(path: Path) -> dict:
    if not path.exists():
        raise FileMissing(
            f"teacher checkpoint {path} does not exist; set method_kwargs.teacher.ckpt to the "
            "path of a trained teacher (see README, 'Teachers')"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for unreadable files
        raise TeacherError(
            f"cannot read teacher checkpoint {path} as a weights-only torch file "
            f"({type(exc).__name__}: {_reason(exc)}); teachers must be plain "
            "tensors/dicts (no pickled objects): re-save the weights with "
            "torch.save(model.state_dict(), path)"
        ) from exc
    if not isinstance(obj, dict):
        raise TeacherError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return obj


def _tensors(obj: dict) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint: top level, ``state_dict`` or ``model``."""
    for key in ("state_dict", "model"):
        if isinstance(obj.get(key), dict):
            return obj[key]
    return obj


def detect_format(path: Path, obj: dict) -> str:
    state = _tensors(obj)
    if any(k.startswith(MOCO_PREFIX) for k in state):
        return "moco"
    if any(k.startswith("backbone.") for k in state) and find_args_json(path) is not None:
        return "solo"
    plain = {k.removeprefix("module."): v for k, v in state.items()}
    if looks_like_resnet(plain):
        return "torchvision"
    found = sorted(state)[:8]
    hint = ""
    if any(k.startswith("backbone.") for k in state):
        hint = " It looks like a solo-learn checkpoint: put the run's args.json beside it."
    raise TeacherError(
        f"{path} matches no known teacher format ({', '.join(FORMATS[1:])}); its first keys are "
        f"{found}.{hint} Force one with method_kwargs.teacher.format."
    )


def load_teacher(
    path: str | Path,
    format: str = "auto",
    output: str = "projector",
    stem_padding: int | None = None,
) -> Teacher:
    """Load a frozen teacher (eval mode, no gradients) from ``path``.

    ``stem_padding``: the padding of a 3x3 (CIFAR) stem in a bare state dict (``moco`` /
    ``torchvision`` formats), which the weights do not record; a solo-learn checkpoint's
    ``args.json`` defines its own.
    """
    path = Path(path).expanduser()
    if format not in FORMATS:
        raise TeacherError(f"teacher.format must be one of {list(FORMATS)}, got {format!r}")
    if output not in OUTPUTS:
        raise TeacherError(f"teacher.output must be one of {list(OUTPUTS)}, got {output!r}")
    if stem_padding is not None and (
        isinstance(stem_padding, bool) or not isinstance(stem_padding, int) or stem_padding < 0
    ):
        raise TeacherError(f"teacher.stem_padding must be an int >= 0, got {stem_padding!r}")
    obj = _read(path)
    if format == "auto":
        format = detect_format(path, obj)
    state = _tensors(obj)
    if format == "solo":
        if stem_padding is not None:
            raise TeacherError(
                f"{path}: a solo-learn checkpoint's args.json defines its stem; "
                "teacher.stem_padding is for bare state dicts only: leave it unset"
            )
        return solo_teacher(state, path, output)
    if format == "moco":
        state = {k[len(MOCO_PREFIX) :]: v for k, v in state.items() if k.startswith(MOCO_PREFIX)}
        if not state:
            raise TeacherError(f"{path}: no '{MOCO_PREFIX}*' keys, so not a MoCo v2 checkpoint")
    else:
        state = {k.removeprefix("module."): v for k, v in state.items()}
    if not looks_like_resnet(state):
        raise TeacherError(
            f"{path}: format {format!r} expects torchvision ResNet keys (conv1.weight, "
            f"layer1.0.conv1.weight, ...); found {sorted(state)[:8]}"
        )
    return resnet_teacher(state, output, f"{path} ({format})", stem_padding)
