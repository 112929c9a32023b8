"""Teacher loading: each checkpoint format, built here, gives the original network's outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models import resnet18
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from s2bnn_plugin.teachers import FORMATS, Teacher, TeacherError, detect_format, load_teacher

SIZE = 32


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread is faster, and immune to a busy machine's OpenMP
    spin-waiting (two threads on an oversubscribed 2-core machine run 100x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _randomise_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics, so that a buffer not loaded changes the outputs."""
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


def _mlp(in_dim: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out))


def moco_resnet18(out_dim: int = 16) -> ResNet:
    model = resnet18()
    model.fc = _mlp(512, 64, out_dim)  # MoCo v2's fc: Linear-ReLU-Linear
    return _randomise_bn(model)


def cifar_resnet18(padding: int = 1) -> ResNet:
    model = resnet18()
    model.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=padding, bias=False)
    model.maxpool = nn.Identity()
    return _randomise_bn(model)


def _features(model: ResNet, x: torch.Tensor) -> torch.Tensor:
    fc, model.fc = model.fc, nn.Identity()
    try:
        return model(x)
    finally:
        model.fc = fc


def save_moco(model: ResNet, path: Path) -> Path:
    state = {f"module.encoder_q.{k}": v for k, v in model.state_dict().items()}
    # the key encoder and the queue are in MoCo's checkpoints too, and must be ignored
    state.update({f"module.encoder_k.{k}": v + 1 for k, v in model.state_dict().items()})
    state["module.queue"] = torch.randn(16, 64)
    state["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    torch.save({"epoch": 800, "arch": "resnet18", "state_dict": state, "optimizer": {}}, path)
    return path


@pytest.fixture
def images():
    return torch.randn(4, 3, SIZE, SIZE)


def _assert_frozen_eval(teacher: Teacher):
    assert isinstance(teacher, Teacher)
    params = list(teacher.parameters())
    assert params and not any(p.requires_grad for p in params)
    assert not teacher.training and not any(m.training for m in teacher.modules())
    teacher.train()
    assert not teacher.training and not any(m.training for m in teacher.modules())
    teacher.train(True)
    assert not any(m.training for m in teacher.modules())


# ---------------------------------------------------------------------------------------------
# formats


@pytest.mark.parametrize("format", ["auto", "moco"])
def test_moco_checkpoint_gives_the_query_encoder_outputs(tmp_path, images, format):
    model = moco_resnet18(out_dim=16)
    path = save_moco(model, tmp_path / "moco_v2_800ep.pth.tar")
    assert detect_format(path, torch.load(path, weights_only=True)) == "moco"

    teacher = load_teacher(path, format=format)
    _assert_frozen_eval(teacher)
    with torch.no_grad():
        torch.testing.assert_close(teacher(images), model(images))
    assert teacher.output_dim(SIZE) == 16
    assert isinstance(teacher.head, nn.Sequential)
    assert not hasattr(teacher, "encoder_k") and "queue" not in teacher.state_dict()

    features = load_teacher(path, format=format, output="backbone")
    with torch.no_grad():
        torch.testing.assert_close(features(images), _features(model, images))
    assert features.output_dim(SIZE) == 512


def test_teacher_output_has_no_gradient_and_batchnorm_stays_frozen(tmp_path, images):
    model = moco_resnet18()
    teacher = load_teacher(save_moco(model, tmp_path / "m.pth"))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    x = images.requires_grad_(True)
    teacher.train()
    out = teacher(x)
    assert not out.requires_grad
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed in a forward"


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda s: s, id="bare"),
        pytest.param(lambda s: {"state_dict": s}, id="state_dict"),
        pytest.param(lambda s: {"model": s}, id="model"),
        pytest.param(lambda s: {"state_dict": {f"module.{k}": v for k, v in s.items()}}, id="ddp"),
    ],
)
def test_torchvision_state_dict(tmp_path, images, wrap):
    model = _randomise_bn(resnet18())  # fc: the 1000-way Linear classifier
    path = tmp_path / "resnet18.pth"
    torch.save(wrap(model.state_dict()), path)
    assert detect_format(path, torch.load(path, weights_only=True)) == "torchvision"
    for format in ("auto", "torchvision"):
        teacher = load_teacher(path, format=format, output="projector")
        _assert_frozen_eval(teacher)
        with torch.no_grad():
            torch.testing.assert_close(teacher(images), model(images))
        features = load_teacher(path, format=format, output="backbone")
        with torch.no_grad():
            torch.testing.assert_close(features(images), _features(model, images))
        assert features.output_dim(SIZE) == 512


