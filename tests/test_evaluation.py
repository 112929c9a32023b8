"""Evaluation layer: feature extraction, solo-learn's weighted kNN, the linear probe, checkpoint
loading and the ``s2bnn eval`` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from image_utils import make_image_folder
from PIL import Image
from torch import nn

from s2bnn_plugin.backbones import create_backbone
from s2bnn_plugin.cli import main
from s2bnn_plugin.data import (
    load_fashion_mnist,
    subsample_per_class,
)
from s2bnn_plugin.evaluation import (
    TorchExtractor,
    evaluate,
    extract_features,
    knn_agreement,
    knn_classify,
    knn_scores,
    linear_probe,
    load_engines,
    load_solo_backbone,
    prediction_agreement,
    raw_pixel_probe,
)
from s2bnn_plugin.evaluation.linear import gray_as_rgb

CLASSES = ["ant", "bee", "cat", "dog", "eel", "fox"]


@pytest.fixture(autouse=True)
def _one_thread():
    """Small problems run faster, and reproducibly, on one thread (a busy 2-core machine makes
    two OpenMP threads spin)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _random_split(seed=0, n_train=60, n_test=25, dim=8, classes=4):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(n_train, dim)).astype(np.float32),
        rng.integers(0, classes, n_train),
        rng.normal(size=(n_test, dim)).astype(np.float32),
        rng.integers(0, classes, n_test),
    )


def _brute_force_knn(train_x, train_y, test_x, k, T, num_classes):
    """The weighted kNN written out one test image at a time."""
    train_n = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    scores = np.zeros((len(test_x), num_classes))
    for i, x in enumerate(test_x):
        sim = train_n @ (x / np.linalg.norm(x))
        for j in np.argsort(-sim, kind="stable")[:k]:
            scores[i, train_y[j]] += np.exp(sim[j] / T)
    return scores


# --------------------------------------------------------------------------------------- kNN


@pytest.mark.parametrize("k,max_size", [(20, 5_000_000), (5, 130), (1, 1), (100, 60)])
def test_knn_matches_brute_force(k, max_size):
    train_x, train_y, test_x, test_y = _random_split()
    expected = _brute_force_knn(train_x, train_y, test_x, min(k, 60), 0.07, 4)
    scores = knn_scores(train_x, train_y, test_x, k=k, max_distance_matrix_size=max_size)
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-4)
    result = knn_classify(train_x, train_y, test_x, test_y, k=k, max_distance_matrix_size=max_size)
    predictions = expected.argmax(axis=1)
    np.testing.assert_array_equal(result.predictions, predictions)
    assert result.top1 == pytest.approx(100 * np.mean(predictions == test_y))
    top5 = np.argsort(-expected, axis=1, kind="stable")[:, : min(5, k)]
    assert result.top5 == pytest.approx(100 * np.mean((top5 == test_y[:, None]).any(axis=1)))
    assert result.k == min(k, 60)


def test_knn_temperature_and_scale_invariance():
    train_x, train_y, test_x, test_y = _random_split(seed=3)
    base = knn_classify(train_x, train_y, test_x, test_y)
    scaled = knn_classify(train_x * 7.5, train_y, test_x * 0.01, test_y)  # cosine: scale-free
    np.testing.assert_array_equal(base.predictions, scaled.predictions)
    expected = _brute_force_knn(train_x, train_y, test_x, 20, 0.5, 4).argmax(axis=1)
    hot = knn_classify(train_x, train_y, test_x, test_y, temperature=0.5)
    np.testing.assert_array_equal(hot.predictions, expected)


def test_knn_bad_input():
    train_x, train_y, test_x, test_y = _random_split()
    with pytest.raises(ValueError, match="differ in dimension"):
        knn_classify(train_x, train_y, test_x[:, :3], test_y)
    with pytest.raises(ValueError, match="train_labels must have shape"):
        knn_classify(train_x, train_y[:-1], test_x, test_y)
    with pytest.raises(ValueError, match="2-D"):
        knn_classify(train_x[0], train_y, test_x, test_y)


