"""solo-learn's own main_pretrain.py refuses, at once and through the plugin's Hydra callback, a
config that cannot run on this machine (needs solo-learn; a subprocess, so marked slow)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from solo_utils import run_solo_script

from s2bnn_plugin.solo_learn.command import CALLBACK_OVERRIDE

pytestmark = [pytest.mark.solo, pytest.mark.slow]


def _pretrain(tmp_path: Path, overrides: list[str]) -> subprocess.CompletedProcess:
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "teacher.pth.tar").write_bytes(b"never read: the run stops first")
    return run_solo_script(
        "main_pretrain.py",
        "pretrain",
        "s2bnn.yaml",
        [
            f"data.train_path={tmp_path / 'train'}",
            f"method_kwargs.teacher.ckpt={tmp_path / 'teacher.pth.tar'}",
            f"checkpoint.dir={tmp_path / 'out'}",
            "wandb.enabled=false",
            *overrides,
            CALLBACK_OVERRIDE,
        ],
        tmp_path,
        timeout=300,
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


def _one_line_refusal(proc: subprocess.CompletedProcess, tmp_path: Path) -> str:
    """The refusal: exit 2, one line on stderr, no traceback, no run folder."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "out").exists()
    lines = [line for line in proc.stderr.splitlines() if line.startswith("s2bnn: ")]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


def test_a_typo_in_method_kwargs_stops_main_pretrain(tmp_path):
    """+method_kwargs.temprature=0.1 would otherwise train at the default 0.2, without a word."""
    proc = _pretrain(tmp_path, ["accelerator=cpu", "+method_kwargs.temprature=0.1"])
    line = _one_line_refusal(proc, tmp_path)
    assert line.startswith("s2bnn: bad config: method_kwargs.temprature is not a setting")
    assert "(did you mean temperature?)" in line


def test_devices_as_an_int_stops_main_pretrain_with_the_fix(tmp_path):
    proc = _pretrain(tmp_path, ["accelerator=cpu", "devices=1"])
    line = _one_line_refusal(proc, tmp_path)
    assert "devices=1 is an int" in line and "'devices=\"1\"' on the command line" in line


def test_s2bnn_linear_without_its_checkpoint_says_what_to_set(tmp_path):
    for split in ("train", "val"):
        (tmp_path / split / "a").mkdir(parents=True)
    command = [
        sys.executable,
        "-m",
        "s2bnn_plugin.cli",
        "linear",
        f"data.train_path={tmp_path / 'train'}",
        f"data.val_path={tmp_path / 'val'}",
        f"checkpoint.dir={tmp_path / 'out'}",
        "accelerator=cpu",
    ]
    env = dict(os.environ, PYTHONWARNINGS="ignore", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300
    )
    line = _one_line_refusal(proc, tmp_path)
    assert "pretrained_feature_extractor is not set: set pretrained_feature_extractor=PATH" in line


def test_a_teacher_holding_pickled_code_stops_main_pretrain_in_one_line(tmp_path):
    """It was refused by torch's weights-only loader as a traceback from inside main()."""
    marker = tmp_path / "code-ran"
    teacher = tmp_path / "evil.pth.tar"
    code = (
        "import os, sys, torch\n"
        "class RunsCode:\n"
        "    def __reduce__(self):\n"
        "        return (os.system, ('touch ' + sys.argv[2],))\n"
        "torch.save({'state_dict': {'conv1.weight': RunsCode()}}, sys.argv[1])\n"
    )
    subprocess.run([sys.executable, "-c", code, str(teacher), str(marker)], check=True)
    proc = _pretrain(tmp_path, ["accelerator=cpu", f"method_kwargs.teacher.ckpt={teacher}"])
    line = _one_line_refusal(proc, tmp_path)
    assert line.startswith("s2bnn: bad config: cannot read teacher checkpoint"), line
    assert "weights-only" in line and not marker.exists()


def test_a_backbone_kwarg_the_factory_refuses_stops_main_pretrain_in_one_line(tmp_path):
    """+backbone.kwargs.compile=yes was a BackboneArgumentError traceback from the method."""
    proc = _pretrain(tmp_path, ["accelerator=cpu", "+backbone.kwargs.compile=yes"])
    line = _one_line_refusal(proc, tmp_path)
    assert "backbone.kwargs: reactnet_a(): compile must be true or false, got 'yes'" in line


def test_s2bnn_pretrain_passes_a_path_with_quotes_and_dollars_literally(tmp_path):
    """A '"' broke the quoting of the command line, and ${...} was interpolated: the refusal
    names the path exactly as given."""
    odd = tmp_path / 'it\'s "odd" ${oc.env:HOME}' / "train"
    command = [
        sys.executable,
        "-m",
        "s2bnn_plugin.cli",
        "pretrain",
        "--dataset",
        "custom",
        "--config",
        "s2bnn.yaml",
        f"data.train_path={odd}",
        f"checkpoint.dir={tmp_path / 'out'}",
        "accelerator=cpu",
    ]
    env = dict(os.environ, PYTHONWARNINGS="ignore", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300
    )
    line = _one_line_refusal(proc, tmp_path)
    assert f"data.train_path={odd} does not exist" in line, line
