"""``s2bnn ablation``: the paper's ablation rows at the demo's budget, over seeds.

One real-valued teacher (the demo's), then per seed one binary student per row, all with the
demo's data, epochs, batch, optimiser and backbone, evaluated like the demo's (packed CPU engine:
weighted kNN, linear probe, top-1 agreement with the teacher). The stages are the demo's
(:func:`~s2bnn_plugin.demo.pipeline.run_pipeline`), so an ablation resumes the same way.

The reference row, ``distill``, is distillation only with S2-BNN's official recipe (KL loss, the
linear decay once per epoch, the first crop shared by teacher and student:
:data:`REFERENCE_OVERRIDES`); every other row changes only the settings it names
(:data:`ROWS`), and its differences are paired by seed against the reference. ``contrastive`` is
the demo's SimCLR student (no teacher; the linear schedule is ``method=s2bnn``'s only, so it keeps
the demo's cosine). ``two-step`` splits the epochs between step 1 (binary activations, real
weights: ``s2bnn_step1.yaml``) and step 2 (binary weights, initialised from step 1's last
checkpoint: ``s2bnn_step2.yaml``), the same total budget as one step; step 1 is not evaluated
(the packed engine takes binary weights).

Bad input is refused before anything trains: unknown or repeated rows (with the list and the
nearest match), fewer than two seeds (paired differences need two), too few epochs to split into
two steps, and (right after the data stage) a batch larger than the data.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from s2bnn_plugin.demo.ablation_rows import (
    DEFAULT_ROWS,
    REFERENCE,
    REFERENCE_OVERRIDES,
    ROWS,
    AblationRow,
    row_of,
    two_step_epochs,
)
from s2bnn_plugin.demo.pipeline import (
    DemoConfig,
    DemoError,
    Log,
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
    "DEFAULT_ROWS",
    "REFERENCE",
    "REFERENCE_OVERRIDES",
    "ROWS",
    "AblationConfig",
    "AblationError",
    "AblationRow",
    "ablation_students",
    "row_of",
    "check_ablation",
    "estimate_seconds",
    "rows_of",
    "run_ablation",
    "stage_names",
    "two_step_epochs",
]


class AblationError(DemoError):
    """Ablation settings that cannot run (unknown row, one seed, too few epochs, ...)."""


@dataclass
class AblationConfig(DemoConfig):
    """The demo's settings (same data, teacher and student budget) plus the rows and the number
    of seeds. Defaults: about 30 minutes on 2 idle cores (:func:`estimate_seconds`)."""

    kind: ClassVar[str] = "ablation"

    out_dir: Path = Path("s2bnn-ablation")
    rows: list[str] = field(default_factory=lambda: list(DEFAULT_ROWS))
    seeds: int = 2

    @property
    def student_seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.seeds)]


def _nearest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def check_ablation(cfg: AblationConfig) -> None:
    """Refuse rows and numbers that cannot give the table, before any work; each error names
    the option, the value and the fix."""
    available = ", ".join(ROWS)
    if not cfg.rows:
        raise AblationError(f"no rows given; rows: {available}")
    repeated = sorted({r for r in cfg.rows if cfg.rows.count(r) > 1})
    if repeated:
        raise AblationError(f"--rows lists {', '.join(repeated)} more than once")
    for row in cfg.rows:
        if row not in ROWS:
            raise AblationError(
                f"--rows: unknown row {row!r}{_nearest(row, list(ROWS))}; rows: {available}"
            )
    if not Range(2, whole=True).admits(cfg.seeds):
        raise AblationError(
            f"--seeds {cfg.seeds}: the differences to the reference are paired by seed and "
            "their spread needs at least 2 seeds; use --seeds 2 (or more)"
        )
    for row in (ROWS[name] for name in cfg.rows):
        if cfg.epochs < row.least_epochs:
            raise AblationError(
                f"--epochs {cfg.epochs}: the {row.name} row {row.because} and needs at least "
                f"{row.least_epochs}; use --epochs {row.least_epochs} (or more), or leave "
                f"{row.name} out of --rows"
            )


def rows_of(cfg: AblationConfig) -> list[str]:
    """The rows trained, in :data:`ROWS`' order: the ones asked for and the reference."""
    return [r for r in ROWS if r in cfg.rows or r == REFERENCE]


