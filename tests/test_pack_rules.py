"""Packing by rules for blocks: the built-in backbones' output is unchanged, a backbone written
by a user (here, in this test) packs exactly, and a module without a rule is refused by name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pack_utils import assert_accumulations_exact
from torch import nn

from s2bnn_plugin.backbones import (
    BACKBONES,
    BackboneConfig,
    BinaryBackbone,
    create_backbone,
    register_backbone,
)
from s2bnn_plugin.backbones.base import scaled_width
from s2bnn_plugin.backbones.blocks import ResidualBinaryConv
from s2bnn_plugin.backbones.reactnet import ReActNetBlock
from s2bnn_plugin.backbones.reactnet18 import ReActResBlock
from s2bnn_plugin.nn import RPReLU
from s2bnn_plugin.packing import PackError, float_twin, pack
from s2bnn_plugin.packing.packer import PACK_RULES, pack_rule
from s2bnn_plugin.runtime import PackedNetwork, load
from s2bnn_plugin.runtime.format import SPEC_KEY, spec_of, write_packed

# ------------------------------------------------------------------------- byte compatibility


def dyadic_model(name: str, kwargs: dict, seed: int = 0) -> nn.Module:
    """A backbone whose every parameter and statistic is a small multiple of 1/16 or 1/8.

    Sums of such values are exact in float32 in any order, so the packed arrays (weight scales
    ``mean |w|``, folded BatchNorms) do not depend on the CPU's vector width: their digests below
    are the same on every machine.
    """
    return dyadic_values(create_backbone(name, **kwargs), seed)


def dyadic_values(model: nn.Module, seed: int = 0) -> nn.Module:
    """``model`` with the values :func:`dyadic_model` describes (eval mode)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randint(-16, 17, p.shape, generator=g).float() / 16)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                mean = torch.randint(-8, 9, m.running_mean.shape, generator=g).float() / 8
                m.running_mean.copy_(mean)
                m.running_var.copy_(torch.randint(2, 17, m.running_var.shape, generator=g) / 8)
    return model.eval()


def version_1(spec: dict) -> dict:
    """A specification as format version 1 wrote it: the same, without the units' ``kind``."""
    units = [{k: v for k, v in u.items() if k != "kind"} for u in spec["units"]]
    return {**spec, "format_version": 1, "units": units}


def exact_digest(net: PackedNetwork) -> str:
    """SHA-256 of the spec JSON (as a file of format version 1 holds it: the digests below were
    pinned then), of every array's name, dtype and shape, and of the bytes of every array that
    holds no computed float (bit-packed weights)."""
    h = hashlib.sha256(json.dumps(version_1(spec_of(net.model)), sort_keys=True).encode())
    for name, a in net.model.named_arrays().items():
        h.update(f"{name}|{a.dtype.str}|{a.shape}".encode())
        if a.dtype.kind != "f":
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


# The packer's output for the built-in backbones, pinned: the spec, array names, dtypes and shapes
# and the integer arrays by digest (exact on every machine), the float arrays by value in
# tests/data/packed_golden.npz. Floats are compared within FLOAT_TOLERANCE because torch's
# BatchNorm fold (1 / sqrt(var + eps)) and mean |w| scales round differently in their last bit
# on different CPUs' vector code; a change of the format's contents (a dropped eps, a swapped
# row, a new scale) moves them by far more. Regenerate both only for a deliberate format change:
# ``python tests/test_pack_rules.py --write-golden``.
DATA = Path(__file__).parent / "data"
GOLDEN_FLOATS = DATA / "packed_golden.npz"
FLOAT_TOLERANCE = {"rtol": 1e-6, "atol": 1e-6}
GOLDEN = {
    ("reactnet_a", '{"width_mult": 0.25, "cifar": true}'): (
        "c9c2618ccd4f2563233a1080dc6fec8ba96b4a83df01797db24b8359d8219f7b"
    ),
    ("reactnet_a", '{"width_mult": 0.3, "activation_ste": "ste_sign"}'): (
        "56dce0354d4af991b878f7c145ee1ac5e3b99eb38434c3b8f158a80fb8317966"
    ),
    ("reactnet18", '{"width_mult": 0.25}'): (
        "d750e82e9357c8879fa99718fc10035cef094d8f6e2dbdd78878795209077854"
    ),
    ("reactnet18", '{"width_mult": 0.2, "cifar": true}'): (
        "5eb5054b65538fd3fc297f3a82f2bc94380fbfdf9b155e5942de5deb1e0a9eeb"
    ),
}


