"""Feature extraction through any "feature extractor": a callable mapping a float32 NCHW numpy
batch to (N, D) numpy features.

That protocol is all the evaluation needs, so the packed CPU engine (``s2bnn_plugin.export``'s
``PackedNetwork``) and a PyTorch module (through :class:`TorchExtractor`) are measured by the
same code on the same arrays, and their results are directly comparable.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from s2bnn_plugin.validate import Range

__all__ = ["FeatureExtractor", "TorchExtractor", "as_extractor", "extract_features"]


@runtime_checkable
class FeatureExtractor(Protocol):
    """Maps float32 images (N, C, H, W) to float features (N, D)."""

    def __call__(self, images: np.ndarray) -> np.ndarray: ...


class TorchExtractor:
    """A PyTorch backbone as a :class:`FeatureExtractor`: eval mode (BatchNorm running
    statistics), no autograd, float32 on ``device``, numpy in and out."""

    def __init__(self, module: nn.Module, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.module = module.to(self.device).eval()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(self.device)
        with torch.inference_mode():
            out = self.module(x)
        return out.float().cpu().numpy()


def as_extractor(model: nn.Module | FeatureExtractor) -> FeatureExtractor:
    """Wrap an ``nn.Module`` in :class:`TorchExtractor`; return other callables unchanged."""
    if isinstance(model, nn.Module):
        return TorchExtractor(model)
    if not callable(model):
        raise TypeError(f"expected an nn.Module or a callable feature extractor, got {model!r}")
    return model


def extract_features(
    extractor: nn.Module | FeatureExtractor,
    images: np.ndarray,
    batch_size: int = 256,
    progress: bool = True,
    desc: str = "features",
) -> np.ndarray:
    """Features (N, D) float32 of ``images`` (N, C, H, W), computed ``batch_size`` at a time.

    The extractor's output is checked (2-D, one row per image, the same D for every batch,
    finite) because a wrong shape or NaN features would otherwise give a plausible-looking but
    meaningless accuracy.
    """
    if not isinstance(images, np.ndarray) or images.ndim != 4:
        shape = getattr(images, "shape", None)
        raise ValueError(f"images must be a numpy array (N, C, H, W), got shape {shape}")
    if not Range(1, whole=True).admits(batch_size):
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    extractor = as_extractor(extractor)
    images = images.astype(np.float32, copy=False)
    n = len(images)
    features: np.ndarray | None = None
    with tqdm(total=n, desc=desc, unit="img", disable=not progress) as bar:
        for start in range(0, n, batch_size):
            batch = images[start : start + batch_size]
            out = np.asarray(extractor(batch))
            if out.ndim != 2 or out.shape[0] != len(batch):
                raise ValueError(
                    f"the extractor returned shape {out.shape} for a batch of {len(batch)} "
                    "images; expected (batch, feature_dim)"
                )
            if features is None:
                features = np.empty((n, out.shape[1]), dtype=np.float32)
            elif out.shape[1] != features.shape[1]:
                raise ValueError(
                    f"the extractor returned {out.shape[1]} features for one batch and "
                    f"{features.shape[1]} for an earlier one"
                )
            if not np.isfinite(out).all():
                bad = int((~np.isfinite(out)).any(axis=1).sum())
                raise ValueError(
                    f"the extractor returned non-finite features (NaN or inf) for {bad} of the "
                    f"images {start}..{start + len(batch) - 1}"
                )
            features[start : start + len(batch)] = out
            bar.update(len(batch))
    if features is None:
        raise ValueError("no images to extract features from")
    return features