def ablation_students(cfg: AblationConfig) -> list[StudentSpec]:
    """Per seed, the students of each row (:data:`ROWS`), in the rows' order."""
    specs = []
    for seed in cfg.student_seeds:
        for row in rows_of(cfg):
            previous = None
            for step in ROWS[row].steps:
                name = f"{row}{step.suffix}-s{seed}"
                epochs = None if step.epochs is None else step.epochs(cfg.epochs)
                what = ROWS[row].description
                if step.description is not None:
                    what = step.description.format(epochs=epochs)
                spec = step.recipe.spec(cfg, name, seed=seed)
                specs.append(
                    replace(
                        spec,
                        description=f"{what}, seed {seed}",
                        epochs=epochs,
                        init_from=previous if step.from_previous else None,
                        evaluate=step.evaluate,
                    )
                )
                previous = name
    return specs


# ------------------------------------------------------------------------------ the time it takes

#: seconds per training epoch per 1,000 images on an idle 2-core machine, at the demo's width,
#: from the demo's measured stage times (docs/demo-and-study.md: teacher 166 s for 10 epochs,
#: students 84 / 105 / 112 s for 6 epochs on 5,000 images)
_TEACHER_RATE = 166 / 10 / 5
_RATES = {"contrastive": 84 / 6 / 5, "distill": 105 / 6 / 5, "mixed": 112 / 6 / 5}
_EVAL_SECONDS = 1.5  # per model, features on the packed engine + probes


def estimate_seconds(cfg: AblationConfig, n_train: int) -> float:
    """A rough wall time on 2 idle cores for the stages still to come, from the demo's measured
    rates (it scales with epochs and images only; a shared or smaller machine is slower)."""
    thousands = n_train / 1000
    total = _TEACHER_RATE * cfg.teacher_epochs * thousands
    for spec in ablation_students(cfg):
        kind = (
            "contrastive"
            if not spec.distill
            else "mixed"
            if spec.objective is not None
            else "distill"
        )
        epochs = cfg.epochs if spec.epochs is None else spec.epochs
        total += _RATES[kind] * epochs * thousands + (_EVAL_SECONDS if spec.evaluate else 0)
    return total + _EVAL_SECONDS


# ------------------------------------------------------------------------------ driver


def run_ablation(
    cfg: AblationConfig,
    *,
    until: str | None = None,
    quiet: bool = False,
    log: Log = print_line,
) -> dict[str, Any]:
    """Run (or resume) the ablation in ``cfg.out_dir``; ``until``: stop after that stage."""
    check_config(cfg)
    check_ablation(cfg)  # before any data work
    check_solo()
    students = ablation_students(cfg)

    def fits(data: dict[str, Any]) -> None:
        n_train = count_images(data["train"])
        minutes = estimate_seconds(cfg, n_train) / 60
        log(
            f"  {n_train} training images; {len(students)} students to train "
            f"({len(rows_of(cfg))} rows x {cfg.seeds} seeds); about {minutes:.0f} min on 2 idle "
            "cores in all (from the demo's measured times)"
        )

    def report(data: dict[str, Any], evaluation: dict[str, Any], timings: dict) -> dict:
        from s2bnn_plugin.demo.ablation_report import write_ablation_report

        return write_ablation_report(cfg, students, data, evaluation, timings)

    out = run_pipeline(
        cfg,
        students,
        report,
        report_title="report (ablation.md, ablation.json, ablation.png)",
        check_data=fits,
        until=until,
        quiet=quiet,
        log=log,
    )
    if until in (None, "report"):
        log(f"results: {cfg.out_dir / 'ablation.md'}")
    return out


def stage_names(cfg: AblationConfig) -> list[str]:
    """Every stage of this ablation, in order (for ``--until``)."""
    return stage_list(s.name for s in ablation_students(cfg))
