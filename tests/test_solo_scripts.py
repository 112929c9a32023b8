"""solo-learn's own main_pretrain.py / main_linear.py, run as subprocesses with the plugin's configs
on a tiny generated ImageFolder (needs solo-learn; skipped otherwise)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from image_utils import random_image_folder
from solo_utils import TINY_PRETRAIN, run_solo_script, tiny_teacher

from s2bnn_plugin.solo_learn.locate import configs_dir, find_solo_script

pytestmark = [pytest.mark.solo, pytest.mark.slow]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("solo_scripts")
    random_image_folder(root / "data" / "train", classes=5, per_class=8, seed=0)
    random_image_folder(root / "data" / "val", classes=5, per_class=4, seed=1)
    tiny_teacher(root / "teacher.pth.tar")
    return root


def run_solo(
    script: str, kind: str, config: str, overrides: list[str], cwd: Path, check: bool = True
) -> subprocess.CompletedProcess:
    proc = run_solo_script(script, kind, config, overrides, cwd)
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
        *TINY_PRETRAIN,
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


def probe(workspace: Path, config: str, name: str, extra: list[str], **env: str):
    """``pretrain`` through ``solo_probe.py`` (solo-learn's script unchanged, plus a test
    callback); ``env`` sets the probe's S2BNN_PROBE_* variables."""
    out = workspace / name
    out.mkdir(parents=True, exist_ok=True)
    overrides = [
        f"data.train_path={workspace / 'data' / 'train'}",
        f"method_kwargs.teacher.ckpt={workspace / 'teacher.pth.tar'}",
        f"default_root_dir={out}",
        f"name={name.split('/')[0]}",
        *TINY_PRETRAIN,
        *extra,
    ]
    command = [
        sys.executable,
        str(Path(__file__).with_name("solo_probe.py")),
        "--config-path",
        str(configs_dir() / "pretrain" / "custom"),
        "--config-name",
        config,
        *overrides,
    ]
    variables = {f"S2BNN_PROBE_{k.upper()}": v for k, v in env.items()}
    variables["S2BNN_PROBE_SCRIPT"] = str(find_solo_script("main_pretrain.py"))
    proc = subprocess.run(
        command,
        cwd=workspace,
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONWARNINGS="ignore", **variables),
        timeout=600,
    )
    if proc.returncode != 0:
        raise AssertionError(f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc, out


@pytest.mark.parametrize(
    "config,extra,factors",
    [
        # the official schedule: lr * (1 - epoch / 4), once per epoch
        ("s2bnn.yaml", [], [1.0, 0.75, 0.5, 0.25]),
        # mixed with MoCo v2, one warmup epoch from 0: then 1 - (epoch - 1) / 3
        (
            "s2bnn_mocov2plus.yaml",
            [
                "method_kwargs.ssl_kwargs.queue_size=64",
                "scheduler.warmup_epochs=1",
                "++scheduler.warmup_start_lr=0.0",
            ],
            [0.0, 1.0, 2 / 3, 1 / 3],
        ),
    ],
    ids=["distillation-only", "mixed-warmup"],
)
def test_linear_schedule_lr_at_each_epoch(workspace, config, extra, factors):
    """main_pretrain.py with the shipped scheduler.name=linear (interval: epoch): the lr every
    parameter group trains with in each epoch, read before every batch of the run."""
    name = f"lr-{config.split('.')[0]}"
    out = workspace / name / "probe"
    out.mkdir(parents=True)
    probe(
        workspace, config, name, ["max_epochs=4", "checkpoint.enabled=false", *extra], out=str(out)
    )
    record = torch.load(out / "rank0.pt", weights_only=True)
    by_epoch: dict[int, set] = {}
    for epoch, _, lrs, initial in record["lrs"]:
        assert all(i > 0 for i in initial)
        by_epoch.setdefault(epoch, set()).add(
            tuple(round(lr / i, 9) for lr, i in zip(lrs, initial))
        )
    assert sorted(by_epoch) == [0, 1, 2, 3]
    for epoch, factor in enumerate(factors):
        (seen,) = by_epoch[epoch]  # constant within the epoch, the same in every group
        assert seen == pytest.approx((factor,) * len(seen)), epoch


def test_linear_schedule_for_another_method_stops_before_training(workspace):
    overrides = [
        f"data.train_path={workspace / 'data' / 'train'}",
        "scheduler.name=linear",
        "wandb.enabled=false",
        "accelerator=cpu",
        'devices="1"',
    ]
    proc = run_solo(
        "main_pretrain.py", "pretrain", "bnn_mocov2plus.yaml", overrides, workspace, False
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "scheduler.name=linear with method=mocov2plus" in proc.stderr
    assert "set scheduler.name=warmup_cosine" in proc.stderr
    assert "Epoch 0" not in proc.stderr


def newest(folder: Path, pattern: str) -> Path:
    found = sorted(folder.rglob(pattern), key=lambda p: p.stat().st_mtime)
    assert found, f"no {pattern} under {folder}"
    return found[-1]


def max_abs_diff(a: dict, b: dict) -> float:
    return max(
        (a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point()
    )


def assert_same_training_state(expected: dict, got: dict) -> None:
    """Weights (buffers included), Adam's moments and step counts, scheduler: bit for bit."""
    assert expected["global_step"] == got["global_step"] and expected["epoch"] == got["epoch"]
    assert expected["state_dict"].keys() == got["state_dict"].keys()
    for k, v in expected["state_dict"].items():
        assert torch.equal(v, got["state_dict"][k]), k
    for opt_e, opt_g in zip(expected["optimizer_states"], got["optimizer_states"], strict=True):
        assert opt_e["state"].keys() == opt_g["state"].keys()
        for i, state in opt_e["state"].items():
            for k, v in state.items():
                assert torch.equal(v, opt_g["state"][i][k]), (i, k)
    assert expected["lr_schedulers"] == got["lr_schedulers"]


def load_ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def resume_runs(
    workspace: Path, tag: str, config: str, common: list[str], auto: bool = False, **env: str
) -> dict[str, dict]:
    """2 epochs in one go (keeping its epoch-0 checkpoint), then a run resumed from that
    checkpoint with ``resume_from_checkpoint`` and, with ``auto``, one found by solo-learn's
    auto-resume in a folder holding only that checkpoint and its args.json (as an interrupted
    run leaves it). ``env`` goes to the uninterrupted run's probe. Returns the checkpoints."""
    root = workspace / tag
    common = [*common, "+deterministic=true", "max_epochs=2", "checkpoint.keep_prev=true"]

    def run(name: str, extra: list[str], **variables: str) -> Path:
        probe(
            workspace,
            config,
            f"{tag}/{name}",
            [*common, f"checkpoint.dir={root / name}", *extra],
            **variables,
        )
        return newest(root / name, "*ep=1.ckpt")

    off = ["auto_resume.enabled=false"]
    found = {"whole": run("whole", off, **env)}
    first = newest(root / "whole", "*ep=0.ckpt")
    found["first"] = first
    found["resumed"] = run("resumed", [*off, f'resume_from_checkpoint="{first}"'])
    if auto:
        copy = root / "auto" / "s2bnn" / "interrupted"
        copy.mkdir(parents=True)
        shutil.copy(first, copy / first.name)
        shutil.copy(first.parent / "args.json", copy / "args.json")
        found["auto"] = run("auto", ["auto_resume.enabled=true"])
        assert found["auto"].parent != copy  # a new run, not the copied one
    return {k: load_ckpt(v) for k, v in found.items()}


@pytest.mark.parametrize(
    "objective,workers",
    [("none", "0"), ("simclr", "2")],  # distillation alone; mixed, with data-loader workers
)
def test_resume_equals_uninterrupted_run(workspace, objective, workers):
    """main_pretrain.py, deterministic: 2 epochs in one go vs 1 + resume + 1, by
    resume_from_checkpoint and by auto-resume: the final checkpoints (weights, Adam state,
    scheduler) are equal bit for bit. Resumed without the random states (stock Lightning) the
    weights are not."""
    common = [f"method_kwargs.ssl_method={objective}", f"data.num_workers={workers}"]
    tag = f"resume-{objective}"
    ckpts = resume_runs(workspace, tag, "s2bnn.yaml", common, auto=True)
    expected = ckpts["whole"]
    assert len(ckpts["first"]["s2bnn_rng_states"]) == 1
    for how in ("resumed", "auto"):
        assert_same_training_state(expected, ckpts[how])
        diff = max_abs_diff(expected["state_dict"], ckpts[how]["state_dict"])
        print(f"{objective}: {how}: max |dw| vs uninterrupted = {diff}")
    if objective == "none":
        first = newest(workspace / tag / "whole", "*ep=0.ckpt")
        probe(
            workspace,
            "s2bnn.yaml",
            f"{tag}/stock",
            [
                *common,
                "+deterministic=true",
                "max_epochs=2",
                f"checkpoint.dir={workspace / tag / 'stock'}",
                "auto_resume.enabled=false",
                f'resume_from_checkpoint="{first}"',
            ],
            no_rng_restore="1",
        )
        stock = load_ckpt(newest(workspace / tag / "stock", "*ep=1.ckpt"))
        diff = max_abs_diff(expected["state_dict"], stock["state_dict"])
        print(f"{objective}: resumed without the random states: max |dw| = {diff:.4f}")
        assert diff > 1e-4


def test_ddp_two_cpu_processes(workspace):
    """strategy=ddp, 2 CPU processes, MoCo v2 + distillation: both ranks trained, their student
    parameters end equal, the epoch losses they logged are the synchronised (equal) values, the
    teacher is in neither DDP's parameters nor the checkpoint; and resuming from the epoch-0
    checkpoint (every rank's random states in it) ends bit for bit where the whole run did."""
    out = workspace / "ddp-probe"
    out.mkdir()
    common = [
        'devices="2"',
        "strategy=ddp",
        "accelerator=cpu",
        "method_kwargs.ssl_kwargs.queue_size=64",
    ]
    ckpts = resume_runs(workspace, "ddp", "s2bnn_mocov2plus.yaml", common, out=str(out))

    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == 2 for r in ranks)
    assert all(r["wrapper"] == "DistributedDataParallel" for r in ranks)
    synced = ranks[0]["synced_parameters"]
    assert any(n.startswith("backbone.") for n in synced)
    assert any(n.startswith("distill_head.") for n in synced)
    for name in synced:
        assert torch.equal(ranks[0]["state_dict"][name], ranks[1]["state_dict"][name]), name
    for key in ("train_distill_loss", "train_ssl_loss", "train_class_loss", "train_loss"):
        a, b = ranks[0]["metrics"][f"{key}_epoch"], ranks[1]["metrics"][f"{key}_epoch"]
        assert torch.isfinite(a) and torch.equal(a, b), key
    for r in ranks:
        assert r["teacher_parameters"] > 0 and r["teacher_parameters_synced"] == 0
    state = ckpts["whole"]
    assert not any(k.startswith("teacher") or "encoder_q" in k for k in state["state_dict"])
    assert len(ckpts["first"]["s2bnn_rng_states"]) == 2
    assert_same_training_state(state, ckpts["resumed"])
    diff = max_abs_diff(state["state_dict"], ckpts["resumed"]["state_dict"])
    print(f"DDP, 2 processes: resumed: max |dw| vs uninterrupted = {diff}")


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
