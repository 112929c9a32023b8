"""Nothing a packed file or an option asks for can take more memory than the machine has: each
command derives what its work will take from the sizes it is given and refuses, in one line
naming the value, the cost and the limit, before it allocates it (``s2bnn_plugin.memory``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_export import CASES, _solo_run, spec_dict, trained_like

from s2bnn_plugin import kernels as K
from s2bnn_plugin.cli import main
from s2bnn_plugin.errors import UsageError
from s2bnn_plugin.memory import (
    MEMORY_LIMIT_ENV,
    MemoryLimitError,
    memory_limit,
    parse_bytes,
    require_memory,
)
from s2bnn_plugin.packing import pack
from s2bnn_plugin.runtime import load
from s2bnn_plugin.runtime.format import write_packed


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A trained-like reactnet_a (width 0.25, CIFAR stem), its checkpoint and its packed file."""
    folder = tmp_path_factory.mktemp("small")
    name, kwargs, _ = CASES["a_cifar"]
    model = trained_like(name, kwargs)
    net = pack(model)
    return model, net, net.save(folder / "small.s2bnn"), _solo_run(folder, model, name, kwargs)


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def _forbid(monkeypatch, target, name: str) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError(f"{name} ran: the work started before the memory was checked")

    monkeypatch.setattr(target, name, forbidden)


# ---------------------------------------------------------------------------------- the limit


def test_the_limit_is_the_machine_or_the_environment(monkeypatch):
    monkeypatch.delenv(MEMORY_LIMIT_ENV, raising=False)
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    default = memory_limit()
    assert 0 < default.bytes <= physical and "memory" in default.source
    assert [parse_bytes(t) for t in ("1024", "64G", "1.5k", "512MiB", "2 TB")] == [
        1024,
        64 << 30,
        1536,
        512 << 20,
        2 << 40,
    ]
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "3G")
    assert memory_limit() == (3 << 30, f"{MEMORY_LIMIT_ENV}=3G")
    with pytest.raises(MemoryLimitError) as info:
        require_memory(4 << 30, "the thing")
    message = str(info.value)
    assert message.startswith("the thing would take about 4.3 GB of memory, more than the limit")
    assert f"3.2 GB ({MEMORY_LIMIT_ENV}=3G)" in message and f"set {MEMORY_LIMIT_ENV}" in message
    require_memory(3 << 30, "the thing")  # at the limit: allowed
    for bad in ("lots", "-5G", "0", "nan", "inf"):
        monkeypatch.setenv(MEMORY_LIMIT_ENV, bad)
        with pytest.raises(UsageError, match=f"{MEMORY_LIMIT_ENV}={bad!r} is not a size"):
            memory_limit()


# ------------------------------------------------------------------------ what a file says


def _with_kwargs(net, path: Path, **changes) -> Path:
    """``net``'s file with its spec's backbone kwargs changed (its arrays untouched)."""
    spec = spec_dict(net)
    spec["backbone"] = {**spec["backbone"], "kwargs": {**spec["backbone"]["kwargs"], **changes}}
    return write_packed(path, spec, net.model.named_arrays())


def test_a_file_naming_width_mult_64_is_refused_before_its_twin_is_built(
    small, tmp_path, capsys, monkeypatch
):
    """A few hundred kB of file whose spec says ``width_mult: 64``: ``s2bnn check`` (which rebuilds
    the float twin from the spec) refuses it from the parameter count on PyTorch's meta device,
    before any real tensor of the twin is allocated (it reached 18.8 GB before)."""
    import s2bnn_plugin.backbones as backbones
    import s2bnn_plugin.checkpoints  # noqa: F401 (imported now, it keeps the real factory)
    import s2bnn_plugin.packing.unpack as unpack

    path = _with_kwargs(small[1], tmp_path / "wm64.s2bnn", width_mult=64)
    assert path.stat().st_size < 400_000
    real = backbones.create_backbone

    def meta_only(*args, **kwargs):
        assert torch.empty(0).device.type == "meta", "a real model was built"
        return real(*args, **kwargs)

    for module in (backbones, unpack):  # the twin's own name for it, and the counting's
        monkeypatch.setattr(module, "create_backbone", meta_only)
    assert main(["check", str(path), "--size", "32", "--no-progress"]) == 2
    err = _one_line(capsys)
    assert "float twin of the file's backbone reactnet_a(" in err and "'width_mult': 64" in err
    assert "would take about" in err and "GB of memory, more than the limit" in err
    assert MEMORY_LIMIT_ENV in err


