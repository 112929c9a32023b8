"""``s2bnn eval``: kNN and linear-probe accuracy of a checkpoint or packed network on a dataset.

A typed function the command line only parses arguments for; user errors are raised as
:class:`~s2bnn_plugin.errors.S2BNNError` subclasses.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from s2bnn_plugin.data import load_image_folder, resolve_dataset
from s2bnn_plugin.errors import FileMissing
from s2bnn_plugin.evaluation.evaluate import evaluate, evaluate_raw_pixels
from s2bnn_plugin.evaluation.knn import prediction_agreement
from s2bnn_plugin.evaluation.models import load_engines

__all__ = ["evaluate_model"]


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
    progress: bool = True,
) -> dict[str, Any]:
    """Features of ``model`` on the dataset's train and val splits, then weighted kNN (train as
    the bank) and a linear probe; prints a table and returns the report (also written to
    ``json_path``)."""
    if not Path(model).is_file():
        raise FileMissing(f"model file {model} does not exist")
    splits = resolve_dataset(
        data,
        size=size,
        train_per_class=train_per_class,
        val_per_class=val_per_class,
        seed=seed,
        data_root=data_root,
        progress=progress,
    )
    engines, notes = load_engines(model, engine)
    for note in notes:
        print(f"note: {note}")
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
        Path(json_path).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {json_path}")
    return report
