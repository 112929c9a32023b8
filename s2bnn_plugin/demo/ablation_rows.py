"""The ablation's rows as a table: their names, what each changes from the reference, and the
students each trains per seed (recipes on top of the reference's), with how ``two-step`` splits
the epochs (shared by :mod:`~s2bnn_plugin.demo.ablation`, which trains them, and
:mod:`~s2bnn_plugin.demo.ablation_report`, which tabulates them)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from s2bnn_plugin.demo.pipeline import STUDENTS, TEMPERATURE, StudentRecipe, StudentSpec

__all__ = [
    "DEFAULT_ROWS",
    "REFERENCE",
    "REFERENCE_OVERRIDES",
    "REFERENCE_RECIPE",
    "ROWS",
    "AblationRow",
    "Step",
    "row_of",
    "two_step_epochs",
]


def two_step_epochs(epochs: int) -> tuple[int, int]:
    """Step 1's and step 2's epochs: the one-step budget split in two (step 2 gets the odd one)."""
    first = epochs // 2
    return first, epochs - first


@dataclass(frozen=True)
class Step:
    """One student a row trains per seed: its recipe; the name part after the row's (``""`` for
    the evaluated student, ``-step1`` before it); its description, a template of ``{epochs}``
    (``None``: the row's); its epochs from the budget's (``None``: all of them); whether it is
    evaluated; whether the row's previous step's last checkpoint initialises it."""

    recipe: StudentRecipe
    suffix: str = ""
    description: str | None = None
    epochs: Callable[[int], int] | None = None
    evaluate: bool = True
    from_previous: bool = False


@dataclass(frozen=True)
class AblationRow:
    """One row of the table: its name, what it is, what it changes from the reference, the
    students it trains per seed (the last one is the row's evaluated student), and the fewest
    epochs it can train with (``least_epochs``, ``because`` says why when more than 1)."""

    name: str
    description: str
    changes: str
    steps: tuple[Step, ...]
    least_epochs: int = 1
    because: str = ""


REFERENCE = "distill"
#: the reference's recipe on top of the demo's budget: S2-BNN's official distillation settings
REFERENCE_OVERRIDES = (
    "scheduler.name=linear",  # S2-BNN's linear decay to zero ...
    "++scheduler.interval=epoch",  # ... once per epoch, as the official code
    "++method_kwargs.distill_crops=first",  # the first crop to teacher and student
    "++method_kwargs.loss=kl",
)
#: the demo's distillation-only student with the reference's recipe
REFERENCE_RECIPE = replace(STUDENTS["distill"], overrides=(TEMPERATURE, *REFERENCE_OVERRIDES))
STEP1_CONFIG = "s2bnn_step1.yaml"
STEP2_CONFIG = "s2bnn_step2.yaml"

ROWS: dict[str, AblationRow] = {
    row.name: row
    for row in (
        AblationRow(
            "contrastive",
            "SimCLR alone on the binary student (no teacher)",
            "the objective: SimCLR instead of distillation (no teacher); solo-learn's cosine "
            "schedule per step, since the linear one is method=s2bnn's",
            (Step(STUDENTS["contrastive"]),),
        ),
        AblationRow(
            REFERENCE,
            "distillation only, one step: KL, linear schedule per epoch, first crop",
            "(the reference)",
            (Step(REFERENCE_RECIPE),),
        ),
        AblationRow(
            "distill-cosine",
            "the reference with solo-learn's warmup_cosine schedule",
            "scheduler.name=warmup_cosine, scheduler.interval=step (no warmup)",
            (
                Step(
                    REFERENCE_RECIPE.adding(
                        "scheduler.name=warmup_cosine", "++scheduler.interval=step"
                    )
                ),
            ),
        ),
        AblationRow(
            "distill-burn",
            "the reference with BURN's loss",
            "method_kwargs.loss=burn (its lambda ramp 0.1 -> 0.3)",
            (Step(REFERENCE_RECIPE.adding("++method_kwargs.loss=burn")),),
        ),
        AblationRow(
            "two-step",
            "step 1 binary activations + real weights, step 2 binary weights from step 1",
            "two steps splitting the epochs (backbone.kwargs.binary_weights=false in step 1; "
            "method_kwargs.student_init = step 1's last checkpoint in step 2)",
            (
                Step(
                    replace(REFERENCE_RECIPE, config=STEP1_CONFIG),
                    suffix="-step1",
                    description="two-step, step 1 (real weights, {epochs} epochs)",
                    epochs=lambda epochs: two_step_epochs(epochs)[0],
                    evaluate=False,
                ),
                Step(
                    replace(REFERENCE_RECIPE, config=STEP2_CONFIG),
                    description="two-step, step 2 (binary weights, {epochs} epochs)",
                    epochs=lambda epochs: two_step_epochs(epochs)[1],
                    from_previous=True,
                ),
            ),
            least_epochs=2,
            because="splits the epochs between its two steps",
        ),
        AblationRow(
            "contrastive-distill",
            "the reference + SimCLR on the student (S2-BNN's mixing)",
            "method_kwargs.ssl_method=simclr, ssl_weight=1.0 (SimCLR's projector and temperature)",
            # SimCLR's settings inside s2bnn: the demo's mixed student's
            (Step(REFERENCE_RECIPE.adding(*STUDENTS["mixed"].overrides, objective="simclr")),),
        ),
    )
}
DEFAULT_ROWS = tuple(ROWS)


def row_of(spec: StudentSpec) -> str:
    """The row an evaluated student belongs to (its name without the seed)."""
    return spec.name.rpartition("-s")[0]