@pytest.mark.solo
def test_knn_equals_solo_learns_weighted_knn_classifier():
    """solo-learn's class cannot be constructed on torchmetrics 1.9 (``compute_on_step``), so its
    ``compute`` runs on a bare instance holding the four feature lists."""
    from solo.utils.knn import WeightedKNNClassifier

    train_x, train_y, test_x, test_y = _random_split(seed=5, n_train=300, n_test=101, classes=7)
    solo = WeightedKNNClassifier.__new__(WeightedKNNClassifier)
    nn.Module.__init__(solo)
    solo.k, solo.T, solo.distance_fx, solo.epsilon = 20, 0.07, "cosine", 1e-5
    solo.max_distance_matrix_size = 1000
    solo.train_features, solo.train_targets = [torch.from_numpy(train_x)], [torch.tensor(train_y)]
    solo.test_features, solo.test_targets = [torch.from_numpy(test_x)], [torch.tensor(test_y)]
    solo.reset = lambda: None
    top1, top5 = solo.compute()
    ours = knn_classify(train_x, train_y, test_x, test_y, max_distance_matrix_size=1000)
    assert (ours.top1, ours.top5) == pytest.approx((top1, top5))


def test_prediction_and_knn_agreement():
    assert prediction_agreement(np.array([1, 2, 3, 4]), np.array([1, 2, 0, 4])) == 0.75
    with pytest.raises(ValueError, match="one shape"):
        prediction_agreement(np.array([1, 2]), np.array([1, 2, 3]))
    train_x, train_y, test_x, _ = _random_split(seed=1)
    assert knn_agreement(train_x, test_x, 3 * train_x, 2 * test_x, train_y) == 1.0
    rng = np.random.default_rng(0)
    noisy = knn_agreement(
        train_x, test_x, train_x + rng.normal(0, 1, train_x.shape), test_x, train_y
    )
    assert noisy < 1


# ------------------------------------------------------------------------------ linear probe


def test_linear_probe_separable_data_and_determinism():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 4, size=(5, 20))
    labels = rng.integers(0, 5, 600)
    x = (centres[labels] + rng.normal(size=(600, 20))).astype(np.float32)
    x[:, 7] = 3.0  # a constant feature must not break standardisation
    a = linear_probe(x[:400], labels[:400], x[400:], labels[400:])
    assert a.top1 >= 98 and a.train_top1 >= 98 and a.iterations > 0
    b = linear_probe(x[:400], labels[:400], x[400:], labels[400:])
    np.testing.assert_array_equal(a.predictions, b.predictions)
    scaled = linear_probe(1000 * x[:400] + 5, labels[:400], 1000 * x[400:] + 5, labels[400:])
    assert scaled.top1 == pytest.approx(a.top1, abs=0.5)  # standardised: scale-free


def test_linear_probe_bad_input():
    x = np.zeros((10, 4), np.float32)
    y = np.arange(10) % 2
    with pytest.raises(ValueError, match="differ in dimension"):
        linear_probe(x, y, x[:, :3], y)
    with pytest.raises(ValueError, match="one label per feature row"):
        linear_probe(x, y[:5], x, y)
    with pytest.raises(ValueError, match="2-D"):
        linear_probe(x.ravel(), y, x, y)


def test_raw_pixel_probe_treats_gray_rgb_as_one_channel():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 90)
    gray = (labels[:, None, None, None] + rng.normal(0, 1.5, (90, 1, 5, 5))).astype(np.float32)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    rgb = ((gray - mean[:, None, None]) / std[:, None, None]).astype(np.float32)
    one = raw_pixel_probe(gray[:60], labels[:60], gray[60:], labels[60:])
    three = raw_pixel_probe(rgb[:60], labels[:60], rgb[60:], labels[60:])
    np.testing.assert_array_equal(one.predictions, three.predictions)
    assert gray_as_rgb(rgb)
    color = rgb.copy()
    color[-1, 2, 0, 0] += 0.01  # one pixel of colour anywhere: all channels are kept
    assert not gray_as_rgb(color) and not gray_as_rgb(gray)


