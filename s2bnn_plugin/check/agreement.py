"""The agreement of a packed network with its float model, and its bounds: what ``s2bnn check``
and ``s2bnn pack`` (:mod:`s2bnn_plugin.check.commands`) measure before they pass a packed file.

:func:`agreement` compares the features of both on a random batch; :func:`require_agreement`
raises :class:`AgreementError` when they differ beyond ``min_cosine`` / ``max_flipped``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from s2bnn_plugin.arguments import float_arg
from s2bnn_plugin.errors import S2BNNError

__all__ = [
    "MAX_FLIPPED",
    "MIN_COSINE",
    "MIN_IMAGES",
    "Agreement",
    "AgreementError",
    "agreement",
    "bounds_args",
    "require_agreement",
]

MIN_IMAGES = 16
"""Every agreement check compares at least this many random images (``s2bnn check`` compares
``max(--batch, MIN_IMAGES)``, ``s2bnn pack`` this many), whatever batch it times: no per-image
figure tells a correct packing from a wrong student on one image (below), only the share of
images that differ does, and that needs a sample. With 16 images, a correct packing that flips
12.5 % of them (the most measured at 224 px) exceeds :data:`MAX_FLIPPED` with probability 1e-5,
one that flips 21 % (the upper 95 % confidence bound of that measurement) with probability
2e-3 (with 8 images, 1.2e-2; with one image and no allowance, 0.21)."""

MIN_COSINE = 0.9
"""Default bound: every image's packed features have at least this cosine similarity with the
float model's. It fails gross errors on any image; the wrong students that come close are
failed by :data:`MAX_FLIPPED`. Measured with ``tools/check_bounds.py`` on random inputs, as
``check`` uses: correct packings of reactnet_a and reactnet18 (widths 0.2-1, and the tests'
tiny backbone) with random weights and randomised statistics, 15-448 px, 256 images per case
(96 at width 1, 16 at 448 px): at worst 0.9966; with the default statistics of a fresh model
a sign flip weighs more: at worst 0.852 (reactnet18 at 64 px). Another student's weights:
0.27-0.68 (reported for trained students of two seeds: 0.90-0.95). A student with one binary
layer taken from another seed: 0.83-0.9991, which no cosine bound can tell from a correct
packing's flipped image."""

MAX_FLIPPED = 0.5
"""Default bound: at most this share of the compared images has a flipped sign bit (a
relative difference above :data:`FLIP_RELATIVE`). Measured as for :data:`MIN_COSINE`: correct
packings flip 0-3.1 % of the images at 15-96 px and 6.2 % (reactnet18) to 12.5 % (reactnet_a)
of 96 at 224 px, with the default statistics of a fresh model up to 13.5 %; at 448 px 38 % and
62 % of 16 (raise the bound, or check at 224 px, there). Every wrong student measured (another
seed; each binary layer in turn taken from another seed; 15-448 px) flips every image."""

FLIP_RELATIVE = 1e-4
"""A per-image relative difference above float rounding (~1e-6): a sign bit came out
differently somewhere in that image."""


class AgreementError(S2BNNError, ValueError):
    """The packed network's features differ from the float model's beyond the bound."""


def bounds_args(min_cosine: object, max_flipped: object) -> tuple[float, float]:
    """The agreement bounds ``--min-cosine`` and ``--max-flipped``, checked."""
    return (
        float_arg("--min-cosine", min_cosine, -1.0, 1.0),
        float_arg("--max-flipped", max_flipped, 0.0, 1.0),
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
        if self.images_with_a_flip > max_flipped * self.images:
            out.append(
                f"{self.images_with_a_flip} of {self.images} images "
                f"({100 * self.flipped_share:.0f} %) have a flipped sign bit, more than the bound "
                f"{max_flipped} (--max-flipped, keyword max_flipped)"
            )
        return out


def agreement(model: Any, net: Any, size: int, batch: int, seed: int = 0) -> Agreement:
    """Feature differences between the float model and the packed network on ``max(batch,
    MIN_IMAGES)`` random images."""
    import torch

    images = max(batch, MIN_IMAGES)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(images, net.in_channels, size, size, generator=gen)
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
        images=images,
        max_abs=float(diff.max()),
        mean_abs=float(diff.mean()),
        feature_scale=float(np.abs(ref).mean()),
        max_rel_per_image=float(rel.max()),
        min_cosine=float(cos[worst]),
        worst_image=worst,
        images_with_a_flip=int((~(rel <= FLIP_RELATIVE)).sum()),
    )


def require_agreement(
    agree: Agreement, what: str, reference: str, min_cosine: float, max_flipped: float
) -> None:
    """Raise :class:`AgreementError` naming ``what`` and ``reference`` when ``agree`` is outside
    the bounds."""
    failures = agree.failures(min_cosine, max_flipped)
    if failures:
        raise AgreementError(
            f"{what} disagrees with {reference} beyond the bounds: {'; '.join(failures)}. A "
            "correct packing of a trained model stays well inside both (sign flips near a "
            "threshold touch a few images and move their cosine similarity by less than "
            "0.01); are these the same weights?"
        )