def test_the_refusal_takes_little_time_and_memory(small, tmp_path):
    """The same, as ``s2bnn check`` runs it, in a process of its own: its peak memory (torch
    imported) stays far below the gigabytes the file asks for, and the refusal itself (the
    modules the command uses imported first) takes well under a second. The peak is the
    process's own (``VmHWM``): Linux's ``ru_maxrss`` also counts the parent's peak when the child
    was started by ``vfork``, as ``subprocess`` does."""
    path = _with_kwargs(small[1], tmp_path / "wm64.s2bnn", width_mult=64)
    code = (
        "import resource, sys, time; import numba, torch; from s2bnn_plugin.cli import main\n"
        "import s2bnn_plugin.check.commands, s2bnn_plugin.packing.unpack\n"
        "import s2bnn_plugin.bench.timing, s2bnn_plugin.bench.tables, s2bnn_plugin.packing.report\n"
        "t = time.perf_counter(); rc = main(sys.argv[1:]); t = time.perf_counter() - t\n"
        "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024\n"
        "status = open('/proc/self/status').read() if sys.platform == 'linux' else ''\n"
        "hwm = [int(l.split()[1]) * 1024 for l in status.splitlines() if l.startswith('VmHWM')]\n"
        "peak = hwm[0] if hwm else peak\n"
        "print(rc, t, peak)"
    )
    args = [sys.executable, "-c", code, "check", str(path), "--size", "32", "--no-progress"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    rc, seconds, peak = done.stdout.split()
    assert rc == "2" and "more than the limit" in done.stderr, done.stderr
    assert float(seconds) < 1.0, seconds
    assert int(peak) < 1_000_000_000, peak  # torch imported; the file asks for 463 GB


def test_a_file_whose_arrays_exceed_the_limit_is_refused_before_they_are_read(small, monkeypatch):
    import s2bnn_plugin.runtime.format as fmt

    read, real = [], fmt._read_member

    def reading(zf, info, *args):
        read.append(info.filename)
        return real(zf, info, *args)

    monkeypatch.setattr(fmt, "_read_member", reading)
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "64K")
    with pytest.raises(MemoryLimitError, match=r"small\.s2bnn: its arrays .* would take about"):
        load(small[2])
    assert read == ["__spec__.npy"]  # the specification only: no array was read


# ---------------------------------------------------------------------------------- options


def test_pack_refuses_a_backbone_too_large_from_args_json_or_the_flag(small, tmp_path, capsys):
    """``width_mult`` 64 (out of memory before) and 1e300 (a TypeError traceback before) in
    ``args.json`` or ``--backbone-kwargs``: one line naming the source and the value; nothing
    written."""
    _, _, _, ckpt = small
    args_json = ckpt.parent / "args.json"
    original = args_json.read_text()
    out = tmp_path / "out.s2bnn"
    common = [str(ckpt), "-o", str(out), "--no-progress", "--check-size", "16"]
    try:
        for width, said in ((64, "would take about"), (1e300, "its layers would be too large")):
            args = json.loads(original)
            args["backbone"]["kwargs"]["width_mult"] = width
            args_json.write_text(json.dumps(args))
            assert main(["pack", *common]) == 2
            err = _one_line(capsys)
            assert str(args_json) in err and f"'width_mult': {width}" in err and said in err
        args_json.write_text(original)
        flag = ["--backbone-kwargs", '{"width_mult": 64, "cifar": true}']
        assert main(["pack", *common, *flag]) == 2
        err = _one_line(capsys)
        said = "s2bnn pack: --backbone-kwargs: the backbone reactnet_a({'width_mult': 64,"
        assert err.startswith(said) and "would take about 462.9 GB of memory" in err, err
    finally:
        args_json.write_text(original)
    assert not out.exists()


