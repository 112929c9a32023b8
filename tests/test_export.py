"""Packing trained backbones: exactness against PyTorch, the file format, bad input, commands.

Tolerance of the end-to-end comparison: every binary layer's integer accumulation is *exactly*
PyTorch's (tested layer by layer below); the float parts (stem, BatchNorm, residuals, RPReLU)
round differently from PyTorch's kernels only in summation order, about 1e-7 relative. Features
therefore agree to ~1e-7 relative unless a pre-sign value lands within that rounding of its
threshold and one sign bit flips (rare; at 224 px with random weights it touches a few % of the
images, moving their features by ~1 %). The small models and fixed seeds here have no flip, so
the test asserts a per-image relative difference below 1e-5; the numpy engine, which performs
the same float32 operations in the same order, must match the kernels bit for bit.
"""

from __future__ import annotations

import io
import json
import os
import re
import stat
import struct
import zipfile

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pack_utils import as_trained, assert_accumulations_exact, solo_checkpoint
from torch import nn

from s2bnn_plugin import kernels as K
from s2bnn_plugin.backbones import create_backbone
from s2bnn_plugin.cli import main
from s2bnn_plugin.packing import PackError, float_twin, pack
from s2bnn_plugin.runtime import (
    FORMAT_VERSION,
    PackedFormatError,
    PackedNetwork,
    load,
)
from s2bnn_plugin.runtime import network as network_module
from s2bnn_plugin.runtime.format import SPEC_KEY, parse_spec, spec_of, write_packed

CASES = {
    "a_cifar": ("reactnet_a", {"width_mult": 0.25, "cifar": True}, 32),
    "a_odd": ("reactnet_a", {"width_mult": 0.3}, 45),
    "r18": ("reactnet18", {"width_mult": 0.25}, 37),
    "r18_cifar": ("reactnet18", {"width_mult": 0.2, "cifar": True}, 15),
}


def spec_dict(net: PackedNetwork) -> dict:
    """The network's specification, as its file holds it."""
    return spec_of(net.model)


def arrays_dict(net: PackedNetwork) -> dict[str, np.ndarray]:
    """The network's arrays by their names in its file."""
    return net.model.named_arrays()


def trained_like(name: str, kwargs: dict, seed: int = 0) -> nn.Module:
    """A backbone with non-default statistics and shifts, as after training (eval mode)."""
    torch.manual_seed(seed)
    return as_trained(create_backbone(name, **kwargs), seed)


@pytest.fixture(scope="module")
def packed_cases():
    out = {}
    for key, (name, kwargs, size) in CASES.items():
        model = trained_like(name, kwargs)
        out[key] = (model, pack(model), size)
    return out


def _images(n: int, size: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("key", list(CASES))
def test_features_agree_with_torch(packed_cases, key):
    model, net, size = packed_cases[key]
    x = _images(3, size)
    with torch.no_grad():
        expected = model(x).numpy()
    got = net(x.numpy())
    assert got.shape == (3, model.num_features) and got.dtype == np.float32
    rel = np.abs(got - expected).max(axis=1) / np.abs(expected).max(axis=1)
    assert rel.max() < 1e-5, rel
    np.testing.assert_array_equal(net(x.numpy(), engine="numpy"), got)


@pytest.mark.parametrize("key", ["a_odd", "r18"])
def test_every_binary_layer_accumulates_exactly(packed_cases, key):
    """Fed PyTorch's own input, each packed unit's integer sums equal F.conv2d on +-1 tensors."""
    model, net, size = packed_cases[key]
    assert_accumulations_exact(model, net, _images(2, size))


def test_threads_and_chunks_do_not_change_results(packed_cases, monkeypatch):
    import numba

    _, net, size = packed_cases["r18"]
    x = _images(5, size).numpy()
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = net(x)
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        many = net(x)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(one, many)
    monkeypatch.setattr(network_module, "CACHE_BYTES", 1)  # one image per pass
    np.testing.assert_array_equal(net(x), one)
    np.testing.assert_array_equal(net(x[:2]), one[:2])


def test_later_passes_resolve_no_argument_types_and_read_each_new_input(packed_cases, monkeypatch):
    """Numba's dispatcher types named-tuple arguments in Python on every call (40-140 us for a
    fused unit); after its first pass on a shape, a forward pass must call the compiled code
    bound to its buffers, while still reading each new input."""
    from numba.core.dispatcher import Dispatcher

    _, net, size = packed_cases["a_odd"]
    x, y = _images(2, size, seed=3).numpy(), _images(2, size, seed=4).numpy()
    net(x)
    resolved = []
    typeof_pyval = Dispatcher.typeof_pyval

    def counted(self, val):
        resolved.append((self.py_func.__name__, type(val).__name__))
        return typeof_pyval(self, val)

    monkeypatch.setattr(Dispatcher, "typeof_pyval", counted)
    got = net(y)
    assert resolved == []
    np.testing.assert_array_equal(got, net(y, engine="numpy"))
    K.binary_conv_fused(*net.kernel_calls(y)[0][-2].args)  # the check counts what it should
    assert ("binary_conv_fused", "FusedOutput") in resolved


def test_the_first_run_says_it_compiles_the_kernels(packed_cases, monkeypatch, caplog):
    """Once per process, before compiled code runs, and only when the kernels' cache lacks the
    fused driver (the first packed run after an install or upgrade stalls while they compile)."""
    from s2bnn_plugin.kernels import cache

    _, net, size = packed_cases["r18"]
    x = _images(1, size).numpy()
    for cached, said in [(None, True), (cache.cache_dir(), False)]:
        monkeypatch.setattr(cache, "compiled_in", lambda *_, cached=cached: cached)
        network_module._announce_compilation.cache_clear()
        caplog.clear()
        net(x)
        net(x)
        notes = [r for r in caplog.records if "compiling the packed engine" in r.message]
        assert len(notes) == (1 if said else 0)
    network_module._announce_compilation.cache_clear()
    caplog.clear()
    net(x, engine="numpy")
    assert not caplog.records  # the numpy engine compiles nothing


def test_float_twin(packed_cases):
    _, net, size = packed_cases["a_odd"]
    twin = float_twin(net)
    x = _images(2, size)
    with torch.no_grad():
        expected = twin(x).numpy()
    np.testing.assert_allclose(net(x.numpy()), expected, rtol=1e-5, atol=1e-5)


def test_save_load_round_trip(packed_cases, tmp_path):
    _, net, size = packed_cases["r18"]
    path = net.save(tmp_path / "net.s2bnn")
    assert zipfile.is_zipfile(path)
    with np.load(path, allow_pickle=False) as z:
        spec = json.loads(z[SPEC_KEY].tobytes())
    assert spec["format_version"] == FORMAT_VERSION and spec["backbone"]["name"] == "reactnet18"
    again = load(path)
    assert spec_dict(again) == spec_dict(net) and set(arrays_dict(again)) == set(arrays_dict(net))
    for k, v in arrays_dict(net).items():
        np.testing.assert_array_equal(arrays_dict(again)[k], v)
    x = _images(2, size).numpy()
    np.testing.assert_array_equal(again(x), net(x))
    assert again.num_features == net.num_features and again.backbone_kwargs == net.backbone_kwargs


def test_pickle(packed_cases):
    import pickle

    _, net, size = packed_cases["r18_cifar"]
    x = _images(2, size).numpy()
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(net))(x), net(x))


