"""ImageFolders as solo-learn's ``custom`` dataset reads them: validation, and loading to evaluate.

solo-learn reads ``data.train_path`` and ``data.val_path`` with torchvision's ``ImageFolder``
(one sub-folder per class, classes numbered in sorted name order). Its failures on bad input come
late and cryptic (a crash after seconds of imports, or a top-5 metric error in linear evaluation),
so :func:`validate_image_folder` checks up front what it needs and says how to fix it.

For evaluation, images are loaded once into one float32 NCHW array (the packed CPU engine takes
numpy batches, and features are extracted from the same array for every engine).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image
from torchvision import transforms
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension
from tqdm.auto import tqdm

from s2bnn_plugin.data.fashion_mnist import INCOMPLETE_MARKER
from s2bnn_plugin.errors import DataError, name_a_few
from s2bnn_plugin.validate import Range

__all__ = [
    "CROP_RATIOS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMG_EXTENSIONS",
    "MIN_CLASSES",
    "DatasetSplits",
    "ImageSet",
    "eval_transform",
    "load_image_folder",
    "validate_dataset_root",
    "validate_image_folder",
]

#: the share of the resized image a centre crop keeps (``crop_ratio``; 1 keeps all of it)
CROP_RATIOS = Range(0, 1, open_low=True)

#: solo-learn's (timm's) normalisation for ``custom`` and ImageNet data.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: solo-learn's linear evaluation reports top-5 accuracy, which needs at least 5 classes.
MIN_CLASSES = 5

#: what PIL raises for a file it cannot decode: not an image or an unknown format
#: (UnidentifiedImageError, an OSError), truncated data (OSError), a broken PNG chunk
#: (SyntaxError), a bad header field (ValueError), a decompression bomb
UNREADABLE_IMAGE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
MAX_LISTED = 5  # unreadable files named in the error

_LAYOUT = "an ImageFolder holds one sub-folder per class with the images inside (ROOT/cat/1.png)"


class ImageSet(NamedTuple):
    """Images ready for a backbone: ``images`` float32 (N, 3, size, size), normalised; ``labels``
    int64 (N,) indexing ``class_names`` (sorted, as ImageFolder numbers them)."""

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]


@dataclass(frozen=True)
class DatasetSplits:
    """A dataset root with a ``train`` and a held-out ``val`` ImageFolder over the same classes
    (solo-learn's ``data.train_path`` and ``data.val_path``)."""

    root: Path
    train: Path
    val: Path
    class_names: list[str]


def _scan(folder: str) -> tuple[int, list[str]]:
    """How many image files ImageFolder would find below ``folder`` (the same walk as
    torchvision: recursive, following links, by extension), and those of them that are not
    regular files (a named pipe, a device, a socket, a link to nothing): opening a named pipe
    waits forever for a writer. Found with ``stat``, without opening any file."""
    images, irregular = 0, []
    for root, _, files in os.walk(folder, followlinks=True):
        for name in files:
            if not has_file_allowed_extension(name, IMG_EXTENSIONS):
                continue
            path = os.path.join(root, name)
            try:
                regular = stat.S_ISREG(os.stat(path).st_mode)
            except OSError:  # a link to nothing
                regular = False
            if regular:
                images += 1
            else:
                irregular.append(path)
    return images, irregular


def validate_image_folder(
    path: str | os.PathLike[str], *, min_classes: int = MIN_CLASSES, what: str = "data folder"
) -> list[str]:
    """Check that ``path`` is an ImageFolder solo-learn can train and evaluate on; return its
    class names (sorted). Raises ``ValueError`` naming the problem and its fix."""
    path = Path(path)
    if not path.exists():
        raise DataError(
            f"{what} {path} does not exist. Give an existing ImageFolder ({_LAYOUT}), or "
            "`fashion-mnist` for the built-in dataset."
        )
    if not path.is_dir():
        raise DataError(f"{what} {path} is a file, not a folder: {_LAYOUT}.")
    classes = sorted(e.name for e in os.scandir(path) if e.is_dir())
    if not classes:
        raise DataError(f"{what} {path} has no class sub-folders: {_LAYOUT}.")
    scans = {c: _scan(os.path.join(path, c)) for c in classes}
    irregular = [p for _, found in scans.values() for p in found]
    if irregular:
        raise DataError(
            f"{what} {path}: {len(irregular)} file(s) named like images are not regular files "
            f"(a named pipe, a device, a socket or a link to nothing), which loading would wait "
            f"on or fail: {name_a_few(irregular)}; remove them or put the image files there"
        )
    empty = [c for c, (images, _) in scans.items() if not images]
    if len(empty) == len(classes):
        raise DataError(
            f"{what} {path} holds no images (looked for {', '.join(IMG_EXTENSIONS)} files in "
            f"{len(classes)} class folders): {_LAYOUT}."
        )
    if empty:
        raise DataError(
            f"{what} {path}: {len(empty)} of {len(classes)} class folders hold no images "
            f"({name_a_few(empty)}); remove them or add images (torchvision's ImageFolder, which "
            "solo-learn uses, rejects empty classes)."
        )
    if len(classes) < min_classes:
        raise DataError(
            f"{what} {path} has {len(classes)} class(es) ({', '.join(classes)}); at least "
            f"{min_classes} are needed (solo-learn's linear evaluation computes top-5 accuracy). "
            "Use a dataset with more classes."
        )
    return classes


def validate_dataset_root(
    root: str | os.PathLike[str], *, min_classes: int = MIN_CLASSES
) -> DatasetSplits:
    """Check ``root/train`` and ``root/val`` (see :func:`validate_image_folder`) and that they
    have the same classes, without which ImageFolder would number the labels differently."""
    root = Path(root)
    if not root.is_dir():
        validate_image_folder(root, min_classes=min_classes)  # raises with the right message
    if (root / INCOMPLETE_MARKER).is_file():
        raise DataError(
            f"{root} is an unfinished Fashion-MNIST preparation (interrupted); run the same "
            "command again to complete it"
        )
    missing = [s for s in ("train", "val") if not (root / s).is_dir()]
    if missing:
        raise DataError(
            f"{root} has no {' and no '.join(s + '/' for s in missing)} sub-folder: a dataset "
            "root holds a train/ and a held-out, labelled val/ ImageFolder over the same classes "
            f"(solo-learn's data.train_path and data.val_path); {_LAYOUT}."
        )
    train = validate_image_folder(root / "train", min_classes=min_classes, what="training folder")
    val = validate_image_folder(root / "val", min_classes=min_classes, what="validation folder")
    if train != val:
        only_train = sorted(set(train) - set(val))
        only_val = sorted(set(val) - set(train))
        raise DataError(
            f"{root}: train/ and val/ must have the same class folders (labels are numbered by "
            f"sorted folder name); only in train/: {only_train}, only in val/: {only_val}"
        )
    return DatasetSplits(root=root, train=root / "train", val=root / "val", class_names=train)


def eval_transform(
    size: int,
    *,
    crop_ratio: float = 1.0,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> transforms.Compose:
    """Resize the shorter side to ``round(size / crop_ratio)``, centre-crop ``size``, normalise.

    solo-learn's ``custom`` validation pipeline is this with ``size=224, crop_ratio=224/256``
    (resize 256, crop 224). The default ``crop_ratio=1.0`` keeps the whole image, which is what a
    model pretrained on small (e.g. 32 px) images should see.
    """
    if not CROP_RATIOS.admits(crop_ratio):
        raise DataError(f"crop_ratio must be in {CROP_RATIOS.interval()}, got {crop_ratio}")
    return transforms.Compose(
        [
            transforms.Resize(round(size / crop_ratio)),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(mean=mean, std=std),
        ]
    )


def load_image_folder(
    path: str | os.PathLike[str],
    size: int = 32,
    *,
    crop_ratio: float = 1.0,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    min_classes: int = MIN_CLASSES,
    progress: bool = True,
) -> ImageSet:
    """Validate an ImageFolder and load all of it, transformed by :func:`eval_transform`, into
    memory (N x 3 x size x size x 4 bytes: 12 KiB an image at 32 px)."""
    validate_image_folder(path, min_classes=min_classes)
    dataset = ImageFolder(
        os.fspath(path), transform=eval_transform(size, crop_ratio=crop_ratio, mean=mean, std=std)
    )
    images = np.empty((len(dataset), 3, size, size), dtype=np.float32)
    labels = np.asarray(dataset.targets, dtype=np.int64)
    unreadable: list[str] = []
    for i in tqdm(
        range(len(dataset)), desc=f"loading {Path(path).name}", unit="img", disable=not progress
    ):
        try:
            images[i] = dataset[i][0].numpy()
        except UNREADABLE_IMAGE as e:  # every bad file is listed at the end, not just the first
            unreadable.append(f"{dataset.samples[i][0]} ({type(e).__name__}: {e})")
    if unreadable:
        shown = "; ".join(unreadable[:MAX_LISTED])
        more = f"; and {len(unreadable) - MAX_LISTED} more" if len(unreadable) > MAX_LISTED else ""
        raise DataError(
            f"{path}: {len(unreadable)} of {len(dataset)} image file(s) cannot be read as images "
            f"(corrupt or truncated): {shown}{more}. Replace or remove them: every model must "
            "be evaluated on the same images, so none is skipped"
        )
    return ImageSet(images, labels, list(dataset.classes))
