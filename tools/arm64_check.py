"""The packed engine on aarch64, under emulation: kernel tests and a bit-for-bit comparison.

What it does (``tools/arm64-check --help``; run as root on an x86-64 Debian or Ubuntu machine):

1. packs the cases of ``tests/runtime_cases.py`` with this Python (the full install, torch
   included) and stores their inputs and this machine's Numba features;
2. builds an arm64 Debian root with ``debootstrap`` (once: reused while ``ROOT/.s2bnn-ready``
   exists), fetches numpy, Numba and llvmlite (the pins of constraints.txt) and pytest and
   hypothesis as PyPI's aarch64 wheels on this machine, builds the plugin's wheel, and
   installs them in a venv in the root (``--no-index``; the plugin with ``--no-deps``: no torch);
3. runs, in the root through ``qemu-user-static`` (binfmt), ``tests/test_kernels.py`` (the kernel
   tests, which need no torch) and ``tests/runtime_probe.py``: the Numba engine and the numpy
   reference engine on the files packed here, compared bit for bit with the features stored here.

It prints the machine the root ran on and a table per case, and exits non-zero on any failed
test or difference. The Numba cache of the root is kept (``ROOT/var/cache/s2bnn-numba``): the first
run compiles the kernels under emulation (minutes), later runs load them.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parent.parent
SUITE = "bookworm"  # Debian 12: Python 3.11, as the wheels below
PYTHON_VERSION = "3.11"
PLATFORMS = ("manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux2014_aarch64")
RUNTIME = ("numpy", "numba", "llvmlite")
TEST_TOOLS = ("pytest", "hypothesis")
READY = ".s2bnn-ready"
BINFMT = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
INSIDE = "/s2bnn-check"  # the root's work folder (recreated each run)
VENV = "/opt/s2bnn-venv"
NUMBA_CACHE = "/var/cache/s2bnn-numba"


class CheckError(Exception):
    """A set-up problem found before the work starts; the message says how to fix it."""


class Settings(NamedTuple):
    cache: Path
    mirror: str
    tests: bool


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "s2bnn-arm64"


def debian_mirror(sources: Path = Path("/etc/apt")) -> str | None:
    """The first Debian archive this machine's apt uses (not the security archive)."""
    found = []
    for f in sorted(sources.glob("sources.list.d/*.sources")):
        for stanza in f.read_text().split("\n\n"):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            suites = re.search(r"^Suites:\s*(.+)$", stanza, re.M)
            if uris and suites and "security" not in suites.group(1):
                found.append(uris.group(1))
    plain = sources / "sources.list"
    if plain.is_file():
        for line in plain.read_text().splitlines():
            m = re.match(r"\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", line)
            if m and "security" not in m.group(2):
                found.append(m.group(1))
    return next((u for u in found if "debian" in u), None)


def pins(names: tuple[str, ...]) -> list[str]:
    """``name==version`` from constraints.txt for each of ``names``."""
    text = (REPO / "constraints.txt").read_text()
    out = []
    for name in names:
        m = re.search(rf"^{re.escape(name)}==(\S+)", text, re.M)
        if not m:
            raise CheckError(f"constraints.txt pins no version of {name}")
        out.append(f"{name}=={m.group(1)}")
    return out


def preflight(args: argparse.Namespace) -> Settings:
    """Everything that can be checked before the slow steps."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        raise CheckError(f"run it on an x86-64 machine (this is {platform.machine()})")
    if os.geteuid() != 0:
        raise CheckError("needs root (debootstrap, mount, chroot): run it with sudo")
    cache = Path(args.root).expanduser().resolve() if args.root else default_cache()
    ready = (cache / "root" / READY).is_file()
    for tool in ("chroot", "mount"):
        if shutil.which(tool) is None:
            raise CheckError(f"{tool} not found on PATH (coreutils / mount)")
    if not ready and shutil.which("debootstrap") is None:
        raise CheckError("debootstrap not found: apt-get install -y debootstrap qemu-user-static")
    if not (BINFMT.is_file() and BINFMT.read_text().startswith("enabled")):
        raise CheckError(
            f"aarch64 binaries do not run here ({BINFMT} missing or disabled): "
            "apt-get install -y qemu-user-static, then update-binfmts --enable qemu-aarch64"
        )
    try:
        import torch  # noqa: F401  (packing the cases needs the full install)
    except ModuleNotFoundError:
        raise CheckError(
            f"{sys.executable} has no torch: run it with the full install's Python "
            "(pip install -c constraints.txt -e '.[dev]')"
        ) from None
    mirror = args.mirror or debian_mirror()
    if not ready and not mirror:
        raise CheckError("no Debian mirror found in /etc/apt: pass --mirror URL")
    pins(RUNTIME + TEST_TOOLS)
    return Settings(cache=cache, mirror=mirror or "", tests=not args.no_tests)


class Clock:
    """Prints each step with the time since the start."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def step(self, what: str) -> None:
        print(f"== [{time.monotonic() - self.start:6.0f} s] {what}", flush=True)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start


def run(cmd: list[str], **kwargs) -> None:
    done = subprocess.run(cmd, **kwargs)
    if done.returncode != 0:
        raise CheckError(f"failed (exit {done.returncode}): {' '.join(map(str, cmd))}")


def pack_cases(folder: Path) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    from runtime_cases import CASES, write_cases

    shutil.rmtree(folder, ignore_errors=True)
    write_cases(folder, CASES)
    print(f"   {len(CASES)} cases: {', '.join(c.name for c in CASES)}")


