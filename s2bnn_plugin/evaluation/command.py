"""``s2bnn eval``: kNN and linear-probe accuracy of a checkpoint or packed network on a dataset.

A typed function the command line only parses arguments for; user errors are raised as
:class:`~s2bnn_plugin.errors.S2BNNError` subclasses.
"""

from __future__ import annotations

import json
import numbers
import os
from pathlib import Path
from typing import Any

from s2bnn_plugin.data import load_image_folder, resolve_dataset
from s2bnn_plugin.errors import FileMissing, UsageError, require_positive, require_whole
from s2bnn_plugin.evaluation.evaluate import evaluate, evaluate_raw_pixels
from s2bnn_plugin.evaluation.knn import prediction_agreement
from s2bnn_plugin.evaluation.models import EVAL_ENGINES, load_engines
from s2bnn_plugin.files import check_output, write_text

__all__ = ["check_eval_options", "evaluate_model"]


def check_eval_options(
    *,
    engine: str,
    size: int,
    crop_ratio: float,
    batch_size: int,
    k: int,
    temperature: float,
    weight_decay: float,
    train_per_class: int | None,
    val_per_class: int | None,
    seed: int,
    json_path: str | os.PathLike[str] | None,
    force: bool = False,
    model: str | os.PathLike[str] | None = None,
) -> None:
    """Every option of ``s2bnn eval`` that can be checked without the data or the model,
    checked before any work: each error names the option, the value and what it must be. The
    ``--json`` file must not exist (unless ``force``) and is never the ``model`` itself."""
    if engine not in EVAL_ENGINES:
        raise UsageError(f"--engine must be one of {', '.join(EVAL_ENGINES)}, got {engine!r}")
    require_whole("--size", size, 1, "the image size in pixels")
    ok = not isinstance(crop_ratio, bool) and isinstance(crop_ratio, numbers.Real)
    if not ok or not 0 < crop_ratio <= 1:
        raise UsageError(
            f"--crop-ratio must be in (0, 1] (1 keeps the whole image; 0.875 is solo-learn's "
            f"224/256), got {crop_ratio!r}"
        )
    require_whole("--batch-size", batch_size, 1, "images per forward pass")
    require_whole("--k", k, 1, "the number of neighbours that vote")
    require_positive("--temperature", temperature, "the kNN vote weights are exp(similarity / T)")
    require_positive(
        "--weight-decay",
        weight_decay,
        "the linear probe's L2 penalty, which makes its fit converge to one optimum",
    )
    for option, value in (
        ("--train-per-class", train_per_class),
        ("--val-per-class", val_per_class),
    ):
        if value is not None:
            require_whole(option, value, 1, "images per class, or 'all'")
    require_whole("--seed", seed, 0, "numpy seeds are non-negative")
    if json_path:
        inputs = [] if model is None else [model]
        check_output(json_path, option="--json", force=force, inputs=inputs)


def evaluate_model(
    model: str | os.PathLike[str],
    data: str = "fashion-mnist",
    *,
    engine: str = "auto",
    size: int = 32,
    crop_ratio: float = 1.0,
    batch_size: int = 256,
    k: int = 20,
    temperature: float = 0.07,
    weight_decay: float = 1e-2,
    raw_pixels: bool = False,
    train_per_class: int | None = None,
    val_per_class: int | None = None,
    seed: int = 0,
    data_root: str | None = None,
    json_path: str | os.PathLike[str] | None = None,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Features of ``model`` on the dataset's train and val splits, then weighted kNN (train as
    the bank) and a linear probe; prints a table and returns the report (also written to
    ``json_path``, which must not exist unless ``force``)."""
    if not Path(model).is_file():
        raise FileMissing(f"model file {model} does not exist")
    check_eval_options(
        engine=engine,
        size=size,
        crop_ratio=crop_ratio,
        batch_size=batch_size,
        k=k,
        temperature=temperature,
        weight_decay=weight_decay,
        train_per_class=train_per_class,
        val_per_class=val_per_class,
        seed=seed,
        json_path=json_path,
        force=force,
        model=model,
    )
    # the model first: a checkpoint that cannot be loaded fails before the data is prepared
    engines, notes = load_engines(model, engine)
    for note in notes:
        print(f"note: {note}")
    splits = resolve_dataset(
        data,
        size=size,
        train_per_class=train_per_class,
        val_per_class=val_per_class,
        seed=seed,
        data_root=data_root,
        progress=progress,
    )
    load = {"crop_ratio": crop_ratio, "progress": progress}
    train = load_image_folder(splits.train, size, **load)
    val = load_image_folder(splits.val, size, **load)
    print(
        f"data: {splits.root} ({len(train.class_names)} classes, {len(train.labels)} train / "
        f"{len(val.labels)} val images, {size} px)\nmodel: {model}"
    )
    options = {"k": k, "temperature": temperature, "weight_decay": weight_decay}
    results = [
        evaluate(
            extractor,
            train.images,
            train.labels,
            val.images,
            val.labels,
            name=name,
            batch_size=batch_size,
            progress=progress,
            **options,
        )
        for name, extractor in engines.items()
    ]
    if raw_pixels:
        results.append(
            evaluate_raw_pixels(
                train.images, train.labels, val.images, val.labels, weight_decay=weight_decay
            )
        )

    print(f"{'engine':<11}{'dim':>6}{'kNN top-1':>11}{'linear top-1':>14}{'img/s':>9}")
    for r in results:
        knn = "-" if r.knn is None else f"{r.knn.top1:.2f}"
        speed = "-" if r.images_per_second is None else f"{r.images_per_second:.0f}"
        print(f"{r.name:<11}{r.feature_dim:>6}{knn:>11}{r.linear.top1:>14.2f}{speed:>9}")
    report: dict[str, Any] = {
        "model": str(model),
        "data": str(splits.root),
        "size": size,
        "classes": train.class_names,
        "results": [r.to_dict() for r in results],
    }
    by_name = {r.name: r for r in results}
    if "packed" in by_name and "torch" in by_name:
        same = prediction_agreement(
            by_name["packed"].knn.predictions, by_name["torch"].knn.predictions
        )
        report["knn_agreement_packed_vs_torch"] = same
        n = len(val.labels)
        print(
            f"kNN agreement, packed vs torch: {100 * same:.2f} % ({round(same * n)} / {n} images)"
        )
    if json_path:
        write_text(json_path, json.dumps(report, indent=2) + "\n", force=force, what="s2bnn eval")
        print(f"wrote {json_path}")
    return report
