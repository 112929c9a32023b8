"""``s2bnn setup-solo``: the pinned solo-learn tree put on sys.path, from a .tar.gz, a checkout or
a download, idempotently, and nothing half-installed when the source is bad.

These tests build small fake solo-learn trees (the three files that make a tree one) so they
need neither solo-learn nor a network; CI installs the real tree with the same command.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import urllib.error
from pathlib import Path

import pytest

from s2bnn_plugin.errors import S2BNNError
from s2bnn_plugin.solo_learn import install
from s2bnn_plugin.solo_learn.locate import is_solo_tree
from s2bnn_plugin.solo_learn.pin import COMMIT_MARKER, SOLO_COMMIT, tree_commit

OTHER = "0123456789abcdef0123456789abcdef01234567"


def _tree(root: Path) -> Path:
    (root / "solo" / "methods").mkdir(parents=True)
    (root / "solo" / "__init__.py").write_text("")
    (root / "solo" / "methods" / "__init__.py").write_text("METHODS = {}\n")
    (root / "main_pretrain.py").write_text("print('pretrain')\n")
    (root / "main_linear.py").write_text("print('linear')\n")
    return root


def _archive(tmp_path: Path, commit: str = SOLO_COMMIT, name: str | None = None) -> Path:
    top = f"solo-learn-{commit}"
    src = _tree(tmp_path / "src" / top)
    out = tmp_path / (name or f"{top}.tar.gz")
    with tarfile.open(out, "w:gz") as tar:
        tar.add(src, arcname=top)
    return out


def _git_checkout(root: Path, commit: str) -> Path:
    _tree(root)
    (root / ".git" / "refs" / "heads").mkdir(parents=True)
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (root / ".git" / "refs" / "heads" / "main").write_text(commit + "\n")
    return root


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A private cache and site-packages; solo-learn not importable from elsewhere."""
    cache = tmp_path / "cache"
    site = tmp_path / "site-packages"
    site.mkdir()
    monkeypatch.setenv("S2BNN_CACHE_DIR", str(cache))
    monkeypatch.delenv(install.SOURCE_ENV, raising=False)
    monkeypatch.setattr(install, "site_packages", lambda: site)
    monkeypatch.setattr(install, "solo_checkout", lambda: None)
    return {"cache": cache / "solo-learn", "site": site, "pth": site / install.PTH_NAME}


def _leftovers(env) -> list[str]:
    cache = env["cache"]
    return sorted(p.name for p in cache.iterdir()) if cache.is_dir() else []


def test_installs_from_an_archive_and_is_idempotent(tmp_path, env):
    archive = _archive(tmp_path)
    result = install.setup_solo(archive, log=lambda _: None)
    tree = env["cache"] / SOLO_COMMIT
    assert result.changed and result.tree == tree and result.commit == SOLO_COMMIT
    assert is_solo_tree(tree)
    assert (tree / COMMIT_MARKER).read_text().strip() == SOLO_COMMIT
    assert env["pth"].read_text().strip() == str(tree.resolve())
    before = env["pth"].stat().st_mtime_ns
    again = install.setup_solo(archive, log=lambda _: None)
    assert not again.changed and again.tree == tree
    assert env["pth"].stat().st_mtime_ns == before
    assert _leftovers(env) == [SOLO_COMMIT]  # no temporary folders left


