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

import json
import os
import stat
import zipfile

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pack_utils import assert_accumulations_exact, solo_checkpoint
from torch import nn

from s2bnn_plugin import kernels as K
from s2bnn_plugin.backbones import create_backbone
from s2bnn_plugin.cli import main
from s2bnn_plugin.export import (
    FORMAT_VERSION,
    PackedFormatError,
    PackedNetwork,
    PackError,
    load,
    pack,
)
from s2bnn_plugin.export import network as network_module
from s2bnn_plugin.export.format import SPEC_KEY, write_packed

CASES = {
    "a_cifar": ("reactnet_a", {"width_mult": 0.25, "cifar": True}, 32),
    "a_odd": ("reactnet_a", {"width_mult": 0.3}, 45),
    "r18": ("reactnet18", {"width_mult": 0.25}, 37),
    "r18_cifar": ("reactnet18", {"width_mult": 0.2, "cifar": True}, 15),
}


def trained_like(name: str, kwargs: dict, seed: int = 0) -> nn.Module:
    """A backbone with non-default statistics and shifts, as after training (eval mode)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = create_backbone(name, **kwargs)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.3, generator=g)
                m.running_var.uniform_(0.5, 2, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0, 0.3, generator=g)
        for n, p in model.named_parameters():
            if n.endswith(".shift.bias") or ".shift_in." in n or ".shift_out." in n:
                p.normal_(0, 0.2, generator=g)
            elif "prelu" in n:
                p.uniform_(-0.2, 0.5, generator=g)
    return model.eval()


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


def test_the_first_run_says_it_compiles_the_kernels(packed_cases, monkeypatch, caplog):
    """Once per process, before compiled code runs, and only when the kernels' cache lacks the
    fused driver (the first packed run after an install or upgrade stalls about 30 seconds)."""
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
    twin = net.to_torch()
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
    assert again.spec == net.spec and set(again.arrays) == set(net.arrays)
    for k, v in net.arrays.items():
        np.testing.assert_array_equal(again.arrays[k], v)
    x = _images(2, size).numpy()
    np.testing.assert_array_equal(again(x), net(x))
    assert again.num_features == net.num_features and again.backbone_kwargs == net.backbone_kwargs


def test_pickle(packed_cases):
    import pickle

    _, net, size = packed_cases["r18_cifar"]
    x = _images(2, size).numpy()
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(net))(x), net(x))


def test_packed_file_is_at_most_a_twentieth(tmp_path):
    from s2bnn_plugin.export.report import file_sizes

    model = create_backbone("reactnet_a").eval()
    packed, fp32 = file_sizes(pack(model), model)
    assert packed * 20 <= fp32, (packed, fp32)


@pytest.fixture(scope="module")
def saved(packed_cases, tmp_path_factory):
    path = tmp_path_factory.mktemp("saved") / "net.s2bnn"
    packed_cases["a_cifar"][1].save(path)
    return path


def _same(net: PackedNetwork, reference: PackedNetwork) -> bool:
    return net.spec == reference.spec and all(
        np.array_equal(net.arrays[k], v) for k, v in reference.arrays.items()
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
    write_packed(path, spec or net.spec, arrays or net.arrays, force=True)
    return path


def test_newer_version_and_invalid_contents(packed_cases, tmp_path):
    net = packed_cases["a_cifar"][1]
    newer = dict(net.spec, format_version=FORMAT_VERSION + 1)
    with pytest.raises(PackedFormatError, match="newer s2bnn-plugin"):
        load(_rewrite(net, tmp_path / "newer.s2bnn", spec=newer))
    with pytest.raises(PackedFormatError, match="not an s2bnn packed network"):
        load(_rewrite(net, tmp_path / "other.s2bnn", spec=dict(net.spec, format="x")))
    arrays = dict(net.arrays)
    del arrays["units.3.affine"]
    with pytest.raises(PackedFormatError, match="missing.*units.3.affine"):
        load(_rewrite(net, tmp_path / "missing.s2bnn", arrays=arrays))
    arrays = dict(net.arrays, **{"units.0.rsign": net.arrays["units.0.rsign"][:, :-1]})
    with pytest.raises(PackedFormatError, match="units.0.rsign"):
        load(_rewrite(net, tmp_path / "shape.s2bnn", arrays=arrays))
    for bad in (np.nan, np.inf):  # the kernels compare against -thr: finite shifts only
        rsign = net.arrays["units.2.rsign"].copy()
        rsign[0, 1] = bad
        arrays = dict(net.arrays, **{"units.2.rsign": rsign})
        with pytest.raises(PackedFormatError, match="units.2.rsign.*NaN or infinity"):
            load(_rewrite(net, tmp_path / "nonfinite.s2bnn", arrays=arrays))
    arrays = dict(net.arrays, extra=np.zeros(3))
    with pytest.raises(PackedFormatError, match="unexpected"):
        load(_rewrite(net, tmp_path / "extra.s2bnn", arrays=arrays))
    weight = net.arrays["units.0.weight"].copy()
    weight[:] = np.uint64(2**64 - 1)  # 8 input channels: bits past them must be zero
    arrays = dict(net.arrays, **{"units.0.weight": weight})
    with pytest.raises(PackedFormatError, match="past in_channels"):
        load(_rewrite(net, tmp_path / "bits.s2bnn", arrays=arrays))
    units = [dict(u) for u in net.spec["units"]]
    units[1]["in_channels"] += 1
    with pytest.raises(PackedFormatError, match="in_channels"):
        load(_rewrite(net, tmp_path / "chain.s2bnn", spec=dict(net.spec, units=units)))
    (tmp_path / "text.s2bnn").write_text("hello")
    with pytest.raises(PackedFormatError, match="not a readable"):
        load(tmp_path / "text.s2bnn")
    np.save(tmp_path / "array.npy", np.zeros(3))
    with pytest.raises(PackedFormatError):
        load(tmp_path / "array.npy")
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "none.s2bnn")


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
    [("kernel", 3.0), ("kernel", True), ("stride", 2.0), ("stride", True), ("name", 7)],
)
def test_spec_fields_are_integers_not_floats_or_bools(packed_cases, tmp_path, field, value):
    """``3.0 == 3`` and ``True == 1`` in Python: the file check compares types, not values."""
    net = packed_cases["a_cifar"][1]
    units = [dict(u) for u in net.spec["units"]]
    # a unit where the value is the same number, of another JSON type
    i = next(j for j, u in enumerate(units) if field == "name" or u[field] == value)
    units[i][field] = value
    path = _rewrite(net, tmp_path / "typed.s2bnn", spec=dict(net.spec, units=units))
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
    arrays = dict(net.arrays, **{"units.2.affine": net.arrays["units.2.affine"].astype(np.float64)})
    with pytest.raises(PackedFormatError, match=r"'units\.2\.affine'.*float32.*float64"):
        load(_rewrite(net, tmp_path / "dtype.s2bnn", arrays=arrays))
    arrays = dict(net.arrays, **{"stem.affine": np.zeros((2, 1000), np.float32)})
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
    from s2bnn_plugin.bench.commands import check
    from s2bnn_plugin.export.commands import AgreementError

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
    from s2bnn_plugin.export import packer as packer_module

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
