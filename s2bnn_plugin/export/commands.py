"""``s2bnn pack``, ``s2bnn check`` and ``s2bnn bench``: typed functions the command line only
parses arguments for.

Each prints its report; user errors (missing or unreadable files, a model that cannot be packed,
an existing output) are raised as :class:`~s2bnn_plugin.errors.S2BNNError` subclasses.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from s2bnn_plugin.errors import S2BNNError, UsageError

__all__ = [
    "MAX_FLIPPED",
    "MIN_COSINE",
    "Agreement",
    "AgreementError",
    "bench",
    "check",
    "pack_checkpoint",
    "parse_kwargs",
]

MIN_COSINE = 0.9
"""Default bound: every image's packed features have at least this cosine similarity with the
float model's. Measured on correct packings of reactnet_a and reactnet18 with random weights and
randomised statistics (as after training), 32-224 px: at worst 0.9967 (1.000000 for the student
the test suite trains, at 16 px); with the default statistics of a fresh model a sign flip weighs
more, at worst 0.86 (one image in 192, reactnet18 at 64 px; 0.96 at 32 px, 0.989 at 224 px).
Another student's weights: 0.39-0.77 (16-224 px)."""

MAX_FLIPPED = 0.5
"""Default bound: at most this share of the images has a flipped sign bit (one image is always
allowed). Measured on correct packings: 4-10 % of the images at 224 px, fewer at smaller sizes;
another student's weights: every image."""

FLIP_RELATIVE = 1e-4
"""A per-image relative difference above float rounding (~1e-6): a sign bit came out
differently somewhere in that image."""

SIZE_RANGE = (1, 2048)
BATCH_RANGE = (1, 1024)
REPEATS_RANGE = (1, 1000)
MAX_WIDTH_MULT = 4.0


class AgreementError(S2BNNError, ValueError):
    """The packed network's features differ from the float model's beyond the bound."""


