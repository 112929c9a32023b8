"""The commands' output paths: refused before any work when they cannot or must not be written,
created exclusively unless forced, never left half-written, and a killed save's temporary never
loaded (``s2bnn pack -o``, ``s2bnn eval --json``; ``export-openvino -o`` in
tests/test_openvino_export.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
from image_utils import make_image_folder
from pack_utils import solo_checkpoint
from process_utils import check_read_only_holds, run_python
from test_export import CASES, trained_like

from s2bnn_plugin import checkpoints
from s2bnn_plugin.cli import main
from s2bnn_plugin.files import is_partial
from s2bnn_plugin.packing import pack
from s2bnn_plugin.packing import packer as packer_module
from s2bnn_plugin.runtime import PackedFormatError, load

QUICK = ["--no-progress", "--check-size", "16"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    name, kwargs, _ = CASES["a_cifar"]
    model = trained_like(name, kwargs)
    return solo_checkpoint(tmp_path_factory.mktemp("ckpt"), model, name, kwargs)


def _no_loading(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded before the output path was checked")

    monkeypatch.setattr(checkpoints, "load_backbone", forbidden)


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize(
    ("output", "force", "message"),
    [
        ("folder", True, "is a folder; give a file name"),
        ("missing/out.s2bnn", False, "does not exist; create it first"),
        ("x" * 300, False, "the file name is 300 bytes long, more than the 255"),
        ("checkpoint", True, "is also this command's input"),
        ("dangling", False, "is a symbolic link to a missing file"),
        ("existing", False, "exists; pass --force to overwrite it"),
    ],
)
def test_pack_refuses_an_output_it_must_not_write_before_loading(
    tmp_path, ckpt, monkeypatch, capsys, output, force, message
):
    """One line naming the path and the fix, exit 2, nothing loaded and nothing written."""
    (tmp_path / "folder").mkdir()
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    (tmp_path / "existing").write_bytes(b"keep")
    out = ckpt if output == "checkpoint" else tmp_path / output
    before = sorted(os.listdir(tmp_path))
    _no_loading(monkeypatch)
    argv = ["pack", str(ckpt), "-o", str(out), *QUICK] + (["--force"] if force else [])
    assert main(argv) == 2
    err = _one_line(capsys)
    assert message in err and "-o " in err, err
    assert sorted(os.listdir(tmp_path)) == before
    assert (tmp_path / "existing").read_bytes() == b"keep" and ckpt.stat().st_size > 1000


def test_pack_into_a_read_only_folder_fails_before_loading(tmp_path):
    """The checkpoint named does not even exist: the output's folder is refused first."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        check_read_only_holds(str(folder))
        code = "import sys; from s2bnn_plugin.cli import main; sys.exit(main(sys.argv[1:]))"
        proc = run_python(code, "pack", str(tmp_path / "none.ckpt"), "-o", str(folder / "o.s2bnn"))
    finally:
        folder.chmod(0o755)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (
        f"s2bnn pack: -o {folder / 'o.s2bnn'}: the folder {folder} is not writable; give a path "
        "in a folder you can write"
    )
    assert os.listdir(folder) == []


def test_pack_writes_a_250_character_name(tmp_path, ckpt, capsys):
    """The name fits the file system (255 bytes); its temporary is shortened to fit too."""
    out = tmp_path / ("n" * 244 + ".s2bnn")
    assert len(out.name) == 250
    assert main(["pack", str(ckpt), "-o", str(out), *QUICK]) == 0
    assert os.listdir(tmp_path) == [out.name] and load(out).backbone == "reactnet_a"


@pytest.mark.parametrize("appears", ["file", "dangling symlink"])
def test_a_file_appearing_at_the_output_while_pack_runs_is_kept(
    tmp_path, ckpt, monkeypatch, capsys, appears
):
    """Without --force what appeared stays as it is (the packed network is not written); with
    --force it is replaced (a link itself, never its target)."""
    out = tmp_path / "out.s2bnn"
    real = packer_module.pack_model

    def racing(model, progress=False):
        if appears == "file":
            out.write_bytes(b"theirs")
        else:
            out.symlink_to(tmp_path / "gone")
        return real(model, progress=progress)

    monkeypatch.setattr(packer_module, "pack_model", racing)
    assert main(["pack", str(ckpt), "-o", str(out), *QUICK]) == 2
    assert f"{out}: a {'file' if appears == 'file' else 'symbolic link'} is there now" in (
        _one_line(capsys)
    )
    assert os.listdir(tmp_path) == ["out.s2bnn"]
    if appears == "file":
        assert out.read_bytes() == b"theirs"
    else:
        assert out.is_symlink() and not (tmp_path / "gone").exists()
        out.unlink()
    assert main(["pack", str(ckpt), "-o", str(out), "--force", *QUICK]) == 0
    assert load(out).backbone == "reactnet_a" and not out.is_symlink()
    assert os.listdir(tmp_path) == ["out.s2bnn"]  # the link's target was not created


