"""Fashion-MNIST from any folder holding its four idx files: Debian's package, a folder named in
$S2BNN_FASHION_MNIST, torchvision's download layout (FashionMNIST/raw, uncompressed files)."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from image_utils import fake_fashion_mnist

from s2bnn_plugin.data import (
    SOURCE_ENV,
    FashionMNISTNotFound,
    find_fashion_mnist,
    load_fashion_mnist,
    resolve_dataset,
)


def _torchvision_layout(root):
    """What ``torchvision.datasets.FashionMNIST(root, download=True)`` leaves: the .gz files
    and their uncompressed twins in ``root/FashionMNIST/raw``; here the uncompressed ones only."""
    raw = fake_fashion_mnist(root / "FashionMNIST" / "raw")
    for gz in raw.glob("*.gz"):
        gz.with_suffix("").write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    return raw


def test_a_torchvision_download_folder_is_found_from_its_root(tmp_path):
    raw = _torchvision_layout(tmp_path / "tv")
    assert find_fashion_mnist(tmp_path / "tv") == raw
    images, labels = load_fashion_mnist("test", tmp_path / "tv")
    assert images.shape == (20, 28, 28) and np.bincount(labels).tolist() == [2] * 10


def test_the_environment_variable_comes_before_debians_folder(tmp_path, monkeypatch):
    source = fake_fashion_mnist(tmp_path / "mine")
    monkeypatch.setenv(SOURCE_ENV, str(source))
    assert find_fashion_mnist() == source
    images, _ = load_fashion_mnist("train")
    assert images.shape[0] == 30  # the fake's 3 per class, not Debian's 60,000


def test_not_found_names_every_way_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv(SOURCE_ENV, str(tmp_path / "empty"))
    monkeypatch.setattr("s2bnn_plugin.data.fashion_mnist.DEFAULT_SOURCE_DIR", tmp_path / "none")
    with pytest.raises(FashionMNISTNotFound) as e:
        find_fashion_mnist()
    message = str(e.value)
    assert "apt-get install dataset-fashion-mnist" in message and SOURCE_ENV in message
    assert "FashionMNIST/raw" in message and str(tmp_path / "empty") in message


def test_data_can_be_a_folder_of_idx_files(tmp_path, monkeypatch):
    monkeypatch.setenv("S2BNN_DATA_DIR", str(tmp_path / "prepared"))
    raw = _torchvision_layout(tmp_path / "tv")
    splits = resolve_dataset(raw, size=8, train_per_class=2, val_per_class=1, progress=False)
    assert splits.root.parent == tmp_path / "prepared"
    assert len(splits.class_names) == 10
    assert len(list(splits.train.rglob("*.png"))) == 20
