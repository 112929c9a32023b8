"""``s2bnn eval``: kNN and linear-probe accuracy of a checkpoint or packed network on a dataset.

A typed function the command line only parses arguments for; user errors are raised as
:class:`~s2bnn_plugin.errors.S2BNNError` subclasses.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s2bnn_plugin.data import CROP_RATIOS, load_image_folder, resolve_dataset
from s2bnn_plugin.errors import FileMissing, UsageError
from s2bnn_plugin.evaluation.evaluate import evaluate, evaluate_raw_pixels
from s2bnn_plugin.evaluation.knn import prediction_agreement
from s2bnn_plugin.evaluation.models import EVAL_ENGINES, load_engines, require_engine_memory
from s2bnn_plugin.files import check_output, write_text
from s2bnn_plugin.validate import require_positive, require_whole

__all__ = ["EvalOptions", "evaluate_model"]


@dataclass(frozen=True)
class EvalOptions:
    """Everything ``s2bnn eval`` takes besides the model and the data: the engine, the image
    size and crop, the batch, the kNN and linear probe's settings, the Fashion-MNIST subset,
    where results go and whether progress bars show. ``train_per_class`` / ``val_per_class``:
    Fashion-MNIST images per class (``None``: all); ``data_root``: where Fashion-MNIST is
    prepared (``None``: the default cache); ``json_path``: a file the report is also written
    to, which must not exist unless ``force`` (and is never the model)."""

    engine: str = "auto"
    size: int = 32
    crop_ratio: float = 1.0
    batch_size: int = 256
    k: int = 20
    temperature: float = 0.07
    weight_decay: float = 1e-2
    raw_pixels: bool = False
    train_per_class: int | None = None
    val_per_class: int | None = None
    seed: int = 0
    data_root: str | None = None
    json_path: str | os.PathLike[str] | None = None
    force: bool = False
    progress: bool = True

    def check(self, model: str | os.PathLike[str] | None = None) -> None:
        """Every option that can be checked without the data or the model, checked before any
        work: each error names the option, the value and what it must be. The ``--json`` file
        is never ``model``, even with ``force``."""
        if self.engine not in EVAL_ENGINES:
            raise UsageError(
                f"--engine must be one of {', '.join(EVAL_ENGINES)}, got {self.engine!r}"
            )
        require_whole("--size", self.size, 1, "the image size in pixels")
        if not CROP_RATIOS.admits(self.crop_ratio):
            raise UsageError(
                f"--crop-ratio must be in {CROP_RATIOS.interval()} (1 keeps the whole image; "
                f"0.875 is solo-learn's 224/256), got {self.crop_ratio!r}"
            )
        require_whole("--batch-size", self.batch_size, 1, "images per forward pass")
        require_whole("--k", self.k, 1, "the number of neighbours that vote")
        require_positive(
            "--temperature", self.temperature, "the kNN vote weights are exp(similarity / T)"
        )
        require_positive(
            "--weight-decay",
            self.weight_decay,
            "the linear probe's L2 penalty, which makes its fit converge to one optimum",
        )
        for option, value in (
            ("--train-per-class", self.train_per_class),
            ("--val-per-class", self.val_per_class),
        ):
            if value is not None:
                require_whole(option, value, 1, "images per class, or 'all'")
        require_whole("--seed", self.seed, 0, "numpy seeds are non-negative")
        if self.json_path:
            inputs = [] if model is None else [model]
            check_output(self.json_path, option="--json", force=self.force, inputs=inputs)


def evaluate_model(
    model: str | os.PathLike[str],
    data: str = "fashion-mnist",
    options: EvalOptions | None = None,
) -> dict[str, Any]:
    """Features of ``model`` on the dataset's train and val splits, then weighted kNN (train as
    the bank) and a linear probe; prints a table and returns the report (also written to
    ``options.json_path``)."""
    opts = EvalOptions() if options is None else options
    if not Path(model).is_file():
        raise FileMissing(f"model file {model} does not exist")
    opts.check(model)
    # the model first: a checkpoint that cannot be loaded fails before the data is prepared
    engines, notes = load_engines(model, opts.engine)
    require_engine_memory(engines, opts.batch_size, opts.size)
    for note in notes:
        print(f"note: {note}")
    splits = resolve_dataset(
        data,
        size=opts.size,
        train_per_class=opts.train_per_class,
        val_per_class=opts.val_per_class,
        seed=opts.seed,
        data_root=opts.data_root,
        progress=opts.progress,
    )
    load = {"crop_ratio": opts.crop_ratio, "progress": opts.progress}
    train = load_image_folder(splits.train, opts.size, **load)
    val = load_image_folder(splits.val, opts.size, **load)
    print(
        f"data: {splits.root} ({len(train.class_names)} classes, {len(train.labels)} train / "
        f"{len(val.labels)} val images, {opts.size} px)\nmodel: {model}"
    )
    probe = {"k": opts.k, "temperature": opts.temperature, "weight_decay": opts.weight_decay}
    results = [
        evaluate(
            extractor,
            train.images,
            train.labels,
            val.images,
            val.labels,
            name=name,
            batch_size=opts.batch_size,
            progress=opts.progress,
            **probe,
        )
        for name, extractor in engines.items()
    ]
    if opts.raw_pixels:
        results.append(
            evaluate_raw_pixels(
                train.images, train.labels, val.images, val.labels, weight_decay=opts.weight_decay
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
        "size": opts.size,
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
    if opts.json_path:
        write_text(
            opts.json_path,
            json.dumps(report, indent=2) + "\n",
            force=opts.force,
            what="s2bnn eval",
        )
        print(f"wrote {opts.json_path}")
    return report
