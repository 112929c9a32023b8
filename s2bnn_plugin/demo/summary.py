"""Table cells shared by the study's and the ablation's reports: the metrics of one evaluated
student, a cell (mean, sample standard deviation, the values) over seeds, differences paired by
seed, their text in a markdown table, and the lines on stage times.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "METRICS",
    "cell",
    "epochs_text",
    "format_cell",
    "baseline_lines",
    "paired_difference",
    "recorded_loads",
    "stage_time_lines",
    "student_metrics",
]

#: key in the tables -> title
METRICS = {
    "knn": "weighted kNN top-1 (%)",
    "linear": "linear-probe top-1 (%)",
    "agree_knn": "top-1 agreement with the teacher, kNN (%)",
    "agree_linear": "top-1 agreement with the teacher, linear probe (%)",
}


def cell(values: list[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (None for one value) and the values of one table cell."""
    arr = np.asarray(values, dtype=float)
    return {
        "mean": float(arr.mean()),
        "std": float(arr.std(ddof=1)) if len(arr) > 1 else None,
        "n": len(arr),
        "values": [float(v) for v in arr],
    }


def paired_difference(values: Mapping[int, float], reference: Mapping[int, float]) -> dict:
    """The cell of ``values[seed] - reference[seed]`` over the seeds (in order): the spread of a
    paired difference, which removes what the two share through the seed."""
    if set(values) != set(reference):
        raise ValueError(
            f"paired by seed needs the same seeds: {sorted(values)}, {sorted(reference)}"
        )
    return cell([values[s] - reference[s] for s in sorted(values)])


def format_cell(c: dict[str, Any] | None, signed: bool = False) -> str:
    """``mean ± std`` with two decimals (the mean alone for one value); ``signed``: with +/-."""
    if c is None:
        return ""
    mean = f"{c['mean']:+.2f}" if signed else f"{c['mean']:.2f}"
    return mean if c["std"] is None else f"{mean} ± {c['std']:.2f}"


def epochs_text(n: int) -> str:
    return f"{n} epoch" if n == 1 else f"{n} epochs"


def student_metrics(
    evaluation: dict[str, Any], calib: dict[str, Any], name: str
) -> dict[str, float]:
    """One student's :data:`METRICS` from the eval stage and the calibration analysis."""
    out = {
        "knn": float(evaluation[name]["knn_top1"]),
        "linear": float(evaluation[name]["linear_top1"]),
    }
    if "knn_agreement_with_teacher" in calib.get(name, {}):
        out["agree_knn"] = calib[name]["knn_agreement_with_teacher"]
        out["agree_linear"] = calib[name]["linear_agreement_with_teacher"]
    return out


def recorded_loads(out_dir: Path) -> dict[str, float]:
    """The 1-minute load average when each stage ended, as the pipeline recorded it."""
    recorded = out_dir / "stages" / "timings.json"
    return json.loads(recorded.read_text()).get("load_average", {}) if recorded.is_file() else {}


def stage_time_lines(timings: dict[str, float], loads: dict[str, float], cpus: int) -> list[str]:
    """The report's lines on how long each stage took and how busy the machine was."""
    total = float(sum(timings.values()))
    return [
        f"Sum of stage times: {total:.0f} s ({total / 60:.1f} min) on {cpus} CPU "
        "core(s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()),
        "",
        "1-minute load average when each stage ended (a shared machine is slower): "
        + ", ".join(f"{k} {v:.1f}" for k, v in loads.items()),
        "",
    ]


def baseline_lines(
    evaluation: dict[str, Any], metric: str, labels: tuple[str, str], blanks: int
) -> list[str]:
    """The teacher's and the raw-pixel probe's rows of a kNN or linear table (none for the
    agreement metrics): ``| label | value |`` (``labels``: the teacher's, the raw pixels'; a
    label may span several columns) followed by ``blanks`` empty cells."""
    if metric not in ("knn", "linear"):
        return []
    rest = " |" * blanks
    teacher_label, raw_label = labels
    lines = [f"| {teacher_label} | {evaluation['teacher'][f'{metric}_top1']:.2f} |{rest}"]
    raw = evaluation.get("raw_pixels", {}).get(f"{metric}_top1")
    if raw is not None:
        lines.append(f"| {raw_label} | {raw:.2f} |{rest}")
    return lines