def test_packed_file_is_at_most_a_twentieth(tmp_path):
    from s2bnn_plugin.packing.report import file_sizes

    model = create_backbone("reactnet_a").eval()
    packed, fp32 = file_sizes(pack(model), model)
    assert packed * 20 <= fp32, (packed, fp32)


@pytest.fixture(scope="module")
def saved(packed_cases, tmp_path_factory):
    path = tmp_path_factory.mktemp("saved") / "net.s2bnn"
    packed_cases["a_cifar"][1].save(path)
    return path


def _same(net: PackedNetwork, reference: PackedNetwork) -> bool:
    return spec_dict(net) == spec_dict(reference) and all(
        np.array_equal(arrays_dict(net)[k], v) for k, v in arrays_dict(reference).items()
    )


@given(cut=st.floats(0.0, 0.999))
@settings(max_examples=10, deadline=None)
def test_truncated_file(saved, tmp_path_factory, cut):
    data = saved.read_bytes()
    path = tmp_path_factory.mktemp("cut") / "net.s2bnn"
    path.write_bytes(data[: int(cut * len(data))])
    with pytest.raises(PackedFormatError, match="net.s2bnn"):
        load(path)


@given(where=st.floats(0.0, 0.999), value=st.integers(1, 255))
@settings(max_examples=15, deadline=None)
def test_corrupted_file_fails_or_is_unharmed(saved, packed_cases, tmp_path_factory, where, value):
    """A flipped byte is detected (CRC, zip structure, validation) or hit nothing that is read."""
    data = bytearray(saved.read_bytes())
    data[int(where * len(data))] ^= value
    path = tmp_path_factory.mktemp("bad") / "net.s2bnn"
    path.write_bytes(bytes(data))
    try:
        net = load(path)
    except PackedFormatError:
        return
    assert _same(net, packed_cases["a_cifar"][1])


def _rewrite(net: PackedNetwork, path, spec=None, arrays=None):
    write_packed(path, spec or spec_dict(net), arrays or arrays_dict(net), force=True)
    return path