# (Ctrl-C raises KeyboardInterrupt even where the test runs in the background, whose children
# inherit SIGINT ignored)
_PACK_IN_A_CHILD = textwrap.dedent(
    """
    import signal, sys, time
    import numpy as np
    from s2bnn_plugin.cli import main
    signal.signal(signal.SIGINT, signal.default_int_handler)

    def slow_savez(f, **arrays):  # a save that takes long: the signal arrives during it
        f.write(b"PK part of a zip")
        f.flush()
        print("saving", flush=True)
        time.sleep(300)

    np.savez = slow_savez
    sys.exit(main(["pack", sys.argv[1], "-o", sys.argv[2], "--no-progress", "--check-size", "16"]))
    """
)


@pytest.mark.parametrize(
    ("sig", "status"),
    [
        (signal.SIGTERM, 128 + signal.SIGTERM),
        (signal.SIGINT, -signal.SIGINT),
        (signal.SIGKILL, -signal.SIGKILL),
    ],
)
def test_a_signal_during_the_save_leaves_no_output_and_at_most_a_recognisable_temporary(
    tmp_path, ckpt, sig, status
):
    """SIGTERM and Ctrl-C remove the temporary; SIGKILL leaves .out.s2bnn.<hex>.partial, which
    ``load`` and ``s2bnn check`` refuse by name."""
    out = tmp_path / "out.s2bnn"
    proc = subprocess.Popen(
        [sys.executable, "-c", _PACK_IN_A_CHILD, str(ckpt), str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert "saving" in proc.stdout.readline()
        proc.send_signal(sig)
        assert proc.wait(timeout=120) == status
    finally:
        proc.kill()
        proc.communicate()
    left = os.listdir(tmp_path)
    if sig != signal.SIGKILL:
        assert left == []
        return
    (name,) = left
    assert is_partial(name) and name.startswith(".out.s2bnn.") and name.endswith(".partial")
    with pytest.raises(PackedFormatError, match="the temporary of a save that was killed"):
        load(tmp_path / name)


def test_check_refuses_a_killed_saves_temporary(tmp_path, ckpt, capsys):
    """A complete file under a temporary's name is refused all the same: it was never moved
    into place, so nothing says it was finished."""
    good = tmp_path / "good.s2bnn"
    assert main(["pack", str(ckpt), "-o", str(good), *QUICK]) == 0
    partial = tmp_path / ".good.s2bnn.0123abcd.partial"
    partial.write_bytes(good.read_bytes())
    capsys.readouterr()
    assert main(["check", str(partial), "--size", "16", "--batch", "1", "--no-progress"]) == 2
    assert "the temporary of a save that was killed" in _one_line(capsys)


# ---------------------------------------------------------------------------- eval --json

CLASSES = ["ant", "bee", "cat", "dog", "eel"]


@pytest.fixture(scope="module")
def packed_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval")
    name, kwargs, _ = CASES["a_cifar"]
    model = pack(trained_like(name, kwargs)).save(folder / "m.s2bnn")
    make_image_folder(folder / "data" / "train", CLASSES, per_class=4, size=12, seed=0)
    make_image_folder(folder / "data" / "val", CLASSES, per_class=2, size=12, seed=1)
    return model, folder / "data"


def _eval(model, data, json_path, *extra):
    argv = ["eval", "--model", str(model), "--data", str(data), "--size", "16"]
    return main([*argv, "--engine", "packed", "--no-progress", "--json", str(json_path), *extra])


@pytest.mark.parametrize("force", [False, True])
def test_eval_never_writes_its_json_over_the_model(packed_model, monkeypatch, capsys, force):
    """``s2bnn eval --model m.s2bnn --json m.s2bnn`` replaced the model with JSON and exited 0."""
    model, data = packed_model
    before = model.read_bytes()
    monkeypatch.setattr(
        "s2bnn_plugin.evaluation.command.load_engines",
        lambda *a: pytest.fail("the model was loaded before --json was checked"),
    )
    assert _eval(model, data, model, *(["--force"] if force else [])) == 2
    assert f"--json {model} is also this command's input" in _one_line(capsys)
    assert model.read_bytes() == before


def test_eval_json_is_created_exclusively_unless_forced(packed_model, tmp_path, capsys):
    model, data = packed_model
    report = tmp_path / "r.json"
    report.write_text("mine")
    assert _eval(model, data, report) == 2
    assert f"--json {report} exists; pass --force to overwrite it" in _one_line(capsys)
    assert report.read_text() == "mine"
    assert _eval(model, data, report, "--force") == 0
    assert json.loads(report.read_text())["model"] == str(model)
    assert os.listdir(tmp_path) == ["r.json"]
