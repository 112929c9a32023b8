"""The ``s2bnn demo`` pipeline: the paper's comparison in miniature, resumable stage by stage.

Stages (each leaves ``stages/<name>.json`` when finished; a restart skips finished stages and
never retrains, hence never overwrites, a finished checkpoint):

1. ``data``: the dataset root (Fashion-MNIST prepared once, or the user's ImageFolder), validated;
2. ``teacher``: a real-valued self-supervised teacher (solo-learn SimCLR on solo-learn's ResNet-18);
3. ``contrastive``, ``distill``, ``mixed``: three binary students with the same budget: SimCLR
   alone, S2-BNN distillation alone, SimCLR + distillation;
4. ``eval``: kNN and linear probe on the held-out split (students on the packed CPU engine, the
   teacher in PyTorch, plus a raw-pixel probe; each model's results kept as it finishes), with
   kNN class distributions kept for the calibration analysis;
5. ``report``: results.md / results.json and the PNG plots.

All training runs through solo-learn's own ``main_pretrain.py`` in a subprocess with the plugin's
configs plus overrides; an interrupted training resumes from its last epoch checkpoint through
solo-learn's auto-resume.

The stages are generic over a list of :class:`StudentSpec` (:func:`run_pipeline`), numbered by
one list (:func:`stage_list`). Students are made from tables of :class:`StudentRecipe`: the demo's
three are :data:`STUDENTS` (:func:`demo_students`); ``s2bnn study`` and ``s2bnn ablation`` build
longer lists from theirs (:mod:`s2bnn_plugin.demo.study`, :mod:`s2bnn_plugin.demo.ablation_rows`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from s2bnn_plugin.data import DEMO_TRAIN_PER_CLASS, DEMO_VAL_PER_CLASS
from s2bnn_plugin.errors import S2BNNError
from s2bnn_plugin.files import atomic_open, write_text
from s2bnn_plugin.validate import require_positive, require_whole

__all__ = [
    "STUDENTS",
    "TEACHER_CONFIG",
    "TEMPERATURE",
    "DemoConfig",
    "DemoError",
    "StudentRecipe",
    "StudentSpec",
    "check_batches",
    "check_config",
    "count_images",
    "demo_students",
    "merge_overrides",
    "print_line",
    "run_demo",
    "run_pipeline",
    "stage_list",
    "student_overrides",
]


class DemoError(S2BNNError, RuntimeError):
    """A problem the user can fix (bad data, missing solo-learn, a failed training run)."""


@dataclass(frozen=True)
class StudentSpec:
    """One binary student: the stage (and run folder) ``name``, the plugin config it starts from
    and the overrides that make it what it is. Every student also gets the same budget (data,
    optimiser, epochs, backbone: :func:`student_overrides`); ``distill`` adds the teacher."""

    name: str
    config: str
    overrides: tuple[str, ...]
    description: str
    distill: bool
    objective: str | None = None  # the solo-learn objective trained on the student, if any
    seed: int = 0
    #: its training epochs; None: the budget's (``DemoConfig.epochs``)
    epochs: int | None = None
    #: an earlier student whose last checkpoint initialises this one (``student_init``)
    init_from: str | None = None
    #: False for an intermediate stage (a two-step recipe's real-weight step 1): trained, but not
    #: evaluated, since the packed engine takes binary weights only
    evaluate: bool = True


@dataclass(frozen=True)
class StudentRecipe:
    """What makes a kind of student what it is, as data: the plugin config it starts from, its
    Hydra overrides, what it is, whether the teacher distils it, and the solo-learn objective it
    trains, if any. In the overrides, the description and the objective, ``{field}`` stands for
    that field of the run's :class:`DemoConfig` (or a field :meth:`spec` is given).
    :meth:`spec` makes one run's student of it; the demo, the study and the ablation are tables
    of recipes."""

    config: str
    overrides: tuple[str, ...]
    description: str
    distill: bool
    objective: str | None = None

    def spec(
        self,
        cfg: DemoConfig,
        name: str,
        *,
        seed: int,
        fields: Mapping[str, object] | None = None,
        extra: Sequence[str] = (),
    ) -> StudentSpec:
        """The student ``name`` of this recipe in the run ``cfg``: its templates filled from
        ``cfg``'s fields and ``fields``, then ``extra`` overrides as given. The epochs, the
        student it starts from and whether it is evaluated are the spec's defaults
        (``dataclasses.replace`` sets them)."""
        values = {**vars(cfg), **(fields or {})}
        return StudentSpec(
            name=name,
            config=self.config,
            overrides=(*(o.format_map(values) for o in self.overrides), *extra),
            description=self.description.format_map(values),
            distill=self.distill,
            objective=None if self.objective is None else self.objective.format_map(values),
            seed=seed,
        )

    def adding(self, *overrides: str, **changes: Any) -> StudentRecipe:
        """This recipe with ``overrides`` after its own (and other ``changes`` of its fields)."""
        return replace(self, overrides=(*self.overrides, *overrides), **changes)


#: every student's distillation and contrastive temperature (the run's ``temperature``)
TEMPERATURE = "method_kwargs.temperature={temperature}"
#: the demo's three students, in training order: the same budget for all three
STUDENTS: dict[str, StudentRecipe] = {
    "contrastive": StudentRecipe(
        "bnn_mocov2plus.yaml",
        (
            TEMPERATURE,
            "method=simclr",
            "~method_kwargs.queue_size",
            "~momentum",
            "method_kwargs.proj_hidden_dim={proj_hidden_dim}",
        ),
        "binary, SimCLR only (no teacher)",
        distill=False,
        objective="simclr",
    ),
    "distill": StudentRecipe(
        "s2bnn.yaml", (TEMPERATURE,), "binary, S2-BNN distillation only", distill=True
    ),
    "mixed": StudentRecipe(
        "s2bnn.yaml",
        (
            TEMPERATURE,
            "method_kwargs.ssl_method=simclr",
            "+method_kwargs.ssl_weight=1.0",
            "+method_kwargs.ssl_kwargs.proj_hidden_dim={proj_hidden_dim}",
            "+method_kwargs.ssl_kwargs.proj_output_dim=128",
            "+method_kwargs.ssl_kwargs.temperature={temperature}",
        ),
        "binary, SimCLR + distillation",
        distill=True,
        objective="simclr",
    ),
}
#: the stages before and after the students'
FIRST_STAGES = ("data", "teacher")
LAST_STAGES = ("eval", "report")


def stage_list(students: Iterable[str]) -> list[str]:
    """Every stage of a run over the students named, in order: the one list that numbers the
    stages and that ``--until`` takes."""
    return [*FIRST_STAGES, *students, *LAST_STAGES]


STAGES = stage_list(STUDENTS)
#: the real-valued SimCLR teacher's config (``solo_configs/pretrain/custom``)
TEACHER_CONFIG = "teacher_simclr.yaml"


@dataclass
class DemoConfig:
    """Everything that decides the demo's results. The defaults take about 8 minutes on an idle
    2-core machine (README, "Demo", has the measurement)."""

    #: names the settings file (``<kind>_config.json``) and solo-learn's run names
    kind: ClassVar[str] = "demo"

    out_dir: Path = Path("s2bnn-demo")
    data: str = "fashion-mnist"
    train_per_class: int = DEMO_TRAIN_PER_CLASS
    val_per_class: int = DEMO_VAL_PER_CLASS
    image_size: int = 32
    # teacher: real-valued ResNet-18 (solo-learn's, ImageNet stem), SimCLR
    teacher_epochs: int = 10
    teacher_batch_size: int = 128
    teacher_lr: float = 2.0e-3  # Adam; solo-learn scales it by batch_size / 256
    # students: reactnet18 with binary weights and activations, same budget for all three
    backbone: str = "reactnet18"
    width_mult: float = 0.5
    cifar_stem: bool = False  # the 32 px stem is ~10x slower on CPU (32x32 maps in stage 1)
    epochs: int = 6
    batch_size: int = 64
    lr: float = 2.0e-3  # Adam; scaled by batch_size / 256 as well
    proj_hidden_dim: int = 512
    temperature: float = 0.2
    num_workers: int = 1
    eval_batch_size: int = 256
    knn_k: int = 20
    knn_temperature: float = 0.07
    seed: int = 0
    extra_overrides: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["out_dir"] = str(self.out_dir)
        return d


Log = Callable[[str], None]


def print_line(msg: str) -> None:
    """The stages' default :data:`Log`: one line to standard output, flushed."""
    print(msg, flush=True)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, content: Any) -> None:
    """Atomic, so that an interrupted write never leaves a marker that looks finished."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(content, indent=2, default=str) + "\n", force=True)


class Stages:
    """Markers of finished stages under ``out_dir/stages``."""

    def __init__(self, out_dir: Path) -> None:
        self.dir = out_dir / "stages"

    def done(self, name: str) -> dict[str, Any] | None:
        return _read_json(self.dir / f"{name}.json")

    def finish(self, name: str, result: dict[str, Any]) -> dict[str, Any]:
        _write_json(self.dir / f"{name}.json", result)
        return result


def _check_settings(cfg: DemoConfig) -> None:
    """A demo folder belongs to one set of settings: resuming with others would mix results."""
    path = cfg.out_dir / f"{cfg.kind}_config.json"
    settings = {k: v for k, v in cfg.to_json().items() if k != "out_dir"}
    previous = _read_json(path)
    if previous is not None and previous != settings:
        changed = sorted(k for k in settings if previous.get(k) != settings[k])
        raise DemoError(
            f"{cfg.out_dir} holds a {cfg.kind} run with other settings (changed: {changed}); "
            "use another --out folder, or delete it to start over"
        )
    _write_json(path, settings)


# ------------------------------------------------------------------------------ settings

#: DemoConfig fields that ``s2bnn demo`` / ``s2bnn study`` set from an option (named in errors)
OPTIONS = {
    "epochs": "--epochs",
    "teacher_epochs": "--teacher-epochs",
    "train_per_class": "--train-per-class",
    "val_per_class": "--val-per-class",
    "width_mult": "--width-mult",
}

#: whole-number settings: (smallest value, what it is)
_WHOLE: dict[str, tuple[int, str]] = {
    "train_per_class": (1, "training images per class"),
    "val_per_class": (1, "held-out images per class"),
    "image_size": (8, "the image size in pixels"),
    "teacher_epochs": (1, "the teacher's training epochs"),
    # BatchNorm in the projectors needs two images per batch in training
    "teacher_batch_size": (2, "the teacher's training batch"),
    "epochs": (1, "every student's training epochs"),
    "batch_size": (2, "the students' training batch"),
    "proj_hidden_dim": (1, "the projectors' hidden width"),
    "num_workers": (0, "data-loading worker processes"),
    "eval_batch_size": (1, "images per forward pass in the evaluation"),
    "knn_k": (1, "the kNN neighbours that vote"),
    "seed": (0, "numpy seeds are non-negative"),
}
#: real settings that must be finite and > 0
_POSITIVE: dict[str, str] = {
    "teacher_lr": "the teacher's learning rate",
    "width_mult": "the students' width multiplier; 1.0 is the paper's width",
    "lr": "the students' learning rate",
    "temperature": "the contrastive and distillation temperature",
    "knn_temperature": "the kNN temperature",
}


def _name(key: str) -> str:
    return OPTIONS.get(key, f"the setting {key}")


def check_config(cfg: DemoConfig) -> None:
    """Refuse settings that cannot train or evaluate, before any work (solo-learn would fail
    after the data stage, some by dividing by zero, and running again would fail again): each
    error names the option, the value and what it must be."""
    for key, (minimum, what) in _WHOLE.items():
        value = getattr(cfg, key)
        if value is None and key in ("train_per_class", "val_per_class"):
            continue  # all of them
        require_whole(_name(key), value, minimum, what, DemoError)
    for key, what in _POSITIVE.items():
        require_positive(_name(key), getattr(cfg, key), what, DemoError)
    if not isinstance(cfg.cifar_stem, bool):
        raise DemoError(f"the setting cifar_stem must be true or false, got {cfg.cifar_stem!r}")
    from s2bnn_plugin.backbones import list_backbones

    if cfg.backbone not in list_backbones():
        raise DemoError(
            f"the setting backbone must be one of {list_backbones()}, got {cfg.backbone!r}"
        )


def count_images(folder: str | os.PathLike[str]) -> int:
    """Images torchvision's ImageFolder (hence solo-learn) finds below ``folder``."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

    return sum(
        sum(has_file_allowed_extension(f, IMG_EXTENSIONS) for f in files)
        for _, _, files in os.walk(folder, followlinks=True)
    )


