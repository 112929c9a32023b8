"""Every shipped Hydra config composes (defaults found, callback listed) and names things that
exist; the ones for GPUs are not run here, so this is what guards them."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from s2bnn_plugin.backbones import BACKBONES
from s2bnn_plugin.solo_learn.locate import configs_dir

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


def test_the_callback_target_is_the_callback_class():
    """The ``_target_`` the scripts' command lines add names the class Hydra must instantiate
    (the configs' own ``_target_`` is checked above)."""
    from hydra.utils import get_class

    from s2bnn_plugin.solo import RegisterS2BNN
    from s2bnn_plugin.solo_learn.command import CALLBACK_OVERRIDE, CALLBACK_TARGET

    assert get_class(CALLBACK_TARGET) is RegisterS2BNN
    assert CALLBACK_OVERRIDE == f"++hydra.callbacks.s2bnn._target_={CALLBACK_TARGET}"


@pytest.mark.solo
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_methods_exist_in_solo_learn(path):
    from s2bnn_plugin.solo import register
    from s2bnn_plugin.solo_learn.locate import require_solo

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


S2BNN_AUG = sorted((ROOT / "pretrain").glob("*/augmentations/s2bnn_aug_plus.yaml"))


@pytest.mark.solo
@pytest.mark.parametrize("path", S2BNN_AUG, ids=lambda p: p.parent.parent.name)
def test_s2bnn_augmentation_is_the_official_aug_plus(path):
    """S2-BNN's --aug-plus (main_moco.py): RandomResizedCrop(scale 0.2-1), ColorJitter(0.4,
    0.4, 0.4, 0.1) with p 0.6, grayscale p 0.2, Gaussian blur (sigma 0.1-2) with p 0.2,
    horizontal flip; read back from the torchvision pipeline solo-learn builds from the file."""
    from solo.data.pretrain_dataloader import GaussianBlur, build_transform_pipeline
    from torchvision import transforms as T

    (aug,) = OmegaConf.load(path)
    assert aug.num_crops == 2
    assert aug.crop_size == (32 if path.parent.parent.name == "cifar" else 224)
    pipeline = build_transform_pipeline("custom", aug).transforms
    by_type = {}
    for t in pipeline:
        inner = t.transforms[0] if isinstance(t, T.RandomApply) else t
        by_type[type(inner)] = (t, inner)
    rrc = by_type[T.RandomResizedCrop][1]
    assert rrc.size == (aug.crop_size, aug.crop_size) and rrc.scale == (0.2, 1.0)
    apply, jitter = by_type[T.ColorJitter]
    assert apply.p == 0.6
    assert (jitter.brightness, jitter.contrast, jitter.saturation) == ((0.6, 1.4),) * 3
    assert jitter.hue == (-0.1, 0.1)
    assert by_type[T.RandomGrayscale][0].p == 0.2
    apply, blur = by_type[GaussianBlur]
    assert apply.p == 0.2 and list(blur.sigma) == [0.1, 2.0]
    assert by_type[T.RandomHorizontalFlip][0].p == 0.5
    kinds = {type(inner).__name__ for _, inner in by_type.values()}
    assert not kinds & {"Solarization", "Equalization"}  # --aug-plus has neither


@pytest.mark.parametrize("dataset", ["cifar", "custom", "imagenet-100", "imagenet"])
def test_s2bnn_configs_compose_with_the_official_augmentation(dataset):
    for name in ("s2bnn", "s2bnn_mocov2plus", "s2bnn_step1", "s2bnn_step2"):
        cfg = _compose(ROOT / "pretrain" / dataset / f"{name}.yaml")
        (aug,) = cfg.augmentations
        assert aug.color_jitter.prob == 0.6 and aug.gaussian_blur.prob == 0.2, name
        assert cfg.scheduler.name == "linear", name
        crops = "all" if name == "s2bnn_mocov2plus" else "first"
        assert cfg.method_kwargs.distill_crops == crops, name
        assert cfg.method_kwargs.head_hidden_dim is None, name


def test_the_demo_teacher_trains_from_the_simclr_config_it_is_named_for(monkeypatch, tmp_path):
    """The demo's teacher, composed as the demo asks solo-learn for it, is SimCLR from a file
    named for SimCLR, with nothing of another method left over (no MoCo queue or momentum)."""
    import s2bnn_plugin.solo_learn.command as solo
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
