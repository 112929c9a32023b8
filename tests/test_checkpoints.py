"""Reading a trained backbone (``s2bnn_plugin.checkpoints``) and rebuilding a packed file's:
what cannot be built or does not match is one line naming the value and the fix, in pack,
check and eval alike, never a traceback."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torchvision

from s2bnn_plugin.backbones import BackboneError, UnknownBackbone, create_backbone
from s2bnn_plugin.checkpoints import CheckpointError, load_backbone, require_backbone
from s2bnn_plugin.cli import main
from s2bnn_plugin.errors import S2BNNError
from s2bnn_plugin.packing import float_twin, pack
from s2bnn_plugin.runtime.format import PackedFormatError, read_packed, spec_of, write_packed

KWARGS = {"cifar": True, "width_mult": 0.125}
QUICK_CHECK = ["--size", "16", "--batch", "1", "--repeats", "1", "--no-progress"]


def _run(tmp_path: Path, model: torch.nn.Module, backbone: dict, name: str = "run") -> Path:
    """A solo-learn-like run folder: ``last.ckpt`` (backbone.* weights) and ``args.json``."""
    run = tmp_path / name
    run.mkdir(exist_ok=True)
    state = {f"backbone.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 1}, run / "last.ckpt")
    (run / "args.json").write_text(json.dumps({"method": "simclr", "backbone": backbone}))
    return run / "last.ckpt"


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("packed") / "net.s2bnn"
    pack(create_backbone("reactnet18", **KWARGS).eval()).save(path)
    return path


def test_create_backbone_raises_the_plugins_errors_with_their_standard_types():
    with pytest.raises(UnknownBackbone, match=r"'reactnet_b' \(did you mean 'reactnet_a'\?\)"):
        create_backbone("reactnet_b")
    assert issubclass(UnknownBackbone, KeyError) and issubclass(UnknownBackbone, S2BNNError)
    with pytest.raises(BackboneError, match="width_mult must be > 0 and finite") as info:
        create_backbone("reactnet18", width_mult=float("inf"))
    assert isinstance(info.value, ValueError)
    with pytest.raises(BackboneError, match=r"unknown keyword argument\(s\) \['widht'\]") as info:
        create_backbone("reactnet18", widht=1)
    assert isinstance(info.value, TypeError)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"cifar": True, "width_mult": -1}, "width_mult must be > 0 and finite"),
        ({"cifar": True, "widht_mult": 0.5}, r"unknown keyword argument(s) ['widht_mult']"),
    ],
    ids=["width_mult=-1", "unknown-key"],
)
@pytest.mark.parametrize("command", ["pack", "check", "eval"])
def test_args_json_that_cannot_build_the_backbone_is_one_line(
    tmp_path, capsys, packed, kwargs, message, command
):
    model = create_backbone("reactnet18", **KWARGS)
    ckpt = _run(tmp_path, model, {"name": "reactnet18", "kwargs": kwargs})
    with pytest.raises(CheckpointError, match="args.json: reactnet18"):
        load_backbone(ckpt)
    argv = {
        "pack": ["pack", str(ckpt), "-o", str(tmp_path / "out.s2bnn"), "--no-progress"],
        "check": ["check", str(packed), "--ckpt", str(ckpt), *QUICK_CHECK],
        # a data folder that does not exist: the model is read first, so its error comes first
        "eval": ["eval", "--model", str(ckpt), "--data", str(tmp_path / "none"), "--no-progress"],
    }[command]
    assert main(argv) == 2
    err = _one_line(capsys)
    assert f"{ckpt.parent / 'args.json'}: reactnet18()" in err and message in err, err
    assert "correct backbone.name / backbone.kwargs there" in err
    assert not (tmp_path / "out.s2bnn").exists()


def test_backbone_kwargs_option_that_cannot_build_is_one_line(tmp_path, capsys):
    plain = tmp_path / "plain.pt"
    torch.save(create_backbone("reactnet18", **KWARGS).state_dict(), plain)
    argv = ["pack", str(plain), "-o", str(tmp_path / "o.s2bnn"), "--no-progress"]
    argv += ["--backbone", "reactnet18"]
    assert main([*argv, "--backbone-kwargs", '{"width_mult": 0}']) == 2
    err = _one_line(capsys)
    assert "--backbone / --backbone-kwargs: reactnet18(): width_mult must be > 0" in err


def _edited(packed: Path, tmp_path: Path, name: str, **changes) -> Path:
    """The packed file with its spec's backbone name or kwargs changed (arrays untouched)."""
    model = read_packed(packed)
    spec, arrays = spec_of(model), model.named_arrays()
    spec["backbone"] = {"name": name, "kwargs": {**spec["backbone"]["kwargs"], **changes}}
    return write_packed(tmp_path / "edited.s2bnn", spec, arrays)


@pytest.mark.parametrize(
    "name,changes,message",
    [
        ("reactnet_b", {}, "unknown backbone 'reactnet_b' (did you mean 'reactnet_a'?)"),
        ("reactnet18", {"depth": 3}, r"unknown keyword argument(s) ['depth']"),
        ("reactnet18", {"width_mult": -2}, "width_mult must be > 0"),
        ("reactnet18", {"width_mult": 0.25}, "file and backbone disagree"),
    ],
    ids=["unknown-name", "unknown-kwarg", "bad-kwarg-value", "other-width"],
)
def test_check_of_a_file_whose_backbone_cannot_be_rebuilt_is_one_line(
    tmp_path, capsys, packed, name, changes, message
):
    edited = _edited(packed, tmp_path, name, **changes)
    with pytest.raises(PackedFormatError):
        _twin(edited)
    assert main(["check", str(edited), *QUICK_CHECK]) == 2
    err = _one_line(capsys)
    assert message in err and "pack the checkpoint again" in err, err