def check_batches(cfg: DemoConfig, n_train: int) -> None:
    """Refuse training batches larger than the data (called after the data stage, before any
    training): solo-learn drops the last incomplete batch, so no training step would run."""
    for key in ("teacher_batch_size", "batch_size"):
        batch = getattr(cfg, key)
        if batch > n_train:
            raise DemoError(
                f"the {_WHOLE[key][1]} of {batch} images is larger than the {n_train} training "
                "images: no training step would run; use more images (--train-per-class with "
                f"fashion-mnist) or a smaller batch (the setting {key})"
            )


# ---------------------------------------------------------------------------------- stages


def stage_data(cfg: DemoConfig) -> dict[str, Any]:
    from s2bnn_plugin.data import FashionMNISTNotFound, resolve_dataset

    data_root = cfg.out_dir / "data" if cfg.data == "fashion-mnist" else None
    try:
        splits = resolve_dataset(
            cfg.data,
            size=cfg.image_size,
            train_per_class=cfg.train_per_class,
            val_per_class=cfg.val_per_class,
            seed=cfg.seed,
            data_root=data_root,
        )
    except (FashionMNISTNotFound, ValueError) as e:
        raise DemoError(str(e)) from e
    return {
        "root": str(splits.root),
        "train": str(splits.train),
        "val": str(splits.val),
        "classes": splits.class_names,
    }


