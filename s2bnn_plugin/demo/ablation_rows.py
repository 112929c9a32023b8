"""The ablation's rows: their names, what each changes from the reference, the reference's
recipe, and how ``two-step`` splits the epochs (shared by :mod:`~s2bnn_plugin.demo.ablation`,
which trains them, and :mod:`~s2bnn_plugin.demo.ablation_report`, which tabulates them)."""

from __future__ import annotations

from dataclasses import dataclass

from s2bnn_plugin.demo.pipeline import StudentSpec

__all__ = [
    "DEFAULT_ROWS",
    "REFERENCE",
    "REFERENCE_OVERRIDES",
    "ROWS",
    "AblationRow",
    "row_of",
    "two_step_epochs",
]


@dataclass(frozen=True)
class AblationRow:
    """One row of the table: its name, what it is, and what it changes from the reference."""

    name: str
    description: str
    changes: str


REFERENCE = "distill"
#: the reference's recipe on top of the demo's budget: S2-BNN's official distillation settings
REFERENCE_OVERRIDES = (
    "scheduler.name=linear",  # S2-BNN's linear decay to zero ...
    "++scheduler.interval=epoch",  # ... once per epoch, as the official code
    "++method_kwargs.distill_crops=first",  # the first crop to teacher and student
    "++method_kwargs.loss=kl",
)

ROWS: dict[str, AblationRow] = {
    row.name: row
    for row in (
        AblationRow(
            "contrastive",
            "SimCLR alone on the binary student (no teacher)",
            "the objective: SimCLR instead of distillation (no teacher); solo-learn's cosine "
            "schedule per step, since the linear one is method=s2bnn's",
        ),
        AblationRow(
            REFERENCE,
            "distillation only, one step: KL, linear schedule per epoch, first crop",
            "(the reference)",
        ),
        AblationRow(
            "distill-cosine",
            "the reference with solo-learn's warmup_cosine schedule",
            "scheduler.name=warmup_cosine, scheduler.interval=step (no warmup)",
        ),
        AblationRow(
            "distill-burn",
            "the reference with BURN's loss",
            "method_kwargs.loss=burn (its lambda ramp 0.1 -> 0.3)",
        ),
        AblationRow(
            "two-step",
            "step 1 binary activations + real weights, step 2 binary weights from step 1",
            "two steps splitting the epochs (backbone.kwargs.binary_weights=false in step 1; "
            "method_kwargs.student_init = step 1's last checkpoint in step 2)",
        ),
        AblationRow(
            "contrastive-distill",
            "the reference + SimCLR on the student (S2-BNN's mixing)",
            "method_kwargs.ssl_method=simclr, ssl_weight=1.0 (SimCLR's projector and temperature)",
        ),
    )
}
DEFAULT_ROWS = tuple(ROWS)


def two_step_epochs(epochs: int) -> tuple[int, int]:
    """Step 1's and step 2's epochs: the one-step budget split in two (step 2 gets the odd one)."""
    first = epochs // 2
    return first, epochs - first


def row_of(spec: StudentSpec) -> str:
    """The row an evaluated student belongs to (its name without the seed)."""
    return spec.name.rpartition("-s")[0]
