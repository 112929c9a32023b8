"""solo-learn's own main_pretrain.py refuses, at once and through the plugin's Hydra callback, a
config that cannot run on this machine (needs solo-learn; a subprocess, so marked slow)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from s2bnn_plugin.compat.solo import CALLBACK_OVERRIDE, configs_dir, find_solo_script

pytestmark = [pytest.mark.solo, pytest.mark.slow]


def _pretrain(tmp_path: Path, overrides: list[str]) -> subprocess.CompletedProcess:
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "teacher.pth.tar").write_bytes(b"never read: the run stops first")
    command = [
        sys.executable,
        str(find_solo_script("main_pretrain.py")),
        "--config-path",
        str(configs_dir() / "pretrain" / "custom"),
        "--config-name",
        "s2bnn.yaml",
        f"data.train_path={tmp_path / 'train'}",
        f"method_kwargs.teacher.ckpt={tmp_path / 'teacher.pth.tar'}",
        f"checkpoint.dir={tmp_path / 'out'}",
        "wandb.enabled=false",
        *overrides,
        CALLBACK_OVERRIDE,
    ]
    env = dict(os.environ, PYTHONWARNINGS="ignore", CUDA_VISIBLE_DEVICES="")
    return subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300
    )


def test_sync_batchnorm_on_two_cpu_processes_stops_before_anything_is_built(tmp_path):
    proc = _pretrain(
        tmp_path,
        ["accelerator=cpu", "devices=2", "strategy=ddp", "+sync_batchnorm=True"],
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "set sync_batchnorm=False" in proc.stderr
    # refused before the teacher (a file of garbage) was read and before any run folder
    assert "teacher" not in proc.stderr.split("cannot run here")[0].lower()
    assert not (tmp_path / "out").exists()


def test_a_missing_data_folder_is_named(tmp_path):
    proc = _pretrain(tmp_path, [f"data.val_path={tmp_path / 'no-such-val'}"])
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "data.val_path" in proc.stderr and "does not exist" in proc.stderr
