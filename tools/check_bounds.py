"""Measure what ``s2bnn check``'s agreement bounds must separate: correct packings against wrong
students, image by image.

Run: ``python tools/check_bounds.py`` (about an hour on one core of a busy 2-core machine;
``--quick`` for a minute; ``--only "reactnet_a 1" --sizes 448`` for one model and size). For
every model, the packed network's features are compared with a float model's on random images
(``torch.randn``, as ``check`` does), and per image it records the cosine similarity, the
relative difference (``max |packed - float| / max |float|``, as ``check.agreement.agreement``)
and whether that exceeds ``FLIP_RELATIVE`` (a flipped sign bit).

- correct: a model packed and compared with itself: the test backbones (reactnet_a and
  reactnet18 at widths 0.2-0.3, the tiny backbone of tests/test_pack_rules.py; 256 images per
  case) and reactnet18 and reactnet_a at width 1 (96 images, 16 at 448 px), each with random
  weights and randomised BatchNorm statistics, shifts and slopes (as after training), at
  several input sizes; also the same with the default statistics of a freshly built model;
- another seed: the packed network of one such model against the float model of another
  (another student of the same architecture);
- one layer swapped: the float model against the packed network of a copy whose one binary
  convolution took the other seed's weights, every binary convolution in turn (the most
  similar is reported: the hardest wrong student to catch);
- ``--students A.ckpt B.ckpt ...``: trained checkpoints (args.json beside them): each packed
  against its own float model (correct), and against the others' (another seed).

It prints, per case, the lowest per-image cosine of correct packings with the share of images
with a flip, and the highest per-image cosine of wrong students with their lowest relative
difference: the bounds in ``s2bnn_plugin/check/agreement.py`` and docs/cpu-engine.md come from
these figures.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tiny test backbone, as_trained

from pack_utils import as_trained  # noqa: E402

from s2bnn_plugin.backbones import BackboneConfig, create_backbone  # noqa: E402
from s2bnn_plugin.backbones.blocks import ResidualBinaryConv  # noqa: E402
from s2bnn_plugin.check.agreement import FLIP_RELATIVE  # noqa: E402
from s2bnn_plugin.packing import pack  # noqa: E402


def build(name: str, kwargs: dict, seed: int, trained: bool) -> nn.Module:
    torch.manual_seed(seed)
    if name == "tiny_reactnet":
        from test_pack_rules import TinyReActNet

        model = TinyReActNet(BackboneConfig.from_kwargs("tiny_reactnet", kwargs))
    else:
        model = create_backbone(name, **kwargs)
    return as_trained(model, seed) if trained else model.eval()


@dataclass
class PerImage:
    cosine: np.ndarray
    relative: np.ndarray

    @property
    def flipped(self) -> np.ndarray:
        return ~(self.relative <= FLIP_RELATIVE)


def compare(reference: np.ndarray, packed: np.ndarray) -> PerImage:
    r, g = reference.astype(np.float64), packed.astype(np.float64)
    cos = (r * g).sum(1) / (np.linalg.norm(r, axis=1) * np.linalg.norm(g, axis=1) + 1e-300)
    rel = np.abs(r - g).max(1) / (np.abs(r).max(1) + 1e-12)
    return PerImage(cos, rel)


def features(model: nn.Module, x: torch.Tensor, chunk: int = 16) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([model(c) for c in x.split(chunk)]).numpy()


def binary_convs(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, ResidualBinaryConv)]


def swapped(model: nn.Module, other: nn.Module, path: str) -> nn.Module:
    """``model`` with the binary convolution at ``path`` taking ``other``'s weights."""
    out = copy.deepcopy(model)
    mods, theirs = dict(out.named_modules()), dict(other.named_modules())
    with torch.no_grad():
        mods[path].conv.weight.copy_(theirs[path].conv.weight)
    return out


LEVELS = (1e-4, 1e-3, 1e-2, 2e-2, 5e-2)  # relative differences whose image shares are printed