def test_torchvision_backbone_without_fc_needs_output_backbone(tmp_path, images):
    model = _randomise_bn(resnet18())
    model.fc = nn.Identity()
    path = tmp_path / "backbone.pth"
    torch.save(model.state_dict(), path)
    with pytest.raises(TeacherError, match="no projector/MLP head.*teacher.output=backbone"):
        load_teacher(path)
    teacher = load_teacher(path, output="backbone")
    with torch.no_grad():
        torch.testing.assert_close(teacher(images), model(images))


def test_cifar_stem_resnet(tmp_path, images):
    model = cifar_resnet18()
    model.fc = _mlp(512, 32, 8)
    path = tmp_path / "cifar.pth"
    torch.save({"state_dict": model.state_dict()}, path)
    with pytest.warns(UserWarning, match="does not record its padding: using 1"):
        teacher = load_teacher(path)
    assert teacher.backbone.conv1.kernel_size == (3, 3)
    assert teacher.backbone.conv1.stride == (1, 1)
    assert isinstance(teacher.backbone.maxpool, nn.Identity)
    with torch.no_grad():
        torch.testing.assert_close(teacher(images), model(images))
        features = load_teacher(path, output="backbone", stem_padding=1)
        torch.testing.assert_close(features(images), _features(model, images))
    # the same weights as a MoCo v2 checkpoint
    moco = load_teacher(save_moco(model, tmp_path / "cifar_moco.pth"), stem_padding=1)
    with torch.no_grad():
        torch.testing.assert_close(moco(images), model(images))


def test_cifar_stem_padding_is_the_users_choice(tmp_path, images, recwarn):
    """solo-learn's CIFAR ResNets pad their 3x3 stem by 2; a state dict cannot say so."""
    model = cifar_resnet18(padding=2)
    path = tmp_path / "solo_style.pth"
    torch.save(model.state_dict(), path)
    teacher = load_teacher(path, output="backbone", stem_padding=2)
    assert not [w for w in recwarn if "padding" in str(w.message)]  # chosen: no warning
    assert teacher.backbone.conv1.padding == (2, 2)
    with torch.no_grad():
        torch.testing.assert_close(teacher(images), _features(model, images))
        with pytest.warns(UserWarning, match="stem_padding=2"):
            guessed = load_teacher(path, output="backbone")
        assert guessed(images).shape == teacher(images).shape  # same shapes, other numbers
        assert not torch.allclose(guessed(images), teacher(images))
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(TeacherError, match="stem_padding must be an int"):
            load_teacher(path, stem_padding=bad)


def test_stem_padding_is_refused_where_it_cannot_apply(tmp_path):
    imagenet = tmp_path / "r18.pth"
    torch.save(moco_resnet18().state_dict(), imagenet)
    with pytest.raises(TeacherError, match="3x3 \\(CIFAR\\) stems only.*7x7"):
        load_teacher(imagenet, stem_padding=2)


def test_wide_bottleneck_resnet(tmp_path, images):
    """The architecture is read off the weights: bottleneck blocks, depth and width."""
    model = ResNet(Bottleneck, [1, 2, 1, 1], width_per_group=128)
    model.fc = _mlp(2048, 32, 8)
    model = _randomise_bn(model)
    path = save_moco(model, tmp_path / "wide.pth")
    teacher = load_teacher(path)
    assert isinstance(teacher.backbone.layer1[0], Bottleneck)
    assert len(teacher.backbone.layer2) == 2
    with torch.no_grad():
        torch.testing.assert_close(teacher(images), model(images))


