"""Data layer: idx reader, Fashion-MNIST as an ImageFolder (resumable), ImageFolder validation."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest
from image_utils import fake_fashion_mnist, make_image_folder, write_idx
from PIL import Image
from process_utils import run_python

from s2bnn_plugin.data import (
    APT_HINT,
    FASHION_MNIST_CLASSES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    FashionMNISTNotFound,
    IdxFormatError,
    eval_transform,
    fashion_mnist_dir,
    load_fashion_mnist,
    load_image_folder,
    prepare_fashion_mnist,
    read_idx,
    resolve_dataset,
    subsample_per_class,
    validate_dataset_root,
    validate_image_folder,
)
from s2bnn_plugin.data import fashion_mnist as fm
from s2bnn_plugin.files import is_partial

CLASSES5 = ["a", "b", "c", "d", "e"]


# ---------------------------------------------------------------------------------------- idx


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
        np.array([-5, 0, 70000], dtype=np.int32),
        np.array([[1.5, -2.25]], dtype=np.float32),
    ],
)
def test_idx_round_trip(tmp_path, array, compress):
    path = write_idx(tmp_path / "a.idx", array, compress)
    out = read_idx(path, ndim=array.ndim)
    assert out.dtype == array.dtype and out.dtype.isnative
    np.testing.assert_array_equal(out, array)


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda b: b"\x01" + b[1:], "bad magic number"),
        (lambda b: b[:2] + b"\x07" + b[3:], "unknown idx type code 0x07"),
        (lambda b: b[:3] + b"\x00" + b[4:], "0 dimensions"),
        (lambda b: b[:-1], "truncated"),
        (lambda b: b + b"\x00", "trailing data"),
        (lambda b: b[:6], "truncated header"),
        (lambda b: b[:3], "too short"),
    ],
)
def test_idx_malformed(tmp_path, mutate, message):
    good = np.zeros((2, 3, 4), np.uint8)
    header = bytes([0, 0, 0x08, 3]) + np.asarray(good.shape, ">u4").tobytes()
    path = tmp_path / "bad.gz"
    path.write_bytes(gzip.compress(mutate(header + good.tobytes())))
    with pytest.raises(IdxFormatError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_idx_wrong_ndim_corrupt_gzip_missing(tmp_path):
    labels = write_idx(tmp_path / "labels.gz", np.zeros(5, np.uint8))
    with pytest.raises(IdxFormatError, match="expected a 3-d idx array, the file holds 1-d"):
        read_idx(labels, ndim=3)
    whole = labels.read_bytes()
    labels.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(IdxFormatError, match="corrupted or truncated gzip"):
        read_idx(labels)
    with pytest.raises(FileNotFoundError, match="idx file not found"):
        read_idx(tmp_path / "nope.gz")


# ------------------------------------------------------------------------------ Fashion-MNIST


def test_missing_debian_package_says_how_to_install(tmp_path):
    with pytest.raises(FashionMNISTNotFound, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train", tmp_path)
    with pytest.raises(FashionMNISTNotFound, match=APT_HINT):
        prepare_fashion_mnist(tmp_path / "out", source_dir=tmp_path, progress=False)
    assert not (tmp_path / "out").exists()


def test_subsample_per_class_balanced_and_reproducible():
    labels = np.repeat(np.arange(4), 10)[np.random.default_rng(1).permutation(40)]
    a = subsample_per_class(labels, 3, seed=7)
    assert np.all(np.diff(a) > 0)
    assert np.bincount(labels[a]).tolist() == [3, 3, 3, 3]
    np.testing.assert_array_equal(a, subsample_per_class(labels, 3, seed=7))
    assert not np.array_equal(a, subsample_per_class(labels, 3, seed=8))
    assert len(subsample_per_class(labels, None, seed=0)) == 40
    with pytest.raises(ValueError, match="at most 10"):
        subsample_per_class(labels, 11, seed=0)
    with pytest.raises(ValueError, match="positive integer"):
        subsample_per_class(labels, 0, seed=0)


def test_prepare_writes_an_image_folder_that_round_trips(tmp_path):
    source = fake_fashion_mnist(tmp_path / "src", train_per_class=3, test_per_class=2)
    out = prepare_fashion_mnist(
        tmp_path / "fm",
        size=16,
        train_per_class=2,
        val_per_class=1,
        source_dir=source,
        progress=False,
    )
    for split, n in (("train", 2), ("val", 1)):
        assert sorted(p.name for p in (out / split).iterdir()) == sorted(FASHION_MNIST_CLASSES)
        for c in FASHION_MNIST_CLASSES:
            assert len(list((out / split / c).glob("*.png"))) == n
    png = next((out / "train" / "trouser").glob("*.png"))
    with Image.open(png) as im:
        assert (im.mode, im.size) == ("RGB", (16, 16))
    marker = json.loads((out / fm.MARKER).read_text())
    assert marker["counts"] == {"train": 20, "val": 10}
    assert not any(map(is_partial, out.rglob("*"))) and not (out / fm.INCOMPLETE_MARKER).exists()

    # Labels survive the trip: each image's gray level encodes its source label.
    splits = validate_dataset_root(out)
    assert splits.class_names == sorted(FASHION_MNIST_CLASSES)
    loaded = load_image_folder(out / "val", 16, progress=False)
    assert loaded.images.shape == (10, 3, 16, 16) and loaded.images.dtype == np.float32
    centre = loaded.images[:, 0, 8, 8] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
    source_label = np.round((centre * 255 - 10) / 20).astype(int)
    names = [loaded.class_names[i] for i in loaded.labels]
    assert names == [FASHION_MNIST_CLASSES[c] for c in source_label]


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*.png")}


def test_prepare_is_idempotent_and_refuses_other_settings(tmp_path):
    source = fake_fashion_mnist(tmp_path / "src")
    kwargs = {"size": 8, "train_per_class": 2, "val_per_class": 1, "source_dir": source}
    out = prepare_fashion_mnist(tmp_path / "fm", progress=False, **kwargs)
    before = _mtimes(out)
    assert prepare_fashion_mnist(out, progress=False, **kwargs) == out
    assert _mtimes(out) == before
    with pytest.raises(ValueError, match="other settings"):
        prepare_fashion_mnist(out, progress=False, **{**kwargs, "size": 12})
    # A file deleted since: the next call completes the folder again.
    os.unlink(next(iter(before)))
    prepare_fashion_mnist(out, progress=False, **kwargs)
    assert set(_mtimes(out)) == set(before)


class CountingSave:
    """Replaces ``PIL.Image.Image.save``: records each call; raises KeyboardInterrupt on call
    number ``die_at`` after leaving a half-written temporary file (a kill mid-write)."""

    def __init__(self, die_at: int | None = None) -> None:
        self.calls: list[str] = []
        self.die_at = die_at
        self.real = Image.Image.save

    def install(self, monkeypatch) -> CountingSave:
        counter = self

        def save(image, fp, *args, **kwargs):
            counter.calls.append(str(fp))
            if len(counter.calls) == counter.die_at:
                Path(fp).write_bytes(b"half a png")
                raise KeyboardInterrupt
            return counter.real(image, fp, *args, **kwargs)

        monkeypatch.setattr(Image.Image, "save", save)
        return self


def test_prepare_resumes_after_an_interruption(tmp_path, monkeypatch):
    source = fake_fashion_mnist(tmp_path / "src")
    kwargs = {"size": 8, "train_per_class": 3, "val_per_class": 2, "source_dir": source}
    out = tmp_path / "fm"
    CountingSave(die_at=18).install(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        prepare_fashion_mnist(out, progress=False, **kwargs)
    assert not (out / fm.MARKER).exists()
    # Ctrl-C removed the half-written temporary; a SIGKILL would leave one like this:
    assert len(list(out.rglob("*.png"))) == 17 and not any(map(is_partial, out.rglob("*")))
    killed = out / "train" / FASHION_MNIST_CLASSES[0] / ".00001.png.0123abcd.partial"
    killed.write_bytes(b"half a png")
    with pytest.raises(ValueError, match="unfinished"):  # never used half-written
        validate_dataset_root(out)
    written = _mtimes(out)

    resumed = CountingSave().install(monkeypatch)
    prepare_fashion_mnist(out, progress=False, **kwargs)
    assert len(resumed.calls) == 50 - 17  # only the missing images are written
    assert all(_mtimes(out)[p] == t for p, t in written.items())
    assert len(list(out.rglob("*.png"))) == 50 and not any(map(is_partial, out.rglob("*")))
    assert (out / fm.MARKER).is_file()
    validate_dataset_root(out)


def test_interrupted_run_with_other_settings_is_redone(tmp_path, monkeypatch):
    source = fake_fashion_mnist(tmp_path / "src")
    kwargs = {"train_per_class": 2, "val_per_class": 1, "source_dir": source, "progress": False}
    out = tmp_path / "fm"
    CountingSave(die_at=6).install(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        prepare_fashion_mnist(out, size=8, **kwargs)
    monkeypatch.undo()
    prepare_fashion_mnist(out, size=12, **kwargs)
    sizes = set()
    for png in out.rglob("*.png"):
        with Image.open(png) as im:
            sizes.add(im.size)
    assert sizes == {(12, 12)}


def test_prepare_refuses_a_foreign_folder_and_bad_arguments(tmp_path):
    source = fake_fashion_mnist(tmp_path / "src")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not empty and was not written"):
        prepare_fashion_mnist(foreign, size=8, train_per_class=1, source_dir=source)
    assert (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="size"):
        prepare_fashion_mnist(tmp_path / "x", size=4, source_dir=source)
    with pytest.raises(ValueError, match="train_per_class"):
        prepare_fashion_mnist(tmp_path / "x", train_per_class=-1, source_dir=source)


def test_resolve_dataset_prepares_fashion_mnist_once(tmp_path):
    source = fake_fashion_mnist(tmp_path / "src")
    splits = resolve_dataset(
        "fashion-mnist",
        size=8,
        train_per_class=1,
        val_per_class=1,
        data_root=tmp_path / "d",
        source_dir=source,
        progress=False,
    )
    assert splits.root == fashion_mnist_dir(8, 1, 1, 0, root=tmp_path / "d")
    assert splits.root.name == "fashion-mnist-8px-train1-val1-seed0"
    assert len(list(splits.train.rglob("*.png"))) == 10


# ---------------------------------------------------------------------------- ImageFolders


def test_validate_image_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist.*fashion-mnist"):
        validate_image_folder(tmp_path / "nope")
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        validate_image_folder(tmp_path / "file.png")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no class sub-folders.*one sub-folder per class"):
        validate_image_folder(empty)
    for c in CLASSES5:
        (empty / c).mkdir()
        (empty / c / "readme.txt").write_text("not an image")
    with pytest.raises(ValueError, match="holds no images"):
        validate_image_folder(empty)
    few = make_image_folder(tmp_path / "few", ["cat", "dog", "eel"], per_class=1)
    with pytest.raises(ValueError, match="3 class.*at least 5.*top-5"):
        validate_image_folder(few)
    five = make_image_folder(tmp_path / "five", CLASSES5, per_class=1)
    (five / "f").mkdir()
    with pytest.raises(ValueError, match=r"1 of 6 class folders hold no images \(f\)"):
        validate_image_folder(five)
    (five / "f" / "deep").mkdir()
    Image.new("RGB", (4, 4)).save(five / "f" / "deep" / "x.JPG")  # nested, upper-case: found
    assert validate_image_folder(five) == [*CLASSES5, "f"]


def test_thousands_of_empty_class_folders_are_named_a_few_and_counted(tmp_path):
    """3000 empty class folders made a 33 KB one-line error: now five are named, the rest
    counted."""
    root = make_image_folder(tmp_path / "d", CLASSES5, per_class=1)
    for i in range(3000):
        (root / f"empty{i:04d}").mkdir()
    with pytest.raises(ValueError) as info:
        validate_image_folder(root)
    message = str(info.value)
    assert "3000 of 3005 class folders hold no images (empty0000, empty0001, " in message
    assert "empty0004 and 2995 more)" in message and len(message) < 400, message


@pytest.mark.parametrize("kind", ["named pipe", "link to nothing"])
def test_a_named_pipe_among_the_images_is_refused_without_opening_it(tmp_path, kind):
    """A named pipe called like an image made ``s2bnn eval`` wait forever (PIL opened it). It is
    refused by name, before anything is opened: in a child process with a time limit, since
    the regression it guards is a hang."""
    root = make_image_folder(tmp_path / "d", CLASSES5, per_class=2)
    odd = root / CLASSES5[2] / "x.png"
    if kind == "named pipe":
        os.mkfifo(odd)
    else:
        odd.symlink_to(tmp_path / "gone.png")
    code = (
        "import sys; from s2bnn_plugin.data import load_image_folder\n"
        "load_image_folder(sys.argv[1], 8, progress=False)"
    )
    proc = run_python(code, str(root), timeout=120)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert "1 file(s) named like images are not regular files" in last and str(odd) in last


def test_validate_dataset_root(tmp_path):
    make_image_folder(tmp_path / "train", CLASSES5, per_class=1)
    with pytest.raises(ValueError, match="no val/ sub-folder.*data.val_path"):
        validate_dataset_root(tmp_path)
    make_image_folder(tmp_path / "val", CLASSES5[:4] + ["z"], per_class=1)
    with pytest.raises(ValueError, match=r"only in train/: \['e'\], only in val/: \['z'\]"):
        validate_dataset_root(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        validate_dataset_root(tmp_path / "nope")


def test_load_image_folder_normalises_like_solo_learn(tmp_path):
    root = tmp_path / "solid"
    for i, c in enumerate(CLASSES5):
        (root / c).mkdir(parents=True)
        Image.new("RGB", (10, 6), (50 * i, 20, 200)).save(root / c / "0.png")
    loaded = load_image_folder(root, 8, progress=False)
    assert loaded.images.shape == (5, 3, 8, 8)
    assert loaded.labels.tolist() == [0, 1, 2, 3, 4] and loaded.class_names == CLASSES5
    expected = (np.array([50 * 4, 20, 200]) / 255 - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(loaded.images[4].mean(axis=(1, 2)), expected, atol=1e-5)


def test_eval_transform_reproduces_solo_learns_custom_pipeline():
    image = Image.new("RGB", (400, 300))
    assert eval_transform(224, crop_ratio=224 / 256)(image).shape == (3, 224, 224)
    assert eval_transform(32)(Image.new("RGB", (28, 28))).shape == (3, 32, 32)
    with pytest.raises(ValueError, match="crop_ratio"):
        eval_transform(32, crop_ratio=1.5)


# ------------------------------------------------------------------- the real Debian package


@pytest.mark.fashion_mnist
def test_real_fashion_mnist_files():
    images, labels = load_fashion_mnist("test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1000] * 10
    train_images, train_labels = load_fashion_mnist("train")
    assert train_images.shape == (60000, 28, 28)
    assert np.bincount(train_labels).tolist() == [6000] * 10
    assert 50 < images.mean() < 100  # real photos on a black background, not noise
