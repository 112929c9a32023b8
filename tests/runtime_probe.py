"""Run packed networks with the plugin's runtime alone and compare their features bit for bit.

Usage: ``python runtime_probe.py CASES_DIR [--out DIR]``. ``CASES_DIR`` holds what
:func:`runtime_cases.write_cases` wrote on the machine that packed the files: ``cases.json``
and, per case, the packed file, its input batch and the features the Numba engine computed
there. For every case this runs ``runtime.load(file)(x)`` with the Numba engine and with the
numpy reference engine and compares both with the stored features (as raw float32 bits:
``-0.0`` differs from ``0.0``, NaN must be the same NaN). It prints one line per case and the
machine (``platform.machine()``), and exits 1 on any difference, 2 on bad input.

It needs only numpy, Numba and the plugin, and refuses anything that needs torch: before the
plugin is imported, a meta-path finder makes every import of torch (torchvision, lightning,
hydra, ...) raise and records it; an attempt, even one caught by the importing code, fails
the run. Only the standard library is imported before the blocker is in place.
"""

from __future__ import annotations

import argparse
import importlib.abc
import json
import platform
import sys
import traceback
from pathlib import Path

BLOCKED = (
    "torch",
    "torchvision",
    "lightning",
    "lightning_fabric",
    "pytorch_lightning",
    "torchmetrics",
    "hydra",
    "omegaconf",
    "solo",
    "timm",
)
MANIFEST = "cases.json"


class TorchBlocker(importlib.abc.MetaPathFinder):
    """Makes importing a :data:`BLOCKED` package raise, and remembers who tried."""

    def __init__(self) -> None:
        self.attempts: list[str] = []

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in BLOCKED:
            where = "".join(traceback.format_stack(limit=8)[:-1])
            self.attempts.append(f"import {fullname!r} from:\n{where}")
            raise ImportError(f"runtime_probe: the torch-free runtime imported {fullname!r}")
        return None


def block_torch() -> TorchBlocker:
    """Install the blocker first on ``sys.meta_path``; a blocked package already imported is an
    error at once."""
    already = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    if already:
        raise SystemExit(f"runtime_probe: already imported before the check: {already}")
    blocker = TorchBlocker()
    sys.meta_path.insert(0, blocker)
    return blocker


def _bits(a):
    import numpy as np

    return np.ascontiguousarray(a, np.float32).view(np.uint32)


def run_cases(folder: Path, out: Path | None) -> int:
    """Compare every case in ``folder``; return the number of cases that differ."""
    import numpy as np

    from s2bnn_plugin import runtime

    manifest = json.loads((folder / MANIFEST).read_text())
    keys = ("file", "input", "features")
    files = [folder / case[key] for case in manifest["cases"] for key in keys]
    missing = [str(f) for f in files if not f.is_file()]
    if missing or not manifest["cases"]:
        raise SystemExit(
            f"runtime_probe: {folder / MANIFEST} names missing files {missing} or no cases: "
            "write the folder again with runtime_cases.write_cases"
        )
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    header = f"{'case':<14} {'backbone':<14} {'input':<16} {'features':<10} numba  numpy"
    print(header)
    differ = 0
    for case in manifest["cases"]:
        net = runtime.load(folder / case["file"])
        x = np.load(folder / case["input"], allow_pickle=False)
        stored = np.load(folder / case["features"], allow_pickle=False)
        got = {"numba": net(x), "numpy": net(x, engine="numpy")}
        same = {
            k: v.shape == stored.shape and np.array_equal(_bits(v), _bits(stored))
            for k, v in got.items()
        }
        differ += not all(same.values())
        marks = "  ".join(f"{'equal' if same[k] else 'DIFFER':<5}" for k in ("numba", "numpy"))
        shape = "x".join(map(str, x.shape))
        print(f"{case['name']:<14} {net.backbone:<14} {shape:<16} {stored.shape[1]:<10} {marks}")
        if out is not None:
            np.save(out / f"{case['name']}.numba.npy", got["numba"])
            np.save(out / f"{case['name']}.numpy.npy", got["numpy"])
    return differ


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", type=Path, help="folder written by runtime_cases.write_cases")
    parser.add_argument("--out", type=Path, help="also write the computed features here")
    args = parser.parse_args(argv)
    if not (args.cases / MANIFEST).is_file():
        print(
            f"runtime_probe: no {MANIFEST} in {args.cases} (write it with "
            "runtime_cases.write_cases on the packing machine)",
            file=sys.stderr,
        )
        return 2
    blocker = block_torch()
    import numba
    import numpy as np

    print(
        f"machine: {platform.machine()}, python {platform.python_version()}, "
        f"numpy {np.__version__}, numba {numba.__version__}",
        flush=True,
    )
    differ = run_cases(args.cases, args.out)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    if blocker.attempts or loaded:
        print(
            "FAIL: the runtime tried to import what needs torch:",
            *blocker.attempts,
            loaded,
            sep="\n",
            file=sys.stderr,
        )
        return 1
    print(f"torch imported: no ({'torch' in sys.modules}); cases that differ: {differ}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