def _final_checkpoint(run_dir: Path, epochs: int) -> Path | None:
    ckpts = sorted(run_dir.rglob(f"*-ep={epochs - 1}.ckpt"), key=lambda p: p.stat().st_mtime)
    return ckpts[-1] if ckpts else None


def _train(
    cfg: DemoConfig,
    name: str,
    config: str,
    overrides: list[str],
    epochs: int,
    log: Log,
    quiet: bool,
    seed: int,
) -> Path:
    """Run solo-learn's main_pretrain.py for one model; return its last checkpoint."""
    from s2bnn_plugin.solo_learn.command import solo_command

    run_dir = (cfg.out_dir / "runs" / name).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    settings = [
        *overrides,
        f"name={cfg.kind}-{name}",
        f"max_epochs={epochs}",
        f"checkpoint.dir={run_dir}",
        f"default_root_dir={run_dir}",
        "accelerator=cpu",
        'devices="1"',
        "wandb.enabled=false",
        "augmentations=mocov2_32.yaml",
        f"data.num_workers={cfg.num_workers}",
        f"++seed={seed}",
        "auto_resume.enabled=true",
        *cfg.extra_overrides,
    ]
    command = solo_command(
        "main_pretrain.py",
        settings,
        kind="pretrain",
        dataset="custom",
        config=config,
        python=sys.executable,
    )
    log_path = run_dir / "train.log"
    log(f"  solo-learn main_pretrain.py, {epochs} epoch(s); log: {log_path}")
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    with open(log_path, "a") as handle:
        handle.write("+ " + " ".join(command) + "\n")
        handle.flush()
        if quiet:
            rc = subprocess.call(command, cwd=run_dir, env=env, stdout=handle, stderr=handle)
        else:  # Lightning's progress bar goes to the terminal
            rc = subprocess.call(command, cwd=run_dir, env=env)
    if rc != 0:
        raise DemoError(
            f"training {name!r} failed (exit code {rc}); see {log_path} and the output above. "
            f"Run the {cfg.kind} again to resume from the last finished epoch."
        )
    ckpt = _final_checkpoint(run_dir, epochs)
    if ckpt is None:
        raise DemoError(
            f"training {name!r} finished but wrote no last-epoch checkpoint in {run_dir}"
        )
    return ckpt


