"""The one writer of output files (s2bnn_plugin.files): paths checked before the work, outputs
created exclusively unless forced, whole or not at all, temporaries removed on every exit Python
sees (exceptions, KeyboardInterrupt, SIGTERM), groups of files written together or not at all."""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from process_utils import check_read_only_holds, run_python

from s2bnn_plugin import files
from s2bnn_plugin.files import (
    OutputError,
    atomic_file,
    atomic_files,
    atomic_open,
    check_output,
    is_partial,
    write_text,
)


def _entries(folder):
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------------------- check_output


def test_check_output_accepts_a_new_file_and_returns_its_path(tmp_path):
    assert check_output(tmp_path / "new.bin") == tmp_path / "new.bin"
    assert _entries(tmp_path) == []  # checking writes nothing


def test_check_output_refuses_an_existing_file_unless_forced(tmp_path):
    out = tmp_path / "out.s2bnn"
    out.write_text("keep")
    with pytest.raises(OutputError, match=rf"^-o {out} exists; pass --force to overwrite it$"):
        check_output(out, option="-o")
    assert check_output(out, force=True) == out


def test_check_output_refuses_a_folder_even_when_forced(tmp_path):
    for force in (False, True):
        with pytest.raises(OutputError, match=rf"-o {tmp_path} is a folder; give a file name"):
            check_output(tmp_path, option="-o", force=force)


def test_check_output_refuses_a_missing_folder(tmp_path):
    out = tmp_path / "no" / "out.json"
    with pytest.raises(OutputError, match=r"the folder .*no does not exist; create it first"):
        check_output(out, option="--json")


def test_check_output_refuses_a_dangling_symlink_unless_forced(tmp_path):
    link = tmp_path / "out.s2bnn"
    link.symlink_to(tmp_path / "gone")
    with pytest.raises(OutputError, match="symbolic link to a missing file .*--force"):
        check_output(link)
    assert check_output(link, force=True) == link


def test_check_output_refuses_the_commands_own_input_even_when_forced(tmp_path):
    model = tmp_path / "m.s2bnn"
    model.write_bytes(b"model")
    alias = tmp_path / "alias.s2bnn"
    os.link(model, alias)  # another name for the same file
    for out in (model, tmp_path / "." / "m.s2bnn", alias):
        with pytest.raises(OutputError, match=r"is also this command's input .*m\.s2bnn"):
            check_output(out, option="--json", force=True, inputs=[model])


def test_check_output_refuses_a_name_longer_than_the_file_system_allows(tmp_path):
    name_max = os.pathconf(tmp_path, "PC_NAME_MAX")
    long = tmp_path / ("x" * (name_max + 1))
    with pytest.raises(OutputError, match=rf"is {name_max + 1} bytes long, more than the"):
        check_output(long, option="-o")
    assert check_output(tmp_path / ("x" * 250)) == tmp_path / ("x" * 250)


def test_check_output_refuses_a_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        check_read_only_holds(str(folder))
        code = "from s2bnn_plugin.files import check_output; import sys; check_output(sys.argv[1])"
        proc = run_python(code, str(folder / "out.s2bnn"))
    finally:
        folder.chmod(0o755)
    assert proc.returncode != 0
    assert f"the folder {folder} is not writable; give a path in a folder" in proc.stderr


# ---------------------------------------------------------------------------- atomic_file


def test_atomic_file_moves_the_whole_file_into_place(tmp_path):
    out = tmp_path / "out.bin"
    with atomic_file(out) as tmp:
        assert tmp.parent == tmp_path and is_partial(tmp) and tmp.is_file()
        tmp.write_bytes(b"whole")
        assert not out.exists()  # nothing at the target until the block ends
    assert out.read_bytes() == b"whole" and _entries(tmp_path) == ["out.bin"]


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_file_gives_the_mode_of_any_new_file(tmp_path, umask):
    before = os.umask(umask)
    try:
        path = write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(before)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_a_failed_write_leaves_the_target_as_it_was_and_no_temporary(tmp_path, error):
    out = tmp_path / "out.bin"
    with pytest.raises(type(error)), atomic_file(out) as tmp:
        tmp.write_bytes(b"half")
        raise error
    assert _entries(tmp_path) == []
    out.write_bytes(b"old")
    with pytest.raises(type(error)), atomic_file(out, force=True) as tmp:
        tmp.write_bytes(b"half")
        raise error
    assert out.read_bytes() == b"old" and _entries(tmp_path) == ["out.bin"]