def golden_key(name: str, kwargs: str, array: str) -> str:
    return f"{name}{kwargs}|{array}"


@pytest.mark.parametrize("name,kwargs", list(GOLDEN))
def test_builtin_backbones_pack_to_the_same_spec_and_arrays_as_before(name, kwargs):
    net = pack(dyadic_model(name, json.loads(kwargs)))
    assert exact_digest(net) == GOLDEN[name, kwargs]
    spec = spec_of(net.model)  # format version 2: the same, every unit naming its kind
    assert spec["format_version"] == 2 and {u["kind"] for u in spec["units"]} == {"binary_conv"}
    with np.load(GOLDEN_FLOATS, allow_pickle=False) as golden:
        floats = {k: a for k, a in net.model.named_arrays().items() if a.dtype.kind == "f"}
        assert floats, "the packed network holds float arrays (scales, folded BatchNorms)"
        for array, a in floats.items():
            np.testing.assert_allclose(
                a, golden[golden_key(name, kwargs, array)], **FLOAT_TOLERANCE, err_msg=array
            )


@pytest.mark.parametrize("name,kwargs", list(GOLDEN))
def test_a_version_1_file_of_the_golden_networks_reads_as_the_same_model(name, kwargs, tmp_path):
    """The golden float arrays and the integer arrays, under a version-1 specification (no unit
    kinds): read into the same typed model as the network packed now, arrays unchanged."""
    net = pack(dyadic_model(name, json.loads(kwargs)))
    with np.load(GOLDEN_FLOATS, allow_pickle=False) as golden:
        arrays = {
            k: golden[golden_key(name, kwargs, k)] if a.dtype.kind == "f" else a
            for k, a in net.model.named_arrays().items()
        }
    path = write_packed(tmp_path / "v1.s2bnn", version_1(spec_of(net.model)), arrays)
    loaded = load(path)
    assert spec_of(loaded.model) == spec_of(net.model)
    got = loaded.model.named_arrays()
    assert list(got) == list(arrays)
    for k, a in arrays.items():
        np.testing.assert_array_equal(got[k], a, err_msg=k)


def test_a_version_1_file_written_before_unit_kinds_still_reads(tmp_path):
    """tests/data/packed_v1_tiny.s2bnn: TinyReActNet (every residual kind, two groups, a max
    pool, a unit without RPReLU) with dyadic values, packed and saved by the plugin at format
    version 1. It loads into the model packed now, computes the features it computed then (bit
    for bit: ``.features.npy``, on a fixed input), and saved again, is a version-2 file."""
    old = DATA / "packed_v1_tiny.s2bnn"
    with np.load(old, allow_pickle=False) as z:
        raw = json.loads(z[SPEC_KEY].tobytes())
    assert raw["format_version"] == 1 and all("kind" not in u for u in raw["units"])
    net = load(old)
    model = dyadic_values(TinyReActNet(BackboneConfig.from_kwargs("tiny", {"width_mult": 0.5})))
    now = pack(model)
    assert spec_of(net.model) == spec_of(now.model)
    for (k, a), (k2, b) in zip(net.model.named_arrays().items(), now.model.named_arrays().items()):
        assert k == k2 and a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_allclose(a, b, **FLOAT_TOLERANCE, err_msg=k)
    x = np.random.default_rng(0).standard_normal((2, 3, 19, 17)).astype(np.float32)
    expected = np.load(DATA / "packed_v1_tiny.features.npy")
    np.testing.assert_array_equal(net(x).view(np.uint32), expected.view(np.uint32))
    np.testing.assert_array_equal(net(x, engine="numpy").view(np.uint32), expected.view(np.uint32))
    again = load(net.save(tmp_path / "v2.s2bnn"))
    with np.load(tmp_path / "v2.s2bnn", allow_pickle=False) as z:
        raw = json.loads(z[SPEC_KEY].tobytes())
    assert raw["format_version"] == 2 and all(u["kind"] == "binary_conv" for u in raw["units"])
    np.testing.assert_array_equal(again(x), net(x))


