"""Helpers for tests that drive solo-learn in-process (imported only where solo-learn exists)."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import torch
import torchvision
from lightning.pytorch import Trainer
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset

# solo-learn's own method kwargs for its cifar configs, shrunk for CPU tests
METHOD_KWARGS = {
    "simclr": {"proj_hidden_dim": 64, "proj_output_dim": 32, "temperature": 0.2},
    "byol": {"proj_hidden_dim": 64, "proj_output_dim": 32, "pred_hidden_dim": 64},
    "mocov2plus": {
        "proj_hidden_dim": 64,
        "proj_output_dim": 32,
        "temperature": 0.2,
        "queue_size": 64,
    },
}
MOMENTUM = {"byol", "mocov2plus"}

#: overrides that shrink the plugin's pretrain configs to a few seconds on a CPU
TINY_PRETRAIN = [
    "augmentations=mocov2_32.yaml",
    "optimizer.batch_size=8",
    "data.num_workers=0",
    "backbone.kwargs.width_mult=0.125",
    "backbone.kwargs.cifar=true",
    "method_kwargs.head_hidden_dim=32",
    "wandb.enabled=false",
]


def tiny_teacher(path: Path, seed: int = 0) -> Path:
    """A random MoCo-style ResNet-18 teacher checkpoint (``module.encoder_q.`` keys, a
    512-128-32 head) at ``path``: what the plugin's teacher loader reads from a solo-learn run."""
    torch.manual_seed(seed)
    teacher = torchvision.models.resnet18()
    teacher.fc = torch.nn.Sequential(
        torch.nn.Linear(512, 128), torch.nn.ReLU(), torch.nn.Linear(128, 32)
    )
    state = {f"module.encoder_q.{k}": v for k, v in teacher.state_dict().items()}
    torch.save({"state_dict": state}, path)
    return path


def run_solo_script(
    script: str, kind: str, config: str, overrides: list[str], cwd: Path, timeout: int = 600
) -> subprocess.CompletedProcess:
    """solo-learn's own ``script`` (``main_pretrain.py`` / ``main_linear.py``) as a subprocess,
    with the plugin's ``solo_configs/<kind>/custom/<config>`` and ``overrides``, on the CPU."""
    from s2bnn_plugin.solo_learn.locate import configs_dir, find_solo_script

    command = [
        sys.executable,
        str(find_solo_script(script)),
        "--config-path",
        str(configs_dir() / kind / "custom"),
        "--config-name",
        config,
        *overrides,
    ]
    env = dict(os.environ, PYTHONWARNINGS="ignore", CUDA_VISIBLE_DEVICES="")
    return subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout
    )


def base_cfg(
    method: str,
    backbone: str,
    backbone_kwargs: dict | None = None,
    method_kwargs: dict | None = None,
    batch_size: int = 4,
    num_classes: int = 5,
) -> DictConfig:
    cfg = {
        "name": "test",
        "method": method,
        "backbone": {"name": backbone, "kwargs": backbone_kwargs or {}},
        "method_kwargs": method_kwargs if method_kwargs is not None else METHOD_KWARGS[method],
        "data": {
            "dataset": "custom",
            "train_path": ".",
            "val_path": None,
            "format": "image_folder",
            "num_workers": 0,
            "num_large_crops": 2,
            "num_small_crops": 0,
            "num_classes": num_classes,
        },
        "optimizer": {
            "name": "adam",
            "batch_size": batch_size,
            "lr": 3e-4,
            "classifier_lr": 0.1,
            "weight_decay": 0.0,
        },
        "scheduler": {"name": "none"},
        "checkpoint": {"enabled": False},
        "auto_resume": {"enabled": False},
        "max_epochs": 1,
        "devices": "1",
        "accelerator": "cpu",
        "num_nodes": 1,
    }
    if method in MOMENTUM:
        cfg["momentum"] = {"base_tau": 0.99, "final_tau": 1.0, "classifier": False}
    cfg = OmegaConf.create(cfg)
    OmegaConf.set_struct(cfg, False)
    return cfg


class RandomCrops(Dataset):
    """solo-learn's pretraining batch format: (index, [crop, crop], target)."""

    def __init__(self, n: int = 8, size: int = 32, num_classes: int = 5) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 2, 3, size, size, generator=g)
        self.y = torch.randint(0, num_classes, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return i, [self.x[i, 0], self.x[i, 1]], self.y[i]


def fit(model, cfg: DictConfig, steps: int = 2, size: int = 32, callbacks=()) -> Trainer:
    kwargs = OmegaConf.to_container(cfg)
    valid = inspect.signature(Trainer.__init__).parameters
    kwargs = {k: v for k, v in kwargs.items() if k in valid}
    kwargs.update(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        max_steps=steps,
        callbacks=list(callbacks),
    )
    trainer = Trainer(**kwargs)
    data = RandomCrops(n=cfg.optimizer.batch_size * steps, size=size)
    trainer.fit(model, DataLoader(data, batch_size=cfg.optimizer.batch_size, drop_last=True))
    return trainer


def main_linear_load(backbone: torch.nn.Module, state: dict) -> tuple[list[str], list[str]]:
    """Load a pretraining state dict into a backbone exactly as solo-learn's main_linear.py does
    (rename ``encoder`` to ``backbone``, strip ``backbone.``, drop the rest, ``strict=False``) and
    return the (missing, unexpected) keys that its silent ``strict=False`` would hide."""
    state = dict(state)
    for k in list(state.keys()):
        if "encoder" in k:
            state[k.replace("encoder", "backbone")] = state[k]
        if "backbone" in k:
            state[k.replace("backbone.", "")] = state[k]
        del state[k]
    result = backbone.load_state_dict(state, strict=False)
    return list(result.missing_keys), list(result.unexpected_keys)