def line(case: str, what: str, per: PerImage) -> str:
    shares = " | ".join(f"{100 * np.mean(per.relative > t):.1f} %" for t in LEVELS)
    return (
        f"| {case} | {what} | {len(per.cosine)} | {per.cosine.min():.6f} | "
        f"{per.cosine.max():.6f} | {per.relative.min():.1e} | {per.relative.max():.1e} | {shares} |"
    )


HEADER = (
    "| model, size | compared | images | lowest cosine | highest cosine | smallest rel. diff. | "
    "largest rel. diff. | "
    + " | ".join(f"images > {t:g}" for t in LEVELS)
    + " |\n|---|---|"
    + "--:|" * (5 + len(LEVELS))
)


def _tag(name: str, kwargs: dict) -> str:
    return f"{name} {kwargs.get('width_mult'):.2g}{' cifar' if kwargs.get('cifar') else ''}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer images and sizes")
    ap.add_argument("--students", nargs="*", default=[], help="trained checkpoints to compare")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", default="", help="only the models whose name contains this")
    ap.add_argument("--sizes", type=int, nargs="*", help="these input sizes instead")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import numba

    numba.set_num_threads(args.threads)
    n_small, n_large, n_huge = (32, 8, 4) if args.quick else (256, 96, 16)
    cases = [
        ("reactnet_a", {"width_mult": 0.25, "cifar": True}, [16, 32, 64]),
        ("reactnet_a", {"width_mult": 0.3}, [45, 96]),
        ("reactnet18", {"width_mult": 0.25}, [37, 96]),
        ("reactnet18", {"width_mult": 0.2, "cifar": True}, [15, 32]),
        ("tiny_reactnet", {"width_mult": 2 / 3}, [19, 40]),
        ("reactnet18", {"width_mult": 1.0}, [32, 64, 224, 448]),
        ("reactnet_a", {"width_mult": 1.0}, [32, 64, 224, 448]),
    ]
    if args.quick:
        cases = [(n, k, s[:1]) for n, k, s in cases[:3]] + [cases[5][:2] + ([64],)]
    cases = [(n, k, args.sizes or s) for n, k, s in cases if args.only in _tag(n, k)]
    print(HEADER)
    for name, kwargs, sizes in cases:
        for trained in (True, False):
            mine = build(name, kwargs, 0, trained)
            other = build(name, kwargs, 1, trained)
            net = pack(mine)
            tag = _tag(name, kwargs)
            for size in sizes:
                n = n_large if size >= 128 or kwargs.get("width_mult") == 1.0 else n_small
                n = n_huge if size >= 448 else n
                x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(size))
                ref = features(mine, x)
                case = f"{tag}, {size} px" + ("" if trained else " (default statistics)")
                print(line(case, "correct", compare(ref, net(x.numpy()))), flush=True)
                if not trained:
                    continue
                print(line(case, "another seed", compare(ref, pack(other)(x.numpy()))))
                t = time.perf_counter()
                paths = binary_convs(mine)
                per = [compare(ref, pack(swapped(mine, other, p))(x.numpy())) for p in paths]
                hardest = int(np.argmin([p.relative.min() for p in per]))
                joined = PerImage(
                    np.concatenate([p.cosine for p in per]),
                    np.concatenate([p.relative for p in per]),
                )
                what = f"one layer swapped (each of {len(paths)})"
                print(line(f"{case}, hardest {paths[hardest]}", what, joined), flush=True)
                print(f"  ({time.perf_counter() - t:.0f} s for the swaps)", file=sys.stderr)
    if args.students:
        from s2bnn_plugin.checkpoints import load_backbone

        models = [load_backbone(p)[0] for p in args.students]
        nets = [pack(m) for m in models]
        size = 32
        x = torch.randn(n_small, 3, size, size, generator=torch.Generator().manual_seed(size))
        refs = [features(m, x) for m in models]
        for i, (ref, path) in enumerate(zip(refs, args.students)):
            case = f"{Path(path).name}, {size} px"
            print(line(case, "correct", compare(ref, nets[i](x.numpy()))))
            for j, net in enumerate(nets):
                if j != i:
                    other = Path(args.students[j]).name
                    print(line(f"{case} vs {other}", "another seed", compare(ref, net(x.numpy()))))


if __name__ == "__main__":
    main()