def parse_kwargs(text: str | None) -> dict[str, Any] | None:
    """``--backbone-kwargs`` (a JSON object) as a dict."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as e:
        raise UsageError(f"--backbone-kwargs is not JSON ({e}): {text!r}") from e
    if not isinstance(value, dict):
        raise UsageError(f"--backbone-kwargs must be a JSON object, got {text!r}")
    return value


# ---------------------------------------------------------------------------------- arguments


def _int_arg(flag: str, value: object, lo: int, hi: int, why: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise UsageError(f"{flag} must be an integer in [{lo}, {hi}]{why}, got {value!r}")
    return value


def _threads_arg(value: object) -> int:
    import numba

    most = numba.config.NUMBA_NUM_THREADS
    return _int_arg("--threads", value, 1, most, f" (this machine's {most} CPU threads)")


def _float_arg(flag: str, value: object, lo: float, hi: float, *, open_low: bool = False) -> float:
    ok = not isinstance(value, bool) and isinstance(value, int | float)
    ok = ok and (lo < value if open_low else lo <= value) and value <= hi
    if not ok:
        low = "(" if open_low else "["
        raise UsageError(f"{flag} must be a number in {low}{lo}, {hi}], got {value!r}")
    return float(value)


def _bounds_args(min_cosine: object, max_flipped: object) -> tuple[float, float]:
    return (
        _float_arg("--min-cosine", min_cosine, -1.0, 1.0),
        _float_arg("--max-flipped", max_flipped, 0.0, 1.0),
    )


# ---------------------------------------------------------------------------------- agreement


@dataclass(frozen=True)
class Agreement:
    """How the packed network's features compare with the float model's on a random batch."""

    images: int
    max_abs: float
    mean_abs: float
    feature_scale: float
    max_rel_per_image: float
    min_cosine: float  # the lowest per-image cosine similarity of the two feature vectors
    worst_image: int  # the image with that cosine similarity
    images_with_a_flip: int  # per-image relative difference above FLIP_RELATIVE (or NaN)

    @property
    def flipped_share(self) -> float:
        return self.images_with_a_flip / self.images

    def summary(self) -> str:
        return (
            f"max |diff| {self.max_abs:.3e}, mean |diff| {self.mean_abs:.3e}, feature scale "
            f"{self.feature_scale:.3e}, largest per-image relative difference "
            f"{self.max_rel_per_image:.2e}, lowest per-image cosine similarity "
            f"{self.min_cosine:.6f}; images with a flipped sign bit: "
            f"{self.images_with_a_flip}/{self.images}"
        )

    def failures(self, min_cosine: float, max_flipped: float) -> list[str]:
        """What exceeds the bounds (empty: within them). NaN features fail."""
        out = []
        if not self.min_cosine >= min_cosine:
            out.append(
                f"image {self.worst_image} has feature cosine similarity {self.min_cosine:.4f}, "
                f"below the bound {min_cosine} (--min-cosine, keyword min_cosine)"
            )
        if self.images_with_a_flip > max(1, max_flipped * self.images):
            out.append(
                f"{self.images_with_a_flip} of {self.images} images "
                f"({100 * self.flipped_share:.0f} %) have a flipped sign bit, more than the bound "
                f"{max_flipped} (--max-flipped, keyword max_flipped)"
            )
        return out


def _agreement(model: Any, net: Any, size: int, batch: int, seed: int = 0) -> Agreement:
    """Feature differences between the float model and the packed network on a random batch."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, net.in_channels, size, size, generator=gen)
    with torch.no_grad():
        ref = model.eval()(x).numpy()
    got = net(x.numpy())
    diff = np.abs(ref - got)
    rel = diff.max(axis=1) / (np.abs(ref).max(axis=1) + 1e-12)
    r64, g64 = ref.astype(np.float64), got.astype(np.float64)
    norms = np.linalg.norm(r64, axis=1) * np.linalg.norm(g64, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = (r64 * g64).sum(axis=1) / norms
    both_zero = ~np.any(r64, axis=1) & ~np.any(g64, axis=1)
    cos = np.where(both_zero, 1.0, np.where(norms == 0, 0.0, cos))
    worst = int(np.argmin(np.nan_to_num(cos, nan=-np.inf)))
    return Agreement(
        images=batch,
        max_abs=float(diff.max()),
        mean_abs=float(diff.mean()),
        feature_scale=float(np.abs(ref).mean()),
        max_rel_per_image=float(rel.max()),
        min_cosine=float(cos[worst]),
        worst_image=worst,
        images_with_a_flip=int((~(rel <= FLIP_RELATIVE)).sum()),
    )


def _require_agreement(
    agree: Agreement, what: str, reference: str, min_cosine: float, max_flipped: float
) -> None:
    failures = agree.failures(min_cosine, max_flipped)
    if failures:
        raise AgreementError(
            f"{what} disagrees with {reference} beyond the bounds: {'; '.join(failures)}. A "
            "correct packing of a trained model stays well inside both (a sign flip near a "
            "threshold moves an image's cosine similarity by less than 0.01); are these the "
            "same weights?"
        )


def pack_checkpoint(
    checkpoint: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    force: bool = False,
    backbone: str | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
    check_size: int = 64,
    min_cosine: float = MIN_COSINE,
    max_flipped: float = MAX_FLIPPED,
    progress: bool = True,
) -> Agreement:
    """``s2bnn pack CKPT -o FILE``: load, pack, check against the float model, save.

    Nothing is written when the model cannot be packed (including NaN or infinite weights or
    statistics) or when the packed network's features on 2 random images disagree with the
    float model's beyond ``min_cosine`` / ``max_flipped`` (see :func:`check`):
    :class:`AgreementError`. Returns the agreement figures."""
    check_size = _int_arg("--check-size", check_size, *SIZE_RANGE)
    min_cosine, max_flipped = _bounds_args(min_cosine, max_flipped)
    from tqdm.auto import tqdm

    from s2bnn_plugin.checkpoints import load_backbone
    from s2bnn_plugin.export.packer import pack_model

    out = Path(output)
    if out.exists() and not force:
        raise UsageError(f"{out} exists; pass --force to overwrite it")
    if not out.parent.is_dir():
        raise UsageError(f"output folder {out.parent} does not exist")
    with tqdm(total=3, desc="pack", disable=not progress) as bar:
        bar.set_postfix_str("loading checkpoint")
        model, name, kwargs = load_backbone(checkpoint, backbone, backbone_kwargs)
        bar.update()
        bar.set_postfix_str("packing")
        net = pack_model(model, progress=progress)
        bar.update()
        bar.set_postfix_str("checking against the float model")
        agree = _agreement(model, net, check_size, 2)
        bar.update()
    _require_agreement(
        agree,
        f"the packed network ({check_size} px, 2 random images; nothing written)",
        f"the float model of {checkpoint}",
        min_cosine,
        max_flipped,
    )
    net.save(out)
    from s2bnn_plugin.export.bench import file_sizes

    packed, fp32 = file_sizes(net, model)
    print(f"{name}({json.dumps(kwargs)}) -> {out}")
    print(f"  {len(net.spec['units'])} binary units, {net.num_features}-d features")
    print(
        f"  size: {packed / 1e6:.3f} MB packed vs {fp32 / 1e6:.3f} MB fp32 state dict "
        f"(1/{fp32 / packed:.1f})"
    )
    print(
        f"  features vs the float model ({check_size} px, 2 images): max |diff| "
        f"{agree.max_abs:.2e} (feature scale {agree.feature_scale:.2e}), lowest cosine "
        f"similarity {agree.min_cosine:.6f}"
    )
    return agree


def check(
    file: str | os.PathLike[str],
    *,
    ckpt: str | os.PathLike[str] | None = None,
    backbone: str | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
    size: int = 224,
    batch: int = 8,
    threads: int = 1,
    repeats: int = 3,
    min_cosine: float = MIN_COSINE,
    max_flipped: float = MAX_FLIPPED,
    verbose: bool = False,
    progress: bool = True,
) -> Agreement:
    """``s2bnn check FILE [--ckpt CKPT]``: agreement, file size, speed; returns the agreement
    figures.

    Raises :class:`AgreementError` (exit code 2 from ``s2bnn``) after printing the agreement
    when any image's features have a cosine similarity below ``min_cosine`` with the float
    model's, or more than ``max_flipped`` of the images (and more than one) have a flipped
    sign bit. Sign flips near a threshold are expected of a correct packing (float rounding
    differs); the defaults pass those with a wide margin and fail another network's weights."""
    size = _int_arg("--size", size, *SIZE_RANGE)
    batch = _int_arg("--batch", batch, *BATCH_RANGE)
    threads = _threads_arg(threads)
    repeats = _int_arg("--repeats", repeats, *REPEATS_RANGE)
    min_cosine, max_flipped = _bounds_args(min_cosine, max_flipped)
    from tqdm.auto import tqdm

    from s2bnn_plugin.checkpoints import load_backbone, require_backbone
    from s2bnn_plugin.export import load
    from s2bnn_plugin.export.bench import end_to_end, file_sizes, markdown_table

    net = load(file)
    if ckpt:
        model, _, _ = load_backbone(ckpt, backbone, backbone_kwargs)
        require_backbone(model, ckpt, net.backbone, net.backbone_kwargs)
        reference = f"the float model of {ckpt}"
    else:
        model = net.to_torch()
        reference = "the float twin rebuilt from the file (no --ckpt given)"
    print(f"{file}: {net!r}")
    if verbose:
        print(net.describe())
    with tqdm(total=3, desc="check", disable=not progress) as bar:
        bar.set_postfix_str("agreement")
        agree = _agreement(model, net, size, batch)
        bar.update()
        # above the bar, which stays for the stages that follow
        tqdm.write(f"agreement with {reference}, {batch} random images at {size} px:")
        tqdm.write(f"  {agree.summary()}")
        _require_agreement(agree, f"{file}", reference, min_cosine, max_flipped)
        bar.set_postfix_str("sizes")
        packed, fp32 = file_sizes(net, model)
        bar.update()
        bar.set_postfix_str("speed")
        timing = end_to_end(model, net, size, batch, threads, repeats)
        bar.update()
    rows = [
        [
            "file size",
            f"{packed / 1e6:.3f} MB",
            f"{fp32 / 1e6:.3f} MB (fp32 state dict)",
            f"1/{fp32 / packed:.1f}",
        ],
        [
            f"batch {batch}, {threads} thread(s)",
            f"{timing.packed_s * 1e3:.2f} ms",
            f"{timing.torch_s * 1e3:.2f} ms (PyTorch fp32)",
            f"{timing.speedup:.1f}x",
        ],
    ]
    print(markdown_table(["", "packed", "float", "ratio"], rows))
    return agree


def bench(
    backbone: str = "reactnet_a",
    *,
    width_mult: float = 1.0,
    size: int = 224,
    batches: tuple[int, ...] = (1, 32),
    threads: tuple[int, ...] = (1, 2),
    repeats: int = 3,
    layers: bool = False,
    progress: bool = True,
) -> None:
    """``s2bnn bench``: end-to-end (and per-layer) speed table on a random-weight model."""
    width_mult = _float_arg("--width-mult", width_mult, 0.0, MAX_WIDTH_MULT, open_low=True)
    size = _int_arg("--size", size, *SIZE_RANGE)
    if not batches or not threads:
        raise UsageError("--batch and --threads need at least one value each")
    batches = tuple(_int_arg("--batch", b, *BATCH_RANGE) for b in batches)
    threads = tuple(_threads_arg(t) for t in threads)
    repeats = _int_arg("--repeats", repeats, *REPEATS_RANGE)
    from tqdm.auto import tqdm

    from s2bnn_plugin.backbones import create_backbone
    from s2bnn_plugin.export.bench import (
        end_to_end,
        file_sizes,
        layer_table,
        layer_timings,
        markdown_table,
    )
    from s2bnn_plugin.export.packer import pack_model

    # an unknown name or a bad setting: a BackboneError (S2BNNError), its message as it is
    model = create_backbone(backbone, width_mult=width_mult).eval()
    net = pack_model(model)
    jobs = [(b, t) for t in threads for b in batches]
    rows = []
    for batch, n_threads in tqdm(jobs, desc="bench", disable=not progress):
        t = end_to_end(model, net, size, batch, n_threads, repeats)
        ms = (f"{t.torch_s * 1e3:.1f}", f"{t.packed_s * 1e3:.2f}", f"{t.speedup:.1f}x")
        rows.append([f"{backbone} {size} px", batch, n_threads, *ms])
    print(
        markdown_table(
            ["model", "batch", "threads", "PyTorch fp32 ms", "packed ms", "speedup"], rows
        )
    )
    if layers:
        timings = [r for t in threads for r in layer_timings(net, size, t, repeats)]
        print()
        print(layer_table(timings))
    packed, fp32 = file_sizes(net, model)
    print(
        f"\nfile: {packed / 1e6:.3f} MB packed vs {fp32 / 1e6:.3f} MB fp32 state dict "
        f"(1/{fp32 / packed:.1f})"
    )