@pytest.mark.parametrize("appears", ["file", "dangling symlink", "folder"])
def test_what_appears_at_the_target_while_writing_is_never_replaced(tmp_path, appears):
    out = tmp_path / "out.bin"
    occupied = r"out\.bin: a (file|folder|symbolic link) is there now, which s2bnn pack does not"
    with pytest.raises(OutputError, match=occupied):
        with atomic_file(out, what="s2bnn pack") as tmp:
            tmp.write_bytes(b"new")
            if appears == "file":
                out.write_bytes(b"theirs")
            elif appears == "folder":
                out.mkdir()
            else:
                out.symlink_to(tmp_path / "missing")
    assert _entries(tmp_path) == ["out.bin"]
    if appears == "file":
        assert out.read_bytes() == b"theirs"
    elif appears == "folder":
        assert out.is_dir()
    else:
        assert out.is_symlink() and os.readlink(out) == str(tmp_path / "missing")


def test_force_replaces_a_file_and_a_link_but_not_what_the_link_points_to(tmp_path):
    out = tmp_path / "out.bin"
    out.write_bytes(b"old")
    write_text(out, "new", force=True)
    assert out.read_text() == "new"
    elsewhere = tmp_path / "elsewhere.bin"
    elsewhere.write_bytes(b"untouched")
    link = tmp_path / "link.bin"
    link.symlink_to(elsewhere)
    write_text(link, "new", force=True)
    assert not link.is_symlink() and link.read_text() == "new"
    assert elsewhere.read_bytes() == b"untouched"
    with pytest.raises(OutputError, match="a folder is there now, .*move it away"):
        write_text(tmp_path, "x", force=True)
    assert _entries(tmp_path) == ["elsewhere.bin", "link.bin", "out.bin"]


def test_without_hard_links_the_target_is_still_created_exclusively(tmp_path, monkeypatch):
    """File systems without hard links (os.link fails with EPERM): the name is claimed with an
    exclusive create, then the temporary moved onto it."""

    def no_links(*args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(files.os, "link", no_links)
    out = tmp_path / "out.bin"
    write_text(out, "new")
    assert out.read_text() == "new" and _entries(tmp_path) == ["out.bin"]
    with pytest.raises(OutputError, match="a file is there now"):
        write_text(out, "newer")
    assert out.read_text() == "new" and _entries(tmp_path) == ["out.bin"]


def test_a_long_name_gets_a_temporary_that_fits(tmp_path):
    name = "x" * (os.pathconf(tmp_path, "PC_NAME_MAX") - 5)
    with atomic_file(tmp_path / name) as tmp:
        assert is_partial(tmp) and len(tmp.name) <= os.pathconf(tmp_path, "PC_NAME_MAX")
        tmp.write_bytes(b"ok")
    assert _entries(tmp_path) == [name]


def test_partial_names_are_recognised():
    assert is_partial(".out.s2bnn.0123abcd.partial")
    assert not is_partial("out.s2bnn") and not is_partial(".out.s2bnn.0123abcd.tmp")
    assert not is_partial("out.s2bnn.0123abcd.partial")  # temporaries are hidden


# ---------------------------------------------------------------------------- signals

# (Ctrl-C raises KeyboardInterrupt even where the test runs in the background, whose children
# inherit SIGINT ignored)
_WRITER = textwrap.dedent(
    """
    import signal, sys, time
    from s2bnn_plugin.files import atomic_file
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with atomic_file(sys.argv[1]) as tmp:
        tmp.write_bytes(b"part of the output")
        print(tmp, flush=True)
        time.sleep(120)
    """
)


@pytest.mark.parametrize(
    ("sig", "status"), [(signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGINT, -signal.SIGINT)]
)
def test_sigterm_and_ctrl_c_remove_the_temporary(tmp_path, sig, status):
    """SIGTERM exits with status 143 after the clean-up; Ctrl-C (KeyboardInterrupt) exits as
    Python does, by SIGINT; neither leaves the temporary nor a target."""
    out = tmp_path / "out.bin"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    tmp = proc.stdout.readline().strip()
    assert is_partial(tmp) and os.path.exists(tmp)
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == status
    assert _entries(tmp_path) == []


def test_sigkill_leaves_only_a_recognisable_temporary(tmp_path):
    """What Python cannot see: the temporary stays, hidden and named .<name>.<hex>.partial."""
    out = tmp_path / "out.bin"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(out)], stdout=subprocess.PIPE, text=True
    )
    tmp = proc.stdout.readline().strip()
    proc.kill()
    proc.wait(timeout=60)
    (left,) = tmp_path.iterdir()
    assert str(left) == tmp and is_partial(left) and left.name.startswith(".out.bin.")