def test_basic_block_depth_is_read_off_the_weights(tmp_path, images):
    model = _randomise_bn(ResNet(BasicBlock, [1, 1, 2, 1], num_classes=10))
    path = tmp_path / "small.pth"
    torch.save(model.state_dict(), path)
    teacher = load_teacher(path)
    assert [len(getattr(teacher.backbone, f"layer{i}")) for i in range(1, 5)] == [1, 1, 2, 1]
    with torch.no_grad():
        torch.testing.assert_close(teacher(images), model(images))
    assert teacher.output_dim(SIZE) == 10


def test_teacher_follows_dtype_and_memory_format(tmp_path, images):
    model = moco_resnet18()
    teacher = load_teacher(save_moco(model, tmp_path / "m.pth"))
    teacher.double()
    assert all(p.dtype == torch.float64 for p in teacher.parameters())
    out = teacher(images.double().to(memory_format=torch.channels_last))
    with torch.no_grad():
        torch.testing.assert_close(out, model.double()(images.double()))
    teacher.float().to(memory_format=torch.channels_last)
    assert teacher.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert not any(p.requires_grad for p in teacher.parameters())


# ---------------------------------------------------------------------------------------------
# bad input


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*teacher.ckpt"):
        load_teacher(tmp_path / "nope.pth")


@pytest.mark.parametrize(
    "content", [b"", b"this is not a checkpoint\n" * 10, bytes(range(256)) * 4]
)
def test_unreadable_file(tmp_path, content):
    path = tmp_path / "garbage.pth"
    path.write_bytes(content)
    with pytest.raises(TeacherError, match="cannot read teacher checkpoint"):
        load_teacher(path)


class _Pickled:
    def __init__(self) -> None:
        self.weights = torch.zeros(3)


def test_pickled_object_is_refused_by_weights_only(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"state_dict": _Pickled()}, path)
    with pytest.raises(TeacherError, match="weights-only.*no pickled objects") as info:
        load_teacher(path)
    assert "_Pickled" in str(info.value)  # torch names the class it refused to unpickle


def test_a_whole_pickled_model_is_refused(tmp_path):
    path = tmp_path / "model.pth"
    torch.save(resnet18(), path)  # torch.save(model) instead of model.state_dict()
    with pytest.raises(TeacherError, match=r"weights-only.*ResNet.*model\.state_dict\(\)"):
        load_teacher(path)


def test_not_a_dict(tmp_path):
    path = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), path)
    with pytest.raises(TeacherError, match="holds a Tensor, not a state dict"):
        load_teacher(path)


def test_dict_matching_no_format_lists_its_keys(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(2, 2), "head.bias": torch.zeros(2)}, path)
    with pytest.raises(TeacherError) as info:
        load_teacher(path)
    message = str(info.value)
    assert "matches no known teacher format" in message
    assert "encoder.weight" in message and "head.bias" in message
    assert "teacher.format" in message


def test_solo_like_checkpoint_without_args_json_says_to_add_it(tmp_path):
    path = tmp_path / "run.ckpt"
    torch.save({"state_dict": {"backbone.conv.weight": torch.zeros(1)}}, path)
    with pytest.raises(TeacherError, match="args.json"):
        load_teacher(path)


def test_forced_wrong_format(tmp_path):
    plain = tmp_path / "plain.pth"
    torch.save(resnet18().state_dict(), plain)
    with pytest.raises(TeacherError, match="module.encoder_q"):
        load_teacher(plain, format="moco")
    moco = save_moco(moco_resnet18(), tmp_path / "moco.pth")
    with pytest.raises(TeacherError, match="expects torchvision ResNet keys.*encoder_"):
        load_teacher(moco, format="torchvision")