def test_check_refuses_a_batch_and_size_that_do_not_fit_before_any_work(small, capsys, monkeypatch):
    """``--batch 1024 --size 2048`` (each in range) asks for the random input alone of 51.5 GB:
    refused before the float model is built or the input drawn."""
    import s2bnn_plugin.check.agreement as agreement
    import s2bnn_plugin.packing as packing

    monkeypatch.setenv(MEMORY_LIMIT_ENV, "16G")
    _forbid(monkeypatch, packing, "float_twin")
    _forbid(monkeypatch, agreement, "agreement")
    args = ["check", str(small[2]), "--batch", "1024", "--size", "2048", "--no-progress"]
    assert main(args) == 2
    err = _one_line(capsys)
    assert "--batch 1024 random images of --size 2048 px would take about" in err, err
    assert f"the limit of 17.2 GB ({MEMORY_LIMIT_ENV}=16G)" in err


def test_bench_and_eval_refuse_a_batch_the_engines_cannot_hold(small, capsys, monkeypatch):
    import s2bnn_plugin.bench.timing as timing
    import s2bnn_plugin.evaluation.command as command

    monkeypatch.setenv(MEMORY_LIMIT_ENV, "2G")
    _forbid(monkeypatch, timing, "end_to_end")
    args = ["bench", "--width-mult", "0.25", "--size", "2048", "--batch", "1", "64"]
    assert main([*args, "--threads", "1", "--no-progress"]) == 2
    assert "timing --batch 64 images of --size 2048 px would take about" in _one_line(capsys)
    _forbid(monkeypatch, command, "resolve_dataset")
    args = ["eval", "--model", str(small[2]), "--size", "2048", "--batch-size", "256"]
    assert main([*args, "--no-progress"]) == 2
    err = _one_line(capsys)
    assert "features of --batch-size 256 images of --size 2048 px would take about" in err


def test_the_engine_refuses_buffers_over_the_limit_before_compiled_code(small, monkeypatch):
    """A caller's batch the packed engine's buffers cannot hold (its input already allocated):
    refused before any kernel runs; under the limit, the same call works."""
    net = small[1]
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "256K")
    for name in ("conv_nchw_bn", "pack_signs", "binary_conv_fused", "global_avgpool"):
        _forbid(monkeypatch, K, name)
    with pytest.raises(MemoryLimitError, match=r"the packed engine's buffers for \d images of 64"):
        net(x)
    monkeypatch.undo()
    assert net(x).shape == (2, net.num_features)


def _arrays(value):
    """The numpy arrays in ``value``, however deep in tuples (a unit's prepared arguments hold
    the weights as one ``BinaryWeights``)."""
    if isinstance(value, np.ndarray):
        yield value
    elif isinstance(value, tuple):
        for item in value:
            yield from _arrays(item)


def test_memory_needed_covers_what_the_engine_allocates(small):
    """The estimate bounds what the engine really holds after a call: every buffer it keeps
    (the maps' two shared buffers counted once), the arrays in the kernels' layouts (at most
    what the model says they take: layers with up to 32 input channels keep half their weight
    words) and the features."""
    from s2bnn_plugin.runtime import PackedNetwork

    for n, size in ((1, 32), (5, 45), (3, 224)):
        net = PackedNetwork(small[1].model)
        features = net(np.zeros((n, 3, size, size), np.float32))
        owners = {}
        for buf in net._workspaces.values():
            for a in (buf.stem_conv, *buf.maps, *buf.bits, *buf.scratch):
                if a is not None:
                    owner = a if a.base is None else a.base
                    owners[id(owner)] = owner.nbytes
        prepared = sum(a.nbytes for p in net._prepared_units() for a in _arrays(p))
        # the bound is the largest layout any variant makes (avx2 splits words into nibbles):
        # within 1.25x of that layout (narrow layers take less), within 2x of any other
        limit = 1.25 if net.variant.wide == "nibbles" else 2.0
        assert prepared <= net.model.prepared_bytes <= limit * prepared
        held = sum(owners.values()) + prepared + features.nbytes
        assert held <= net.memory_needed(n, size, size), (n, size)