def make_root(cache: Path, mirror: str) -> Path:
    root = cache / "root"
    if (root / READY).is_file():
        print(f"   reusing {root}")
        return root
    partial = cache / "root.partial"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    cache.mkdir(parents=True, exist_ok=True)
    run(["debootstrap", "--arch=arm64", "--variant=minbase", "--include=python3,python3-venv",
         SUITE, str(partial), mirror])  # fmt: skip
    (partial / READY).write_text(f"{SUITE} arm64 from {mirror}\n")
    partial.rename(root)
    return root


def fetch_wheels(cache: Path) -> Path:
    """PyPI's aarch64 wheels of the pinned runtime and test tools (and their dependencies)."""
    wanted = pins(RUNTIME + TEST_TOOLS)
    folder = cache / "wheels"
    stamp = folder / ".pins"
    if stamp.is_file() and stamp.read_text().split() == wanted:
        print(f"   reusing {folder}")
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    platforms = [a for p in PLATFORMS for a in ("--platform", p)]
    run([sys.executable, "-m", "pip", "download", "-q", "--dest", str(folder), *platforms,
         "--python-version", PYTHON_VERSION, "--implementation", "cp", "--only-binary=:all:",
         *wanted])  # fmt: skip
    stamp.write_text("\n".join(wanted))
    return folder


def stage(root: Path, wheels: Path, cases: Path) -> None:
    """The root's work folder: the wheels, the plugin's wheel, the tests and the cases."""
    work = root / INSIDE.lstrip("/")
    shutil.rmtree(work, ignore_errors=True)
    (work / "tests").mkdir(parents=True)
    shutil.copytree(wheels, work / "wheels")
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(work / "dist"),
         str(REPO)], stdout=subprocess.DEVNULL)  # fmt: skip
    for name in ("conftest.py", "test_kernels.py", "runtime_probe.py"):
        shutil.copy2(REPO / "tests" / name, work / "tests" / name)
    shutil.copy2(REPO / "pyproject.toml", work / "pyproject.toml")  # pytest's markers
    shutil.copytree(cases, work / "cases")


class Mounts:
    """/proc and /dev inside the root while it runs (unmounted on the way out)."""

    def __init__(self, root: Path) -> None:
        self.points = [(["-t", "proc", "proc"], root / "proc"), (["--bind", "/dev"], root / "dev")]
        self.done: list[Path] = []

    def __enter__(self) -> Mounts:
        for opts, where in self.points:
            run(["mount", *opts, str(where)])
            self.done.append(where)
        return self

    def __exit__(self, *exc) -> None:
        for where in reversed(self.done):
            subprocess.run(["umount", "-l", str(where)], check=False)


def in_root(root: Path, command: str, check: bool = True) -> int:
    """Run the shell ``command`` in the root's work folder, in a clean environment."""
    env = {
        "PATH": f"{VENV}/bin:/usr/local/bin:/usr/bin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "NUMBA_CACHE_DIR": NUMBA_CACHE,
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    shell = f"cd {INSIDE} && {command}"
    chroot = shutil.which("chroot") or "/usr/sbin/chroot"  # found with this process's PATH
    done = subprocess.run([chroot, str(root), "/bin/sh", "-c", shell], env=env)
    if check and done.returncode != 0:
        raise CheckError(f"failed in the root (exit {done.returncode}): {command}")
    return done.returncode


def install(root: Path) -> None:
    if not (root / VENV.lstrip("/") / "bin" / "python").exists():
        in_root(root, f"/usr/bin/python3 -m venv {VENV}")
    in_root(root, f"pip install -q --no-index --find-links wheels {' '.join(RUNTIME + TEST_TOOLS)}")
    in_root(root, "pip install -q --no-deps --force-reinstall dist/*.whl")
    in_root(root, "python -c 'import platform; print(\"   python\", platform.python_version(), "
                  "\"on\", platform.machine())'")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tools/arm64-check", description=__doc__.split("\n\n")[0],
    )  # fmt: skip
    parser.add_argument("--root", help=f"cache folder (default {default_cache()})")
    parser.add_argument("--mirror", help="Debian mirror URL (default: the one apt uses here)")
    parser.add_argument("--no-tests", action="store_true", help="only the comparison")
    args = parser.parse_args(argv)
    try:
        settings = preflight(args)
        clock = Clock()
        clock.step("packing the cases on this machine (x86-64, full install)")
        pack_cases(settings.cache / "cases")
        clock.step(f"the arm64 Debian {SUITE} root (debootstrap, once)")
        root = make_root(settings.cache, settings.mirror)
        clock.step("aarch64 wheels from PyPI (once per pins)")
        wheels = fetch_wheels(settings.cache)
        clock.step("the plugin's wheel; installing numpy, numba and the plugin (no deps) there")
        stage(root, wheels, settings.cache / "cases")
        failed = []
        with Mounts(root):
            install(root)
            if settings.tests:
                clock.step("the kernel tests on aarch64 (the first run compiles: minutes)")
                pytest = "python -m pytest -v -rs -p no:cacheprovider tests/test_kernels.py"
                if in_root(root, pytest, check=False):
                    failed.append("tests/test_kernels.py")
            clock.step("the Numba and numpy engines on aarch64 against x86-64's features")
            if in_root(root, "python tests/runtime_probe.py cases", check=False):
                failed.append("the bit-for-bit comparison")
    except CheckError as e:
        print(f"arm64-check: {e}", file=sys.stderr)
        return 2
    verdict = f"FAILED: {', '.join(failed)}" if failed else "all passed"
    print(f"== arm64-check: {verdict} ({clock.elapsed:.0f} s; host {platform.machine()})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
