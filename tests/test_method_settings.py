"""``method=s2bnn``'s ``method_kwargs`` and the names a run config gives are checked before any
work starts: an unknown key is refused with the nearest one and every accepted one, a value out
of range with the value and the range (configs built from the plugin's own YAML)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from s2bnn_plugin.solo import RegisterS2BNN
from s2bnn_plugin.solo_learn.locate import configs_dir

pytestmark = pytest.mark.solo

S2BNN_CONFIGS = sorted((configs_dir() / "pretrain").glob("*/s2bnn*.yaml"))


@pytest.fixture(scope="module")
def solo():
    from s2bnn_plugin.solo import register
    from s2bnn_plugin.solo_learn.locate import require_solo

    register()
    return require_solo()


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A small torchvision ResNet's weights: the callback loads the teacher once the settings
    pass."""
    from torchvision.models.resnet import BasicBlock, ResNet

    path = tmp_path_factory.mktemp("teacher") / "teacher.pth.tar"
    torch.save(ResNet(BasicBlock, [1, 1, 1, 1]).state_dict(), path)
    return path


def config(teacher_ckpt: Path, name: str = "s2bnn.yaml", /, **method_kwargs):
    """The plugin's custom ``name`` config, its teacher set, ``method_kwargs`` merged in."""
    cfg = OmegaConf.load(configs_dir() / "pretrain" / "custom" / name)
    cfg.method_kwargs.teacher.ckpt = str(teacher_ckpt)
    cfg.method_kwargs = OmegaConf.merge(cfg.method_kwargs, method_kwargs)
    OmegaConf.set_struct(cfg, False)
    return cfg


def refusal(cfg) -> str:
    from s2bnn_plugin.methods.settings import MethodConfigError, check_method_kwargs

    with pytest.raises(MethodConfigError) as info:
        check_method_kwargs(cfg)
    return str(info.value)


# ------------------------------------------------------------------------------ unknown keys


def test_a_typo_is_refused_with_the_nearest_key_and_all_accepted(solo, teacher):
    from s2bnn_plugin.methods.settings import KEYS

    message = refusal(config(teacher, temprature=0.1))
    assert message.startswith("method_kwargs.temprature is not a setting of method=s2bnn")
    assert "(did you mean temperature?)" in message
    assert message.endswith("reads: " + ", ".join(KEYS))


def test_the_method_refuses_a_typo_before_it_reads_the_teacher(solo, teacher):
    """solo-learn's main_pretrain builds the model first (``METHODS[cfg.method](cfg)``), whose
    first step is ``add_and_assert_specific_cfg``: the teacher (garbage here) is never read."""
    from s2bnn_plugin.methods.settings import MethodConfigError

    cfg = config(teacher, temprature=0.1)
    with pytest.raises(MethodConfigError, match="did you mean temperature"):
        solo.METHODS["s2bnn"].add_and_assert_specific_cfg(cfg)
    with pytest.raises(MethodConfigError, match="did you mean temperature"):
        solo.METHODS["s2bnn"](cfg)


def test_the_mixed_objectives_keys_are_its_own(solo, teacher):
    cfg = config(teacher, "s2bnn_mocov2plus.yaml")
    from s2bnn_plugin.methods.settings import check_method_kwargs

    check_method_kwargs(cfg)  # the shipped mix passes
    cfg.method_kwargs.ssl_kwargs.queue_sise = 64
    message = refusal(cfg)
    assert message.startswith("method_kwargs.ssl_kwargs.queue_sise is not a setting of mocov2plus")
    assert "(did you mean queue_size?)" in message
    assert message.endswith("reads: proj_hidden_dim, proj_output_dim, queue_size, temperature")


def test_an_objective_key_at_the_top_says_where_it_goes(solo, teacher):
    cfg = config(teacher, "s2bnn_mocov2plus.yaml", queue_size=64)
    assert "set method_kwargs.ssl_kwargs.queue_size instead" in refusal(cfg)


def test_ssl_kwargs_without_an_objective_are_refused(solo, teacher):
    message = refusal(config(teacher, ssl_kwargs={"temperature": 0.1}))
    assert "ssl_method=none trains no objective" in message
    assert "method_kwargs.ssl_kwargs (temperature)" in message


def test_a_typo_in_the_teacher_block(solo, teacher):
    message = refusal(config(teacher, teacher={"fromat": "moco"}))
    assert "method_kwargs.teacher.fromat is not a setting of the teacher" in message
    assert "(did you mean format?)" in message