def test_a_handler_set_by_the_program_is_kept(tmp_path):
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda *a: seen.append(a))
    try:
        with atomic_file(tmp_path / "a") as tmp:
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
            os.kill(os.getpid(), signal.SIGTERM)
            tmp.write_bytes(b"a")
        assert seen and signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert signal.getsignal(signal.SIGTERM) is previous
    assert (tmp_path / "a").read_bytes() == b"a"


# ---------------------------------------------------------------------------- atomic_files


def test_a_group_is_written_together(tmp_path):
    xml, bin_ = tmp_path / "m.xml", tmp_path / "m.bin"
    with atomic_files([xml, bin_]) as (tx, tb):
        assert (tx.name, tb.name) == ("m.xml", "m.bin") and is_partial(tx.parent)
        tx.write_text("<net/>")
        tb.write_bytes(b"weights")
    assert xml.read_text() == "<net/>" and bin_.read_bytes() == b"weights"
    assert _entries(tmp_path) == ["m.bin", "m.xml"]


def test_a_group_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """The second file of a group fails to move into place: the first is put back as it was
    (an old pair stays the old pair; a new pair leaves nothing)."""
    xml, bin_ = tmp_path / "m.xml", tmp_path / "m.bin"
    real_replace = os.replace

    def fails_on_bin(src, dst, *args, **kwargs):
        if str(dst) == str(bin_):
            raise OSError(errno.EIO, "I/O error")
        return real_replace(src, dst, *args, **kwargs)

    xml.write_text("old xml")
    bin_.write_bytes(b"old bin")
    monkeypatch.setattr(files.os, "replace", fails_on_bin)
    with pytest.raises(OSError, match="I/O error"), atomic_files([xml, bin_], force=True) as t:
        t[0].write_text("new xml")
        t[1].write_bytes(b"new bin")
    assert xml.read_text() == "old xml" and bin_.read_bytes() == b"old bin"
    assert _entries(tmp_path) == ["m.bin", "m.xml"]


@pytest.mark.parametrize("force", [False, True])
def test_a_folder_at_one_target_of_a_group_writes_neither(tmp_path, force):
    xml, bin_ = tmp_path / "dd.xml", tmp_path / "dd.bin"
    with pytest.raises(OutputError, match=r"dd\.bin: a folder is there now"):
        with atomic_files([xml, bin_], force=force) as (tx, tb):
            tx.write_text("<net/>")
            tb.write_bytes(b"weights")
            bin_.mkdir()  # appears while the group is written
    assert _entries(tmp_path) == ["dd.bin"] and bin_.is_dir()


def test_a_file_appearing_at_one_target_of_a_group_writes_neither(tmp_path):
    xml, bin_ = tmp_path / "m.xml", tmp_path / "m.bin"
    with pytest.raises(OutputError, match=r"m\.bin: a file is there now, .* --force"):
        with atomic_files([xml, bin_]) as (tx, tb):
            tx.write_text("<net/>")
            tb.write_bytes(b"weights")
            bin_.write_bytes(b"theirs")
    assert _entries(tmp_path) == ["m.bin"] and bin_.read_bytes() == b"theirs"


def test_atomic_open_gives_an_open_file_that_lands_whole(tmp_path):
    out = tmp_path / "a.npy"
    with atomic_open(out) as f:
        np.save(f, np.arange(3))
        assert not out.exists() and not f.closed
    assert np.array_equal(np.load(out), np.arange(3)) and _entries(tmp_path) == ["a.npy"]