def test_newer_version_and_invalid_contents(packed_cases, tmp_path):
    net = packed_cases["a_cifar"][1]
    newer = dict(spec_dict(net), format_version=FORMAT_VERSION + 1)
    with pytest.raises(PackedFormatError, match="newer s2bnn-plugin"):
        load(_rewrite(net, tmp_path / "newer.s2bnn", spec=newer))
    with pytest.raises(PackedFormatError, match="not an s2bnn packed network"):
        load(_rewrite(net, tmp_path / "other.s2bnn", spec=dict(spec_dict(net), format="x")))
    arrays = dict(arrays_dict(net))
    del arrays["units.3.affine"]
    with pytest.raises(PackedFormatError, match="missing.*units.3.affine"):
        load(_rewrite(net, tmp_path / "missing.s2bnn", arrays=arrays))
    arrays = dict(arrays_dict(net), **{"units.0.rsign": arrays_dict(net)["units.0.rsign"][:, :-1]})
    with pytest.raises(PackedFormatError, match="units.0.rsign"):
        load(_rewrite(net, tmp_path / "shape.s2bnn", arrays=arrays))
    for bad in (np.nan, np.inf):  # the kernels compare against -thr: finite shifts only
        rsign = arrays_dict(net)["units.2.rsign"].copy()
        rsign[0, 1] = bad
        arrays = dict(arrays_dict(net), **{"units.2.rsign": rsign})
        with pytest.raises(PackedFormatError, match="units.2.rsign.*NaN or infinity"):
            load(_rewrite(net, tmp_path / "nonfinite.s2bnn", arrays=arrays))
    arrays = dict(arrays_dict(net), extra=np.zeros(3))
    with pytest.raises(PackedFormatError, match="unexpected"):
        load(_rewrite(net, tmp_path / "extra.s2bnn", arrays=arrays))
    weight = arrays_dict(net)["units.0.weight"].copy()
    weight[:] = np.uint64(2**64 - 1)  # 8 input channels: bits past them must be zero
    arrays = dict(arrays_dict(net), **{"units.0.weight": weight})
    with pytest.raises(PackedFormatError, match="past in_channels"):
        load(_rewrite(net, tmp_path / "bits.s2bnn", arrays=arrays))
    units = [dict(u) for u in spec_dict(net)["units"]]
    units[1]["in_channels"] += 1
    with pytest.raises(PackedFormatError, match="in_channels"):
        load(_rewrite(net, tmp_path / "chain.s2bnn", spec=dict(spec_dict(net), units=units)))
    (tmp_path / "text.s2bnn").write_text("hello")
    with pytest.raises(PackedFormatError, match="not a readable"):
        load(tmp_path / "text.s2bnn")
    np.save(tmp_path / "array.npy", np.zeros(3))
    with pytest.raises(PackedFormatError):
        load(tmp_path / "array.npy")
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "none.s2bnn")


def test_every_unit_names_its_kind_and_an_unknown_kind_is_refused(packed_cases, tmp_path):
    """Format version 2: each unit's ``kind`` picks the module that reads it; a kind this version
    does not know (a newer plugin's), or none, is refused naming the unit and the kinds it reads."""
    net = packed_cases["a_cifar"][1]
    spec = spec_dict(net)
    assert spec["format_version"] == FORMAT_VERSION == 2
    assert [u["kind"] for u in spec["units"]] == ["binary_conv"] * len(net.model.units)
    units = [dict(u) for u in spec["units"]]
    units[3]["kind"] = "ternary_conv"
    path = _rewrite(net, tmp_path / "kind.s2bnn", spec=dict(spec, units=units))
    with pytest.raises(
        PackedFormatError,
        match=r"unit 3 \(blocks\.1\.conv1x1\): unknown unit kind 'ternary_conv'; this version "
        r"of s2bnn-plugin reads \['binary_conv'\] .*upgrade s2bnn-plugin",
    ):
        load(path)
    del units[3]["kind"]
    path = _rewrite(net, tmp_path / "no_kind.s2bnn", spec=dict(spec, units=units))
    with pytest.raises(
        PackedFormatError, match=r"unit 3 \(blocks\.1\.conv1x1\): unknown unit kind None"
    ):
        load(path)


def test_bad_input_is_refused_before_compiled_code(packed_cases, monkeypatch):
    _, net, size = packed_cases["a_cifar"]

    def forbidden(*args):
        raise AssertionError("compiled code ran on bad input")

    for name in ("conv_nchw_bn", "pack_signs", "binary_conv_fused", "global_avgpool"):
        monkeypatch.setattr(K, name, forbidden)
    x = _images(2, size).numpy()
    with pytest.raises(ValueError, match="float32"):
        net(x.astype(np.float64))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        net(x[:, :1])
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        net(x[0])
    with pytest.raises(ValueError, match="H, W >= 1"):
        net(x[:, :, :0])
    with pytest.raises(TypeError, match="numpy"):
        net(torch.from_numpy(x))
    with pytest.raises(ValueError, match="engine"):
        net(x, engine="gpu")
    assert net(x[:0]).shape == (0, net.num_features)


def test_nan_input_stays_in_its_image(packed_cases):
    model, net, size = packed_cases["a_cifar"]
    x = _images(3, size).numpy()
    clean = net(x)
    x[1, 2, 5, 7] = np.nan
    got = net(x)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert np.isnan(got[1]).any() and np.isnan(expected[1]).any()
    np.testing.assert_array_equal(got[[0, 2]], clean[[0, 2]])


def test_pack_refuses_what_it_cannot_pack():
    kwargs = {"width_mult": 0.25, "cifar": True}
    with pytest.raises(PackError, match=r"blocks\.0\.conv3x3\.conv.*binary_weights=False"):
        pack(create_backbone("reactnet_a", binary_weights=False, **kwargs).eval())
    with pytest.raises(PackError, match="training mode"):
        pack(create_backbone("reactnet_a", **kwargs))
    model = create_backbone("reactnet_a", **kwargs).eval()
    model.blocks[1].act3x3 = nn.ReLU().eval()
    with pytest.raises(PackError, match=r"'blocks\.1\.act3x3'.*ReLU.*RPReLU"):
        pack(model)
    model = create_backbone("reactnet18", **kwargs).eval()
    model.extra = nn.Linear(2, 2).eval()
    with pytest.raises(PackError, match="'extra'"):
        pack(model)
    with pytest.raises(PackError, match="supported backbones"):
        pack(nn.Sequential(nn.Conv2d(3, 3, 3)).eval())


