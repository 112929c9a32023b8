"""Teachers trained by any solo-learn method: a ``.ckpt`` with the run's ``args.json`` beside it.

The run's method is rebuilt from ``args.json`` (so any solo-learn method, and any plugin's, can
teach); its forward's ``z`` (projector output) or ``feats`` (backbone features) is the prediction.
"""

from __future__ import annotations

from pathlib import Path

import torch

from s2bnn_plugin.checkpoints import find_args_json, read_args_json, state_dict_mismatch
from s2bnn_plugin.teachers.base import Teacher, TeacherError

__all__ = ["solo_teacher"]


def solo_teacher(state: dict[str, torch.Tensor], ckpt: Path, output: str) -> Teacher:
    """Rebuild the solo-learn method of ``ckpt`` and wrap it as a teacher."""
    from omegaconf import OmegaConf

    from s2bnn_plugin.backbones import BACKBONES
    from s2bnn_plugin.solo_learn.registry import register_backbones, solo_methods

    register_backbones(BACKBONES)  # a teacher may use one of the plugin's backbones
    methods = solo_methods()
    args_path = find_args_json(ckpt)
    if args_path is None:
        raise TeacherError(
            f"{ckpt}: a solo-learn checkpoint needs the run's args.json beside it (solo-learn "
            "writes it next to the .ckpt); copy it there"
        )
    raw = read_args_json(args_path)
    cfg = OmegaConf.create(raw)
    OmegaConf.set_struct(cfg, False)
    name = cfg.get("method")
    if name not in methods:
        raise TeacherError(
            f"{ckpt}: args.json names method {name!r}, unknown to solo-learn here "
            f"(available: {sorted(methods)})"
        )
    method = methods[name](cfg)
    own = method.state_dict()
    # only the backbone and projector must be there (not, say, a linear classifier's weights)
    optional = {k: v for k, v in own.items() if not k.startswith(("backbone.", "projector."))}
    mismatch = state_dict_mismatch(own, {**optional, **state})
    if mismatch:
        raise TeacherError(
            f"{ckpt}: its weights do not fit the {name} model its args.json describes: keys "
            f"{mismatch}"
        )
    method.load_state_dict(state, strict=False)
    key = "z" if output == "projector" else "feats"

    def forward(x: torch.Tensor) -> torch.Tensor:
        out = method(x)
        if key not in out:
            raise TeacherError(
                f"the {name} teacher's forward returns {sorted(out)}, without {key!r}; "
                "set teacher.output=backbone"
            )
        return out[key]

    return Teacher(method, None, output=output, source=str(ckpt), forward_fn=forward)