def _twin(path: Path) -> torch.nn.Module:
    from s2bnn_plugin.runtime import load

    return float_twin(load(path))


def test_require_backbone_refuses_another_network():
    resnet = torchvision.models.resnet18()
    resnet.fc = torch.nn.Identity()
    spec_kwargs = {"activation_ste": "approx_sign", "binary_weights": True, **KWARGS}
    with pytest.raises(CheckpointError, match=r"r\.ckpt holds a ResNet, not a binary backbone"):
        require_backbone(resnet, "r.ckpt", "reactnet18", spec_kwargs)
    wider = create_backbone("reactnet18", cifar=True, width_mult=0.25)
    with pytest.raises(CheckpointError, match=r"differing: width_mult 0\.25 vs 0\.125"):
        require_backbone(wider, "w.ckpt", "reactnet18", spec_kwargs)
    with pytest.raises(CheckpointError, match=r"holds a reactnet_a\("):
        require_backbone(create_backbone("reactnet_a", **KWARGS), "a.ckpt", "reactnet18", {})
    require_backbone(create_backbone("reactnet18", **KWARGS), "same.ckpt", "reactnet18", KWARGS)


@pytest.mark.solo  # solo-learn builds its ResNet-18
def test_check_with_the_ckpt_of_a_resnet_is_one_line(tmp_path, capsys, packed):
    resnet = torchvision.models.resnet18()
    resnet.fc = torch.nn.Identity()
    ckpt = _run(tmp_path, resnet, {"name": "resnet18", "kwargs": {}}, name="teacher")
    assert main(["check", str(packed), "--ckpt", str(ckpt), *QUICK_CHECK]) == 2
    err = _one_line(capsys)
    assert f"{ckpt} holds a ResNet, not a binary backbone" in err
    assert "reactnet18(" in err and "give the checkpoint it was packed from" in err


@pytest.mark.solo  # solo-learn builds its ResNet-18
def test_a_solo_learn_cifar_resnet_gets_the_stem_solo_learn_trained_it_with(tmp_path):
    """solo-learn trains its ResNets on CIFAR with a 3x3 stride-1 stem padded by 2 and no
    max-pool: loading its checkpoint rebuilds that stem, so the features are the run's."""
    torch.manual_seed(0)
    trained = torchvision.models.resnet18()
    trained.fc = torch.nn.Identity()
    trained.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=2, bias=False)
    trained.maxpool = torch.nn.Identity()
    trained.eval()
    ckpt = _run(tmp_path, trained, {"name": "resnet18", "kwargs": {}})
    args = json.loads((ckpt.parent / "args.json").read_text())
    args["data"] = {"dataset": "cifar10"}
    (ckpt.parent / "args.json").write_text(json.dumps(args))
    model, name, _ = load_backbone(ckpt)
    assert name == "resnet18" and isinstance(model.maxpool, torch.nn.Identity)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), trained(x), rtol=0, atol=0)


def test_weights_that_do_not_fit_name_the_keys_a_few_and_count_the_rest(tmp_path, capsys):
    """Another network's checkpoint (reactnet_a's weights read as reactnet18): hundreds of keys
    differ; the one-line error names three of each kind and counts the rest (it said only
    "Error(s) in loading state_dict"). A single missing key is named."""
    ckpt = _run(tmp_path, create_backbone("reactnet_a", **KWARGS), {"name": "reactnet18"})
    (ckpt.parent / "args.json").write_text(
        json.dumps({"method": "simclr", "backbone": {"name": "reactnet18", "kwargs": KWARGS}})
    )
    assert main(["pack", str(ckpt), "-o", str(tmp_path / "o.s2bnn"), "--no-progress"]) == 2
    err = _one_line(capsys)
    assert "do not fit the backbone reactnet18" in err and len(err) < 1000, err
    for kind in ("missing", "unexpected"):
        listed = re.search(rf"(\d+) {kind}: ((?:[\w.]+, ){{2}}[\w.]+) and (\d+) more", err)
        assert listed, err
        assert int(listed.group(1)) == 3 + int(listed.group(3)) > 20
    state = {
        f"backbone.{k}": v for k, v in create_backbone("reactnet18", **KWARGS).state_dict().items()
    }
    del state["backbone.blocks.3.conv_b.bn.running_var"]
    torch.save({"state_dict": state}, ckpt)
    with pytest.raises(
        CheckpointError, match=r"Keys 1 missing: blocks\.3\.conv_b\.bn\.running_var$"
    ):
        load_backbone(ckpt)
    state["backbone.stem.0.weight"] = torch.zeros(1, 3, 3, 3)
    torch.save({"state_dict": state}, ckpt)
    with pytest.raises(
        CheckpointError, match=r"another shape .*: stem\.0\.weight \(1, 3, 3, 3\) vs"
    ):
        load_backbone(ckpt)