def _common(cfg: DemoConfig, data: dict[str, Any], batch_size: int, lr: float) -> list[str]:
    return [
        f"data.train_path={data['train']}",
        # no data.val_path: solo-learn would validate at 224 px every epoch (slow, unused)
        f"optimizer.batch_size={batch_size}",
        "optimizer.name=adam",
        f"optimizer.lr={lr}",
        "optimizer.weight_decay=0.0",
        # the demo's own short recipe, whatever the shipped configs' (S2-BNN's linear decay
        # per epoch): a cosine decay per step, no warmup
        "scheduler.name=warmup_cosine",
        "++scheduler.warmup_epochs=0",
        "++scheduler.interval=step",
    ]


def stage_teacher(cfg: DemoConfig, data: dict[str, Any], log: Log, quiet: bool) -> dict[str, Any]:
    overrides = [
        *_common(cfg, data, cfg.teacher_batch_size, cfg.teacher_lr),
        f"method_kwargs.proj_hidden_dim={cfg.proj_hidden_dim}",
        f"method_kwargs.temperature={cfg.temperature}",
        "optimizer.classifier_lr=1e-3",
    ]
    ckpt = _train(
        cfg,
        "teacher",
        TEACHER_CONFIG,
        overrides,
        cfg.teacher_epochs,
        log,
        quiet,
        cfg.seed,
    )
    return {"checkpoint": str(ckpt)}


