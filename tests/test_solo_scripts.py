"""solo-learn's own main_pretrain.py / main_linear.py, run as subprocesses with the plugin's configs
on a tiny generated ImageFolder (needs solo-learn; skipped otherwise)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from s2bnn_plugin.cli import configs_dir

pytestmark = [pytest.mark.solo, pytest.mark.slow]

TINY = [
    "augmentations=mocov2_32.yaml",
    "optimizer.batch_size=8",
    "data.num_workers=0",
    "backbone.kwargs.width_mult=0.125",
    "backbone.kwargs.cifar=true",
    "method_kwargs.head_hidden_dim=32",
    "wandb.enabled=false",
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("solo_scripts")
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 4)):
        for c in range(5):
            folder = root / "data" / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = (rng.random((32, 32, 3)) * 255).astype("uint8")
                Image.fromarray(pixels).save(folder / f"{i}.png")
    teacher = torchvision.models.resnet18()
    teacher.fc = torch.nn.Sequential(
        torch.nn.Linear(512, 128), torch.nn.ReLU(), torch.nn.Linear(128, 32)
    )
    state = {f"module.encoder_q.{k}": v for k, v in teacher.state_dict().items()}
    torch.save({"state_dict": state}, root / "teacher.pth.tar")
    return root


def _script(name: str) -> str:
    from s2bnn_plugin.solo import find_solo_script

    return str(find_solo_script(name))


def run_solo(
    script: str, kind: str, config: str, overrides: list[str], cwd: Path, check: bool = True
) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        _script(script),
        "--config-path",
        str(configs_dir() / kind / "custom"),
        "--config-name",
        config,
        *overrides,
    ]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def pretrain(workspace: Path, config: str, name: str, extra: list[str] = (), check=True):
    out = workspace / name
    overrides = [
        f"data.train_path={workspace / 'data' / 'train'}",
        f"method_kwargs.teacher.ckpt={workspace / 'teacher.pth.tar'}",
        f"checkpoint.dir={out}",
        f"default_root_dir={out}",
        f"name={name}",
        "max_epochs=1",
        *TINY,
        *extra,
    ]
    proc = run_solo("main_pretrain.py", "pretrain", config, overrides, workspace, check)
    return proc, out


def only_ckpt(folder: Path) -> Path:
    ckpts = sorted(folder.rglob("*.ckpt"))
    assert len(ckpts) == 1, ckpts
    return ckpts[0]


def test_distillation_only_then_main_linear(workspace):
    _, out = pretrain(workspace, "s2bnn.yaml", "distill")
    ckpt = only_ckpt(out / "s2bnn")
    args = json.loads((ckpt.parent / "args.json").read_text())
    assert args["method"] == "s2bnn" and args["method_kwargs"]["ssl_method"] == "none"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert any(k.startswith("backbone.") for k in state)
    assert any(k.startswith("distill_head.") for k in state)
    assert not any(k.startswith("teacher") for k in state), "teacher weights leaked into ckpt"

    lin = workspace / "linear"
    run_solo(
        "main_linear.py",
        "linear",
        "reactnet_a.yaml",
        [
            f'pretrained_feature_extractor="{ckpt}"',
            f"data.train_path={workspace / 'data' / 'train'}",
            f"data.val_path={workspace / 'data' / 'val'}",
            "data.augmentations.crop_size=32",
            f"checkpoint.dir={lin}",
            f"default_root_dir={lin}",
            "max_epochs=1",
            "optimizer.batch_size=8",
            "data.num_workers=0",
            "backbone.kwargs.width_mult=0.125",
            "backbone.kwargs.cifar=true",
        ],
        workspace,
    )
    lin_ckpt = only_ckpt(lin / "linear")
    lin_state = torch.load(lin_ckpt, map_location="cpu", weights_only=True)["state_dict"]
    # the frozen backbone main_linear trained on is exactly the student's
    for key, value in state.items():
        if key.startswith("backbone.") and "num_batches_tracked" not in key:
            assert torch.equal(lin_state[key], value), key


@pytest.mark.parametrize(
    "config,extra,objective",
    [
        ("s2bnn_mocov2plus.yaml", ["method_kwargs.ssl_kwargs.queue_size=64"], "mocov2plus"),
        ("s2bnn.yaml", ["method_kwargs.ssl_method=byol", "backbone.name=reactnet18"], "byol"),
        ("s2bnn.yaml", ["method_kwargs.ssl_method=simclr"], "simclr"),
    ],
)
def test_mixed_objectives_from_the_command_line(workspace, config, extra, objective):
    _, out = pretrain(workspace, config, f"mix-{objective}", extra)
    ckpt = only_ckpt(out / "s2bnn")
    args = json.loads((ckpt.parent / "args.json").read_text())
    assert args["method_kwargs"]["ssl_method"] == objective
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert any(k.startswith("projector.") for k in state)  # the objective's own head trained
    if objective in ("mocov2plus", "byol"):
        assert any(k.startswith("momentum_backbone.") for k in state)
    assert not any(k.startswith("teacher") for k in state)


def test_resume_reloads_teacher_and_continues(workspace):
    _, out = pretrain(workspace, "s2bnn.yaml", "resume")
    first = only_ckpt(out / "s2bnn")
    step = torch.load(first, map_location="cpu", weights_only=True)["global_step"]
    _, out = pretrain(
        workspace,
        "s2bnn.yaml",
        "resume",
        [f'resume_from_checkpoint="{first}"', "max_epochs=2", "checkpoint.keep_prev=true"],
    )
    ckpts = sorted((out / "s2bnn").rglob("*ep=1.ckpt"))
    assert ckpts, "the resumed run wrote no epoch-1 checkpoint"
    resumed = torch.load(ckpts[-1], map_location="cpu", weights_only=True)
    assert resumed["epoch"] == 1 and resumed["global_step"] == 2 * step


def test_ddp_two_cpu_processes(workspace):
    proc, out = pretrain(
        workspace,
        "s2bnn_mocov2plus.yaml",
        "ddp",
        ['devices="2"', "strategy=ddp", "method_kwargs.ssl_kwargs.queue_size=64"],
    )
    ckpt = only_ckpt(out / "s2bnn")
    assert "unused" not in proc.stderr.lower() or "find_unused_parameters" not in proc.stderr
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["global_step"] > 0


@pytest.mark.parametrize(
    "override,message",
    [
        ("method_kwargs.ssl_method=simclrr", "unknown method_kwargs.ssl_method 'simclrr'"),
        ("method_kwargs.ssl_method=s2bnn", "cannot be mixed with itself"),
        ("method_kwargs.teacher.ckpt=/nonexistent/teacher.ckpt", "is not a file"),
    ],
)
def test_bad_settings_stop_before_training(workspace, override, message):
    proc, _ = pretrain(workspace, "s2bnn.yaml", "bad", [override], check=False)
    assert proc.returncode != 0
    assert message in proc.stderr + proc.stdout
    assert "Epoch 0" not in proc.stderr


def test_s2bnn_pretrain_command_without_solo_checkout(tmp_path):
    env = dict(os.environ, SOLO_LEARN_DIR=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-m", "s2bnn_plugin.cli", "pretrain", "max_epochs=1"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 2
    assert "main_pretrain.py does not exist" in proc.stderr and "SOLO_LEARN_DIR" in proc.stderr
