"""Fashion-MNIST from its four idx files, written once as an ImageFolder.

Fashion-MNIST (70,000 real 28x28 grayscale product photos, 10 classes, MIT licence) comes as four
idx files, gzipped or not. :func:`find_fashion_mnist` looks for them in a folder given
explicitly, in ``$S2BNN_FASHION_MNIST``, and in Debian's ``dataset-fashion-mnist`` package
(``/usr/share/datasets/fashion-mnist``); in each it also tries ``raw/`` and ``FashionMNIST/raw/``,
so torchvision's download folder works as it is (macOS, conda and non-root users). solo-learn's
``custom`` dataset reads an ImageFolder, so :func:`prepare_fashion_mnist` converts the idx files
into one:

    out_dir/train/<class>/<index>.png   (subsampled from Fashion-MNIST's train split)
    out_dir/val/<class>/<index>.png     (subsampled from its test split: held out, labelled)
    out_dir/s2bnn_dataset.json          (the marker, written last)

Images are upscaled bilinearly to ``size`` pixels and stored as 3-channel RGB PNGs (the backbones
take 3 channels). ``<index>`` is the image's index in its source split, so a subsample is
reproducible and can be traced back. ImageFolder numbers classes in sorted name order, which
differs from Fashion-MNIST's label order: consumers must use the folder names, as solo-learn does.

Writing is resumable: each PNG is written to a temporary name then renamed, files already there
are kept on a restart, and the marker is written only when everything else is in place, so a
folder without the marker is never used.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from s2bnn_plugin.data.idx import read_idx
from s2bnn_plugin.errors import DataError, S2BNNError
from s2bnn_plugin.files import atomic_file, is_partial, write_text
from s2bnn_plugin.validate import Range

__all__ = [
    "APT_HINT",
    "DEFAULT_SOURCE_DIR",
    "DEMO_TRAIN_PER_CLASS",
    "DEMO_VAL_PER_CLASS",
    "EVAL_TRAIN_PER_CLASS",
    "EVAL_VAL_PER_CLASS",
    "FASHION_MNIST_CLASSES",
    "INCOMPLETE_MARKER",
    "MARKER",
    "FashionMNISTNotFound",
    "SOURCE_ENV",
    "default_data_root",
    "find_fashion_mnist",
    "fashion_mnist_dir",
    "load_fashion_mnist",
    "prepare_fashion_mnist",
    "subsample_per_class",
]

DEFAULT_SOURCE_DIR = Path("/usr/share/datasets/fashion-mnist")
APT_HINT = "apt-get install dataset-fashion-mnist"
#: A folder holding the four idx files (e.g. torchvision's ``root/FashionMNIST/raw``).
SOURCE_ENV = "S2BNN_FASHION_MNIST"
_SUBFOLDERS = (".", "raw", "FashionMNIST/raw", "fashion-mnist")

#: Folder names, in Fashion-MNIST's label order (label i is FASHION_MNIST_CLASSES[i]).
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "t-shirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)

#: ``s2bnn eval``'s Fashion-MNIST subset, and the data helpers' unless told: 10,000 training
#: images and 5,000 held-out ones (a standard error of about 0.5 points on accuracy).
EVAL_TRAIN_PER_CLASS = 1000
EVAL_VAL_PER_CLASS = 500
#: the CPU demo's (and the study's) subset, ``DemoConfig``'s defaults: 5,000 training images
#: (also the kNN bank) and 5,000 held-out ones.
DEMO_TRAIN_PER_CLASS = 500
DEMO_VAL_PER_CLASS = 500

MARKER = "s2bnn_dataset.json"
INCOMPLETE_MARKER = "s2bnn_dataset.incomplete.json"
_FORMAT_VERSION = 1
_SPLITS = {"train": "train", "val": "test"}  # ImageFolder split -> Fashion-MNIST split
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


class FashionMNISTNotFound(S2BNNError, FileNotFoundError):
    """No folder searched holds Fashion-MNIST's four idx files."""