def write_golden() -> None:
    """Print the exact digests for GOLDEN and write the float arrays' file."""
    arrays = {}
    for name, kwargs in GOLDEN:
        net = pack(dyadic_model(name, json.loads(kwargs)))
        print(f"{(name, kwargs)!r}: {exact_digest(net)!r},")
        for array, a in net.model.named_arrays().items():
            if a.dtype.kind == "f":
                arrays[golden_key(name, kwargs, array)] = a
    GOLDEN_FLOATS.parent.mkdir(exist_ok=True)
    np.savez_compressed(GOLDEN_FLOATS, **arrays)
    print(f"wrote {GOLDEN_FLOATS}")


# ------------------------------------------------------------------ a backbone that a user writes


class TinyReActNet(BinaryBackbone):
    """A narrower, shallower ReActNet with other stage widths, as a user would write it: only the
    plugin's layers and blocks, no packing code. Every rule takes part: a stem with a biased
    convolution and a max pool, a ReActNet-A block (avgpool residual, two concatenated 1x1
    convolutions), a ReActNet-18 block (pooled projection shortcut), a bare unit with its RPReLU
    in a Sequential, and a last unit without activation."""

    name = "tiny_reactnet"

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__(config)
        c = scaled_width(12, config.width_mult)
        self.stem = nn.Sequential(
            nn.Conv2d(3, c, 3, stride=1, padding=1, bias=True),
            nn.BatchNorm2d(c),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        self.blocks = nn.Sequential(
            ReActNetBlock(c, 2, 2, config),
            ReActResBlock(2 * c, 3 * c, 2, config),
            nn.Sequential(ResidualBinaryConv(3 * c, 3 * c, 3, 1, config), RPReLU(3 * c)),
            ResidualBinaryConv(3 * c, 3 * c, 1, 1, config),
        )
        self.num_features = 3 * c


def tiny_reactnet(method: str | None = None, **kwargs) -> TinyReActNet:
    return TinyReActNet(BackboneConfig.from_kwargs("tiny_reactnet", kwargs))


@pytest.fixture
def registered():
    """``tiny_reactnet`` in the plugin's registry (and solo-learn's, once registered) for one
    test, as a user's ``register_backbone`` would put it."""
    register_backbone(tiny_reactnet)
    yield tiny_reactnet
    BACKBONES.pop("tiny_reactnet")
    solo_methods = sys.modules.get("solo.methods")
    if solo_methods is not None:  # solo.register() copied it there
        solo_methods.BaseMethod._BACKBONES.pop("tiny_reactnet", None)


def randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-default statistics, shifts and slopes, as after training (eval mode)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.3, generator=g)
                m.running_var.uniform_(0.5, 2, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0, 0.3, generator=g)
        for n, p in model.named_parameters():
            if n.endswith("bias") and p.dim() == 1 and ".bn" not in n:
                p.normal_(0, 0.2, generator=g)
            elif "prelu" in n:
                p.uniform_(-0.2, 0.5, generator=g)
    return model.eval()