# ---------------------------------------------------------------------------------- commands


def _solo_run(tmp_path, model, name, kwargs):
    return solo_checkpoint(tmp_path, model, name, kwargs)


def test_pack_and_check_commands(tmp_path, capsys):
    name, kwargs, size = CASES["a_cifar"]
    model = trained_like(name, kwargs)
    ckpt = _solo_run(tmp_path, model, name, kwargs)
    out = tmp_path / "net.s2bnn"
    quick = ["--no-progress", "--check-size", "16"]
    assert main(["pack", str(ckpt), "-o", str(out), *quick]) == 0
    assert "1/" in capsys.readouterr().out
    x = _images(2, size)
    with torch.no_grad():
        np.testing.assert_allclose(load(out)(x.numpy()), model(x).numpy(), atol=1e-5)

    assert main(["pack", str(ckpt), "-o", str(out), *quick]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["pack", str(ckpt), "-o", str(out), "--force", *quick]) == 0

    plain = tmp_path / "plain.pt"
    torch.save(model.state_dict(), plain)
    args = ["pack", str(plain), "-o", str(tmp_path / "p.s2bnn"), *quick]
    assert main(args) == 2
    assert "args.json" in capsys.readouterr().err
    args += ["--backbone", name, "--backbone-kwargs", json.dumps(kwargs)]
    assert main(args) == 0
    wrong = args[:-1] + ['{"width_mult": 0.5, "cifar": true}']
    assert main(wrong + ["--force"]) == 2
    assert "do not fit" in capsys.readouterr().err

    common = ["--size", "16", "--batch", "2", "--repeats", "1", "--no-progress"]
    assert main(["check", str(out), "--ckpt", str(ckpt), *common]) == 0
    text = capsys.readouterr().out
    assert "agreement with the float model" in text and "flipped sign bit: 0/16" in text
    assert main(["check", str(out), *common, "-v"]) == 0
    assert "float twin" in capsys.readouterr().out
    (tmp_path / "bad.s2bnn").write_bytes(out.read_bytes()[:100])
    assert main(["check", str(tmp_path / "bad.s2bnn"), *common]) == 2
    assert "not a readable" in capsys.readouterr().err


def test_unit_epilogues_times_every_unit_on_its_own_input(packed_cases):
    """One row per binary unit, in the network's order, each fused unit timed with its binary
    convolution alone; timing leaves the network's results as they were."""
    from s2bnn_plugin.bench.profile import unit_epilogues
    from s2bnn_plugin.bench.tables import epilogue_table

    _, net, size = packed_cases["a_cifar"]
    x = np.random.default_rng(3).standard_normal((1, 3, size, size)).astype(np.float32)
    before = net(x)
    rows = unit_epilogues(net, size, repeats=1, burst=1)
    calls, _ = net.kernel_calls(x)
    assert [r[0] for r in rows] == [c.name for c in calls if c.unit is not None]
    assert all(unit > 0 and conv > 0 for _, unit, conv in rows)
    np.testing.assert_array_equal(net(x), before)
    table = epilogue_table(rows).splitlines()
    assert len(table) == 2 + len(rows) + 1  # header, rule, units, total
    assert all(name in line for (name, _, _), line in zip(rows, table[2:]))
    epilogue = sum(r[1] for r in rows) - sum(r[2] for r in rows)
    assert table[-1].startswith("| **all units**") and f"**{epilogue * 1e3:.3f}**" in table[-1]


