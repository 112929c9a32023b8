"""Refuse a solo-learn run config that cannot work on this machine, before anything is built.

Lightning finds most of these only after the data and the model are ready (a CPU run of a GPU
config with ``sync_batchnorm: True`` and two processes dies in DDP set-up with "SyncBatchNorm
layers only work with GPU modules"). :func:`check_run_config` reads the few settings that decide
where a run goes (``accelerator``, ``devices``, ``num_nodes``, ``strategy``, ``sync_batchnorm``)
and the paths it reads, and raises :class:`ConfigError` naming each setting and its fix. It also
refuses what solo-learn would only meet with a bare assertion or a TypeError inside ``main()``:
``devices`` as an int (solo-learn takes ``len(devices)``), mandatory values still ``???``
(``pretrained_feature_extractor``, the data folders), and a linear checkpoint with a suffix
main_linear.py rejects. :func:`check_names` checks ``backbone.name`` and ``method`` against the
registries it is given. The plugin's Hydra callback calls both in every process before
solo-learn's ``main()`` runs.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from s2bnn_plugin.errors import S2BNNError

__all__ = ["ConfigError", "check_names", "check_run_config", "cpu_processes"]

GPU_ACCELERATORS = ("gpu", "cuda")
#: the checkpoint suffixes solo-learn's main_linear.py accepts (it asserts them)
LINEAR_SUFFIXES = (".ckpt", ".pth", ".pt")
MISSING = "???"


class ConfigError(S2BNNError, ValueError):
    """A run config that cannot work on the hardware or files at hand."""


def _get(cfg: Any, dotted: str, default: Any = None) -> Any:
    node = cfg
    for key in dotted.split("."):
        if isinstance(node, Mapping) or hasattr(node, "get"):
            try:
                node = node.get(key, None)
            except Exception:  # omegaconf: a missing interpolation, say
                return default
        else:
            return default
        if node is None:
            return default
    return node


def _visible_gpus() -> int:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def cpu_processes(devices: Any) -> int:
    """How many processes Lightning starts for ``devices`` on the CPU (an int or "N"; "auto" is
    1); a list of device indices is a GPU setting that the CPU does not accept."""
    if devices is None or str(devices) == "auto":
        return 1
    if isinstance(devices, bool):
        raise ConfigError(f"devices={devices!r} is not a number of processes")
    if isinstance(devices, int):
        n = devices
    elif isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        n = int(devices)
    else:
        raise ConfigError(
            f"devices={_show(devices)} lists GPU indices, but this run is on the CPU, where "
            'devices is a number of processes: set devices="1" (or devices="N" for N CPU '
            "processes with strategy=ddp)"
        )
    if n < 1:
        raise ConfigError(f"devices={n}: on the CPU, devices is a number of processes >= 1")
    return n


def _show(value: Any) -> str:
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value)
    except ImportError:  # pragma: no cover
        pass
    return repr(value).replace(" ", "")


def _gpu_indices(devices: Any) -> list[int] | None:
    try:
        return [int(d) for d in devices]
    except (TypeError, ValueError):
        return None


def check_run_config(cfg: Any, *, gpus: int | None = None) -> None:
    """Raise :class:`ConfigError` if ``cfg`` (a solo-learn pretrain or linear config) cannot run
    here; ``gpus`` overrides the number of visible CUDA GPUs (for tests)."""
    gpus = _visible_gpus() if gpus is None else gpus
    problems: list[str] = []
    accelerator = str(_get(cfg, "accelerator", "auto")).lower()
    devices = _get(cfg, "devices", "auto")
    nodes = int(_get(cfg, "num_nodes", 1) or 1)
    problems += _devices_problems(devices)
    if accelerator in GPU_ACCELERATORS and gpus == 0:
        problems.append(
            f"accelerator={accelerator} but torch sees no CUDA GPU here: for a CPU run set "
            "accelerator=cpu 'devices=\"1\"' strategy=auto sync_batchnorm=False precision=32 "
            "(the configs under pretrain/custom are set up for the CPU)"
        )
    elif accelerator in GPU_ACCELERATORS or (accelerator == "auto" and gpus > 0):
        indices = None if isinstance(devices, int | str) else _gpu_indices(devices)
        if indices is not None and any(i >= gpus or i < 0 for i in indices):
            problems.append(
                f"devices={_show(devices)} names GPUs this machine does not have ({gpus} visible: "
                f"indices 0..{gpus - 1}); set devices to a subset, e.g. devices=[0]"
            )
        elif isinstance(devices, int) and devices > gpus:
            problems.append(f"devices={devices} but only {gpus} GPU(s) are visible")
    elif accelerator in ("cpu", "auto"):
        try:
            processes = cpu_processes(devices) * nodes
        except ConfigError as e:
            problems.append(str(e))
            processes = 1
        if processes > 1 and bool(_get(cfg, "sync_batchnorm", False)):
            problems.append(
                f"sync_batchnorm=True with {processes} CPU processes: PyTorch's SyncBatchNorm "
                "works on GPU modules only; set sync_batchnorm=False"
            )
    problems += _unset_problems(cfg)
    problems += _missing_paths(cfg)
    problems += _feature_extractor_problems(cfg)
    if problems:
        raise ConfigError("; ".join(problems))


def _missing_paths(cfg: Any) -> list[str]:
    """Input files the run would fail on later: data folders, the teacher, checkpoints to load."""
    out = []
    dataset = str(_get(cfg, "data.dataset", ""))
    data_format = str(_get(cfg, "data.format", "image_folder"))
    if dataset in ("custom", "imagenet", "imagenet100") and data_format != "dali":
        for key in ("data.train_path", "data.val_path"):
            value = _get(cfg, key)
            if value not in (None, "", "???") and not Path(str(value)).exists():
                out.append(f"{key}={value} does not exist")
    for key in (
        "method_kwargs.teacher.ckpt",
        "method_kwargs.student_init",
        "pretrained_feature_extractor",
        "resume_from_checkpoint",
    ):
        value = _get(cfg, key)
        if value not in (None, "", "???") and not Path(str(value)).is_file():
            out.append(f"{key}={value} is not a file")
    return out


def _devices_problems(devices: Any) -> list[str]:
    """solo-learn's ``parse_cfg`` scales the learning rate by ``len(devices)``, which an int
    does not have (a TypeError there, after the callback): a list of GPU indices or a string."""
    if not isinstance(devices, int) or isinstance(devices, bool):
        return []
    return [
        f"devices={devices} is an int, which solo-learn cannot take (its parse_cfg scales the "
        "learning rate by len(devices)): on GPUs list them, devices=[0] (devices=[0,1] for "
        "two); on the CPU give the number of processes as a string, "
        f'\'devices="{devices}"\' on the command line (devices: "{devices}" in YAML)'
    ]


#: values solo-learn needs but only asserts (a bare AssertionError), with what to set them to
REQUIRED = {
    "pretrained_feature_extractor": (
        "the checkpoint of the pretraining run to evaluate (its .ckpt under "
        "checkpoint.dir/<method>/<run>/, with args.json beside it)"
    ),
    "data.train_path": "the folder of the training images",
    "data.val_path": "the folder of the validation images",
}


def _lookup(cfg: Any, dotted: str) -> tuple[bool, Any]:
    """(whether ``dotted`` is in ``cfg``, its value), with a mandatory ``???`` value as "???"."""
    *parents, last = dotted.split(".")
    node = cfg
    for key in parents:
        node = _get(node, key)
        if node is None:
            return False, None
    try:
        from omegaconf import OmegaConf

        # (``key in cfg`` is False for a ``???`` value: ask is_missing)
        if OmegaConf.is_config(node) and OmegaConf.is_missing(node, last):
            return True, MISSING
    except ImportError:  # pragma: no cover - hydra brings omegaconf
        pass
    if not isinstance(node, Mapping) and not hasattr(node, "keys"):
        return False, None
    if last not in node:
        return False, None
    return True, _get(node, last)


def _unset_problems(cfg: Any) -> list[str]:
    """Mandatory values still ``???`` (and a null ``pretrained_feature_extractor``)."""
    out = []
    for key, what in REQUIRED.items():
        present, value = _lookup(cfg, key)
        unset = value == MISSING or (key == "pretrained_feature_extractor" and value in (None, ""))
        if present and unset:
            out.append(f"{key} is not set: set {key}=PATH, {what}")
    return out


def _feature_extractor_problems(cfg: Any) -> list[str]:
    """main_linear.py asserts the checkpoint's suffix (a bare AssertionError)."""
    present, value = _lookup(cfg, "pretrained_feature_extractor")
    if not present or value in (None, "", MISSING):
        return []
    suffix = Path(str(value)).suffix
    if suffix in LINEAR_SUFFIXES:
        return []
    packed = (
        " (.s2bnn packed files are for the CPU engine: s2bnn eval)" if suffix == ".s2bnn" else ""
    )
    return [
        f"pretrained_feature_extractor={value}: main_linear.py reads a training checkpoint "
        f"({', '.join(LINEAR_SUFFIXES)}): give the pretraining run's .ckpt{packed}"
    ]


def check_names(
    cfg: Any, *, backbones: Mapping[str, Collection[str]], methods: Collection[str]
) -> None:
    """Raise :class:`ConfigError` if ``backbone.name`` or ``method`` is not registered (solo-learn
    only asserts them); ``backbones`` holds the known names by who provides them."""
    problems = []
    name = _get(cfg, "backbone.name")
    known = sorted({n for names in backbones.values() for n in names})
    if name is not None and str(name) not in known:
        groups = "; ".join(f"{who}: {', '.join(sorted(names))}" for who, names in backbones.items())
        problems.append(
            f"backbone.name={name} is not a known backbone{_nearest(name, known)}; {groups}"
        )
    method = _get(cfg, "method")
    if method is not None and str(method) not in methods:
        problems.append(
            f"method={method} is not a known method{_nearest(method, methods)}; "
            f"known: {', '.join(sorted(methods))}"
        )
    if problems:
        raise ConfigError("; ".join(problems))


def _nearest(word: Any, choices: Collection[str]) -> str:
    match = difflib.get_close_matches(str(word), list(choices), n=1)
    return f" (did you mean {match[0]}?)" if match else ""
