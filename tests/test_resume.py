"""A run never continues a checkpoint trained with other settings: the checkpoint auto-resume (or
``resume_from_checkpoint``) would continue is compared with the config before anything is built
(in-process; the run through solo-learn's script is in test_resume_scripts.py)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from s2bnn_plugin.solo_learn.command import hydra_quote
from s2bnn_plugin.solo_learn.locate import configs_dir
from s2bnn_plugin.solo_learn.resume import (
    DIGEST_KEY,
    Difference,
    ResumeMismatch,
    check_resume,
    differences,
    file_sha256,
)

SMALL = [
    "augmentations=mocov2_32.yaml",
    "backbone.kwargs.width_mult=0.125",
    "backbone.kwargs.cifar=true",
    "method_kwargs.head_hidden_dim=32",
    "optimizer.batch_size=8",
    "wandb.enabled=false",
]


def test_differences_compare_leaves():
    old = {
        "method_kwargs": {"temperature": 0.2, "ssl_kwargs": {}, "teacher": {"ckpt": "a"}},
        "backbone": {"name": "reactnet_a", "kwargs": {"width_mult": 1.0}},
        "augmentations": [{"crop_size": 32}, {"crop_size": 32}],
    }
    new = copy.deepcopy(old)
    assert differences(old, new, ("method_kwargs", "backbone", "augmentations")) == []
    del new["method_kwargs"]["ssl_kwargs"]  # a default {} equals a key that is not there
    new["method_kwargs"]["temperature"] = 0.5
    new["backbone"]["kwargs"]["cifar"] = True
    new["augmentations"][1]["crop_size"] = 16
    assert differences(old, new, ("method_kwargs", "backbone", "augmentations")) == [
        Difference("augmentations.1.crop_size", 32, 16),
        Difference("backbone.kwargs.cifar", None, True),
        Difference("method_kwargs.temperature", 0.2, 0.5),
    ]
    assert str(Difference("backbone.kwargs.cifar", None, True)) == (
        "backbone.kwargs.cifar (<unset> -> true)"
    )
    # a run from before digests were recorded: compared on what its args.json holds
    new = copy.deepcopy(old)
    new["method_kwargs"]["teacher"]["sha256"] = "ab" * 32
    assert differences(old, new, ("method_kwargs",)) == []
    old["method_kwargs"]["teacher"]["sha256"] = "cd" * 32
    assert [d.key for d in differences(old, new, ("method_kwargs",))] == [DIGEST_KEY]


def test_new_runs_are_not_looked_at(tmp_path, monkeypatch):
    """No checkpoint to continue: the config is not resolved (nothing imported, no teacher
    read)."""
    from s2bnn_plugin.solo_learn import resume

    calls = []

    def resolved(config):
        calls.append(config)
        raise RuntimeError("resolved a config")

    monkeypatch.setattr(resume, "resolved_config", resolved)
    check_resume({"method": "s2bnn", "auto_resume": {"enabled": False}})
    runs = {
        "method": "s2bnn",
        "auto_resume": {"enabled": True},
        "checkpoint": {"dir": str(tmp_path)},
    }
    check_resume(runs)
    (tmp_path / "s2bnn" / "offline-ab12").mkdir(parents=True)
    (tmp_path / "s2bnn" / "offline-ab12" / "args.json").write_text("{}")
    check_resume(runs)  # a run folder without a checkpoint
    assert calls == []
    (tmp_path / "s2bnn" / "offline-ab12" / "s2bnn-ep=0.ckpt").write_bytes(b"")
    check_resume(runs)  # now there is one to compare with
    assert len(calls) == 1


# ---------------------------------------------------------------------------------------------
# against args.json as solo-learn's main_pretrain.py writes it (needs solo-learn)


def _teacher(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    model = ResNet(BasicBlock, [1, 1, 1, 1])
    model.fc = nn.Sequential(nn.Linear(512, 32), nn.ReLU(), nn.Linear(32, 16))
    state = {f"module.encoder_q.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state}, path)
    return path


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    from s2bnn_plugin.solo import register

    register()
    root = tmp_path_factory.mktemp("resume")
    for c in range(3):
        (root / "train" / f"class{c}").mkdir(parents=True)
    _teacher(root / "teacher_a.pth.tar", 0)
    _teacher(root / "teacher_b.pth.tar", 1)
    return root


def job_config(place: Path, *overrides: str, config: str = "s2bnn.yaml"):
    """The config the Hydra callback sees (the hydra node included)."""
    with initialize_config_dir(str(configs_dir() / "pretrain" / "custom"), version_base="1.2"):
        return compose(
            config,
            overrides=[
                f"data.train_path={place / 'train'}",
                f"method_kwargs.teacher.ckpt={place / 'teacher_a.pth.tar'}",
                f"checkpoint.dir={place / 'runs'}",
                *SMALL,
                *map(hydra_quote, overrides),
            ],
            return_hydra_config=True,
        )


def finished_run(place: Path, config, folder: str) -> Path:
    """A run folder as main_pretrain.py leaves it: parse_cfg, the method built from the config
    (which fills its defaults and records the teacher's digest), args.json, a checkpoint."""
    import solo.methods
    from solo.args.pretrain import parse_cfg

    cfg = copy.deepcopy(config)
    with open_dict(cfg):
        del cfg["hydra"]
    OmegaConf.set_struct(cfg, False)
    cfg = parse_cfg(cfg)
    solo.methods.METHODS[cfg.method](cfg)
    run = place / "runs" / "s2bnn" / folder
    run.mkdir(parents=True)
    args = {**OmegaConf.to_container(cfg), "wandb_run_id": None}
    (run / "args.json").write_text(json.dumps(args))
    (run / f"{cfg.name}-{folder}-ep=0.ckpt").write_bytes(b"not read by the check")
    return run


@pytest.fixture
def fresh(place):
    """An empty checkpoint folder for each test."""
    import shutil

    shutil.rmtree(place / "runs", ignore_errors=True)
    yield place
    shutil.rmtree(place / "runs", ignore_errors=True)


@pytest.mark.solo
@pytest.mark.parametrize(
    "ssl",
    [
        [],
        # barlow_twins fills method_kwargs.ssl_kwargs.lamb itself, only in the objective's chain
        [
            "method_kwargs.ssl_method=barlow_twins",
            "+method_kwargs.ssl_kwargs.proj_hidden_dim=32",
            "+method_kwargs.ssl_kwargs.proj_output_dim=32",
        ],
    ],
    ids=["distillation", "barlow_twins"],
)
def test_the_same_settings_resume(fresh, ssl):
    run = finished_run(fresh, job_config(fresh, *ssl), "a1b2")
    args = json.loads((run / "args.json").read_text())
    assert args["method_kwargs"]["teacher"]["sha256"] == file_sha256(fresh / "teacher_a.pth.tar")
    check_resume(job_config(fresh, *ssl))  # auto-resume continues it: allowed
    check_resume(
        job_config(
            fresh,
            *ssl,
            "auto_resume.enabled=false",
            f"resume_from_checkpoint={next(run.glob('*.ckpt'))}",
        )
    )


@pytest.mark.solo
def test_another_teacher_or_temperature_is_refused(fresh):
    run = finished_run(fresh, job_config(fresh), "a1b2")
    other = fresh / "teacher_b.pth.tar"
    with pytest.raises(ResumeMismatch) as e:
        check_resume(
            job_config(
                fresh, f"method_kwargs.teacher.ckpt={other}", "method_kwargs.temperature=0.5"
            )
        )
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"auto-resume would continue {next(run.glob('*.ckpt'))}, trained")
    assert "method_kwargs.temperature (0.2 -> 0.5)" in message
    assert f"method_kwargs.teacher.ckpt ({fresh / 'teacher_a.pth.tar'} -> {other})" in message
    old, new = file_sha256(fresh / "teacher_a.pth.tar"), file_sha256(other)
    assert f"method_kwargs.teacher.sha256 ({old[:12]} -> {new[:12]})" in message
    assert "new name (name=...)" in message and "auto_resume.enabled=False" in message

    # the backbone and the data, given as resume_from_checkpoint
    with pytest.raises(ResumeMismatch) as e:
        check_resume(
            job_config(
                fresh,
                "backbone.kwargs.binary_weights=false",
                f"data.val_path={fresh / 'train'}",
                "auto_resume.enabled=false",
                f"resume_from_checkpoint={next(run.glob('*.ckpt'))}",
            )
        )
    message = str(e.value)
    assert message.startswith(f"resume_from_checkpoint={next(run.glob('*.ckpt'))} was trained")
    assert "backbone.kwargs.binary_weights (true -> false)" in message
    assert f"data.val_path (<unset> -> {fresh / 'train'})" in message
    assert "method_kwargs" not in message  # only what differs is listed