def test_the_pth_puts_the_tree_on_sys_path(tmp_path, env):
    install.setup_solo(_archive(tmp_path), log=lambda _: None)
    code = (
        f"import site; site.addsitedir({str(env['site'])!r}); import solo.methods, sys; "
        "print(solo.methods.__file__)"
    )
    out = subprocess.run(
        [sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().startswith(str((env["cache"] / SOLO_COMMIT).resolve()))


def test_a_folder_holding_one_archive_and_the_environment_variable(tmp_path, env, monkeypatch):
    archive = _archive(tmp_path)
    folder = tmp_path / "shared"
    folder.mkdir()
    archive.rename(folder / archive.name)
    (folder / "README.md").write_text("how it was made\n")
    monkeypatch.setenv(install.SOURCE_ENV, str(folder))
    result = install.setup_solo(log=lambda _: None)
    assert result.commit == SOLO_COMMIT and is_solo_tree(result.tree)


def test_installs_from_a_checkout_at_the_pinned_commit(tmp_path, env):
    checkout = _git_checkout(tmp_path / "solo-learn", SOLO_COMMIT)
    result = install.setup_solo(checkout, log=lambda _: None)
    assert result.commit == SOLO_COMMIT and tree_commit(result.tree) == SOLO_COMMIT
    assert not (result.tree / ".git").exists()


def test_another_commit_is_reported_and_used_only_when_allowed(tmp_path, env):
    checkout = _git_checkout(tmp_path / "solo-learn", OTHER)
    with pytest.raises(install.SoloSetupError, match=OTHER) as e:
        install.setup_solo(checkout, log=lambda _: None)
    assert "--allow-other-commit" in str(e.value) and SOLO_COMMIT in str(e.value)
    assert not env["pth"].exists() and _leftovers(env) == []
    result = install.setup_solo(checkout, allow_other_commit=True, log=lambda _: None)
    assert result.commit == OTHER and env["pth"].is_file()


def test_an_archive_at_another_commit_is_refused(tmp_path, env):
    with pytest.raises(install.SoloSetupError, match="not the pinned"):
        install.setup_solo(_archive(tmp_path, OTHER), log=lambda _: None)
    assert not env["pth"].exists() and _leftovers(env) == []


def test_a_folder_that_is_not_solo_learn(tmp_path, env):
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(install.SoloSetupError, match="not a solo-learn source tree"):
        install.setup_solo(tmp_path / "elsewhere", log=lambda _: None)
    with pytest.raises(install.SoloSetupError, match="no such file"):
        install.setup_solo(tmp_path / "missing", log=lambda _: None)
    assert not env["pth"].exists() and _leftovers(env) == []


@pytest.mark.parametrize("content", [b"not a tar at all", b"\x1f\x8b\x08\x00truncated gzip"])
def test_a_corrupt_archive_leaves_nothing_behind(tmp_path, env, content):
    bad = tmp_path / "solo-learn.tar.gz"
    bad.write_bytes(content)
    with pytest.raises(install.SoloSetupError, match="not a readable .tar.gz"):
        install.setup_solo(bad, log=lambda _: None)
    assert not env["pth"].exists() and _leftovers(env) == []


def test_an_archive_without_a_solo_tree(tmp_path, env):
    bad = tmp_path / "other.tar.gz"
    with tarfile.open(bad, "w:gz") as tar:
        data = b"hello"
        info = tarfile.TarInfo("project/README.md")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(install.SoloSetupError, match="does not hold a solo-learn source tree"):
        install.setup_solo(bad, log=lambda _: None)
    assert not env["pth"].exists() and _leftovers(env) == []


def test_no_network_says_what_to_do_offline(env, monkeypatch):
    def offline(*_, **__):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(install.urllib.request, "urlopen", offline)
    with pytest.raises(install.SoloSetupError) as e:
        install.setup_solo(log=lambda _: None)
    message = str(e.value)
    assert "could not download" in message and "--from PATH" in message
    assert install.SOURCE_ENV in message and SOLO_COMMIT in message
    assert not env["pth"].exists() and _leftovers(env) == []


def test_the_download_is_the_pinned_commit(tmp_path, env):
    archive = _archive(tmp_path)
    asked = []

    def download(url: str, dest: Path, timeout: float) -> None:
        asked.append(url)
        dest.write_bytes(archive.read_bytes())

    result = install.setup_solo(download=download, log=lambda _: None)
    assert asked == [install.SOLO_ARCHIVE_URL] and SOLO_COMMIT in asked[0]
    assert result.commit == SOLO_COMMIT and env["pth"].is_file()


def test_an_importable_solo_learn_at_another_commit(tmp_path, env, monkeypatch):
    other = _git_checkout(tmp_path / "hand-made", OTHER)
    monkeypatch.setattr(install, "solo_checkout", lambda: other)
    with pytest.raises(install.SoloSetupError, match=OTHER):
        install.setup_solo(log=lambda _: None)
    kept = install.setup_solo(allow_other_commit=True, log=lambda _: None)
    assert kept.tree == other and not kept.changed and not env["pth"].exists()
    pinned = _git_checkout(tmp_path / "pinned", SOLO_COMMIT)
    monkeypatch.setattr(install, "solo_checkout", lambda: pinned)
    assert not install.setup_solo(log=lambda _: None).changed


def test_the_command_reports_errors_on_one_line(tmp_path, env, capsys):
    from s2bnn_plugin.cli import main

    assert main(["setup-solo", "--from", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("s2bnn setup-solo: ") and "no such file" in err
    with pytest.raises(S2BNNError):  # --debug: the traceback, not the one-liner
        main(["--debug", "setup-solo", "--from", str(tmp_path / "missing")])
    assert main(["setup-solo", "--from", str(_archive(tmp_path))]) == 0
    assert "installed solo-learn" in capsys.readouterr().out
