"""solo-learn's own main_pretrain.py, rerun on a finished run's checkpoint folder: with another
teacher and temperature it refuses at once (exit 2, the differing keys named, nothing written);
with the same settings solo-learn's auto-resume still continues the run (needs solo-learn; runs
the script as a subprocess, so marked slow)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from image_utils import random_image_folder
from solo_utils import TINY_PRETRAIN, run_solo_script, tiny_teacher

from s2bnn_plugin.solo_learn.command import hydra_quote
from s2bnn_plugin.solo_learn.resume import file_sha256

pytestmark = [pytest.mark.solo, pytest.mark.slow]

TINY = [*TINY_PRETRAIN, "accelerator=cpu", "max_epochs=1", "name=resume"]


def _pretrain(root: Path, *overrides: str) -> subprocess.CompletedProcess:
    return run_solo_script(
        "main_pretrain.py",
        "pretrain",
        "s2bnn.yaml",
        [
            f"data.train_path={root / 'train'}",
            f"method_kwargs.teacher.ckpt={root / 'teacher_a.pth.tar'}",
            f"checkpoint.dir={root / 'runs'}",
            f"default_root_dir={root / 'logs'}",
            *TINY,
            *map(hydra_quote, overrides),
        ],
        root,
    )


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_rerun_with_other_settings_is_refused_and_the_same_settings_resume(tmp_path):
    random_image_folder(tmp_path / "train", classes=5, per_class=8)
    teacher_a = tiny_teacher(tmp_path / "teacher_a.pth.tar", 0)
    teacher_b = tiny_teacher(tmp_path / "teacher_b.pth.tar", 1)

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