@pytest.mark.solo
def test_a_teacher_changed_in_place_is_refused(fresh):
    finished_run(fresh, job_config(fresh), "a1b2")
    teacher = fresh / "teacher_a.pth.tar"
    kept = teacher.read_bytes()
    try:
        _teacher(teacher, 2)
        with pytest.raises(ResumeMismatch, match=r"method_kwargs\.teacher\.sha256 \(") as e:
            check_resume(job_config(fresh))
        assert "teacher.ckpt" not in str(e.value)
    finally:
        teacher.write_bytes(kept)


@pytest.mark.solo
def test_a_run_without_a_recorded_digest_is_compared_on_what_it_holds(fresh):
    run = finished_run(fresh, job_config(fresh), "a1b2")
    args = json.loads((run / "args.json").read_text())
    del args["method_kwargs"]["teacher"]["sha256"]
    (run / "args.json").write_text(json.dumps(args))
    check_resume(job_config(fresh))
    with pytest.raises(ResumeMismatch, match=r"temperature \(0\.2 -> 0\.3\)"):
        check_resume(job_config(fresh, "method_kwargs.temperature=0.3"))


@pytest.mark.solo
def test_auto_resume_settings_solo_learn_ignores_start_a_new_run(fresh):
    """A run that auto-resume would not pick (another max_epochs) is none of the check's
    business: the script starts a new run."""
    finished_run(fresh, job_config(fresh), "a1b2")
    check_resume(job_config(fresh, "max_epochs=7", "method_kwargs.temperature=0.5"))