def test_bench_command(capsys):
    args = ["bench", "--width-mult", "0.25", "--size", "32", "--batch", "1", "--threads", "1",
            "--repeats", "1", "--layers", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "speedup" in text and "3x3/2" in text and "fp32 state dict" in text


# ---------------------------------------------------------------------------------- packed files


@pytest.mark.parametrize(
    ("field", "value"),
    [("kernel", 3.0), ("kernel", True), ("stride", 2.0), ("stride", True)]
    + [("groups", 1.0), ("groups", True), ("name", 7)],
)
def test_spec_fields_are_integers_not_floats_or_bools(packed_cases, tmp_path, field, value):
    """``3.0 == 3`` and ``True == 1`` in Python: the file check compares types, not values."""
    net = packed_cases["a_cifar"][1]
    units = [dict(u) for u in spec_dict(net)["units"]]
    # a unit where the value is the same number, of another JSON type
    i = next(j for j, u in enumerate(units) if field == "name" or u[field] == value)
    units[i][field] = value
    path = _rewrite(net, tmp_path / "typed.s2bnn", spec=dict(spec_dict(net), units=units))
    with pytest.raises(PackedFormatError, match=rf"unit {i}.*'{field}' must be .*got {value!r}"):
        load(path)


def _with_member(net: PackedNetwork, path, member: str, nbytes: int):
    """``net``'s file with ``member`` holding an .npy array of ``nbytes`` zeros, deflated and
    streamed (the test never holds it in memory): a few hundred kB on disk."""
    from numpy.lib import format as npy

    good = net.save(path.with_suffix(".good"))
    with (
        zipfile.ZipFile(good) as src,
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as dst,
    ):
        for info in src.infolist():
            if info.filename != member:
                dst.writestr(info, src.read(info))
        with dst.open(member, "w", force_zip64=True) as f:
            header = {"descr": "|u1", "fortran_order": False, "shape": (nbytes,)}
            npy.write_array_header_1_0(f, header)
            chunk = bytes(1 << 20)
            for _ in range(nbytes >> 20):
                f.write(chunk)
    return path


@pytest.mark.parametrize(
    ("member", "named"),
    [("junk.npy", r"unexpected .*'junk"), ("units.1.rsign.npy", r"'units\.1\.rsign")],
)
def test_a_highly_compressed_member_is_refused_before_it_is_read(
    packed_cases, tmp_path, member, named
):
    """500 MB of deflated zeros (a 2.6 MB file), as an extra member or in place of an array:
    refused by name from the zip directory, with the memory the read takes staying small."""
    import tracemalloc

    path = _with_member(packed_cases["a_cifar"][1], tmp_path / "bomb.s2bnn", member, 500 << 20)
    assert path.stat().st_size < 4 << 20
    tracemalloc.start()
    try:
        with pytest.raises(PackedFormatError, match=named):
            load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, peak


def test_a_member_is_read_only_up_to_what_its_header_says(packed_cases, tmp_path):
    """An .npy header that declares another shape than the specification's: refused before the
    data is read; the right arrays with any other dtype too."""
    net = packed_cases["a_cifar"][1]
    arrays = dict(
        arrays_dict(net),
        **{"units.2.affine": arrays_dict(net)["units.2.affine"].astype(np.float64)},
    )
    with pytest.raises(PackedFormatError, match=r"'units\.2\.affine'.*float32.*float64"):
        load(_rewrite(net, tmp_path / "dtype.s2bnn", arrays=arrays))
    arrays = dict(arrays_dict(net), **{"stem.affine": np.zeros((2, 1000), np.float32)})
    with pytest.raises(PackedFormatError, match=r"'stem\.affine.npy' declares \d+ bytes, more"):
        load(_rewrite(net, tmp_path / "shape.s2bnn", arrays=arrays))


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_packed_files_follow_the_umask(packed_cases, tmp_path, umask):
    net = packed_cases["a_cifar"][1]
    before = os.umask(umask)
    try:
        path = net.save(tmp_path / "net.s2bnn")
    finally:
        os.umask(before)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["net.s2bnn"]


def test_a_failed_write_leaves_no_file(packed_cases, tmp_path, monkeypatch):
    """Atomic: an error while writing leaves neither the file nor its temporary file; an
    existing file stays as it was."""
    net = packed_cases["a_cifar"][1]
    path = tmp_path / "net.s2bnn"

    def fails(f, **arrays):
        f.write(b"PK\x03\x04 part of a zip")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", fails)
    with pytest.raises(OSError, match="disk full"):
        net.save(path)
    assert list(tmp_path.iterdir()) == []
    path.write_bytes(b"old")
    with pytest.raises(OSError, match="disk full"):
        net.save(path, force=True)
    assert path.read_bytes() == b"old" and list(tmp_path.iterdir()) == [path]


# ---------------------------------------------------------------------------------- bounds


def _broken(model: nn.Module, path: str, value: float) -> nn.Module:
    """``model`` with one value of its parameter or buffer ``path`` set to ``value``."""
    module, _, tensor = path.rpartition(".")
    with torch.no_grad():
        getattr(model.get_submodule(module), tensor).view(-1)[1] = value
    return model


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("blocks.2.conv3x3.bn.running_var", np.nan),
        ("blocks.0.conv1x1.0.bn.running_mean", np.inf),
        ("blocks.1.conv3x3.conv.weight", np.nan),
        ("blocks.3.act1x1.prelu.weight", -np.inf),
        ("stem.0.weight", np.nan),
        ("blocks.4.conv1x1.0.conv.input_quantizer.shift.bias", np.nan),
    ],
)
def test_pack_refuses_non_finite_weights_and_statistics(tmp_path, capsys, path, value):
    """Named by module path and tensor, by pack() and by ``s2bnn pack``, which writes nothing."""
    name, kwargs, _ = CASES["a_cifar"]
    model = _broken(trained_like(name, kwargs), path, value)
    module, _, tensor = path.rpartition(".")
    with pytest.raises(PackError, match=rf"'{module}': its '{tensor}' holds NaN or infinity"):
        pack(model)
    ckpt = _solo_run(tmp_path, model, name, kwargs)
    out = tmp_path / "net.s2bnn"
    assert main(["pack", str(ckpt), "-o", str(out), "--no-progress", "--check-size", "16"]) == 2
    assert f"'{module}': its '{tensor}' holds NaN" in capsys.readouterr().err
    assert not out.exists()


def test_pack_refuses_statistics_that_fold_to_nan():
    """A finite but negative BatchNorm variance: the folded array is NaN; the layer is named."""
    name, kwargs, _ = CASES["a_cifar"]
    model = _broken(trained_like(name, kwargs), "blocks.2.conv3x3.bn.running_var", -5.0)
    with pytest.raises(PackError, match=r"'blocks\.2\.conv3x3'.*'units\.\d+\.affine'"):
        pack(model)


