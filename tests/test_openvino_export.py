"""``s2bnn export-openvino``: the IR's binary convolutions run as OpenVINO's BinaryConvolution, its
features equal the packed engine's, and what it cannot do is refused before anything is written.

Tolerance: per image, max |OpenVINO - packed| / ||packed features|| < 1e-5 (f32 inference hint).
Correct exports measure 1e-8 to 3e-8 (the plugin fuses the epilogue's multiplies and adds into
the convolution, rounding differently in the last bit); a single wrong sign bit anywhere moves
an image's features by 1e-4 or more.
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
import pytest
import torch
from test_export import trained_like
from test_pack_rules import TinyReActNet, randomised

from s2bnn_plugin import cli
from s2bnn_plugin.backbones import BackboneConfig
from s2bnn_plugin.exporters import openvino as ovx
from s2bnn_plugin.files import OutputError
from s2bnn_plugin.packing import pack
from s2bnn_plugin.runtime import PackedFormatError, PackedNetwork
from s2bnn_plugin.runtime.format import spec_of, write_packed
from s2bnn_plugin.runtime.units.binary_conv import BinaryConv

pytestmark = pytest.mark.openvino  # skipped without openvino; fails under CI=true (conftest.py)

TOLERANCE = 1e-5

CASES = {
    "a_cifar": ("reactnet_a", {"width_mult": 0.25, "cifar": True}, 32),
    "a_odd": ("reactnet_a", {"width_mult": 0.25}, 45),
    "r18_odd": ("reactnet18", {"width_mult": 0.25}, 37),
    "r18_cifar": ("reactnet18", {"width_mult": 0.25, "cifar": True}, 15),
}


def tiny(width_mult: float) -> torch.nn.Module:
    """The test backbone of test_pack_rules: every pack rule (biased stem conv, max pool, ReActNet-A
    block, ReActNet-18 block with a pooled projection, a bare unit, a last unit without RPReLU)."""
    return randomised(
        TinyReActNet(BackboneConfig.from_kwargs("tiny_reactnet", {"width_mult": width_mult}))
    )


@pytest.fixture(scope="module")
def nets() -> dict[str, tuple[PackedNetwork, int]]:
    out = {key: (pack(trained_like(name, kw)), size) for key, (name, kw, size) in CASES.items()}
    out["tiny_odd"] = (pack(tiny(2 / 3)), 19)  # 8, 16 and 24 channels
    return out


def _images(n: int, size: int, seed: int = 1) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g).numpy()


def _relative(got: np.ndarray, expected: np.ndarray) -> np.ndarray:
    return np.abs(got - expected).max(axis=1) / np.linalg.norm(expected, axis=1)


def _binary_convs(net: PackedNetwork) -> int:
    return sum(u.groups for u in net.model.units)


@pytest.mark.parametrize("key", [*CASES, "tiny_odd"])
def test_features_equal_the_packed_engines_and_every_binary_conv_runs_natively(nets, key):
    net, size = nets[key]
    compiled = ovx.compile_openvino(ovx.build_openvino_model(net, size, batch=3), threads=1)
    layers = ovx.runtime_layer_types(compiled)
    binary = [(name, prim) for name, kind, prim in layers if kind == "BinaryConvolution"]
    assert len(binary) == _binary_convs(net)
    assert all(prim.startswith("jit_") for _, prim in binary), binary
    if key.startswith("a_"):
        assert len(binary) == 31  # ReActNet-A: 26 units, 5 of them two concatenated 1x1 convs
    x = _images(3, size)
    got = compiled(x)[0]
    expected = net(x)
    assert got.shape == expected.shape == (3, net.num_features)
    assert _relative(got, expected).max() < TOLERANCE


def test_the_written_ir_runs_at_any_batch_and_refuses_another_size(nets, tmp_path, capsys):
    net, size = nets["a_odd"]
    net.save(tmp_path / "student.s2bnn")
    xml = tmp_path / "student.xml"
    argv = ["export-openvino", str(tmp_path / "student.s2bnn"), "-o", str(xml)]
    assert cli.main([*argv, "--size", str(size)]) == 0
    assert "31 BinaryConvolution nodes" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "student.bin",
        "student.s2bnn",
        "student.xml",
    ]
    loaded = ovx.load_openvino(xml, threads=1)
    assert loaded.input_shape == (1, 3, size, size)
    for n in (1, 2):
        x = _images(n, size, seed=n)
        assert _relative(loaded(x), net(x)).max() < TOLERANCE
    with pytest.raises(
        ovx.OpenVINOExportError, match=rf"built for inputs shaped \(N, 3, {size}, {size}\)"
    ):
        loaded(_images(1, size + 1))
    assert cli.main(argv) == 2  # exists, no --force
    assert "--force" in capsys.readouterr().err


def test_sign_of_zero_is_plus_one(nets):
    """Every input of unit 0 lands exactly on its threshold (x + shift == 0, some shifts 0): the
    packed engine reads +1 there, and so must the IR."""
    base, size = nets["a_cifar"]
    stem, first = base.model.stem, base.model.units[0]
    rsign, affine = first.rsign.copy(), stem.affine.copy()
    shift = rsign[0]
    shift[::3] = 0
    affine[1] = -shift
    stem = dataclasses.replace(stem, weight=np.zeros_like(stem.weight), affine=affine)
    units = (dataclasses.replace(first, rsign=rsign), *base.model.units[1:])
    net = PackedNetwork(dataclasses.replace(base.model, stem=stem, units=units))
    _, trace = net.trace_numpy(_images(1, size))
    assert not trace[0].bits.any()  # every sign +1 (a set bit is -1)
    compiled = ovx.compile_openvino(ovx.build_openvino_model(net, size, batch=2), threads=1)
    x = _images(2, size)
    assert _relative(compiled(x)[0], net(x)).max() < TOLERANCE


def test_a_unit_kind_the_exporter_lacks_is_refused_by_name(nets, tmp_path, monkeypatch):
    net, size = nets["a_cifar"]
    monkeypatch.delattr(BinaryConv, "build_openvino")
    with pytest.raises(
        ovx.OpenVINOExportError, match=r"unit 0 \(blocks\.0\.conv3x3\) is of kind 'binary_conv'"
    ):
        ovx.export_openvino(net, tmp_path / "a.xml", size=size)
    assert list(tmp_path.iterdir()) == []


def test_widths_binaryconvolution_miscounts_are_refused_by_name(tmp_path):
    net = pack(tiny(0.5))  # 6 channels
    with pytest.raises(ovx.OpenVINOExportError, match=r"unit 0 \(blocks\.0\.conv3x3\) has 6 input"):
        ovx.export_openvino(net, tmp_path / "t.xml", size=19)
    assert list(tmp_path.iterdir()) == []


def test_a_file_of_a_newer_format_is_refused_before_anything_is_written(nets, tmp_path, capsys):
    net, _ = nets["a_cifar"]
    spec = {**spec_of(net.model), "format_version": 99}
    write_packed(tmp_path / "new.s2bnn", spec, net.model.named_arrays())
    with pytest.raises(PackedFormatError, match="format version 99"):
        ovx.export_openvino(tmp_path / "new.s2bnn", tmp_path / "new.xml")
    assert (
        cli.main(["export-openvino", str(tmp_path / "new.s2bnn"), "-o", str(tmp_path / "n.xml")])
        == 2
    )
    assert "upgrade s2bnn-plugin" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.s2bnn"]


def test_without_openvino_the_command_says_how_to_install_it(nets, tmp_path, monkeypatch, capsys):
    net, _ = nets["a_cifar"]
    net.save(tmp_path / "s.s2bnn")
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError
    assert (
        cli.main(["export-openvino", str(tmp_path / "s.s2bnn"), "-o", str(tmp_path / "s.xml")]) == 2
    )
    assert "pip install 's2bnn-plugin[openvino]'" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.s2bnn"]


def test_a_failed_write_leaves_no_partial_ir(nets, tmp_path, monkeypatch):
    net, size = nets["a_cifar"]
    import openvino

    def half_then_fail(model, path, **kwargs):
        open(path, "w").write("<net")
        raise OSError("disk full")

    monkeypatch.setattr(openvino, "save_model", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        ovx.export_openvino(net, tmp_path / "a.xml", size=size)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("key", ["a_odd", "r18_odd", "a_cifar", "tiny_odd"])
def test_every_input_size_the_packed_engine_runs_is_exported(nets, key):
    """1-7 px (and 1 x 5, 3 x 8): maps of one pixel before a 2x2 average, which OpenVINO
    refused ('kernel <= dim') with a RuntimeError for --size 1 to 7 on ReActNet-A."""
    net, _ = nets[key]
    for size in [*range(1, 8), (1, 5), (3, 8)]:
        h, w = (size, size) if isinstance(size, int) else size
        compiled = ovx.compile_openvino(ovx.build_openvino_model(net, size, batch=2), threads=1)
        x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(h * 10 + w)).numpy()
        assert _relative(compiled(x)[0], net(x)).max() < TOLERANCE, size


def test_a_folder_at_the_xml_path_is_refused_before_anything_is_written(nets, tmp_path, capsys):
    """``-o dd.xml --force`` with dd.xml a folder: one line, and no dd.bin without its .xml."""
    net, size = nets["a_cifar"]
    net.save(tmp_path / "s.s2bnn")
    (tmp_path / "dd.xml").mkdir()
    argv = ["export-openvino", str(tmp_path / "s.s2bnn"), "-o", str(tmp_path / "dd.xml")]
    assert cli.main([*argv, "--size", str(size), "--force"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"s2bnn export-openvino: -o {tmp_path / 'dd.xml'} is a folder; give a file " + (
        f"name, e.g. {tmp_path / 'dd.xml' / 'out'}"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dd.xml", "s.s2bnn"]


@pytest.mark.parametrize("force", [False, True])
def test_the_pair_is_written_together_or_not_at_all(nets, tmp_path, monkeypatch, force):
    """A folder appears at the .bin while the IR is written: neither file is put in place (with
    --force too, and an existing .xml stays as it was)."""
    import openvino

    net, size = nets["a_cifar"]
    xml, binf = tmp_path / "m.xml", tmp_path / "m.bin"
    if force:
        xml.write_text("old xml")
    real = openvino.save_model

    def racing(model, path, **kwargs):
        real(model, path, **kwargs)
        binf.mkdir()

    monkeypatch.setattr(openvino, "save_model", racing)
    with pytest.raises(OutputError, match=r"m\.bin: a folder is there now"):
        ovx.export_openvino(net, xml, size=size, force=force)
    assert sorted(p.name for p in tmp_path.iterdir()) == (
        ["m.bin", "m.xml"] if force else ["m.bin"]
    )
    assert not force or xml.read_text() == "old xml"


def test_a_file_appearing_at_the_bin_path_is_never_replaced(nets, tmp_path, monkeypatch):
    import openvino

    net, size = nets["a_cifar"]
    binf = tmp_path / "m.bin"
    real = openvino.save_model

    def racing(model, path, **kwargs):
        real(model, path, **kwargs)
        binf.write_bytes(b"theirs")

    monkeypatch.setattr(openvino, "save_model", racing)
    with pytest.raises(OutputError, match=r"m\.bin: a file is there now"):
        ovx.export_openvino(net, tmp_path / "m.xml", size=size)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin"]
    assert binf.read_bytes() == b"theirs"
