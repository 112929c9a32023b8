"""``s2bnn study``: does distillation lift every solo-learn objective's binary student?

One real-valued teacher (the demo's), then for each objective and seed two binary students at the
same budget, the objective alone and the objective + S2-BNN distillation, plus one
distillation-only student per seed; all evaluated like the demo's (packed CPU engine: weighted
kNN, linear probe, top-1 agreement with the teacher). The stages are the demo's
(:func:`~s2bnn_plugin.demo.pipeline.run_pipeline`), so a study resumes the same way.

Each objective runs with solo-learn's own CIFAR recipe for it (``method_kwargs``, and the momentum
block of momentum methods: :func:`~s2bnn_plugin.methods.ssl_defaults.ssl_defaults`, the mixing's
defaults), alone and mixed alike; :data:`STUDY_KWARGS` lists the few departures, each with its
reason. Everything else (data, epochs, batch, optimiser, backbone) is the same for every student.

Bad input is refused before anything trains: numbers that cannot train (the demo's
:func:`~s2bnn_plugin.demo.pipeline.check_config`), unknown or unsupported method names (with the
list of available ones) and ``--method-kwarg`` settings no studied method reads (with the keys it
reads, :data:`METHOD_KEYS`) at once, settings that cannot run on the data (a queue longer than
the data, a batch larger than it, ...) right after the data stage.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from s2bnn_plugin.demo.pipeline import (
    STUDENTS,
    TEMPERATURE,
    DemoConfig,
    DemoError,
    Log,
    StudentRecipe,
    StudentSpec,
    check_config,
    check_solo,
    count_images,
    print_line,
    run_pipeline,
    stage_list,
)
from s2bnn_plugin.validate import Range

__all__ = [
    "DEFAULT_METHODS",
    "METHOD_KEYS",
    "NOT_STUDIED",
    "OBJECTIVE_STUDENTS",
    "STUDY_KWARGS",
    "ObjectiveStudent",
    "StudyConfig",
    "StudyError",
    "available_methods",
    "check_fits",
    "check_method_kwargs",
    "check_methods",
    "method_keys",
    "objective_settings",
    "parse_method_kwargs",
    "run_study",
    "study_students",
]


class StudyError(DemoError):
    """Study settings that cannot run (unknown method, queue longer than the data, ...)."""


#: one objective per family: contrastive (SimCLR, MoCo v2+), self-distillation (BYOL),
#: redundancy reduction (Barlow Twins), variance-covariance (VICReg), clustering (SwAV)
DEFAULT_METHODS = ("simclr", "mocov2plus", "byol", "barlow_twins", "vicreg", "swav")

#: The study's departures from solo-learn's CIFAR recipes (applied alone and mixed alike).
#: mocov2plus: the recipe's queue of 32,768 keys is for CIFAR's 50,000 images; on the default
#: 5,000 it would hold every image several times over (its own positives among the negatives), so
#: 4,096 (a multiple of the batch, as MoCo's queue update requires, and less than one epoch).
STUDY_KWARGS: dict[str, dict[str, Any]] = {"mocov2plus": {"queue_size": 4096}}

#: solo-learn methods that are not self-supervised objectives for a binary CNN student
NOT_STUDIED = {
    "mae": "it needs a ViT backbone (it reconstructs masked patches); the students are binary CNNs",
    "supcon": "it is supervised (it trains on the labels), not a self-supervised objective",
}
# solo-learn keeps the predictor's learning rate fixed (``static_lr``) by putting a
# functools.partial into the scheduler, hence into every checkpoint; the plugin reads
# checkpoints weights-only (no pickled code), so such students could not be evaluated
_STATIC_LR = (
    "solo-learn fixes its predictor's learning rate with a functools.partial that it saves into "
    "every checkpoint, and the plugin reads checkpoints weights-only (no pickled code), so its "
    "students could be trained but not evaluated"
)
NOT_STUDIED.update({"simsiam": _STATIC_LR, "nnsiam": _STATIC_LR})

#: The ``method_kwargs`` keys each objective reads at the pinned solo-learn commit (its
#: ``__init__`` and ``add_and_assert_specific_cfg``, solo/methods/<name>.py; the same keys when
#: mixed into s2bnn, which passes ``ssl_kwargs`` on as the objective's own method_kwargs). A
#: ``--method-kwarg`` with any other key would be carried along unread; it is refused instead.
#: tests/test_study.py checks this table against solo-learn's source.
_PROJECTOR = ("proj_hidden_dim", "proj_output_dim")
METHOD_KEYS: dict[str, frozenset[str]] = {
    name: frozenset(_PROJECTOR + keys)
    for name, keys in {
        "all4one": ("pred_hidden_dim", "queue_size", "temperature"),
        "barlow_twins": ("lamb", "scale_loss"),
        "byol": ("pred_hidden_dim",),
        "deepclusterv2": ("kmeans_iters", "num_prototypes", "temperature"),
        "dino": (
            "clip_grad",
            "freeze_last_layer",
            "norm_last_layer",
            "num_prototypes",
            "student_temperature",
            "teacher_temperature",
            "use_bn_in_head",
            "warmup_teacher_temperature",
            "warmup_teacher_temperature_epochs",
        ),
        "mocov2plus": ("queue_size", "temperature"),
        "mocov3": ("pred_hidden_dim", "temperature"),
        "nnbyol": ("pred_hidden_dim", "queue_size"),
        "nnclr": ("pred_hidden_dim", "queue_size", "temperature"),
        "ressl": ("queue_size", "temperature_k", "temperature_q"),
        "simclr": ("temperature",),
        "swav": (
            "epoch_queue_starts",
            "freeze_prototypes_epochs",
            "num_prototypes",
            "queue_size",
            "sk_epsilon",
            "sk_iters",
            "temperature",
        ),
        "vibcreg": ("cov_loss_weight", "iternorm", "sim_loss_weight", "var_loss_weight"),
        "vicreg": ("cov_loss_weight", "sim_loss_weight", "var_loss_weight"),
        "wmse": ("whitening_eps", "whitening_iters", "whitening_size"),
    }.items()
}


#: methods whose queue update shifts by whole batches (solo-learn asserts queue % batch == 0)
_QUEUE_IN_BATCHES = {"mocov2plus", "nnclr", "nnbyol", "nnsiam", "ressl", "all4one"}


@dataclass
class StudyConfig(DemoConfig):
    """The demo's settings (same data, teacher and student budget) plus the methods, the number
    of seeds and per-method departures from the CIFAR recipes. Defaults: README, "Study"."""

    kind: ClassVar[str] = "study"

    out_dir: Path = Path("s2bnn-study")
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    seeds: int = 1
    #: method -> method_kwargs that replace the recipe's (both students of that method)
    method_kwargs: dict[str, dict[str, Any]] = field(
        default_factory=lambda: copy.deepcopy(STUDY_KWARGS)
    )

    @property
    def student_seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.seeds)]


def available_methods() -> list[str]:
    """solo-learn objectives a study can train (needs solo-learn importable)."""
    from s2bnn_plugin.methods.s2bnn import objective_names

    return [m for m in objective_names() if m != "none" and m not in NOT_STUDIED]


def check_methods(cfg: StudyConfig) -> None:
    """Refuse unknown, unsupported or repeated method names, listing the available ones."""
    if not cfg.methods:
        raise StudyError(f"no methods given; available: {', '.join(available_methods())}")
    if not Range(1, whole=True).admits(cfg.seeds):
        raise StudyError(f"--seeds must be at least 1 (got {cfg.seeds})")
    repeated = sorted({m for m in cfg.methods if cfg.methods.count(m) > 1})
    if repeated:
        raise StudyError(f"method(s) listed more than once: {', '.join(repeated)}")
    available = available_methods()
    for name in cfg.methods:
        if name in NOT_STUDIED:
            raise StudyError(
                f"{name} cannot be studied: {NOT_STUDIED[name]}. Available: {', '.join(available)}"
            )
        if name == "s2bnn":
            raise StudyError(
                "s2bnn is the distillation itself (the '+ distillation' and 'distillation only' "
                f"students); choose objectives to mix it with: {', '.join(available)}"
            )
    unknown = [m for m in cfg.methods if m not in available]
    if unknown:
        raise StudyError(
            f"unknown method(s): {', '.join(unknown)}; available: {', '.join(available)}"
        )
    check_method_kwargs(cfg)
    for name in cfg.methods:
        objective_settings(cfg, name)  # a method without a recipe fails here


def _nearest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def method_keys(name: str) -> frozenset[str]:
    """The ``method_kwargs`` keys objective ``name`` reads (:data:`METHOD_KEYS`; for a method
    the table does not know, the keys of its recipe)."""
    from s2bnn_plugin.methods.ssl_defaults import ssl_defaults

    return METHOD_KEYS.get(name) or frozenset(ssl_defaults(name)[0])


def check_method_kwargs(cfg: StudyConfig) -> None:
    """Refuse ``--method-kwarg`` settings that would be carried along unread: for a method not
    in the study, or a key the method does not read; each error lists what is accepted and the
    nearest match. The study's own departures (:data:`STUDY_KWARGS`) for a method that is not
    studied are not settings given, and pass."""
    methods = list(cfg.methods)
    for name, settings in cfg.method_kwargs.items():
        if name in methods or settings == STUDY_KWARGS.get(name):
            continue
        given = ", ".join(f"{name}.{key}" for key in settings) or name
        raise StudyError(
            f"--method-kwarg {given}: {name} is not in this study{_nearest(name, methods)}; its "
            f"methods: {', '.join(methods)} (add it with --methods, or drop the setting)"
        )
    for name in methods:
        accepted = sorted(method_keys(name))
        for key in cfg.method_kwargs.get(name, {}):
            if key not in accepted:
                raise StudyError(
                    f"--method-kwarg {name}.{key}: {name} has no setting {key!r}"
                    f"{_nearest(key, accepted)}; {name} reads: {', '.join(accepted)}"
                )


def objective_settings(cfg: StudyConfig, name: str) -> tuple[dict[str, Any], dict[str, float]]:
    """(method_kwargs, momentum) of ``name`` in this study: solo-learn's CIFAR recipe, then the
    study's departures (:data:`STUDY_KWARGS` or ``cfg.method_kwargs``)."""
    from s2bnn_plugin.methods.ssl_defaults import ssl_defaults

    kwargs, momentum = ssl_defaults(name)
    if not kwargs:
        raise StudyError(
            f"{name}: no CIFAR recipe found (not in the plugin's defaults, nor in solo-learn's "
            "scripts/pretrain/cifar); give its method_kwargs with --method-kwarg"
        )
    kwargs.update(cfg.method_kwargs.get(name, {}))
    return kwargs, momentum