def demo_students(cfg: DemoConfig) -> list[StudentSpec]:
    """The demo's three students (:data:`STUDENTS`) in the run ``cfg``."""
    return [recipe.spec(cfg, name, seed=cfg.seed) for name, recipe in STUDENTS.items()]


def merge_overrides(overrides: list[str]) -> list[str]:
    """One override per key, the last given (``+``/``++``/``~`` prefixes do not make another
    key), in the order of those last ones: a student's own settings replace the budget's."""

    def key(item: str) -> str:
        return item.partition("=")[0].lstrip("+~")

    last = {key(item): i for i, item in enumerate(overrides)}
    return [item for i, item in enumerate(overrides) if last[key(item)] == i]


def student_overrides(
    cfg: DemoConfig,
    spec: StudentSpec,
    data: dict[str, Any],
    teacher_ckpt: str,
    init_ckpt: str | None = None,
) -> list[str]:
    """The Hydra overrides one student trains with: the budget every student shares (data,
    optimiser, schedule, backbone; the teacher for distillation), then the spec's own, which
    replace the budget's where they set the same key; ``init_ckpt`` for ``spec.init_from``."""
    overrides = [
        *_common(cfg, data, cfg.batch_size, cfg.lr),
        f"backbone.name={cfg.backbone}",
        f"backbone.kwargs.width_mult={cfg.width_mult}",
        f"backbone.kwargs.cifar={str(cfg.cifar_stem).lower()}",
    ]
    if spec.distill:
        overrides += [
            f"method_kwargs.teacher.ckpt={teacher_ckpt}",
            "method_kwargs.teacher.format=solo",
            f"method_kwargs.head_hidden_dim={cfg.proj_hidden_dim}",
            "++method_kwargs.distill_crops=all",  # both large crops, as the objective's
        ]
    overrides += spec.overrides
    if spec.init_from is not None:
        if init_ckpt is None:
            raise ValueError(f"{spec.name} starts from {spec.init_from}: give its checkpoint")
        overrides.append(f"++method_kwargs.student_init={init_ckpt}")
    return merge_overrides(overrides)


def stage_student(
    cfg: DemoConfig,
    spec: StudentSpec,
    data: dict[str, Any],
    teacher_ckpt: str,
    log: Log,
    quiet: bool,
    init_ckpt: str | None = None,
) -> dict[str, Any]:
    """Train one student (:func:`student_overrides`) for its epochs."""
    overrides = student_overrides(cfg, spec, data, teacher_ckpt, init_ckpt)
    epochs = cfg.epochs if spec.epochs is None else spec.epochs
    ckpt = _train(cfg, spec.name, spec.config, overrides, epochs, log, quiet, spec.seed)
    return {"checkpoint": str(ckpt)}


def _distributions(
    train_f: np.ndarray, train_y: np.ndarray, val_f: np.ndarray, cfg: DemoConfig, n_cls: int
) -> np.ndarray:
    """kNN class distributions (weighted votes, normalised) of the held-out images: the
    "prediction distribution" compared between teacher and students."""
    from s2bnn_plugin.evaluation import knn_scores

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    scores = knn_scores(
        unit(train_f),
        train_y,
        unit(val_f),
        k=cfg.knn_k,
        temperature=cfg.knn_temperature,
        num_classes=n_cls,
    ).numpy()
    return scores / np.maximum(scores.sum(axis=1, keepdims=True), 1e-30)


