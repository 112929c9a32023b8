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
import zipfile

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pack_utils import assert_accumulations_exact
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
    monkeypatch.setattr(network_module, "CACHE_BYTES", 1)  # one image per chunk
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
    write_packed(path, spec or net.spec, arrays or net.arrays)
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
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    state = {f"backbone.{k}": v for k, v in model.state_dict().items()}
    state["projector.0.weight"] = torch.zeros(2, 2)
    torch.save({"state_dict": state, "epoch": 1}, run / "last.ckpt")
    (run / "args.json").write_text(json.dumps({"backbone": {"name": name, "kwargs": kwargs}}))
    return run / "last.ckpt"


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
    assert "agreement with the float model" in text and "flipped sign bit: 0/2" in text
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