def _images(n: int, size: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def assert_packs_saves_loads_and_matches(model: nn.Module, tmp_path, size: int) -> PackedNetwork:
    net = pack(model)
    loaded = load(net.save(tmp_path / "tiny.s2bnn"))
    assert spec_of(loaded.model) == spec_of(net.model)
    assert list(loaded.model.named_arrays()) == list(net.model.named_arrays())
    assert loaded.backbone == "tiny_reactnet"
    assert loaded.backbone_kwargs == dataclasses.asdict(model.config)
    x = _images(3, size)
    assert_accumulations_exact(model, loaded, x)
    with torch.no_grad():
        expected = model(x).numpy()
    got = loaded(x.numpy())
    assert got.shape == (3, model.num_features)
    rel = np.abs(got - expected).max(axis=1) / np.abs(expected).max(axis=1)
    assert rel.max() < 1e-5, rel
    np.testing.assert_array_equal(loaded(x.numpy(), engine="numpy"), got)
    return loaded


def test_a_backbone_built_from_the_plugins_blocks_packs_by_their_rules(registered, tmp_path):
    model = randomised(create_backbone("tiny_reactnet", width_mult=0.5))
    net = assert_packs_saves_loads_and_matches(model, tmp_path, size=19)
    assert spec_of(net.model)["stem"] == {
        "kernel": 3, "stride": 1, "padding": 1, "out_channels": 6, "maxpool": True, "name": "stem"
    }  # fmt: skip
    units = [
        (u["name"], u["kernel"], u["stride"], u["groups"], u["residual"], u["activation"])
        for u in spec_of(net.model)["units"]
    ]
    assert units == [
        ("blocks.0.conv3x3", 3, 2, 1, "avgpool", True),
        ("blocks.0.conv1x1", 1, 1, 2, "identity", True),
        ("blocks.1.conv_a", 3, 2, 1, "projection", True),
        ("blocks.1.conv_b", 3, 1, 1, "identity", True),
        ("blocks.2.0", 3, 1, 1, "identity", True),
        ("blocks.3", 1, 1, 1, "identity", False),
    ]


def test_the_float_twin_of_a_user_backbone_is_rebuilt_by_the_same_rules(
    registered, tmp_path, capsys
):
    """``float_twin`` (and so ``s2bnn check FILE``) finds each unit's RPReLU by walking the rebuilt
    backbone with the pack rules, not by the built-in blocks' names."""
    from s2bnn_plugin.cli import main

    model = randomised(create_backbone("tiny_reactnet", width_mult=0.5))
    path = pack(model).save(tmp_path / "tiny.s2bnn")
    twin = float_twin(load(path))
    x = _images(2, 16)
    with torch.no_grad():
        expected, got = model(x), twin(x)
    rel = (got - expected).abs().max() / expected.abs().max()
    assert rel < 1e-5, rel
    # every RPReLU came from the file, not from the twin's initialisation
    for (name, a), (_, b) in zip(model.named_modules(), twin.named_modules()):
        if isinstance(a, RPReLU):
            assert torch.equal(a.prelu.weight, b.prelu.weight), name
    args = ["check", str(path), "--size", "16", "--batch", "2", "--repeats", "1", "--no-progress"]
    assert main(args) == 0
    assert "images with a flipped sign bit: 0/16" in capsys.readouterr().out


@pytest.mark.solo
def test_a_user_backbone_trains_through_solo_learn_then_packs_exactly(registered, tmp_path):
    """Registered like a user would, trained by solo-learn's SimCLR, packed, saved, loaded."""
    import solo.methods
    from solo_utils import base_cfg, fit

    from s2bnn_plugin.solo import register

    register()
    assert solo.methods.BaseMethod._BACKBONES["tiny_reactnet"] is tiny_reactnet
    cfg = base_cfg("simclr", "tiny_reactnet", {"cifar": True, "width_mult": 0.5})
    model = solo.methods.METHODS["simclr"](cfg)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    trainer = fit(model, cfg, steps=2, size=16)
    assert trainer.global_step == 2
    after = model.backbone.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert "blocks.1.conv_a.conv.weight" in changed and "stem.1.running_mean" in changed
    backbone = model.backbone.eval()
    assert isinstance(backbone, TinyReActNet)
    assert_packs_saves_loads_and_matches(backbone, tmp_path, size=16)


# ---------------------------------------------------------------------------------- refusals


class WrappedUnit(nn.Module):
    """A user's block with no pack rule: what it computes is up to its forward."""

    def __init__(self, channels: int, config: BackboneConfig) -> None:
        super().__init__()
        self.unit = ResidualBinaryConv(channels, channels, 3, 1, config)
        self.act = RPReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.unit(x))


def _tiny() -> TinyReActNet:
    return randomised(TinyReActNet(BackboneConfig.from_kwargs("tiny", {"width_mult": 0.5})))


