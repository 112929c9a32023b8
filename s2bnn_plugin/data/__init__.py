"""Data for training and evaluation: Fashion-MNIST as an ImageFolder, and any user ImageFolder.

:func:`resolve_dataset` is the single entry point the commands use: ``"fashion-mnist"`` prepares
(once) the built-in dataset, anything else is a path to a dataset root holding ``train/`` and
``val/`` ImageFolders, validated with messages that say how to fix it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from s2bnn_plugin.data.fashion_mnist import (
    APT_HINT,
    DEFAULT_SOURCE_DIR,
    DEMO_TRAIN_PER_CLASS,
    DEMO_VAL_PER_CLASS,
    FASHION_MNIST_CLASSES,
    FashionMNISTNotFound,
    default_data_root,
    fashion_mnist_dir,
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
    "DEFAULT_SOURCE_DIR",
    "DEMO_TRAIN_PER_CLASS",
    "DEMO_VAL_PER_CLASS",
    "FASHION_MNIST",
    "FASHION_MNIST_CLASSES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MIN_CLASSES",
    "DatasetSplits",
    "FashionMNISTNotFound",
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


def resolve_dataset(
    data: str | os.PathLike[str],
    *,
    size: int = 32,
    train_per_class: int | None = DEMO_TRAIN_PER_CLASS,
    val_per_class: int | None = DEMO_VAL_PER_CLASS,
    seed: int = 0,
    data_root: str | os.PathLike[str] | None = None,
    source_dir: str | os.PathLike[str] = DEFAULT_SOURCE_DIR,
    progress: bool = True,
) -> DatasetSplits:
    """A validated dataset root: Fashion-MNIST prepared in :func:`fashion_mnist_dir` for
    ``data == "fashion-mnist"`` (the other settings apply to it only; ``source_dir`` holds
    Debian's idx files), otherwise the folder ``data`` itself."""
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
