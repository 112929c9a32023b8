"""Weighted k-nearest-neighbour classification, as solo-learn's ``WeightedKNNClassifier``.

solo-learn's own kNN entry points do not run on this stack (``main_knn.py`` hard-codes CUDA; the
online kNN uses a torchmetrics argument that 1.9 removed), so the computation is reproduced here
in plain torch: features L2-normalised; cosine similarity to every training feature; the ``k``
most similar training images vote for their class with weight ``exp(similarity / T)``; the class
with the largest summed weight is the prediction. Defaults ``k=20, T=0.07`` are solo-learn's.
Test images are processed in chunks so the similarity matrix holds at most
``max_distance_matrix_size`` elements, as in solo-learn.

Differences, both immaterial to solo-learn's results: the number of classes is taken from the
labels of both sets (solo-learn counts only the test labels' distinct values, and fails when a
training label is larger), and ties between class scores go to the lower class index.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from s2bnn_plugin.validate import Range

__all__ = ["KNNResult", "knn_agreement", "knn_classify", "knn_scores", "prediction_agreement"]


@dataclass(frozen=True)
class KNNResult:
    """Accuracies in percent, and the per-image predictions (to compare engines)."""

    top1: float
    top5: float
    predictions: np.ndarray
    k: int
    temperature: float


def _features(x: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if t.ndim != 2 or t.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array (N, D), got shape {tuple(t.shape)}")
    return F.normalize(t.float(), dim=1)


def _labels(y: np.ndarray | torch.Tensor, n: int, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y).long()
    if t.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {tuple(t.shape)}")
    if n and t.min() < 0:
        raise ValueError(f"{name} must be non-negative class indices")
    return t


def _scores(
    train: torch.Tensor,
    targets: torch.Tensor,
    test: torch.Tensor,
    k: int,
    temperature: float,
    num_classes: int,
    max_distance_matrix_size: int,
) -> torch.Tensor:
    """The computation, on validated, L2-normalised features."""
    if not (Range(1, whole=True).admits(k) and Range(0, open_low=True).admits(temperature)):
        raise ValueError(f"need k >= 1 and temperature > 0, got k={k}, T={temperature}")
    k = min(k, len(train))
    # test rows per similarity block: at most max_distance_matrix_size entries at a time
    rows = min(max(1, max_distance_matrix_size // len(train)), len(test))
    scores = torch.zeros(len(test), num_classes)
    for start in range(0, len(test), rows):
        similarities = test[start : start + rows] @ train.T
        top_sim, top_idx = similarities.topk(k, dim=1, largest=True, sorted=True)
        weights = (top_sim / temperature).exp()
        scores[start : start + rows].scatter_add_(1, targets[top_idx], weights)
    return scores


def _inputs(
    train_features: np.ndarray | torch.Tensor,
    train_labels: np.ndarray | torch.Tensor,
    test_features: np.ndarray | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    train = _features(train_features, "train_features")
    test = _features(test_features, "test_features")
    if train.shape[1] != test.shape[1]:
        raise ValueError(
            f"train and test features differ in dimension: {train.shape[1]} vs {test.shape[1]}"
        )
    return train, _labels(train_labels, len(train), "train_labels"), test


def knn_scores(
    train_features: np.ndarray | torch.Tensor,
    train_labels: np.ndarray | torch.Tensor,
    test_features: np.ndarray | torch.Tensor,
    *,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    max_distance_matrix_size: int = 5_000_000,
) -> torch.Tensor:
    """Summed neighbour weights per class, (N_test, num_classes) float32."""
    train, targets, test = _inputs(train_features, train_labels, test_features)
    if num_classes is None:
        num_classes = int(targets.max()) + 1
    return _scores(train, targets, test, k, temperature, num_classes, max_distance_matrix_size)


def knn_classify(
    train_features: np.ndarray | torch.Tensor,
    train_labels: np.ndarray | torch.Tensor,
    test_features: np.ndarray | torch.Tensor,
    test_labels: np.ndarray | torch.Tensor,
    *,
    k: int = 20,
    temperature: float = 0.07,
    max_distance_matrix_size: int = 5_000_000,
) -> KNNResult:
    """Weighted kNN top-1 and top-5 accuracy (percent) of ``test`` against the ``train`` bank."""
    train, train_targets, test = _inputs(train_features, train_labels, test_features)
    test_targets = _labels(test_labels, len(test), "test_labels")
    num_classes = int(max(train_targets.max(), test_targets.max())) + 1
    scores = _scores(
        train, train_targets, test, k, temperature, num_classes, max_distance_matrix_size
    )
    # Stable descending sort: among equal scores the lower class index ranks first.
    ranking = scores.sort(dim=1, descending=True, stable=True).indices
    correct = ranking == test_targets[:, None]
    k_eff = min(k, len(train))
    top5 = correct[:, : min(5, k_eff, num_classes)].any(dim=1)
    n = len(test_targets)
    return KNNResult(
        top1=100.0 * int(correct[:, 0].sum()) / n,
        top5=100.0 * int(top5.sum()) / n,
        predictions=ranking[:, 0].numpy(),
        k=k_eff,
        temperature=temperature,
    )


def prediction_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction (0..1) of positions where two prediction vectors agree."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"need two non-empty 1-D arrays of one shape, got {a.shape} and {b.shape}")
    return float(np.mean(a == b))


def knn_agreement(
    train_a: np.ndarray,
    test_a: np.ndarray,
    train_b: np.ndarray,
    test_b: np.ndarray,
    train_labels: np.ndarray,
    *,
    k: int = 20,
    temperature: float = 0.07,
) -> float:
    """Fraction of test images whose kNN prediction is the same with feature set A (e.g. the
    packed engine's) as with feature set B (e.g. PyTorch's), each against its own bank."""
    num_classes = int(np.max(train_labels)) + 1
    predictions = [
        knn_scores(
            train, train_labels, test, k=k, temperature=temperature, num_classes=num_classes
        ).argmax(dim=1)
        for train, test in ((train_a, test_a), (train_b, test_b))
    ]
    return prediction_agreement(predictions[0].numpy(), predictions[1].numpy())