def stage_eval(
    cfg: DemoConfig, data: dict[str, Any], models: dict[str, str], log: Log
) -> dict[str, Any]:
    """Features, kNN and linear probe for each model (each saved as it finishes), raw pixels."""
    import torch

    from s2bnn_plugin.evaluation import evaluate_features, evaluate_raw_pixels, extract_features
    from s2bnn_plugin.evaluation.models import load_solo_backbone

    eval_dir = cfg.out_dir / "eval"
    cache = eval_dir / "images.npz"
    if cache.is_file():
        arrays = np.load(cache)
        train_x, train_y, val_x, val_y = (arrays[k] for k in ("tx", "ty", "vx", "vy"))
    else:
        from s2bnn_plugin.data import load_image_folder

        train = load_image_folder(data["train"], cfg.image_size)
        val = load_image_folder(data["val"], cfg.image_size)
        train_x, train_y, val_x, val_y = train.images, train.labels, val.images, val.labels
        eval_dir.mkdir(parents=True, exist_ok=True)
        with atomic_open(cache, force=True) as f:
            np.savez(f, tx=train_x, ty=train_y, vx=val_x, vy=val_y)
    n_cls = len(data["classes"])
    results: dict[str, Any] = {}
    for name, ckpt in models.items():
        done = _read_json(eval_dir / f"{name}.json")
        if done is not None:
            log(f"  {name}: already evaluated, skipped")
            results[name] = done
            continue
        module = load_solo_backbone(ckpt)
        if name == "teacher":
            engine_name = "torch"

            def extractor(x: np.ndarray, m: torch.nn.Module = module) -> np.ndarray:
                with torch.inference_mode():
                    return m(torch.from_numpy(x)).float().numpy()

        else:
            from s2bnn_plugin.packing import pack

            extractor = pack(module)
            engine_name = "packed (bit-packed XNOR-popcount, Numba)"
        start = time.perf_counter()
        tf = extract_features(extractor, train_x, cfg.eval_batch_size, True, f"{name}: train")
        vf = extract_features(extractor, val_x, cfg.eval_batch_size, True, f"{name}: val")
        seconds = time.perf_counter() - start
        res = evaluate_features(
            tf,
            train_y,
            vf,
            val_y,
            name=name,
            k=cfg.knn_k,
            temperature=cfg.knn_temperature,
            seconds=seconds,
        )
        dist = _distributions(tf, train_y, vf, cfg, n_cls)
        with atomic_open(eval_dir / f"{name}_knn_dist.npy", force=True) as f:
            np.save(f, dist)
        with atomic_open(eval_dir / f"{name}_linear_pred.npy", force=True) as f:
            np.save(f, res.linear.predictions)
        summary = {**res.to_dict(), "engine": engine_name, "checkpoint": ckpt}
        _write_json(eval_dir / f"{name}.json", summary)
        log(
            f"  {name}: kNN {summary['knn_top1']:.2f} %, linear {summary['linear_top1']:.2f} % "
            f"({engine_name}, {seconds:.1f} s for features)"
        )
        results[name] = summary
    raw_path = eval_dir / "raw_pixels.json"
    raw = _read_json(raw_path)
    if raw is None:
        raw = evaluate_raw_pixels(train_x, train_y, val_x, val_y).to_dict()
        _write_json(raw_path, raw)
    log(f"  raw pixels: linear {raw['linear_top1']:.2f} %")
    results["raw_pixels"] = raw
    with atomic_open(eval_dir / "val_labels.npy", force=True) as f:
        np.save(f, val_y)
    return results


# ---------------------------------------------------------------------------------- driver


def check_solo() -> None:
    """Fail at once, before any data work, when solo-learn or matplotlib is missing."""
    from s2bnn_plugin.solo_learn.locate import SoloLearnNotFound, find_solo_script, require_solo

    try:
        require_solo()
        find_solo_script("main_pretrain.py")
    except SoloLearnNotFound as e:
        raise DemoError(str(e)) from e
    if importlib.util.find_spec("matplotlib") is None:  # the report's plots, minutes later
        raise DemoError(
            "matplotlib is not installed and the report stage plots with it: "
            "pip install matplotlib (it is one of the plugin's dependencies)"
        )


def check_data_argument(cfg: DemoConfig) -> None:
    """Validate user data (and make paths absolute) before writing anything."""
    # absolute: solo-learn's runs start in their own folders, where a relative path breaks
    cfg.out_dir = Path(cfg.out_dir).resolve()
    if cfg.data != "fashion-mnist":
        from s2bnn_plugin.data import validate_dataset_root

        try:
            validate_dataset_root(cfg.data)
        except ValueError as e:
            raise DemoError(str(e)) from e
        cfg.data = str(Path(cfg.data).resolve())


Report = Callable[[dict[str, Any], dict[str, Any], dict[str, float]], dict[str, Any]]
Check = Callable[[dict[str, Any]], None]