def _idx_path(folder: Path, name: str) -> Path | None:
    """``name`` (``*.gz``) or its uncompressed twin in ``folder``."""
    for candidate in (folder / name, folder / name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def _holds_idx_files(folder: Path) -> bool:
    return all(_idx_path(folder, n) is not None for names in _FILES.values() for n in names)


def find_fashion_mnist(source_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding Fashion-MNIST's four idx files: in ``source_dir`` if given, else in
    ``$S2BNN_FASHION_MNIST``, else in Debian's package folder (each with its ``raw/`` and
    ``FashionMNIST/raw/`` sub-folders)."""
    if source_dir is not None:
        roots = [Path(source_dir).expanduser()]
    else:
        env = os.environ.get(SOURCE_ENV)
        roots = ([Path(env).expanduser()] if env else []) + [DEFAULT_SOURCE_DIR]
    searched = []
    for root in roots:
        for sub in _SUBFOLDERS:
            folder = (root / sub) if sub != "." else root
            searched.append(str(folder))
            if _holds_idx_files(folder):
                return folder
    files = ", ".join(n for names in _FILES.values() for n in names)
    raise FashionMNISTNotFound(
        f"Fashion-MNIST not found: none of {', '.join(searched)} holds its four idx files "
        f"({files}; gzipped or not). Either install Debian's package as root (`{APT_HINT}`), "
        f"or point {SOURCE_ENV} at a folder holding them (torchvision's download folder works: "
        "`torchvision.datasets.FashionMNIST(ROOT, download=True)`, then "
        f"{SOURCE_ENV}=ROOT/FashionMNIST/raw), or give an ImageFolder with train/ and val/."
    )


def default_data_root() -> Path:
    """Where prepared datasets go: ``$S2BNN_DATA_DIR``, else ``~/.cache/s2bnn/data``."""
    env = os.environ.get("S2BNN_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "s2bnn" / "data"


def fashion_mnist_dir(
    size: int = 32,
    train_per_class: int | None = EVAL_TRAIN_PER_CLASS,
    val_per_class: int | None = EVAL_VAL_PER_CLASS,
    seed: int = 0,
    root: str | os.PathLike[str] | None = None,
) -> Path:
    """The default folder for one preparation, named after its settings so that different
    settings never share (and never overwrite) a folder."""
    n_train = "all" if train_per_class is None else train_per_class
    n_val = "all" if val_per_class is None else val_per_class
    name = f"fashion-mnist-{size}px-train{n_train}-val{n_val}-seed{seed}"
    return Path(root if root is not None else default_data_root()) / name


def load_fashion_mnist(
    split: str, source_dir: str | os.PathLike[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST's ``train`` (60,000) or ``test`` (10,000) split: uint8 images (N, 28, 28)
    and int64 labels (N,) in 0..9 (``source_dir``: see :func:`find_fashion_mnist`)."""
    if split not in _FILES:
        raise DataError(f"split must be one of {sorted(_FILES)}, got {split!r}")
    source = find_fashion_mnist(source_dir)
    paths = [_idx_path(source, name) for name in _FILES[split]]
    images = read_idx(paths[0], ndim=3)
    labels = read_idx(paths[1], ndim=1).astype(np.int64)
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{source}: {images.shape[0]} images but {labels.shape[0]} labels in the {split} split"
        )
    if images.dtype != np.uint8:
        raise DataError(f"{paths[0]}: expected uint8 pixels, found {images.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= len(FASHION_MNIST_CLASSES)):
        raise DataError(f"{paths[1]}: labels outside 0..{len(FASHION_MNIST_CLASSES) - 1}")
    return images, labels


def _per_class(name: str, value: int | None) -> int | None:
    if value is None:
        return None
    if not Range(1, whole=True).admits(value):
        raise DataError(f"{name} must be a positive integer or None (all), got {value!r}")
    return int(value)


def subsample_per_class(labels: np.ndarray, per_class: int | None, seed: int) -> np.ndarray:
    """Sorted indices of ``per_class`` random images of each class (all of them for ``None``).

    Balanced, so that accuracy is not skewed by class frequencies, and reproducible: only
    ``seed`` (through ``numpy.random.default_rng``) decides which images are drawn.
    """
    per_class = _per_class("per_class", per_class)
    if per_class is None:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if per_class > len(members):
            raise DataError(
                f"{per_class} images per class requested but class {int(c)} has only "
                f"{len(members)}; ask for at most {len(members)} (or None for all)"
            )
        chosen.append(rng.permutation(members)[:per_class])
    return np.sort(np.concatenate(chosen))


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, content: dict) -> None:
    """Atomic: a reader sees the old file or the whole new one."""
    write_text(path, json.dumps(content, indent=2) + "\n", force=True)


def _count_pngs(out_dir: Path) -> dict[str, int]:
    return {
        split: sum(
            1
            for c in FASHION_MNIST_CLASSES
            if (out_dir / split / c).is_dir()
            for f in os.scandir(out_dir / split / c)
            if f.name.endswith(".png")
        )
        for split in _SPLITS
    }


def _check_owned(out_dir: Path) -> dict | None:
    """Settings of an unfinished preparation in ``out_dir`` (None for a new or empty folder);
    refuses a non-empty folder this module did not write, so it never deletes a user's files."""
    if not out_dir.exists():
        return None
    if not out_dir.is_dir():
        raise DataError(f"{out_dir} exists and is not a folder; choose another output folder")
    in_progress = out_dir / INCOMPLETE_MARKER
    if in_progress.is_file():
        return _read_json(in_progress) or {}
    if any(out_dir.iterdir()):
        raise DataError(
            f"{out_dir} is not empty and was not written by prepare_fashion_mnist (no {MARKER}); "
            "choose an empty or new output folder"
        )
    return None