def test_unknown_format_and_output_names(tmp_path):
    path = save_moco(moco_resnet18(), tmp_path / "m.pth")
    with pytest.raises(TeacherError, match=r"teacher.format must be one of"):
        load_teacher(path, format="timm")
    with pytest.raises(TeacherError, match=r"teacher.output must be one of"):
        load_teacher(path, output="logits")
    assert FORMATS[0] == "auto"


def test_weights_that_do_not_fit_a_resnet(tmp_path):
    state = resnet18().state_dict()
    state["layer1.0.extra.weight"] = torch.zeros(3)
    path = tmp_path / "extra.pth"
    torch.save(state, path)
    with pytest.raises(TeacherError, match="do not fit a torchvision ResNet.*extra"):
        load_teacher(path)


def test_teacher_whose_output_cannot_feed_a_head():
    teacher = Teacher(nn.Identity(), None, forward_fn=lambda x: x, source="spatial")
    with pytest.raises(TeacherError, match=r"outputs \(1, 3, 8, 8\).*teacher.output=backbone"):
        teacher.output_dim(8)


# ---------------------------------------------------------------------------------------------
# solo-learn checkpoints (any solo-learn method can teach)


@pytest.mark.solo
@pytest.mark.parametrize("output,key", [("projector", "z"), ("backbone", "feats")])
def test_solo_learn_checkpoint(tmp_path, images, output, key):
    from omegaconf import OmegaConf
    from solo_utils import base_cfg, fit

    from s2bnn_plugin.solo import register

    register()
    import solo.methods

    cfg = base_cfg("simclr", "reactnet18", {"cifar": True, "width_mult": 0.125})
    model = solo.methods.METHODS["simclr"](cfg)
    trainer = fit(model, cfg, steps=1)
    run = tmp_path / "simclr" / "abc123"
    run.mkdir(parents=True)
    ckpt = run / "simclr-abc123-ep=0.ckpt"
    trainer.save_checkpoint(ckpt)
    (run / "args.json").write_text(json.dumps(OmegaConf.to_container(cfg)))

    assert detect_format(ckpt, torch.load(ckpt, weights_only=True)) == "solo"
    teacher = load_teacher(ckpt, output=output)
    _assert_frozen_eval(teacher)
    model.eval()
    with torch.no_grad():
        expected = model(images)[key]
        torch.testing.assert_close(teacher(images), expected)
    assert teacher.output_dim(SIZE) == expected.shape[1]

    forced = load_teacher(ckpt, format="solo", output=output)
    with torch.no_grad():
        torch.testing.assert_close(forced(images), expected)
    with pytest.raises(TeacherError, match="args.json defines its stem"):
        load_teacher(ckpt, output=output, stem_padding=2)


@pytest.mark.solo
def test_solo_checkpoint_with_a_wrong_args_json(tmp_path):
    from omegaconf import OmegaConf
    from solo_utils import base_cfg

    state = {"state_dict": {"backbone.conv1.weight": torch.zeros(3)}}
    ckpt = tmp_path / "run.ckpt"
    torch.save(state, ckpt)
    cfg = base_cfg("simclr", "reactnet18", {"cifar": True, "width_mult": 0.125})
    args = OmegaConf.to_container(cfg)
    (tmp_path / "args.json").write_text(json.dumps({**args, "method": "no_such_method"}))
    with pytest.raises(TeacherError, match="no_such_method.*available"):
        load_teacher(ckpt)
    (tmp_path / "args.json").write_text(json.dumps(args))
    with pytest.raises(TeacherError, match="do not fit the simclr model"):
        load_teacher(ckpt)


@pytest.mark.solo
def test_forced_solo_format_without_args_json(tmp_path):
    path = tmp_path / "plain.pth"
    torch.save(resnet18().state_dict(), path)
    with pytest.raises(TeacherError, match="args.json beside it"):
        load_teacher(path, format="solo")
