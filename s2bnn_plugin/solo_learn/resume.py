"""Refuse to resume a checkpoint that was trained with other settings, before anything is built.

solo-learn's auto-resume (``solo.utils.auto_resumer.AutoResumer``) continues the newest
checkpoint under ``checkpoint.dir/<method>`` whose ``args.json`` matches a dozen fields (name,
backbone, method, max_epochs, optimizer, wandb); ``method_kwargs``, the teacher and the data are
not among them, so a rerun with another teacher or temperature continues the old run (a finished
one "resumes", trains nothing and exits 0). ``resume_from_checkpoint`` compares nothing at all.

:func:`check_resume` finds the checkpoint the script would continue (calling ``AutoResumer``
itself, on the config as ``main()`` has it when it calls it) and compares the settings that
define the result (:data:`PRETRAIN_KEYS`, :data:`LINEAR_KEYS`, and the teacher file's SHA-256,
which ``method=s2bnn`` records in ``args.json`` as ``method_kwargs.teacher.sha256``) with that
run's ``args.json``; it raises :class:`ResumeMismatch` listing each differing key (old -> new)
and the fix. An ``args.json`` without the digest (older runs) is compared on what it holds.
The plugin's Hydra callback calls it in every process before solo-learn's ``main()`` runs.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s2bnn_plugin.solo_learn.locate import require_solo
from s2bnn_plugin.solo_learn.preflight import ConfigError
from s2bnn_plugin.solo_learn.registry import solo_methods

__all__ = [
    "DIGEST_KEY",
    "IGNORED_KEYS",
    "LINEAR_KEYS",
    "PRETRAIN_KEYS",
    "Difference",
    "ResumeMismatch",
    "ResumeTarget",
    "check_resume",
    "differences",
    "file_sha256",
    "resolved_config",
    "resume_target",
]

#: main_pretrain.py: what is trained, from what, on what (sub-keys included).
PRETRAIN_KEYS = (
    "method",
    "method_kwargs",
    "backbone",
    "data.dataset",
    "data.train_path",
    "data.val_path",
    "data.format",
    "data.fraction",
    "data.no_labels",
    "augmentations",
)
#: main_linear.py: the frozen (or fine-tuned) features, the data and the training options.
LINEAR_KEYS = (
    "backbone",
    "pretrained_feature_extractor",
    "pretrain_method",
    "finetune",
    "data.dataset",
    "data.train_path",
    "data.val_path",
    "data.format",
    "data.fraction",
    "data.augmentations",
    "auto_augment",
    "label_smoothing",
    "mixup",
    "cutmix",
)
TEACHER_KEY = "method_kwargs.teacher.ckpt"
#: The teacher file's SHA-256 (hex), written into args.json by method=s2bnn.
DIGEST_KEY = "method_kwargs.teacher.sha256"
#: Leaves that change how a run computes, not what it trains: they may differ on a resume.
IGNORED_KEYS = ("backbone.kwargs.compile",)


class ResumeMismatch(ConfigError):
    """The checkpoint a run would continue was trained with other settings."""


@dataclass(frozen=True)
class Difference:
    """One setting that differs between a checkpoint's run (``old``) and this config (``new``);
    ``None`` stands for a setting that is not there."""

    key: str
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.key} ({_show(self.key, self.old)} -> {_show(self.key, self.new)})"


@dataclass(frozen=True)
class ResumeTarget:
    """The checkpoint a run would continue, how it was chosen, and its run's args.json."""

    checkpoint: Path
    args_json: Path
    auto: bool  # True: found by auto-resume; False: given as resume_from_checkpoint


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 (hex) of a file's bytes: the teacher's identity, whatever its path."""
    digest = hashlib.sha256()
    with open(Path(path).expanduser(), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _show(key: str, value: Any) -> str:
    if value is None:
        return "<unset>"
    if key == DIGEST_KEY and isinstance(value, str):
        return value[:12]
    return value if isinstance(value, str) else json.dumps(value)


def _leaves(value: Any, prefix: str) -> dict[str, Any]:
    """Dotted key -> value for every leaf under ``prefix`` (list items by index); an empty dict
    has no leaves, so a default ``{}`` equals a key that is not there."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_leaves(v, f"{prefix}.{k}"))
        return out
    if isinstance(value, list) and value:
        out = {}
        for i, v in enumerate(value):
            out.update(_leaves(v, f"{prefix}.{i}"))
        return out
    return {} if value is None else {prefix: value}