def _plan(
    source_dir: Path | None, train_per_class: int | None, val_per_class: int | None, seed: int
) -> list[tuple[Path, np.ndarray]]:
    """(relative path, 28x28 image) of every PNG to write, in a fixed order."""
    plan = []
    per_class = {"train": train_per_class, "val": val_per_class}
    for split, source_split in _SPLITS.items():
        images, labels = load_fashion_mnist(source_split, source_dir)
        # Different seeds for the two splits: their draws are independent.
        for i in subsample_per_class(labels, per_class[split], seed + (split == "val")):
            rel = Path(split) / FASHION_MNIST_CLASSES[labels[i]] / f"{i:05d}.png"
            plan.append((rel, images[i]))
    return plan


def _remove_strays(out_dir: Path, expected: set[Path], wipe: bool) -> None:
    """Delete temporary files, and PNGs that this preparation will not write (all of them when
    ``wipe``: an unfinished run with other settings left them, e.g. at another size)."""
    for split in _SPLITS:
        for c in FASHION_MNIST_CLASSES:
            folder = out_dir / split / c
            if not folder.is_dir():
                continue
            for entry in os.scandir(folder):
                rel = Path(split) / c / entry.name
                if is_partial(entry.name) or (
                    entry.name.endswith(".png") and (wipe or rel not in expected)
                ):
                    os.unlink(entry.path)


def prepare_fashion_mnist(
    out_dir: str | os.PathLike[str],
    size: int = 32,
    train_per_class: int | None = None,
    val_per_class: int | None = None,
    seed: int = 0,
    source_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> Path:
    """Write Fashion-MNIST as an ImageFolder in ``out_dir`` (once) and return ``out_dir``.

    ``train_per_class`` / ``val_per_class``: a balanced random subsample of the train / test
    split (``None``: all 6,000 / 1,000 per class); :data:`EVAL_TRAIN_PER_CLASS` /
    :data:`EVAL_VAL_PER_CLASS` are ``s2bnn eval``'s sizes, :data:`DEMO_TRAIN_PER_CLASS` /
    :data:`DEMO_VAL_PER_CLASS` the CPU demo's. A finished folder with the same settings
    is returned at once; one with other settings is an error; an unfinished one is completed.
    """
    if not Range(8, whole=True).admits(size):
        raise DataError(f"size must be an integer of at least 8 pixels, got {size!r}")
    train_per_class = _per_class("train_per_class", train_per_class)
    val_per_class = _per_class("val_per_class", val_per_class)
    out_dir = Path(out_dir)
    settings = {
        "dataset": "fashion-mnist",
        "format_version": _FORMAT_VERSION,
        "size": size,
        "train_per_class": train_per_class,
        "val_per_class": val_per_class,
        "seed": seed,
        "classes": list(FASHION_MNIST_CLASSES),
    }
    marker = out_dir / MARKER
    if marker.is_file():
        done = _read_json(marker) or {}
        if done.get("settings") != settings:
            raise DataError(
                f"{out_dir} already holds Fashion-MNIST prepared with other settings "
                f"({done.get('settings')}); use another folder (e.g. fashion_mnist_dir(...)) or "
                "delete it"
            )
        if _count_pngs(out_dir) == done.get("counts"):
            return out_dir
        # Files went missing since: complete them below, as for an interrupted run.
        _write_json(out_dir / INCOMPLETE_MARKER, settings)
        marker.unlink()

    previous = _check_owned(out_dir)
    plan = _plan(source_dir, train_per_class, val_per_class, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(out_dir / INCOMPLETE_MARKER, settings)
    _remove_strays(out_dir, {rel for rel, _ in plan}, wipe=previous not in (None, settings))
    for split in _SPLITS:
        for c in FASHION_MNIST_CLASSES:
            (out_dir / split / c).mkdir(parents=True, exist_ok=True)

    todo = [(rel, image) for rel, image in plan if not (out_dir / rel).is_file()]
    desc = f"Fashion-MNIST -> {out_dir.name}"
    for rel, image in tqdm(todo, desc=desc, unit="img", disable=not progress):
        pil = Image.fromarray(image)  # uint8 (H, W): grayscale
        if size != pil.width:
            pil = pil.resize((size, size), Image.Resampling.BILINEAR)
        with atomic_file(out_dir / rel, force=True) as tmp:
            pil.convert("RGB").save(tmp, format="PNG")

    counts = _count_pngs(out_dir)
    _write_json(marker, {"settings": settings, "counts": counts})
    (out_dir / INCOMPLETE_MARKER).unlink()
    return out_dir
