"""What ``s2bnn pretrain`` hands solo-learn is taken as meant: paths reach the config literally
through Hydra's override grammar, and a teacher or backbone setting that cannot work is one line
from the plugin's callback before training, not a traceback from inside solo-learn's main().

The real scripts run in tests/test_preflight_scripts.py (slow); here the command lines
``s2bnn pretrain`` builds go through Hydra's own parser and composition.
"""

from __future__ import annotations

import os

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from s2bnn_plugin.errors import S2BNNError
from s2bnn_plugin.solo_learn.command import CALLBACK_OVERRIDE, hydra_quote, solo_command
from s2bnn_plugin.solo_learn.locate import configs_dir

NASTY_PATHS = [
    '/data/a"b/train',
    "/data/it's/train",
    "/data/${oc.env:HOME}/train",
    "/data/${x}",
    "/data/a b=c,d:e[f]{g}/train",
    "/data/back\\slash/train",
    "/data/ends-with-a-backslash\\",
    "/data/\\${escaped}",
    "/data/'\"'\\'/train",
    "/data/run-ep=9.ckpt",
]


def _literal(override: str) -> str:
    """The string Hydra and OmegaConf make of ``override``'s value (interpolations resolved)."""
    value = OverridesParser.create().parse_override(override).value()
    return OmegaConf.create({"v": value}).v


@pytest.mark.parametrize("path", NASTY_PATHS)
def test_a_path_setting_is_taken_literally(path):
    assert _literal(hydra_quote(f"data.train_path={path}")) == path
    assert _literal(hydra_quote(f"+method_kwargs.student_init={path}")) == path


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab/ \"'\\${}=,:[]()~!#", min_size=1, max_size=12))
def test_any_path_is_taken_literally(path):
    if path[0] in "'\"[{":  # a value already in Hydra's syntax is the user's to write
        return
    assert _literal(hydra_quote(f"checkpoint.dir={path}")) == path


def test_other_settings_keep_their_interpolations_and_types():
    assert hydra_quote("optimizer.lr=0.1") == "optimizer.lr=0.1"
    assert hydra_quote("method_kwargs.teacher.ckpt=null") == "method_kwargs.teacher.ckpt=null"
    parsed = OverridesParser.create().parse_override(hydra_quote("name=${method}-a b"))
    assert parsed.value() == "${method}-a b"  # resolved against the config: interpolated
    assert _literal(hydra_quote("name=run=1,2")) == "run=1,2"


@pytest.mark.solo
@pytest.mark.parametrize("path", NASTY_PATHS)
def test_s2bnn_pretrains_command_line_composes_to_the_literal_paths(path):
    """The overrides of the command ``s2bnn pretrain`` runs, composed by Hydra with the
    plugin's config as main_pretrain.py composes them."""
    command = solo_command(
        "main_pretrain.py",
        [
            f"data.train_path={path}",
            f"method_kwargs.teacher.ckpt={path}/teacher.pth",
            f"checkpoint.dir={path}",
            "name=${method}-x",
        ],
        kind="pretrain",
        dataset="custom",
        config="s2bnn.yaml",
        python="python",
    )
    assert command[2:4] == ["--config-path", str(configs_dir() / "pretrain" / "custom")]
    assert command[-1] == CALLBACK_OVERRIDE
    with initialize_config_dir(command[3], version_base="1.2"):
        cfg = compose(command[5], overrides=command[6:-1])
    assert cfg.data.train_path == path and cfg.checkpoint.dir == path
    assert cfg.method_kwargs.teacher.ckpt == f"{path}/teacher.pth"
    assert cfg.name == "s2bnn-x"


# ---------------------------------------------------------------------------- the callback


def _config(teacher, **backbone_kwargs):
    cfg = OmegaConf.load(configs_dir() / "pretrain" / "custom" / "s2bnn.yaml")
    cfg.method_kwargs.teacher.ckpt = str(teacher)
    cfg.backbone.kwargs = OmegaConf.merge(cfg.backbone.kwargs, backbone_kwargs)
    OmegaConf.set_struct(cfg, False)
    return cfg


class _RunsCode:
    """A pickled object that would run code when unpickled (touches ``marker``)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def registered():
    from s2bnn_plugin.solo import register

    register()


@pytest.mark.solo
def test_a_teacher_holding_pickled_code_is_refused_by_the_callback_without_running_it(
    registered, tmp_path
):
    from s2bnn_plugin.solo import RegisterS2BNN

    marker = tmp_path / "ran"
    teacher = tmp_path / "teacher.pth.tar"
    torch.save({"state_dict": {"conv1.weight": _RunsCode(str(marker))}}, teacher)
    with pytest.raises(S2BNNError, match=r"cannot read teacher checkpoint .* weights-only"):
        RegisterS2BNN.check_config(_config(teacher))
    assert not marker.exists()


@pytest.mark.solo
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"compile": "yes"}, r"backbone\.kwargs: reactnet_a\(\): compile must be true or false"),
        ({"widht_mult": 2}, r"backbone.kwargs: reactnet_a\(\) got unknown keyword argument"),
    ],
)
def test_backbone_kwargs_the_factory_refuses_are_refused_by_the_callback(
    registered, tmp_path, kwargs, message
):
    from s2bnn_plugin.solo import RegisterS2BNN

    teacher = tmp_path / "teacher.pth.tar"
    teacher.write_bytes(b"never read: the backbone is refused first")
    with pytest.raises(S2BNNError, match=message):
        RegisterS2BNN.check_config(_config(teacher, **kwargs))


@pytest.mark.solo
def test_the_backbone_check_allocates_nothing(registered, tmp_path):
    """Built on the meta device: a width that would take 460 GB of weights is checked at once
    (the run itself would then fail where it builds the model)."""
    from torchvision.models.resnet import BasicBlock, ResNet

    from s2bnn_plugin.solo import RegisterS2BNN

    teacher = tmp_path / "teacher.pth.tar"
    torch.save(ResNet(BasicBlock, [1, 1, 1, 1]).state_dict(), teacher)
    RegisterS2BNN.check_config(_config(teacher, width_mult=64.0))