def test_a_module_without_a_rule_is_refused_by_name_path_and_the_rules_that_exist():
    model = _tiny()
    model.blocks[2][1] = nn.ReLU()
    with pytest.raises(PackError) as info:
        pack(model.eval())
    message = str(info.value)
    assert "'blocks.2.1'" in message and "no pack rule for ReLU" in message
    for rule in ("RPReLU", "ResidualBinaryConv", "ReActNetBlock", "Sequential", "BatchNorm2d"):
        assert rule in message
    assert "CONTRIBUTING" in message


def test_a_new_block_packs_once_it_has_a_rule():
    model = _tiny()
    model.blocks[2] = WrappedUnit(18, model.config)
    randomised(model, seed=1)
    with pytest.raises(PackError, match=r"'blocks\.2'.*no pack rule for WrappedUnit"):
        pack(model)

    @pack_rule(WrappedUnit)
    def pack_wrapped_unit(packer, block, path):
        packer.walk_children(block, path, ("unit", "act"))

    try:
        net = pack(model)
        with pytest.raises(ValueError, match="WrappedUnit already has a pack rule"):
            pack_rule(WrappedUnit)(lambda packer, block, path: None)
    finally:
        PACK_RULES.pop(WrappedUnit)
    assert net.model.units[4].name == "blocks.2.unit"
    x = _images(2, 17)
    assert_accumulations_exact(model, net, x)
    with torch.no_grad():
        np.testing.assert_allclose(net(x.numpy()), model(x).numpy(), rtol=1e-5, atol=1e-5)


def test_subclasses_need_their_own_rule_unless_they_only_build_differently():
    class Doubled(ReActResBlock):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(x)

    class Narrow(TinyReActNet):  # only its constructor differs: the backbone rule applies
        name = "narrow"

    class Scaled(TinyReActNet):
        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward_features(x)

    config = BackboneConfig.from_kwargs("tiny", {"width_mult": 0.5})
    assert pack(randomised(Narrow(config))).backbone == "narrow"
    model = _tiny()
    model.blocks[1] = Doubled(12, 18, 2, model.config)
    with pytest.raises(PackError, match=r"'blocks\.1'.*no pack rule for Doubled"):
        pack(randomised(model))
    with pytest.raises(PackError, match=r"'<model>'.*no pack rule for Scaled.*BinaryBackbone"):
        pack(randomised(Scaled(config)))


def test_modules_out_of_the_packed_order_are_refused():
    model = _tiny()
    model.blocks[2] = nn.Sequential(RPReLU(18), ResidualBinaryConv(18, 18, 3, 1, model.config))
    with pytest.raises(PackError, match=r"'blocks\.2\.0'.*RPReLU must directly follow"):
        pack(randomised(model))
    model = _tiny()
    model.blocks[3] = nn.BatchNorm2d(18)
    with pytest.raises(PackError, match=r"'blocks\.3'.*BatchNorm2d.*stem"):
        pack(randomised(model))
    model = _tiny()
    model.blocks[3] = nn.Conv2d(18, 18, 1)
    with pytest.raises(PackError, match=r"'blocks\.3'.*one, the stem"):
        pack(randomised(model))
    model = _tiny()
    model.blocks[3] = nn.AdaptiveAvgPool2d(1)  # a pool before the model's own
    with pytest.raises(PackError, match=r"'pool'.*last layer"):
        pack(randomised(model))
    model = _tiny()
    model.stem = nn.Sequential(model.stem[0], model.stem[2], model.stem[1])
    with pytest.raises(PackError, match=r"'stem\.1'.*MaxPool2d must directly follow"):
        pack(randomised(model))


def test_backbone_without_a_name_or_with_wrong_num_features_is_refused():
    model = _tiny()
    model.name = ""
    with pytest.raises(PackError, match="name is empty"):
        pack(model)
    model = _tiny()
    model.num_features = 17
    with pytest.raises(PackError, match="num_features is 17, its last layer has 18"):
        pack(model)


if __name__ == "__main__" and sys.argv[1:] == ["--write-golden"]:
    write_golden()
