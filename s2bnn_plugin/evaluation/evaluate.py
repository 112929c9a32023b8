"""One model on one dataset: features once, then weighted kNN and a linear probe on them."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from s2bnn_plugin.evaluation.features import FeatureExtractor, extract_features
from s2bnn_plugin.evaluation.knn import KNNResult, knn_classify
from s2bnn_plugin.evaluation.linear import LinearProbeResult, linear_probe, raw_pixel_probe

__all__ = ["EvaluationResult", "evaluate", "evaluate_features", "evaluate_raw_pixels"]


@dataclass(frozen=True)
class EvaluationResult:
    """kNN and linear-probe results of one feature set; ``seconds``: feature extraction time
    (0 when features were given)."""

    name: str
    feature_dim: int
    n_train: int
    n_val: int
    knn: KNNResult | None
    linear: LinearProbeResult
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float | None:
        return (self.n_train + self.n_val) / self.seconds if self.seconds > 0 else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no per-image predictions)."""
        return {
            "name": self.name,
            "feature_dim": self.feature_dim,
            "n_train": self.n_train,
            "n_val": self.n_val,
            "knn_top1": None if self.knn is None else self.knn.top1,
            "knn_top5": None if self.knn is None else self.knn.top5,
            "knn_k": None if self.knn is None else self.knn.k,
            "knn_temperature": None if self.knn is None else self.knn.temperature,
            "linear_top1": self.linear.top1,
            "linear_train_top1": self.linear.train_top1,
            "linear_iterations": self.linear.iterations,
            "linear_weight_decay": self.linear.weight_decay,
            "feature_seconds": self.seconds,
            "images_per_second": self.images_per_second,
        }


def evaluate_features(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    val_features: np.ndarray,
    val_labels: np.ndarray,
    *,
    name: str = "features",
    k: int = 20,
    temperature: float = 0.07,
    weight_decay: float = 1e-2,
    seconds: float = 0.0,
) -> EvaluationResult:
    """Weighted kNN (solo-learn's) and the linear probe on already extracted features."""
    return EvaluationResult(
        name=name,
        feature_dim=int(train_features.shape[1]),
        n_train=len(train_features),
        n_val=len(val_features),
        knn=knn_classify(
            train_features, train_labels, val_features, val_labels, k=k, temperature=temperature
        ),
        linear=linear_probe(
            train_features, train_labels, val_features, val_labels, weight_decay=weight_decay
        ),
        seconds=seconds,
    )


def evaluate(
    extractor: nn.Module | FeatureExtractor,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    val_images: np.ndarray,
    val_labels: np.ndarray,
    *,
    name: str = "model",
    batch_size: int = 256,
    progress: bool = True,
    k: int = 20,
    temperature: float = 0.07,
    weight_decay: float = 1e-2,
) -> EvaluationResult:
    """Extract features of both splits with ``extractor``, then :func:`evaluate_features`
    (the training split is the kNN bank and the probe's training set)."""
    start = time.perf_counter()
    train_f = extract_features(extractor, train_images, batch_size, progress, f"{name}: train")
    val_f = extract_features(extractor, val_images, batch_size, progress, f"{name}: val")
    seconds = time.perf_counter() - start
    return evaluate_features(
        train_f,
        train_labels,
        val_f,
        val_labels,
        name=name,
        k=k,
        temperature=temperature,
        weight_decay=weight_decay,
        seconds=seconds,
    )


def evaluate_raw_pixels(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    val_images: np.ndarray,
    val_labels: np.ndarray,
    *,
    weight_decay: float = 1e-2,
) -> EvaluationResult:
    """The raw-pixel linear-probe baseline, as an :class:`EvaluationResult` (no kNN)."""
    linear = raw_pixel_probe(
        train_images, train_labels, val_images, val_labels, weight_decay=weight_decay
    )
    return EvaluationResult(
        name="raw pixels",
        feature_dim=int(np.prod(train_images.shape[1:])),
        n_train=len(train_images),
        n_val=len(val_images),
        knn=None,
        linear=linear,
    )