@pytest.mark.fashion_mnist
def test_raw_pixel_baseline_on_real_fashion_mnist():
    """This probe scores 83.7 % with 10,000 training images on the full test split, as a linear
    classifier on raw Fashion-MNIST pixels should (low 80s). A 3,000 / 1,000 subsample keeps the
    test fast and scores about 82 %."""
    train_x, train_y = load_fashion_mnist("train")
    test_x, test_y = load_fashion_mnist("test")
    i = subsample_per_class(train_y, 300, seed=0)
    j = subsample_per_class(test_y, 100, seed=1)
    result = raw_pixel_probe(train_x[i] / 255.0, train_y[i], test_x[j] / 255.0, test_y[j])
    assert 79 <= result.top1 <= 86


# -------------------------------------------------------------------------- feature extraction


def _tiny_backbone():
    return create_backbone("reactnet18", cifar=True, width_mult=0.125).eval()


def test_extract_features_batches_and_torch_adapter():
    model = _tiny_backbone()
    images = np.random.default_rng(0).normal(size=(7, 3, 12, 12)).astype(np.float32)
    features = extract_features(model, images, batch_size=3, progress=False)
    with torch.no_grad():
        expected = model(torch.from_numpy(images)).numpy()
    assert features.shape == (7, model.num_features) and features.dtype == np.float32
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(TorchExtractor(model)(images), features, rtol=1e-5, atol=1e-5)


def test_extract_features_checks_the_extractor():
    images = np.zeros((4, 3, 8, 8), np.float32)
    with pytest.raises(ValueError, match=r"expected \(batch, feature_dim\)"):
        extract_features(lambda x: np.zeros(len(x)), images, progress=False)
    with pytest.raises(ValueError, match="non-finite features"):
        extract_features(lambda x: np.full((len(x), 2), np.nan), images, progress=False)
    with pytest.raises(ValueError, match="for one batch"):
        extract_features(lambda x: np.zeros((len(x), len(x))), images, 3, progress=False)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        extract_features(lambda x: x, images[0], progress=False)


