"""Every shipped Hydra config composes (defaults found, callback listed) and names things that
exist; the ones for GPUs are not run here, so this is what guards them."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from s2bnn_plugin.backbones import BACKBONES
from s2bnn_plugin.cli import configs_dir

ROOT = configs_dir()
CONFIGS = sorted(p for kind in ("pretrain", "linear") for p in (ROOT / kind).glob("*/*.yaml"))


def _compose(path: Path):
    with initialize_config_dir(config_dir=str(path.parent), version_base="1.2"):
        return compose(config_name=path.name, return_hydra_config=True)


def test_every_dataset_has_the_full_set():
    pretrain = {
        "s2bnn",
        "s2bnn_mocov2plus",
        "s2bnn_step1",
        "s2bnn_step2",
        "bnn_mocov2plus",
        "teacher_mocov2plus",
    }
    demo = {"teacher_simclr"}  # the demo's teacher (32 px images: the custom folder only)
    for dataset in ("cifar", "imagenet-100", "imagenet", "custom"):
        extra = demo if dataset == "custom" else set()
        assert {p.stem for p in (ROOT / "pretrain" / dataset).glob("*.yaml")} == pretrain | extra
        assert {p.stem for p in (ROOT / "linear" / dataset).glob("*.yaml")} == set(BACKBONES)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_config_composes(path):
    cfg = _compose(path)
    callback = cfg.hydra.callbacks.s2bnn._target_
    assert callback == "s2bnn_plugin.solo.RegisterS2BNN"
    assert cfg.wandb.enabled is False
    name = cfg.backbone.name
    assert name in BACKBONES or name.startswith("resnet")
    if name in BACKBONES:  # the kwargs are accepted by the factory
        BACKBONES[name](**OmegaConf.to_container(cfg.backbone.kwargs))
    if path.parent.parent.name == "pretrain":
        assert len(cfg.augmentations) == 1 and cfg.augmentations[0].num_crops == 2
        if cfg.method == "s2bnn":
            assert OmegaConf.is_missing(cfg.method_kwargs.teacher, "ckpt")
            step1 = path.stem == "s2bnn_step1"
            assert cfg.backbone.kwargs.binary_weights is (not step1)
            if path.stem == "s2bnn_step2":
                assert OmegaConf.is_missing(cfg.method_kwargs, "student_init")
    else:
        assert cfg.pretrain_method == "s2bnn"
        assert OmegaConf.is_missing(cfg, "pretrained_feature_extractor")


@pytest.mark.solo
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_methods_exist_in_solo_learn(path):
    from s2bnn_plugin.solo import register, require_solo

    register()
    cfg = _compose(path)
    if "method" in cfg:
        assert cfg.method in require_solo().METHODS
    assert cfg.backbone.name in require_solo().BaseMethod._BACKBONES


def test_cli_stops_quietly_when_its_reader_goes_away():
    """``s2bnn configs --list | head``: when the reader has gone, no BrokenPipeError
    traceback, and the status a shell gives a tool stopped by its pipe."""
    import os
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first write: every write fails
    code = "import sys; from s2bnn_plugin.cli import main; sys.exit(main())"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, "configs", "--list"],
            stdout=write,
            stderr=subprocess.PIPE,
            timeout=120,
        )
    finally:
        os.close(write)
    err = proc.stderr.decode()
    assert proc.returncode == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_the_demo_teacher_trains_from_the_simclr_config_it_is_named_for(monkeypatch, tmp_path):
    """The demo's teacher, composed as the demo asks solo-learn for it, is SimCLR from a file
    named for SimCLR, with nothing of another method left over (no MoCo queue or momentum)."""
    import s2bnn_plugin.compat.solo as solo
    from s2bnn_plugin.demo import pipeline

    asked = {}

    class Asked(Exception):
        pass

    def solo_command(script, overrides, *, kind, dataset, config, python):
        asked.update(overrides=list(overrides), dir=ROOT / kind / dataset, config=config)
        raise Asked

    monkeypatch.setattr(solo, "solo_command", solo_command)
    cfg = pipeline.DemoConfig(out_dir=tmp_path)
    with pytest.raises(Asked):
        pipeline.stage_teacher(cfg, {"train": str(tmp_path / "train")}, lambda *a: None, True)
    assert asked["config"] == pipeline.TEACHER_CONFIG == "teacher_simclr.yaml"
    assert not any(o.startswith(("method=", "~")) for o in asked["overrides"]), asked["overrides"]
    with initialize_config_dir(config_dir=str(asked["dir"]), version_base="1.2"):
        composed = compose(config_name=asked["config"], overrides=asked["overrides"])
    assert composed.method == "simclr" and composed.backbone.name == "resnet18"
    assert "queue_size" not in composed.method_kwargs and "momentum" not in composed
    assert composed.optimizer.name == "adam" and "kwargs" not in composed.optimizer
    assert composed.method_kwargs.proj_hidden_dim == cfg.proj_hidden_dim
    assert composed.method_kwargs.temperature == cfg.temperature