@pytest.mark.solo
def test_linear_runs_are_compared_too(fresh):
    """main_linear.py's auto-resume looks in checkpoint.dir/linear and matches on the backbone
    and the features, not the data: another training set is refused."""
    from s2bnn_plugin.solo_learn.resume import resolved_config

    def linear(*overrides: str):
        with initialize_config_dir(str(configs_dir() / "linear" / "custom"), version_base="1.2"):
            return compose(
                "reactnet_a.yaml",
                overrides=[
                    f"pretrained_feature_extractor={fresh / 'teacher_a.pth.tar'}",
                    f"data.train_path={fresh / 'train'}",
                    f"data.val_path={fresh / 'train'}",
                    f"checkpoint.dir={fresh / 'runs'}",
                    *overrides,
                ],
                return_hydra_config=True,
            )

    run = fresh / "runs" / "linear" / "offline-ab12"
    run.mkdir(parents=True)
    args = OmegaConf.to_container(resolved_config(linear()))
    (run / "args.json").write_text(json.dumps(args))
    (run / "reactnet_a-custom-linear-offline-ab12-ep=0.ckpt").write_bytes(b"")
    check_resume(linear())
    other = fresh / "other"
    (other / "class0").mkdir(parents=True, exist_ok=True)
    with pytest.raises(ResumeMismatch, match=rf"data\.train_path \({fresh / 'train'} -> {other}\)"):
        check_resume(linear(f"data.train_path={other}"))


def test_compiling_the_student_or_not_is_no_other_setting():
    """``backbone.kwargs.compile`` changes how the student computes, not what it trains: a
    resume may turn it on or off, while every other backbone setting is still compared."""
    old = {"backbone": {"name": "reactnet_a", "kwargs": {"width_mult": 1.0}}}
    new = copy.deepcopy(old)
    new["backbone"]["kwargs"]["compile"] = True
    assert differences(old, new, ("backbone",)) == []
    new["backbone"]["kwargs"]["width_mult"] = 0.5
    assert [d.key for d in differences(old, new, ("backbone",))] == ["backbone.kwargs.width_mult"]
