"""Helpers for data and evaluation tests: idx files and ImageFolders written on the fly."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from PIL import Image

IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    """An idx file as the MNIST tools write it: zero bytes, type code, ndim, big-endian dims,
    big-endian values."""
    array = np.asarray(array)
    header = bytes([0, 0, IDX_CODES[array.dtype], array.ndim])
    header += np.asarray(array.shape, dtype=">u4").tobytes()
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def fake_fashion_mnist(source: Path, train_per_class: int = 3, test_per_class: int = 2) -> Path:
    """Debian's four Fashion-MNIST files with tiny content. Image i of label c is filled with
    ``20 * c + 10`` plus a per-image marker pixel, so a PNG can be traced to its label."""
    source.mkdir(parents=True, exist_ok=True)
    for split, per_class in (("train", train_per_class), ("t10k", test_per_class)):
        labels = np.tile(np.arange(10, dtype=np.uint8), per_class)
        images = np.repeat((20 * labels + 10).astype(np.uint8), 28 * 28).reshape(-1, 28, 28)
        images[:, 0, 0] = np.arange(len(labels)) % 256
        write_idx(source / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(source / f"{split}-labels-idx1-ubyte.gz", labels)
    return source


def make_image_folder(
    root: Path, classes: list[str], per_class: int, size: int = 12, seed: int = 0
) -> Path:
    """An ImageFolder whose class ``i`` images are noisy around the gray level ``40 * i``."""
    rng = np.random.default_rng(seed)
    for i, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            pixels = np.clip(40 * i + rng.normal(0, 8, (size, size, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{j}.png")
    return root


def random_image_folder(root: Path, classes: int, per_class: int, seed: int = 0) -> Path:
    """An ImageFolder of random 32 px RGB images: ``classes`` folders of ``per_class`` each."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = (rng.random((32, 32, 3)) * 255).astype("uint8")
            Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def random_dataset(root: Path, classes: int = 5, train: int = 8, val: int = 4) -> Path:
    """``root/train`` and ``root/val`` random ImageFolders: enough for a tiny solo-learn run."""
    random_image_folder(root / "train", classes, train, seed=0)
    random_image_folder(root / "val", classes, val, seed=1)
    return root


#: DemoConfig / StudyConfig settings for a tiny run on :func:`random_dataset` (seconds a model).
TINY_RUN = {
    "teacher_epochs": 1,
    "epochs": 1,
    "teacher_batch_size": 8,
    "batch_size": 8,
    "width_mult": 0.125,
    "proj_hidden_dim": 32,
    "num_workers": 0,
    "eval_batch_size": 16,
    "knn_k": 5,
}