@pytest.mark.parametrize("path", S2BNN_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_s2bnn_config_passes(solo, teacher, path):
    from s2bnn_plugin.methods.settings import check_method_kwargs

    cfg = OmegaConf.load(path)
    cfg.method_kwargs.teacher.ckpt = str(teacher)
    check_method_kwargs(cfg)


# ---------------------------------------------------------------------------- out of range


@pytest.mark.parametrize(
    "key,value,rule",
    [
        ("temperature", 0, "> 0"),
        ("temperature", -0.2, "> 0"),
        ("temperature", math.inf, "> 0"),
        ("temperature", "0.2", "> 0"),
        ("distill_weight", -1, ">= 0"),
        ("ssl_weight", -0.5, ">= 0"),
        ("head_hidden_dim", 0, "an int >= 1"),
        ("head_hidden_dim", 2.5, "an int >= 1"),
        ("head_hidden_dim", True, "an int >= 1"),
    ],
)
def test_out_of_range_values_name_the_value_and_the_range(solo, teacher, key, value, rule):
    message = refusal(config(teacher, **{key: value}))
    assert message.startswith(f"method_kwargs.{key} must be {rule}")
    assert message.endswith(f"got {value!r}" if isinstance(value, str) else f"got {value}")


def test_the_range_ends_are_accepted(solo, teacher):
    from s2bnn_plugin.methods.settings import check_method_kwargs

    check_method_kwargs(config(teacher, distill_weight=0, head_hidden_dim=1, temperature=1e-3))
    check_method_kwargs(config(teacher, "s2bnn_mocov2plus.yaml", ssl_weight=0))


def test_all_problems_are_named_at_once(solo, teacher):
    message = refusal(config(teacher, temperature=0, distill_weight=-1, head_hidden_dim=0))
    assert message.count("; method_kwargs.") == 2


# ----------------------------------------------------------------------------- student_init


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    from s2bnn_plugin.backbones import create_backbone
    from s2bnn_plugin.packing import pack

    model = create_backbone("reactnet18", cifar=True, width_mult=0.125).eval()
    return pack(model).save(tmp_path_factory.mktemp("packed") / "student.s2bnn")


def test_a_packed_student_init_is_refused_with_what_it_takes(solo, teacher, packed, tmp_path):
    message = refusal(config(teacher, student_init=str(packed)))
    assert f"method_kwargs.student_init={packed} is a packed network" in message
    assert "give the .ckpt that solo-learn wrote for step 1" in message
    assert "for the CPU engine" in message
    renamed = tmp_path / "student.ckpt"  # found by its content, whatever its name
    renamed.write_bytes(packed.read_bytes())
    assert "is a packed network" in refusal(config(teacher, student_init=str(renamed)))


def test_a_torch_checkpoint_is_a_student_init(solo, teacher, tmp_path):
    from s2bnn_plugin.methods.settings import check_method_kwargs

    path = tmp_path / "step1.ckpt"
    torch.save({"state_dict": {"backbone.w": torch.zeros(1)}}, path)
    check_method_kwargs(config(teacher, student_init=str(path)))


# ------------------------------------------------------------------- the objectives' keys


def test_objective_keys_are_read_off_solo_learns_source(solo):
    """Against the keys read by hand in solo-learn's methods at the pinned commit."""
    from s2bnn_plugin.methods.settings import objective_keys, objective_names

    for name in objective_names():
        assert objective_keys(name) is not None, f"{name}: its source did not tell"
    assert objective_keys("none") == frozenset()
    assert objective_keys("simclr") == {"proj_hidden_dim", "proj_output_dim", "temperature"}
    assert objective_keys("byol") == {"proj_hidden_dim", "proj_output_dim", "pred_hidden_dim"}
    assert objective_keys("mocov2plus") == {
        "proj_hidden_dim",
        "proj_output_dim",
        "queue_size",
        "temperature",
    }
    assert objective_keys("ressl") == {
        "proj_hidden_dim",
        "proj_output_dim",
        "queue_size",
        "temperature_k",
        "temperature_q",
    }
    assert {"warmup_teacher_temperature_epochs", "clip_grad"} <= objective_keys("dino")


def test_the_plugins_defaults_hold_only_keys_their_objective_reads(solo):
    """ssl_defaults (the plugin's table, else solo-learn's config, whose ressl.yaml carries keys
    ressl never reads) gives nothing that the check would refuse."""
    from s2bnn_plugin.methods.settings import objective_keys, objective_names
    from s2bnn_plugin.methods.ssl_defaults import ssl_defaults

    for name in objective_names():
        kwargs, _ = ssl_defaults(name)
        assert set(kwargs) <= objective_keys(name), name
    assert ssl_defaults("ressl")[0]  # a recipe, less its unread keys


def test_an_objective_whose_source_cannot_tell_is_not_checked(solo, teacher, monkeypatch):
    from s2bnn_plugin.methods.settings import check_method_kwargs, objective_keys

    class Opaque(solo.METHODS["simclr"]):
        def __init__(self, cfg):
            settings = dict(cfg.method_kwargs)  # read whole: no key list in the source
            super().__init__(cfg, **settings)

    monkeypatch.setitem(solo.METHODS, "opaque_objective", Opaque)
    objective_keys.cache_clear()
    try:
        assert objective_keys("opaque_objective") is None
        cfg = config(teacher, ssl_method="opaque_objective", ssl_kwargs={"anything": 1})
        check_method_kwargs(cfg)
    finally:
        objective_keys.cache_clear()


# ---------------------------------------------------------- names, through the Hydra callback


def test_an_unknown_backbone_names_the_known_ones_and_the_nearest(solo, teacher):
    from s2bnn_plugin.solo_learn.preflight import ConfigError

    cfg = config(teacher)
    cfg.backbone.name = "nonexistent"
    with pytest.raises(ConfigError) as info:
        RegisterS2BNN.check_config(cfg)
    message = str(info.value)
    assert message.startswith("backbone.name=nonexistent is not a known backbone;")
    assert "the plugin's: reactnet18, reactnet_a;" in message
    assert "solo-learn's: " in message and "resnet18" in message and "vit_small" in message
    cfg.backbone.name = "reactnet_b"
    with pytest.raises(ConfigError, match=r"\(did you mean reactnet_a\?\)"):
        RegisterS2BNN.check_config(cfg)


def test_an_unknown_method_is_named(solo, teacher):
    from s2bnn_plugin.solo_learn.preflight import ConfigError

    cfg = config(teacher)
    cfg.method = "s2bn"
    with pytest.raises(
        ConfigError, match=r"method=s2bn is not a known method \(did you mean s2bnn"
    ):
        RegisterS2BNN.check_config(cfg)


def test_the_callback_checks_the_method_kwargs(solo, teacher):
    from s2bnn_plugin.methods.settings import MethodConfigError

    RegisterS2BNN.check_config(config(teacher))
    with pytest.raises(MethodConfigError, match="head_hidden_dim must be an int >= 1 .*, got 0$"):
        RegisterS2BNN.check_config(config(teacher, head_hidden_dim=0))


# ------------------------------------------------------------- loss, BURN's schedule, crops


@pytest.mark.parametrize(
    "kwargs,key,rule,shown",
    [
        ({"loss": "mse"}, "loss", "one of ['kl', 'burn']", "'mse'"),
        (
            {"loss": "burn", "burn_lambda_start": 1.5},
            "burn_lambda_start",
            "a number in [0, 1]",
            "1.5",
        ),
        (
            {"loss": "burn", "burn_lambda_end": -0.1},
            "burn_lambda_end",
            "a number in [0, 1]",
            "-0.1",
        ),
        (
            {"loss": "burn", "burn_lambda_end": "0.3"},
            "burn_lambda_end",
            "a number in [0, 1]",
            "'0.3'",
        ),
        (
            {"loss": "burn", "burn_lambda_start": math.nan},
            "burn_lambda_start",
            "a number in [0, 1]",
            "nan",
        ),
        ({"distill_crops": "second"}, "distill_crops", "one of ['all', 'first']", "'second'"),
        ({"head_hidden_dim": -3}, "head_hidden_dim", "an int >= 1 or null", "-3"),
    ],
)
def test_loss_and_crop_settings_out_of_range(solo, teacher, kwargs, key, rule, shown):
    message = refusal(config(teacher, **kwargs))
    assert message.startswith(f"method_kwargs.{key} must be {rule}")
    assert message.endswith(f"got {shown}")


def test_burn_schedule_keys_without_loss_burn_are_refused(solo, teacher):
    message = refusal(config(teacher, loss="kl", burn_lambda_end=0.3))
    assert message.startswith("method_kwargs.burn_lambda_end is set (BURN's weight schedule)")
    assert "set method_kwargs.loss=burn, or remove it" in message


def test_loss_and_crop_range_ends_are_accepted(solo, teacher):
    from s2bnn_plugin.methods.settings import check_method_kwargs

    for start, end in ((0, 1), (1.0, 0.0), (0.1, 0.3)):
        check_method_kwargs(
            config(teacher, loss="burn", burn_lambda_start=start, burn_lambda_end=end)
        )
    check_method_kwargs(config(teacher, loss="kl", head_hidden_dim=None, distill_crops="all"))
    check_method_kwargs(
        config(teacher, "s2bnn_mocov2plus.yaml", loss="burn", distill_crops="first")
    )


# ------------------------------------------------------------------ scheduler.name=linear


def run_config(file: str, teacher_ckpt: Path | None = None, kind: str = "pretrain", /, **scheduler):
    cfg = OmegaConf.load(configs_dir() / kind / "custom" / file)
    if teacher_ckpt is not None:
        cfg.method_kwargs.teacher.ckpt = str(teacher_ckpt)
    cfg.scheduler = OmegaConf.merge(cfg.scheduler, scheduler)
    OmegaConf.set_struct(cfg, False)
    return cfg


def test_linear_schedule_for_another_method_is_refused_with_the_fix(solo):
    from s2bnn_plugin.methods.settings import MethodConfigError

    cfg = run_config("bnn_mocov2plus.yaml", name="linear")
    with pytest.raises(MethodConfigError) as info:
        RegisterS2BNN.check_config(cfg)
    message = str(info.value)
    assert message.startswith("scheduler.name=linear with method=mocov2plus: only method=s2bnn")
    assert "set scheduler.name=warmup_cosine" in message
    assert "method=s2bnn with method_kwargs.ssl_method=mocov2plus" in message
    RegisterS2BNN.check_config(run_config("bnn_mocov2plus.yaml", name="warmup_cosine"))


def test_linear_schedule_in_main_linear_is_refused(solo):
    from s2bnn_plugin.methods.settings import MethodConfigError

    cfg = run_config("reactnet_a.yaml", None, "linear", name="linear")
    with pytest.raises(MethodConfigError, match=r"^scheduler.name=linear: main_linear.py's Linear"):
        RegisterS2BNN.check_config(cfg)
    RegisterS2BNN.check_config(run_config("reactnet_a.yaml", None, "linear"))


@pytest.mark.parametrize(
    "settings,start",
    [
        ({"interval": "batch"}, "scheduler.interval=batch: the linear decay steps per 'epoch'"),
        ({"warmup_epochs": 200}, "scheduler.warmup_epochs=200 leaves no epoch to decay"),
        ({"warmup_epochs": -1}, "scheduler.warmup_epochs=-1 must be a number >= 0"),
        ({"min_lr": 1.0}, "scheduler.min_lr=1.0 must be a number in [0, optimizer.lr=0.0003]"),
        ({"min_lr": -1e-5}, "scheduler.min_lr=-1e-05 must be a number in [0,"),
        ({"warmup_epochs": 2, "warmup_start_lr": -1.0}, "scheduler.warmup_start_lr=-1.0 must"),
    ],
)
def test_linear_schedule_settings_out_of_range(solo, teacher, settings, start):
    from s2bnn_plugin.methods.settings import MethodConfigError

    cfg = run_config("s2bnn.yaml", teacher, **settings)
    with pytest.raises(MethodConfigError) as info:
        RegisterS2BNN.check_config(cfg)
    assert str(info.value).startswith(start)


def test_the_shipped_s2bnn_configs_use_the_linear_schedule_and_pass(solo, teacher):

    for path in S2BNN_CONFIGS:
        cfg = OmegaConf.load(path)
        assert cfg.scheduler.name == "linear" and cfg.scheduler.interval == "epoch", path
        assert cfg.scheduler.warmup_epochs == 0, path
    RegisterS2BNN.check_config(
        run_config("s2bnn.yaml", teacher, warmup_epochs=5, warmup_start_lr=0.0)
    )


# ------------------------------------------------------------- the table the checks come from


def _outside(setting):
    """A value ``setting`` refuses: a name it does not list, or a number past its range."""
    if setting.choices is not None:
        return "nonexistent"
    numbers = setting.numbers
    return numbers.low - 1 if numbers.low is not None else numbers.high + 1


def test_every_checked_setting_is_refused_in_the_words_of_its_row(solo, teacher):
    """Each row of SETTINGS with a range or choices is what the check applies: a value outside
    it is refused, naming the key and the row's words, and the row's default passes."""
    from s2bnn_plugin.methods.settings import SETTINGS, check_method_kwargs

    checked = [s for s in SETTINGS if s.numbers is not None or s.choices is not None]
    assert {s.key for s in checked} >= {"temperature", "loss", "teacher.format", "burn_lambda_end"}
    for setting in checked:
        extra = {"loss": "burn"} if setting.key.startswith("burn_") else {}
        group, _, key = setting.key.rpartition(".")
        value = {key: _outside(setting)}
        kwargs = {group: {"ckpt": str(teacher), **value}} if group else value
        message = refusal(config(teacher, **kwargs, **extra))
        assert message.startswith(f"method_kwargs.{setting.key} must be {setting.words()}"), (
            setting.key,
            message,
        )
        default = {key: setting.default}
        kwargs = {group: {"ckpt": str(teacher), **default}} if group else default
        check_method_kwargs(config(teacher, **kwargs, **extra))
