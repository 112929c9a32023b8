"""solo-learn's own main_pretrain.py, rerun on a finished run's checkpoint folder: with another
teacher and temperature it refuses at once (exit 2, the differing keys named, nothing written);
with the same settings solo-learn's auto-resume still continues the run (needs solo-learn; runs
the script as a subprocess, so marked slow)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from s2bnn_plugin.solo_learn.command import hydra_quote
from s2bnn_plugin.solo_learn.locate import configs_dir, find_solo_script
from s2bnn_plugin.solo_learn.resume import file_sha256

pytestmark = [pytest.mark.solo, pytest.mark.slow]

TINY = [
    "augmentations=mocov2_32.yaml",
    "optimizer.batch_size=8",
    "data.num_workers=0",
    "backbone.kwargs.width_mult=0.125",
    "backbone.kwargs.cifar=true",
    "method_kwargs.head_hidden_dim=32",
    "wandb.enabled=false",
    "accelerator=cpu",
    "max_epochs=1",
    "name=resume",
]


def _teacher(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    teacher = torchvision.models.resnet18()
    teacher.fc = torch.nn.Sequential(
        torch.nn.Linear(512, 128), torch.nn.ReLU(), torch.nn.Linear(128, 32)
    )
    state = {f"module.encoder_q.{k}": v for k, v in teacher.state_dict().items()}
    torch.save({"state_dict": state}, path)
    return path


def _pretrain(root: Path, *overrides: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        str(find_solo_script("main_pretrain.py")),
        "--config-path",
        str(configs_dir() / "pretrain" / "custom"),
        "--config-name",
        "s2bnn.yaml",
        f"data.train_path={root / 'train'}",
        f"method_kwargs.teacher.ckpt={root / 'teacher_a.pth.tar'}",
        f"checkpoint.dir={root / 'runs'}",
        f"default_root_dir={root / 'logs'}",
        *TINY,
        *map(hydra_quote, overrides),
    ]
    env = dict(os.environ, PYTHONWARNINGS="ignore", CUDA_VISIBLE_DEVICES="")
    return subprocess.run(command, cwd=root, capture_output=True, text=True, env=env, timeout=600)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_rerun_with_other_settings_is_refused_and_the_same_settings_resume(tmp_path):
    rng = np.random.default_rng(0)
    for c in range(5):
        folder = tmp_path / "train" / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(8):
            Image.fromarray((rng.random((32, 32, 3)) * 255).astype("uint8")).save(
                folder / f"{i}.png"
            )
    teacher_a = _teacher(tmp_path / "teacher_a.pth.tar", 0)
    teacher_b = _teacher(tmp_path / "teacher_b.pth.tar", 1)

    first = _pretrain(tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    (ckpt,) = (tmp_path / "runs" / "s2bnn").rglob("*.ckpt")
    before = _files(tmp_path / "runs")
    assert str(ckpt.parent.relative_to(tmp_path / "runs") / "args.json") in before

    refused = _pretrain(
        tmp_path, f"method_kwargs.teacher.ckpt={teacher_b}", "method_kwargs.temperature=0.5"
    )
    assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-3000:]
    lines = [line for line in refused.stderr.splitlines() if line.startswith("s2bnn:")]
    assert len(lines) == 1, refused.stderr[-3000:]
    line = lines[0]
    assert f"auto-resume would continue {ckpt}, trained with other settings" in line
    assert "method_kwargs.temperature (0.2 -> 0.5)" in line
    assert f"method_kwargs.teacher.ckpt ({teacher_a} -> {teacher_b})" in line
    digests = f"({file_sha256(teacher_a)[:12]} -> {file_sha256(teacher_b)[:12]})"
    assert f"method_kwargs.teacher.sha256 {digests}" in line
    assert "name=..." in line and "auto_resume.enabled=False" in line
    assert "Resuming from previous checkpoint" not in refused.stdout
    assert "Epoch" not in refused.stdout + refused.stderr
    assert _files(tmp_path / "runs") == before  # the checkpoint and args.json untouched

    explicit = _pretrain(
        tmp_path,
        "method_kwargs.temperature=0.5",
        "auto_resume.enabled=false",
        f"resume_from_checkpoint={ckpt}",
    )
    assert explicit.returncode == 2, explicit.stderr[-3000:]
    assert f"resume_from_checkpoint={ckpt} was trained with other settings" in explicit.stderr
    assert "method_kwargs.temperature (0.2 -> 0.5)" in explicit.stderr
    assert "teacher" not in explicit.stderr.split("s2bnn:")[1]  # the same teacher: not listed
    assert _files(tmp_path / "runs") == before

    again = _pretrain(tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"Resuming from previous checkpoint that matches specifications: '{ckpt}'" in (
        again.stdout
    )