def _at(tree: Mapping[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def differences(
    old: Mapping[str, Any], new: Mapping[str, Any], keys: Iterable[str]
) -> list[Difference]:
    """The leaves under ``keys`` whose values differ between two plain configs (args.json's
    JSON). A digest that ``old`` lacks (a run from before digests were recorded) is skipped."""
    old_leaves: dict[str, Any] = {}
    new_leaves: dict[str, Any] = {}
    for key in keys:
        old_leaves.update(_leaves(_at(old, key), key))
        new_leaves.update(_leaves(_at(new, key), key))
    if DIGEST_KEY not in old_leaves:
        new_leaves.pop(DIGEST_KEY, None)
    for key in IGNORED_KEYS:
        old_leaves.pop(key, None)
        new_leaves.pop(key, None)
    return [
        Difference(key, old_leaves.get(key), new_leaves.get(key))
        for key in sorted(old_leaves.keys() | new_leaves.keys())
        if old_leaves.get(key) != new_leaves.get(key)
    ]


def _plain(cfg: Any) -> dict[str, Any]:
    """A config as solo-learn's Checkpointer writes it to args.json (unresolved, through JSON)."""
    from omegaconf import OmegaConf

    container = OmegaConf.to_container(cfg) if OmegaConf.is_config(cfg) else cfg
    return json.loads(json.dumps(container, default=lambda o: "<not serializable>"))


def _is_pretrain(cfg: Any) -> bool:
    return cfg.get("method", None) is not None


def resolved_config(config: Any) -> Any:
    """``config`` (a Hydra job config, or a plain mapping) with the defaults that solo-learn's
    script and the method fill in before auto-resume runs: ``parse_cfg``, then the method's
    ``add_and_assert_specific_cfg`` chain, without building anything. For ``method=s2bnn``, the
    mixed objective's chain fills ``method_kwargs.ssl_kwargs`` as ``S2BNN.__init__`` has it do,
    and the teacher's SHA-256 is added (as the method records it). May raise what solo-learn's
    own checks raise; ``main()`` would raise the same."""
    from omegaconf import DictConfig, OmegaConf, open_dict

    methods = require_solo()
    if OmegaConf.is_config(config):
        cfg = copy.deepcopy(config)
        with open_dict(cfg):
            cfg.pop("hydra", None)
    else:
        cfg = OmegaConf.create(dict(config))
    OmegaConf.set_struct(cfg, False)
    if _is_pretrain(cfg):
        from solo.args.pretrain import parse_cfg

        cfg = parse_cfg(cfg)
        cfg = solo_methods()[cfg.method].add_and_assert_specific_cfg(cfg)
        mk = cfg.method_kwargs
        if cfg.method == "s2bnn":
            ssl_method = str(mk.get("ssl_method", "none"))
            objective = methods.BaseMethod if ssl_method == "none" else solo_methods()[ssl_method]
            cfg.method_kwargs = mk.ssl_kwargs  # the objective's view, as S2BNN.__init__ gives it
            try:
                cfg = objective.add_and_assert_specific_cfg(cfg)
                filled = cfg.method_kwargs
            finally:
                cfg.method_kwargs = mk
            cfg.method_kwargs.ssl_kwargs = filled
        cfg = methods.BaseMethod.add_and_assert_specific_cfg(cfg)
        teacher = OmegaConf.select(cfg, TEACHER_KEY, default=None)
        if teacher:
            cfg.method_kwargs.teacher.sha256 = file_sha256(str(teacher))
    else:
        from solo.args.linear import parse_cfg

        cfg = parse_cfg(cfg)
        cfg = solo_methods()["linear"].add_and_assert_specific_cfg(cfg)
    assert isinstance(cfg, DictConfig)
    return cfg


def _has_checkpoint(folder: Path) -> bool:
    return any(name.endswith(".ckpt") for _, _, files in os.walk(folder) for name in files)


def _checkpoint_dir(cfg: Any) -> Path:
    """Where solo-learn's script looks for runs to auto-resume."""
    from omegaconf import OmegaConf

    root = OmegaConf.select(cfg, "checkpoint.dir", default=None) or "trained_models"
    return Path(str(root)) / (str(cfg.method) if _is_pretrain(cfg) else "linear")


def resume_target(cfg: Any) -> ResumeTarget | None:
    """The checkpoint solo-learn's script would continue for the resolved ``cfg``
    (:func:`resolved_config`): ``resume_from_checkpoint`` if set, else, with
    ``auto_resume.enabled``, the one ``AutoResumer`` picks; ``None`` for a new run."""
    from omegaconf import OmegaConf

    explicit = OmegaConf.select(cfg, "resume_from_checkpoint", default=None)
    if explicit:
        path = Path(str(explicit))
        return ResumeTarget(path, path.parent / "args.json", auto=False)
    if not OmegaConf.select(cfg, "auto_resume.enabled", default=False):
        return None
    from solo.utils.auto_resumer import AutoResumer

    resumer = AutoResumer(
        checkpoint_dir=str(_checkpoint_dir(cfg)),
        max_hours=OmegaConf.select(cfg, "auto_resume.max_hours", default=36),
    )
    found, _ = resumer.find_checkpoint(cfg)
    if found is None:
        return None
    path = Path(str(found))
    return ResumeTarget(path, path.parent / "args.json", auto=True)


def check_resume(config: Any) -> None:
    """Raise :class:`ResumeMismatch` if the run would continue a checkpoint whose args.json
    records other settings than ``config`` for the keys that define the result. A new run, or
    a checkpoint without an args.json beside it, passes."""
    from omegaconf import OmegaConf

    if not OmegaConf.is_config(config):
        config = OmegaConf.create(dict(config))
    explicit = OmegaConf.select(config, "resume_from_checkpoint", default=None)
    auto = bool(OmegaConf.select(config, "auto_resume.enabled", default=False))
    if not explicit and (not auto or not _has_checkpoint(_checkpoint_dir(config))):
        return  # a new run: nothing to compare, nothing imported or read
    try:
        cfg = resolved_config(config)
        target = resume_target(cfg)
    except Exception:  # solo-learn's own checks of the config: main() raises them itself
        return
    if target is None or not target.args_json.is_file():
        return
    old = json.loads(target.args_json.read_text())
    keys = PRETRAIN_KEYS if _is_pretrain(cfg) else LINEAR_KEYS
    found = differences(old, _plain(cfg), keys)
    if not found:
        return
    listed = ", ".join(map(str, found))
    if target.auto:
        raise ResumeMismatch(
            f"auto-resume would continue {target.checkpoint}, trained with other settings "
            f"(its args.json -> this config): {listed}. To train these settings, give the run a "
            f"new name (name=...) or set auto_resume.enabled=False"
        )
    raise ResumeMismatch(
        f"resume_from_checkpoint={target.checkpoint} was trained with other settings (its "
        f"args.json -> this config): {listed}. Resume it with the settings in its args.json, or "
        "drop resume_from_checkpoint to train a new run"
    )