def test_evaluate_separates_easy_classes():
    """End to end on images whose class is a bright pixel at its own position, through a fixed
    random linear extractor: kNN and the probe must both classify them."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(5), 20)
    images = rng.normal(0, 0.1, (100, 3, 16)).astype(np.float32)
    images[np.arange(100), :, 3 * labels] += 3
    images = images.reshape(100, 3, 4, 4)
    proj = rng.normal(size=(48, 16)).astype(np.float32)

    def extractor(x):
        return x.reshape(len(x), -1) @ proj

    result = evaluate(
        extractor, images[::2], labels[::2], images[1::2], labels[1::2], progress=False
    )
    assert result.knn.top1 == 100 and result.linear.top1 == 100
    assert result.feature_dim == 16 and (result.n_train, result.n_val) == (50, 50)
    assert json.dumps(result.to_dict())


# ----------------------------------------------------------------------- checkpoints and CLI


def _solo_checkpoint(tmp_path, model, kwargs, name="reactnet18"):
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    state = {f"backbone.{k}": v for k, v in model.state_dict().items()}
    state["projector.0.weight"] = torch.zeros(2, 2)  # other modules are ignored
    torch.save({"state_dict": state, "epoch": 1}, run / "last.ckpt")
    args = {"method": "s2bnn", "backbone": {"name": name, "kwargs": kwargs}}
    (run / "args.json").write_text(json.dumps(args))
    return run / "last.ckpt"


def _trained_like_backbone():
    model = create_backbone("reactnet18", cifar=True, width_mult=0.125)
    with torch.no_grad():  # non-default BatchNorm statistics, as after training
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2)
    return model.eval()


def test_load_solo_backbone(tmp_path):
    model = _trained_like_backbone()
    kwargs = {"cifar": True, "width_mult": 0.125}
    ckpt = _solo_checkpoint(tmp_path, model, kwargs)
    loaded = load_solo_backbone(ckpt)
    assert not loaded.training
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))

    _solo_checkpoint(tmp_path, model, {"cifar": True, "width_mult": 0.25})
    with pytest.raises(ValueError, match=r"do not fit the backbone.*reactnet18.*0\.25"):
        load_solo_backbone(ckpt)
    (tmp_path / "run" / "args.json").unlink()
    with pytest.raises(FileNotFoundError, match="no args.json beside it"):
        load_solo_backbone(ckpt)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_solo_backbone(tmp_path / "none.ckpt")


def test_load_engines_rules(tmp_path):
    packed = tmp_path / "model.s2bnn"
    packed.write_bytes(b"whatever")
    with pytest.raises(ValueError, match="packed network.*torch engine needs"):
        load_engines(packed, "torch")
    with pytest.raises(ValueError, match="engine must be one of"):
        load_engines(packed, "gpu")
    ckpt = _solo_checkpoint(
        tmp_path, _trained_like_backbone(), {"cifar": True, "width_mult": 0.125}
    )
    engines, _ = load_engines(ckpt, "torch")
    assert list(engines) == ["torch"]


def _dataset(tmp_path, classes=CLASSES):
    root = tmp_path / "data"
    make_image_folder(root / "train", classes, per_class=6, size=12, seed=0)
    make_image_folder(root / "val", classes, per_class=3, size=12, seed=1)
    return root


def _run_eval(tmp_path, engine: str, *extra: str) -> tuple[int, Path]:
    """``s2bnn eval`` on a small trained-like checkpoint and image folder; (exit code, report)."""
    ckpt = _solo_checkpoint(
        tmp_path, _trained_like_backbone(), {"cifar": True, "width_mult": 0.125}
    )
    report = tmp_path / "r.json"
    argv = ["eval", "--model", str(ckpt), "--data", str(_dataset(tmp_path))]
    argv += ["--engine", engine, "--size", "16", "--no-progress", "--json", str(report), *extra]
    return main(argv), report


def test_cli_eval_torch_engine(tmp_path, capsys):
    code, report = _run_eval(tmp_path, "torch", "--raw-pixels")
    assert code == 0
    out = capsys.readouterr().out
    assert "kNN top-1" in out and "linear top-1" in out and "raw pixels" in out
    results = json.loads(report.read_text())["results"]
    assert [r["name"] for r in results] == ["torch", "raw pixels"]
    assert results[0]["n_train"] == 36 and results[0]["n_val"] == 18
    # a percentage of the 18 held-out images
    hits = results[0]["knn_top1"] * 18 / 100
    assert hits == pytest.approx(round(hits), abs=1e-9) and results[1]["knn_top1"] is None


def test_cli_eval_both_engines_agree(tmp_path, capsys):
    code, report = _run_eval(tmp_path, "both")
    assert code == 0
    assert "kNN agreement, packed vs torch" in capsys.readouterr().out
    assert json.loads(report.read_text())["knn_agreement_packed_vs_torch"] >= 0.995


@pytest.mark.parametrize(
    "make_data,message",
    [
        (lambda p: p / "missing", "does not exist"),
        (lambda p: make_image_folder(p / "flat", CLASSES, 1), "no train/ and no val/"),
        (lambda p: _dataset(p, CLASSES[:3]), "at least 5"),
    ],
)
def test_cli_eval_bad_data(tmp_path, capsys, make_data, message):
    ckpt = _solo_checkpoint(
        tmp_path, _trained_like_backbone(), {"cifar": True, "width_mult": 0.125}
    )
    argv = ["eval", "--model", str(ckpt), "--data", str(make_data(tmp_path)), "--no-progress"]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_cli_eval_missing_model(tmp_path, capsys):
    assert main(["eval", "--model", str(tmp_path / "x.ckpt"), "--data", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err


# ------------------------------------------------------------------ options refused before work


@pytest.mark.parametrize(
    "extra,message",
    [
        (
            ["--k", "0"],
            "--k must be a whole number >= 1 (the number of neighbours that vote), got 0",
        ),
        (["--temperature", "0"], "--temperature must be a finite number > 0"),
        (["--temperature", "-0.5"], "--temperature must be a finite number > 0"),
        (["--temperature", "inf"], "--temperature must be a finite number > 0"),
        (["--weight-decay", "-1"], "--weight-decay must be a finite number > 0"),
        (["--weight-decay", "0"], "--weight-decay must be a finite number > 0"),
        (["--batch-size", "0"], "--batch-size must be a whole number >= 1"),
        (["--size", "0"], "--size must be a whole number >= 1"),
        (["--crop-ratio", "1.5"], "--crop-ratio must be in (0, 1]"),
        (["--train-per-class", "0"], "--train-per-class must be a whole number >= 1"),
        (["--val-per-class", "-3"], "--val-per-class must be a whole number >= 1"),
        (["--seed", "-1"], "--seed must be a whole number >= 0"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_cli_eval_refuses_bad_numbers_before_any_work(tmp_path, capsys, extra, message):
    """Checked before the model is read or the data prepared: the model file is not a checkpoint
    and the data root would be created by a Fashion-MNIST preparation."""
    model = tmp_path / "m.ckpt"
    model.write_bytes(b"not read")
    root = tmp_path / "data-root"
    argv = ["eval", "--model", str(model), "--data-root", str(root), "--no-progress", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not root.exists()


def test_cli_eval_refuses_a_json_path_it_could_not_write_before_any_work(tmp_path, capsys):
    model = tmp_path / "m.ckpt"
    model.write_bytes(b"not read")
    root = tmp_path / "data-root"
    base = ["eval", "--model", str(model), "--data-root", str(root), "--no-progress", "--json"]
    assert main([*base, str(tmp_path)]) == 2
    assert f"--json {tmp_path} is a folder; give a file name" in capsys.readouterr().err
    assert main([*base, str(tmp_path / "no" / "r.json")]) == 2
    assert "the folder" in capsys.readouterr().err
    assert not root.exists() and not (tmp_path / "no").exists()


def test_linear_probe_refuses_a_weight_decay_that_is_not_positive():
    x, y = np.eye(4, dtype=np.float32), np.arange(4)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="weight_decay must be a finite number > 0"):
            linear_probe(x, y, x, y, weight_decay=bad)


def test_cli_eval_names_corrupt_and_truncated_images(tmp_path, capsys):
    """A folder with a corrupt PNG and a truncated JPEG: one error naming both files, not
    PIL's traceback for the first; no model is run on a partial set."""
    ckpt = _solo_checkpoint(
        tmp_path, _trained_like_backbone(), {"cifar": True, "width_mult": 0.125}
    )
    data = _dataset(tmp_path)
    png = data / "train" / CLASSES[0] / "0.png"
    png.write_bytes(png.read_bytes()[:60])  # cut inside the image data
    jpeg = data / "train" / CLASSES[1] / "extra.jpg"
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(jpeg, quality=95)
    jpeg.write_bytes(jpeg.read_bytes()[:3000])  # truncated: the last scan lines are missing
    argv = ["eval", "--model", str(ckpt), "--data", str(data), "--engine", "torch"]
    assert main([*argv, "--size", "16", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"{jpeg} (OSError: image file is truncated" in err
    assert str(png) in err and "cannot be read as images" in err
