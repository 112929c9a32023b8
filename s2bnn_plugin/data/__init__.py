"""Data for training and evaluation: Fashion-MNIST as an ImageFolder, and any user ImageFolder.

:func:`resolve_dataset` is the single entry point the commands use: ``"fashion-mnist"`` (or a
folder holding its four idx files) prepares the built-in dataset once; anything else is a path
to a dataset root holding ``train/`` and ``val/`` ImageFolders, validated with messages that say
how to fix it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from s2bnn_plugin.data.fashion_mnist import (
    APT_HINT,
    DEFAULT_SOURCE_DIR,
    DEMO_TRAIN_PER_CLASS,
    DEMO_VAL_PER_CLASS,
    EVAL_TRAIN_PER_CLASS,
    EVAL_VAL_PER_CLASS,
    FASHION_MNIST_CLASSES,
    SOURCE_ENV,
    FashionMNISTNotFound,
    default_data_root,
    fashion_mnist_dir,
    find_fashion_mnist,
    load_fashion_mnist,
    prepare_fashion_mnist,
    subsample_per_class,
)
from s2bnn_plugin.data.idx import IdxFormatError, read_idx

if TYPE_CHECKING:
    from s2bnn_plugin.data.image_folder import DatasetSplits

# ``image_folder`` needs torch and torchvision (about 2 s to import): loaded on first use, so
# that the command line's parser and ``--help`` stay fast. Every name of ``__all__`` not bound
# above comes from there.


def __getattr__(name: str):
    if name in __all__:
        from s2bnn_plugin.data import image_folder

        return getattr(image_folder, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "APT_HINT",
    "CROP_RATIOS",
    "DEFAULT_SOURCE_DIR",
    "DEMO_TRAIN_PER_CLASS",
    "DEMO_VAL_PER_CLASS",
    "EVAL_TRAIN_PER_CLASS",
    "EVAL_VAL_PER_CLASS",
    "FASHION_MNIST",
    "FASHION_MNIST_CLASSES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MIN_CLASSES",
    "DatasetSplits",
    "FashionMNISTNotFound",
    "SOURCE_ENV",
    "find_fashion_mnist",
    "IdxFormatError",
    "ImageSet",
    "default_data_root",
    "eval_transform",
    "fashion_mnist_dir",
    "load_fashion_mnist",
    "load_image_folder",
    "prepare_fashion_mnist",
    "read_idx",
    "resolve_dataset",
    "subsample_per_class",
    "validate_dataset_root",
    "validate_image_folder",
]

#: The name that selects the built-in dataset wherever a data path is asked for.
FASHION_MNIST = "fashion-mnist"


def _is_idx_folder(path: str | os.PathLike[str]) -> bool:
    """A folder with Fashion-MNIST's idx files (and no ImageFolder ``train/``)."""
    folder = Path(path)
    if not folder.is_dir() or (folder / "train").is_dir():
        return False
    try:
        find_fashion_mnist(folder)
    except FashionMNISTNotFound:
        return False
    return True


def resolve_dataset(
    data: str | os.PathLike[str],
    *,
    size: int = 32,
    train_per_class: int | None = EVAL_TRAIN_PER_CLASS,
    val_per_class: int | None = EVAL_VAL_PER_CLASS,
    seed: int = 0,
    data_root: str | os.PathLike[str] | None = None,
    source_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> DatasetSplits:
    """A validated dataset root: Fashion-MNIST prepared in :func:`fashion_mnist_dir` for
    ``data == "fashion-mnist"`` or a folder holding its idx files (the other settings apply to it
    only; ``source_dir``: where the idx files are, see :func:`find_fashion_mnist`), otherwise the
    folder ``data`` itself."""
    if os.fspath(data) != FASHION_MNIST and _is_idx_folder(data):
        data, source_dir = FASHION_MNIST, data
    if os.fspath(data) == FASHION_MNIST:
        out_dir = fashion_mnist_dir(size, train_per_class, val_per_class, seed, root=data_root)
        prepare_fashion_mnist(
            out_dir,
            size=size,
            train_per_class=train_per_class,
            val_per_class=val_per_class,
            seed=seed,
            source_dir=source_dir,
            progress=progress,
        )
        data = out_dir
    from s2bnn_plugin.data.image_folder import validate_dataset_root

    return validate_dataset_root(data)