def run_pipeline(
    cfg: DemoConfig,
    students: list[StudentSpec],
    report: Report,
    *,
    report_title: str,
    check_data: Check | None = None,
    until: str | None = None,
    quiet: bool = False,
    log: Log = print_line,
) -> dict[str, Any]:
    """Data, teacher, ``students`` in order, evaluation, ``report(data, evaluation, timings)``:
    each a stage that is skipped when finished. ``check_data(data)`` runs after the data stage
    and before any training (settings that cannot run on that data are refused there)."""
    check_config(cfg)
    names = [s.name for s in students]
    stage_names = stage_list(names)
    if len(set(names)) != len(names) or set(names) & {*FIRST_STAGES, *LAST_STAGES}:
        raise ValueError(f"student names must be unique stage names: {names}")
    for i, spec in enumerate(students):
        if spec.init_from is not None and spec.init_from not in names[:i]:
            raise ValueError(f"{spec.name} starts from {spec.init_from}, not an earlier student")
    if until is not None and until not in stage_names:
        raise DemoError(f"unknown stage {until!r}; stages: {stage_names}")
    check_solo()
    check_data_argument(cfg)
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    _check_settings(cfg)
    stages = Stages(cfg.out_dir)
    previous = stages.done("timings") or {}
    timings: dict[str, float] = dict(previous.get("seconds", {}))
    # the machine's 1-minute load average when each stage ended: times on a shared machine
    # mean little without it
    loads: dict[str, float] = dict(previous.get("load_average", {}))
    total = len(stage_names)

    def run(name: str, title: str, fn: Callable[[], dict[str, Any]]) -> dict:
        index = stage_names.index(name) + 1
        done = stages.done(name)
        if done is not None:
            log(f"[{index}/{total}] {title}: done earlier, skipped ({stages.dir / name}.json)")
            return done
        log(f"[{index}/{total}] {title} ...")
        start = time.perf_counter()
        result = fn()
        timings[name] = round(time.perf_counter() - start, 1)
        loads[name] = round(os.getloadavg()[0], 2)
        stages.finish("timings", {"seconds": timings, "load_average": loads})
        log(f"[{index}/{total}] {title}: finished in {timings[name]:.0f} s")
        return stages.finish(name, result)

    data = run("data", "data", lambda: stage_data(cfg))
    check_batches(cfg, count_images(data["train"]))
    if check_data is not None:
        check_data(data)
    if until == "data":
        return {"data": data}
    teacher = run(
        "teacher",
        "real-valued teacher (SimCLR, ResNet-18)",
        lambda: stage_teacher(cfg, data, log, quiet),
    )
    if until == "teacher":
        return {"teacher": teacher}
    ckpts = {"teacher": teacher["checkpoint"]}  # the models to evaluate
    trained: dict[str, str] = {}  # every student's last checkpoint
    for spec in students:
        result = run(
            spec.name,
            f"student '{spec.name}' ({spec.description})",
            lambda spec=spec: stage_student(
                cfg,
                spec,
                data,
                teacher["checkpoint"],
                log,
                quiet,
                trained.get(spec.init_from) if spec.init_from else None,
            ),
        )
        trained[spec.name] = result["checkpoint"]
        if spec.evaluate:
            ckpts[spec.name] = result["checkpoint"]
        if until == spec.name:
            return {spec.name: result}
    evaluation = run(
        "eval",
        "evaluation on the held-out split",
        lambda: stage_eval(cfg, data, ckpts, log),
    )
    if until == "eval":
        return evaluation
    return run("report", report_title, lambda: report(data, evaluation, timings))


def run_demo(
    cfg: DemoConfig,
    *,
    until: str | None = None,
    quiet: bool = False,
    log: Log = print_line,
) -> dict[str, Any]:
    """Run (or resume) the demo in ``cfg.out_dir``; ``until``: stop after that stage."""

    def report(data: dict[str, Any], evaluation: dict[str, Any], timings: dict) -> dict:
        from s2bnn_plugin.demo.report import write_report

        return write_report(cfg, data, evaluation, timings)

    out = run_pipeline(
        cfg,
        demo_students(cfg),
        report,
        report_title="report (results.md, results.json, plots)",
        until=until,
        quiet=quiet,
        log=log,
    )
    if until in (None, "report"):
        log(f"results: {cfg.out_dir / 'results.md'}")
    return out
