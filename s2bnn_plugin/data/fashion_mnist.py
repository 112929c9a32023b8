"""Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package, written once as an ImageFolder.

These machines reach no dataset hub, but Debian ships Fashion-MNIST (70,000 real 28x28 grayscale
product photos, 10 classes, MIT licence) as idx files. solo-learn's ``custom`` dataset reads an
ImageFolder, so :func:`prepare_fashion_mnist` converts the idx files into one:

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

__all__ = [
    "APT_HINT",
    "DEFAULT_SOURCE_DIR",
    "DEMO_TRAIN_PER_CLASS",
    "DEMO_VAL_PER_CLASS",
    "FASHION_MNIST_CLASSES",
    "INCOMPLETE_MARKER",
    "MARKER",
    "FashionMNISTNotFound",
    "default_data_root",
    "fashion_mnist_dir",
    "load_fashion_mnist",
    "prepare_fashion_mnist",
    "subsample_per_class",
]

DEFAULT_SOURCE_DIR = Path("/usr/share/datasets/fashion-mnist")
APT_HINT = "apt-get install dataset-fashion-mnist"

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

#: CPU-sized demo: 10,000 training images (the size at which S2BNN_FACTS.md quotes the raw-pixel
#: baseline, 83.4 %) and 5,000 held-out ones (a standard error of about 0.5 points on accuracy).
DEMO_TRAIN_PER_CLASS = 1000
DEMO_VAL_PER_CLASS = 500

MARKER = "s2bnn_dataset.json"
INCOMPLETE_MARKER = "s2bnn_dataset.incomplete.json"
_FORMAT_VERSION = 1
_SPLITS = {"train": "train", "val": "test"}  # ImageFolder split -> Fashion-MNIST split
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


class FashionMNISTNotFound(FileNotFoundError):
    """Debian's ``dataset-fashion-mnist`` is not installed (or ``source_dir`` is wrong)."""


def default_data_root() -> Path:
    """Where prepared datasets go: ``$S2BNN_DATA_DIR``, else ``~/.cache/s2bnn/data``."""
    env = os.environ.get("S2BNN_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "s2bnn" / "data"


def fashion_mnist_dir(
    size: int = 32,
    train_per_class: int | None = DEMO_TRAIN_PER_CLASS,
    val_per_class: int | None = DEMO_VAL_PER_CLASS,
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
    split: str, source_dir: str | os.PathLike[str] = DEFAULT_SOURCE_DIR
) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST's ``train`` (60,000) or ``test`` (10,000) split: uint8 images (N, 28, 28)
    and int64 labels (N,) in 0..9."""
    if split not in _FILES:
        raise ValueError(f"split must be one of {sorted(_FILES)}, got {split!r}")
    source = Path(source_dir)
    paths = [source / name for name in _FILES[split]]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise FashionMNISTNotFound(
            f"Fashion-MNIST not found: {', '.join(missing)} missing in {source}. Install Debian's "
            f"package as root: `{APT_HINT}` (it puts the idx files in {DEFAULT_SOURCE_DIR}), or "
            "give another ImageFolder."
        )
    images = read_idx(paths[0], ndim=3)
    labels = read_idx(paths[1], ndim=1).astype(np.int64)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{source}: {images.shape[0]} images but {labels.shape[0]} labels in the {split} split"
        )
    if images.dtype != np.uint8:
        raise ValueError(f"{paths[0]}: expected uint8 pixels, found {images.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= len(FASHION_MNIST_CLASSES)):
        raise ValueError(f"{paths[1]}: labels outside 0..{len(FASHION_MNIST_CLASSES) - 1}")
    return images, labels


def _per_class(name: str, value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer or None (all), got {value!r}")
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
            raise ValueError(
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
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(content, indent=2) + "\n")
    os.replace(tmp, path)


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
        raise ValueError(f"{out_dir} exists and is not a folder; choose another output folder")
    in_progress = out_dir / INCOMPLETE_MARKER
    if in_progress.is_file():
        return _read_json(in_progress) or {}
    if any(out_dir.iterdir()):
        raise ValueError(
            f"{out_dir} is not empty and was not written by prepare_fashion_mnist (no {MARKER}); "
            "choose an empty or new output folder"
        )
    return None


def _plan(
    source_dir: Path, train_per_class: int | None, val_per_class: int | None, seed: int
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
                if entry.name.endswith(".tmp") or (
                    entry.name.endswith(".png") and (wipe or rel not in expected)
                ):
                    os.unlink(entry.path)


def prepare_fashion_mnist(
    out_dir: str | os.PathLike[str],
    size: int = 32,
    train_per_class: int | None = None,
    val_per_class: int | None = None,
    seed: int = 0,
    source_dir: str | os.PathLike[str] = DEFAULT_SOURCE_DIR,
    progress: bool = True,
) -> Path:
    """Write Fashion-MNIST as an ImageFolder in ``out_dir`` (once) and return ``out_dir``.

    ``train_per_class`` / ``val_per_class``: a balanced random subsample of the train / test
    split (``None``: all 6,000 / 1,000 per class); :data:`DEMO_TRAIN_PER_CLASS` and
    :data:`DEMO_VAL_PER_CLASS` are the CPU demo's sizes. A finished folder with the same settings
    is returned at once; one with other settings is an error; an unfinished one is completed.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be an integer of at least 8 pixels, got {size!r}")
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
            raise ValueError(
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
    plan = _plan(Path(source_dir), train_per_class, val_per_class, seed)
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
        path = out_dir / rel
        tmp = path.with_name(path.name + ".tmp")
        pil.convert("RGB").save(tmp, format="PNG")
        os.replace(tmp, path)

    counts = _count_pngs(out_dir)
    _write_json(marker, {"settings": settings, "counts": counts})
    (out_dir / INCOMPLETE_MARKER).unlink()
    return out_dir