def test_check_fails_on_another_students_weights(tmp_path, capsys):
    """The packed file of one student checked against another's checkpoint exits 2, naming the
    measured values, the bounds and the flags; its own checkpoint passes; the flags move the
    bounds."""
    from s2bnn_plugin.check.agreement import AgreementError
    from s2bnn_plugin.check.commands import check

    name, kwargs, _ = CASES["a_cifar"]
    mine, other = trained_like(name, kwargs, seed=0), trained_like(name, kwargs, seed=1)
    out = pack(mine).save(tmp_path / "mine.s2bnn")
    (tmp_path / "own").mkdir()
    (tmp_path / "theirs").mkdir()
    own = _solo_run(tmp_path / "own", mine, name, kwargs)
    theirs = _solo_run(tmp_path / "theirs", other, name, kwargs)
    common = ["--size", "32", "--batch", "8", "--repeats", "1", "--no-progress"]
    assert main(["check", str(out), "--ckpt", str(own), *common]) == 0
    capsys.readouterr()
    assert main(["check", str(out), "--ckpt", str(theirs), *common]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "cosine similarity" in err and "below the bound 0.9 (--min-cosine" in err, err
    assert "16 of 16 images (100 %) have a flipped sign bit" in err and "--max-flipped" in err
    loose = ["--min-cosine", "-1", "--max-flipped", "1"]
    assert main(["check", str(out), "--ckpt", str(theirs), *common, *loose]) == 0
    with pytest.raises(AgreementError, match=r"cosine similarity 0\.\d+, below the bound 0\.99"):
        check(out, ckpt=theirs, size=32, batch=8, repeats=1, min_cosine=0.99, progress=False)
    agree = check(out, ckpt=own, size=32, batch=8, repeats=1, progress=False)
    assert agree.min_cosine > 0.999 and agree.images == 16  # at least MIN_IMAGES


def test_pack_writes_nothing_when_the_packed_network_disagrees(tmp_path, monkeypatch, capsys):
    """A packer that returned another network (a packing bug) is caught by pack's own check."""
    from s2bnn_plugin.packing import packer as packer_module

    name, kwargs, _ = CASES["a_cifar"]
    ckpt = _solo_run(tmp_path, trained_like(name, kwargs, seed=0), name, kwargs)
    wrong = pack(trained_like(name, kwargs, seed=1))
    monkeypatch.setattr(packer_module, "pack_model", lambda model, progress=False: wrong)
    out = tmp_path / "net.s2bnn"
    assert main(["pack", str(ckpt), "-o", str(out), "--no-progress", "--check-size", "32"]) == 2
    err = capsys.readouterr().err
    assert "nothing written" in err and "--min-cosine" in err, err
    assert not out.exists() and list(tmp_path.iterdir()) == [ckpt.parent]


CHECK = ["check", "missing.s2bnn", "--no-progress"]
PACK = ["pack", "missing.ckpt", "-o", "out.s2bnn", "--no-progress"]
BENCH = ["bench", "--no-progress"]


@pytest.mark.parametrize(
    ("args", "named"),
    [
        ([*BENCH, "--batch", "0"], "--batch must be an integer in [1, 1024], got 0"),
        ([*BENCH, "--batch", "1", "-3"], "--batch must be an integer in [1, 1024], got -3"),
        ([*BENCH, "--threads", "0"], "--threads must be an integer in [1, "),
        ([*BENCH, "--threads", "100000"], "got 100000"),
        ([*BENCH, "--size", "0"], "--size must be an integer in [1, 2048], got 0"),
        ([*BENCH, "--repeats", "0"], "--repeats must be an integer in [1, 1000], got 0"),
        ([*BENCH, "--width-mult", "0"], "--width-mult must be a number in (0.0, 4.0], got 0.0"),
        ([*BENCH, "--width-mult", "nan"], "--width-mult must be a number in (0.0, 4.0], got nan"),
        ([*BENCH, "--width-mult", "inf"], "got inf"),
        ([*CHECK, "--repeats", "0"], "--repeats must be an integer in [1, 1000], got 0"),
        ([*CHECK, "--batch", "-1"], "--batch must be an integer in [1, 1024], got -1"),
        ([*CHECK, "--threads", "0"], "--threads must be an integer in [1, "),
        ([*CHECK, "--size", "-5"], "--size must be an integer in [1, 2048], got -5"),
        ([*CHECK, "--min-cosine", "1.5"], "--min-cosine must be a number in [-1.0, 1.0], got 1.5"),
        ([*CHECK, "--max-flipped", "-0.1"], "--max-flipped must be a number in [0.0, 1.0]"),
        ([*PACK, "--check-size", "0"], "--check-size must be an integer in [1, 2048], got 0"),
        ([*PACK, "--min-cosine", "nan"], "--min-cosine must be a number in [-1.0, 1.0], got nan"),
    ],
)
def test_numeric_arguments_are_checked_before_any_work(args, named, monkeypatch, capsys):
    """One line naming the value and the range, exit 2, before a file is read or a model
    built (the files named here do not exist; building a model would fail the test)."""
    import s2bnn_plugin.backbones as backbones

    def forbidden(*args, **kwargs):
        raise AssertionError("work started before the arguments were checked")

    monkeypatch.setattr(backbones, "create_backbone", forbidden)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err, err


# ---------------------------------------------------------------------------------- non-finite


def _projection_unit(net: PackedNetwork) -> int:
    return next(i for i, u in enumerate(spec_dict(net)["units"]) if u["residual"] == "projection")


@pytest.mark.parametrize(
    ("case", "array"),
    [
        ("a_cifar", "units.15.affine"),
        ("a_cifar", "units.3.activation"),
        ("a_cifar", "stem.weight"),
        ("a_cifar", "stem.affine"),
        ("r18", "proj_weight"),
        ("r18", "proj_affine"),
    ],
)
def test_nan_or_infinity_in_any_packed_float_array_is_refused_at_load(
    packed_cases, tmp_path, capsys, case, array
):
    """Not only the thresholds: NaN or infinity in any float array of a file is refused when it
    is read, naming the array, its layer and the fix (``eval`` died with a 7-frame ValueError)."""
    net = packed_cases[case][1]
    if array.startswith("proj"):
        array = f"units.{_projection_unit(net)}.{array}"
    for bad in (np.nan, -np.inf):
        values = arrays_dict(net)[array].copy()
        values.reshape(-1)[3] = bad
        path = _rewrite(
            net, tmp_path / "bad.s2bnn", arrays=dict(arrays_dict(net), **{array: values})
        )
        with pytest.raises(
            PackedFormatError, match=rf"'{re.escape(array)}' \(layer .+\) holds NaN"
        ):
            load(path)
    assert main(["eval", "--model", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and array in err and "pack it again" in err, err


# ---------------------------------------------------------------------------------- bounded reads


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, allow_pickle=False)
    return buf.getvalue()


def _spec_member(spec: dict) -> bytes:
    return _npy(np.frombuffer(json.dumps(spec).encode(), np.uint8))


def _zip(path, members: dict[str, bytes], deflated: tuple[str, ...] = ()):
    """A zip of ``members`` as given (stored, or deflated for those named), no zip64 fields."""
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data, zipfile.ZIP_DEFLATED if name in deflated else zipfile.ZIP_STORED)
    return path


def _declare(path, member: str, *, file_size: int | None = None, compress_size: int | None = None):
    """Change the sizes the zip's central directory declares for ``member`` (what a tampered
    file could say; the member's bytes stay as they are)."""
    data = bytearray(path.read_bytes())
    at = data.find(b"PK\x01\x02")
    while at >= 0:
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", data, at + 28)
        if data[at + 46 : at + 46 + name_len].decode() == member:
            if compress_size is not None:
                struct.pack_into("<I", data, at + 20, compress_size)
            if file_size is not None:
                struct.pack_into("<I", data, at + 24, file_size)
            path.write_bytes(bytes(data))
            return path
        at = data.find(b"PK\x01\x02", at + 46 + name_len + extra_len + comment_len)
    raise AssertionError(f"no member {member}")


def _peak_of_load(path) -> tuple[Exception, int]:
    """The error ``load(path)`` raises and the peak memory (tracemalloc) it took."""
    import tracemalloc

    tracemalloc.start()
    try:
        with pytest.raises(PackedFormatError) as info:
            load(path)
        return info.value, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _wide_spec(channels: int) -> dict:
    """A valid specification of one binary 3x3 unit ``channels`` wide (its weight bits alone:
    ``channels**2 * 9 / 8`` bytes, padded)."""
    return {
        "format": "s2bnn-packed",
        "format_version": FORMAT_VERSION,
        "backbone": {"name": "reactnet_a", "kwargs": {}},
        "in_channels": 3,
        "num_features": channels,
        "stem": {"kernel": 3, "stride": 1, "padding": 1, "out_channels": channels,
                 "maxpool": False, "name": "stem"},
        "units": [{"kind": "binary_conv", "name": "wide", "kernel": 3, "stride": 1,
                   "in_channels": channels, "groups": 1, "group_channels": channels,
                   "residual": "identity", "activation": False}],
    }  # fmt: skip


def _wide_members(channels: int, weight_bytes: int | None = None) -> dict[str, bytes]:
    """The members of :func:`_wide_spec`'s file; the weight member's ``.npy`` header declares
    the whole weight, its data holds ``weight_bytes`` (all of it when ``None``)."""
    specs = parse_spec(_wide_spec(channels)).array_specs()
    members = {"__spec__.npy": _spec_member(_wide_spec(channels))}
    for name, (shape, dtype) in specs.items():
        if name == "units.0.weight" and weight_bytes is not None:
            header = io.BytesIO()
            descr = np.lib.format.dtype_to_descr(dtype)
            fields = {"descr": descr, "fortran_order": False, "shape": shape}
            np.lib.format.write_array_header_1_0(header, fields)
            members[name + ".npy"] = header.getvalue() + bytes(weight_bytes)
        else:
            members[name + ".npy"] = _npy(np.zeros(shape, dtype))
    return members


def test_a_specification_over_1_mib_is_refused_unread(packed_cases, tmp_path):
    net = packed_cases["a_cifar"][1]
    spec = spec_dict(net)
    spec["backbone"] = {**spec["backbone"], "kwargs": {"note": "x" * (2 << 20)}}
    members = {"__spec__.npy": _spec_member(spec)}
    members.update({f"{k}.npy": _npy(v) for k, v in arrays_dict(net).items()})
    path = _zip(tmp_path / "spec.s2bnn", members, deflated=("__spec__.npy",))
    assert path.stat().st_size < 1 << 20
    error, peak = _peak_of_load(path)
    said = r"the specification member declares 21\d{5} bytes, more than 1048576"
    assert re.search(said, str(error)), error
    assert peak < 1 << 20, peak


def test_a_specification_implying_over_1_gib_of_arrays_is_refused_unread(tmp_path):
    """65,536 channels: one unit's weight bits alone are 4.8 GB. Refused from the
    specification, before any array member is looked at (there are none here)."""
    path = _zip(tmp_path / "wide.s2bnn", {"__spec__.npy": _spec_member(_wide_spec(65536))})
    error, peak = _peak_of_load(path)
    assert re.search(
        r"implies 4\d{9} bytes of arrays, more than this version reads \(1073741824", str(error)
    ), error
    assert peak < 1 << 20, peak


def test_a_member_declaring_more_than_its_array_needs_is_refused_unread(packed_cases, tmp_path):
    """Right header, then 8 MB more (deflated to a few kB): refused from the zip directory; and
    a member whose directory declares a compressed size its data could not need."""
    net = packed_cases["a_cifar"][1]
    members = {"__spec__.npy": _spec_member(spec_dict(net))}
    members.update({f"{k}.npy": _npy(v) for k, v in arrays_dict(net).items()})
    padded = dict(members, **{"units.0.affine.npy": members["units.0.affine.npy"] + bytes(8 << 20)})
    path = _zip(tmp_path / "long.s2bnn", padded, deflated=("units.0.affine.npy",))
    error, peak = _peak_of_load(path)
    assert re.search(
        r"'units\.0\.affine\.npy' declares 83\d{5} bytes, more than the \d+ its", str(error)
    )
    assert peak < 1 << 20, peak
    path = _zip(tmp_path / "compressed.s2bnn", members)
    size = len(members["units.0.affine.npy"])
    _declare(path, "units.0.affine.npy", compress_size=size + (4 << 20))
    error, _ = _peak_of_load(path)
    assert f"declares {size + (4 << 20)} compressed bytes for {size} bytes of data" in str(error)


@pytest.mark.parametrize("how", ["fewer", "stored", "deflated"])
def test_a_short_member_is_refused_before_its_array_is_allocated(tmp_path, monkeypatch, how):
    """A unit 16,384 channels wide (its weight: 302 MB, within the format's bounds) whose weight
    member holds 1 kB: its ``.npy`` header and the zip directory disagree (``fewer``), or the
    directory declares the whole size for 1 kB of stored or deflated data (a truncated member).
    Each is refused before the 302 MB array is allocated."""
    monkeypatch.setenv("S2BNN_MEMORY_LIMIT", "4G")
    members = _wide_members(16384, weight_bytes=1024)
    member = "units.0.weight.npy"
    deflated = (member,) if how == "deflated" else ()
    path = _zip(tmp_path / "short.s2bnn", members, deflated=deflated)
    full = 128 + parse_spec(_wide_spec(16384)).array_specs()["units.0.weight"].nbytes
    if how != "fewer":
        _declare(path, member, file_size=full)
    error, peak = _peak_of_load(path)
    said = {
        "fewer": f"member '{member}' declares {128 + 1024} bytes, its .npy header {full}",
        "stored": f"member '{member}' holds {128 + 1024} bytes and declares {full}",
        "deflated": f"member '{member}' declares {full} bytes in",
    }[how]
    assert said in str(error), error
    assert peak < 16 << 20, peak


def test_a_member_whose_data_ends_early_is_refused(packed_cases, tmp_path):
    """Deflated data a little shorter than its directory and header declare (within what deflate
    could hold): the read stops where the data ends, naming the member."""
    net = packed_cases["a_cifar"][1]
    members = {"__spec__.npy": _spec_member(spec_dict(net))}
    members.update({f"{k}.npy": _npy(v) for k, v in arrays_dict(net).items()})
    member = "units.4.weight.npy"
    full = len(members[member])
    members[member] = members[member][: full - 512]
    path = _zip(tmp_path / "ends.s2bnn", members, deflated=(member,))
    _declare(path, member, file_size=full)
    error, _ = _peak_of_load(path)
    assert f"member '{member}' ends early (truncated file?)" in str(error), error


# ---------------------------------------------------------------------------------- check


@pytest.mark.parametrize("error", ["threshold", "scale"])
def test_check_fails_on_one_unit_packed_wrong_at_its_defaults(
    packed_cases, tmp_path, capsys, error
):
    """An otherwise correct packed file with one unit's thresholds shifted by 0.1 or its weight
    scales 10 % off (a subtle packing bug) fails ``s2bnn check --ckpt`` at its default size,
    batch and bounds, with one line; the correct file passes the same check."""
    name, kwargs, _ = CASES["a_cifar"]
    model = trained_like(name, kwargs)
    ckpt = _solo_run(tmp_path, model, name, kwargs)
    net = pack(model)
    good = net.save(tmp_path / "good.s2bnn")
    arrays = dict(arrays_dict(net))
    if error == "threshold":
        arrays["units.9.rsign"] = arrays["units.9.rsign"] + np.float32(0.1)
    else:
        affine = arrays["units.9.affine"].copy()
        affine[0] *= np.float32(1.1)
        arrays["units.9.affine"] = affine
    bad = _rewrite(net, tmp_path / "bad.s2bnn", arrays=arrays)
    assert main(["check", str(good), "--ckpt", str(ckpt), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["check", str(bad), "--ckpt", str(ckpt), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "disagrees with the float model of" in err, err