def parse_method_kwargs(
    items: list[str], base: dict[str, dict[str, Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """``["mocov2plus.queue_size=2048", ...]`` merged into ``base`` (values read as YAML)."""
    import yaml  # hydra brings PyYAML

    out = copy.deepcopy(base or {})
    for item in items:
        key, sep, value = item.partition("=")
        method, dot, name = key.partition(".")
        if not sep or not dot or not method or not name:
            raise StudyError(f"--method-kwarg {item!r}: expected METHOD.KEY=VALUE")
        out.setdefault(method, {})[name] = yaml.safe_load(value)
    return out


def check_fits(cfg: StudyConfig, n_train: int) -> None:
    """Refuse settings that cannot run on ``n_train`` training images, saying why and the fix
    (called after the data stage, before any training)."""
    batch = cfg.batch_size
    per_epoch = (n_train // batch) * batch  # solo-learn drops the last incomplete batch
    if per_epoch == 0:
        raise StudyError(
            f"the batch of {batch} images is larger than the {n_train} training images: no "
            "training step would run; use more images or a smaller batch"
        )
    problems = []
    for name in cfg.methods:
        kwargs, _ = objective_settings(cfg, name)
        queue = int(kwargs.get("queue_size") or 0)
        if name == "swav" and cfg.epochs <= int(kwargs.get("epoch_queue_starts", 0)):
            queue = 0  # SwAV fills its queue only from epoch_queue_starts on
        fix = f"(--method-kwarg {name}.queue_size=N)"
        if queue > per_epoch:
            problems.append(
                f"{name}: queue_size {queue} is longer than the data ({per_epoch} training "
                f"images per epoch): the queue would hold some images twice, their own "
                f"positives among the negatives; use a queue of at most {per_epoch} {fix} or "
                "more training images"
            )
        elif name in _QUEUE_IN_BATCHES and queue % batch:
            problems.append(
                f"{name}: queue_size {queue} is not a multiple of the batch size {batch} "
                f"(solo-learn's queue update needs one) {fix}"
            )
        if name == "wmse" and int(kwargs.get("whitening_size", 0)) > batch:
            problems.append(
                f"wmse: whitening_size {kwargs['whitening_size']} exceeds the batch size {batch} "
                "(--method-kwarg wmse.whitening_size=N)"
            )
        if name == "deepclusterv2":
            too_many = [p for p in kwargs.get("num_prototypes", []) if int(p) > n_train]
            if too_many:
                problems.append(
                    f"deepclusterv2: {too_many} prototypes (k-means clusters) for {n_train} "
                    "images (--method-kwarg deepclusterv2.num_prototypes=[...])"
                )
    if problems:
        raise StudyError("cannot run on this data: " + "; ".join(problems))


# ------------------------------------------------------------------------------ students


def _value(v: Any) -> str:
    """A Python value as a Hydra override value."""
    if isinstance(v, bool):
        return str(v).lower()
    if v is None:
        return "null"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_value(x) for x in v) + "]"
    return str(v)


def _flat(prefix: str, d: dict[str, Any]) -> list[tuple[str, Any]]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += _flat(f"{prefix}{k}.", v)
        else:
            out.append((f"{prefix}{k}", v))
    return out


def _base_method_keys(config: str) -> list[str]:
    """Keys of ``method_kwargs`` in one of the plugin's custom pretrain configs."""
    from omegaconf import OmegaConf

    from s2bnn_plugin.solo_learn.locate import configs_dir

    cfg = OmegaConf.load(configs_dir() / "pretrain" / "custom" / config)
    return list(cfg.get("method_kwargs") or {})


@dataclass(frozen=True)
class ObjectiveStudent:
    """One of the students every studied method gets per seed: its stage-name part, its recipe
    (``{method}`` stands for the method), where the objective's settings go, and whether the
    objective replaces the base config's own (the base config's other ``method_kwargs`` and,
    for an objective without one, its momentum block are removed)."""

    part: str
    recipe: StudentRecipe
    settings_at: str
    replaces_base: bool

    def overrides(
        self, kwargs: dict[str, Any], momentum: dict[str, float], base_keys: list[str]
    ) -> list[str]:
        """The objective's settings (``kwargs``, ``momentum``) as this student's overrides."""
        removed = [f"~method_kwargs.{k}" for k in base_keys if k not in kwargs]
        moment = [f"++momentum.{k}={_value(v)}" for k, v in momentum.items()]
        return [
            *(removed if self.replaces_base else []),
            *(f"++{self.settings_at}{k}={_value(v)}" for k, v in _flat("", kwargs)),
            *(moment or (["~momentum"] if self.replaces_base else [])),
        ]


ALONE_CONFIG = "bnn_mocov2plus.yaml"  # the objective directly on the binary student
#: per seed: the distillation-only student (the demo's), then per method these two, with
#: identical objective settings
OBJECTIVE_STUDENTS = (
    ObjectiveStudent(
        "alone",
        StudentRecipe(
            ALONE_CONFIG,
            ("method={method}",),
            "binary, {method} alone",
            distill=False,
            objective="{method}",
        ),
        settings_at="method_kwargs.",
        replaces_base=True,
    ),
    ObjectiveStudent(
        "distill",
        StudentRecipe(
            STUDENTS["distill"].config,
            (TEMPERATURE, "method_kwargs.ssl_method={method}", "+method_kwargs.ssl_weight=1.0"),
            "binary, {method} + distillation",
            distill=True,
            objective="{method}",
        ),
        settings_at="method_kwargs.ssl_kwargs.",
        replaces_base=False,
    ),
)


def study_students(cfg: StudyConfig) -> list[StudentSpec]:
    """Per seed: the distillation-only student, then per method the objective alone and the
    objective + distillation, with identical objective settings (:data:`OBJECTIVE_STUDENTS`)."""
    specs = []
    base_keys = _base_method_keys(ALONE_CONFIG)
    for seed in cfg.student_seeds:
        only = STUDENTS["distill"].spec(cfg, f"distill-only-s{seed}", seed=seed)
        specs.append(replace(only, description=f"{only.description}, seed {seed}"))
        for name in cfg.methods:
            kwargs, momentum = objective_settings(cfg, name)
            for student in OBJECTIVE_STUDENTS:
                spec = student.recipe.spec(
                    cfg,
                    f"{name}-{student.part}-s{seed}",
                    seed=seed,
                    fields={"method": name},
                    extra=student.overrides(kwargs, momentum, base_keys),
                )
                specs.append(replace(spec, description=f"{spec.description}, seed {seed}"))
    return specs


# ------------------------------------------------------------------------------ driver


def run_study(
    cfg: StudyConfig,
    *,
    until: str | None = None,
    quiet: bool = False,
    log: Log = print_line,
) -> dict[str, Any]:
    """Run (or resume) the study in ``cfg.out_dir``; ``until``: stop after that stage."""
    check_config(cfg)
    check_solo()
    check_methods(cfg)  # before any data work
    students = study_students(cfg)

    def fits(data: dict[str, Any]) -> None:
        n_train = count_images(data["train"])
        check_fits(cfg, n_train)
        log(f"  {n_train} training images; {len(students)} students to train")

    def report(data: dict[str, Any], evaluation: dict[str, Any], timings: dict) -> dict:
        from s2bnn_plugin.demo.study_report import write_study_report

        return write_study_report(cfg, students, data, evaluation, timings)

    out = run_pipeline(
        cfg,
        students,
        report,
        report_title="report (study.md, study.json, study.png)",
        check_data=fits,
        until=until,
        quiet=quiet,
        log=log,
    )
    if until in (None, "report"):
        log(f"results: {cfg.out_dir / 'study.md'}")
    return out


def stage_names(cfg: StudyConfig) -> list[str]:
    """Every stage of this study, in order (for ``--until``)."""
    return stage_list(s.name for s in study_students(cfg))
