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

from s2bnn_plugin.checkpoints import (
    UnreadableWeights,
    drop_prefix,
    find_args_json,
    load_weights,
    select_prefix,
    state_dict_of,
)
from s2bnn_plugin.errors import FileMissing
from s2bnn_plugin.teachers.base import OUTPUTS, Teacher, TeacherError
from s2bnn_plugin.teachers.resnet import MOCO_PREFIX, looks_like_resnet, resnet_teacher
from s2bnn_plugin.teachers.solo_checkpoint import solo_teacher
from s2bnn_plugin.validate import Range

__all__ = [
    "FORMATS",
    "OUTPUTS",
    "STEM_PADDINGS",
    "Teacher",
    "TeacherError",
    "detect_format",
    "load_teacher",
]

FORMATS = ("auto", "solo", "moco", "torchvision")
#: ``stem_padding``: the padding of a bare state dict's 3x3 stem, which its weights do not record
STEM_PADDINGS = Range(0, whole=True)


def _read(path: Path) -> dict:
    if not path.exists():
        raise FileMissing(
            f"teacher checkpoint {path} does not exist; set method_kwargs.teacher.ckpt to the "
            "path of a trained teacher (see docs/training.md, 'Teachers')"
        )
    try:
        obj = load_weights(path)
    except UnreadableWeights as exc:
        raise TeacherError(
            f"cannot read teacher checkpoint {path} as a weights-only torch file "
            f"({type(exc.error).__name__}: {exc.reason}); teachers must be plain "
            "tensors/dicts (no pickled objects): re-save the weights with "
            "torch.save(model.state_dict(), path)"
        ) from exc
    if not isinstance(obj, dict):
        raise TeacherError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return obj


def detect_format(path: Path, obj: dict) -> str:
    state = state_dict_of(obj)
    if any(k.startswith(MOCO_PREFIX) for k in state):
        return "moco"
    if any(k.startswith("backbone.") for k in state) and find_args_json(path) is not None:
        return "solo"
    plain = drop_prefix(state, "module.")
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
    if stem_padding is not None and not STEM_PADDINGS.admits(stem_padding):
        raise TeacherError(f"teacher.stem_padding must be an int >= 0, got {stem_padding!r}")
    obj = _read(path)
    if format == "auto":
        format = detect_format(path, obj)
    state = state_dict_of(obj)
    if format == "solo":
        if stem_padding is not None:
            raise TeacherError(
                f"{path}: a solo-learn checkpoint's args.json defines its stem; "
                "teacher.stem_padding is for bare state dicts only: leave it unset"
            )
        return solo_teacher(state, path, output)
    if format == "moco":
        state = select_prefix(state, MOCO_PREFIX)
        if not state:
            raise TeacherError(f"{path}: no '{MOCO_PREFIX}*' keys, so not a MoCo v2 checkpoint")
    else:
        state = drop_prefix(state, "module.")
    if not looks_like_resnet(state):
        raise TeacherError(
            f"{path}: format {format!r} expects torchvision ResNet keys (conv1.weight, "
            f"layer1.0.conv1.weight, ...); found {sorted(state)[:8]}"
        )
    return resnet_teacher(state, output, f"{path} ({format})", stem_padding)
