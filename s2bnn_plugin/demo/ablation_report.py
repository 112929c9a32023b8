"""The ablation's outputs: ablation.md / ablation.json (one row per ablation row: mean ± sample
standard deviation over seeds, and the difference to the reference paired by seed) and
ablation.png (per row the mean ± sd of kNN and linear top-1, each seed a dot).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from s2bnn_plugin.demo.ablation_rows import REFERENCE, ROWS, row_of, two_step_epochs
from s2bnn_plugin.demo.pipeline import StudentSpec
from s2bnn_plugin.demo.report import calibration
from s2bnn_plugin.demo.summary import (
    METRICS,
    baseline_lines,
    cell,
    epochs_text,
    format_cell,
    paired_difference,
    recorded_loads,
    stage_time_lines,
    student_metrics,
)
from s2bnn_plugin.files import atomic_open, write_text

__all__ = ["summarise", "write_ablation_report"]


def summarise(
    students: list[StudentSpec], evaluation: dict[str, Any], calib: dict[str, Any]
) -> dict[str, Any]:
    """Per row and metric: the cell over seeds and (but for the reference) the difference to the
    reference, paired by seed; each evaluated student's metrics."""
    evaluated = [s for s in students if s.evaluate]
    values = {s.name: student_metrics(evaluation, calib, s.name) for s in evaluated}
    by_row: dict[str, dict[int, dict[str, float]]] = {}
    for s in evaluated:
        by_row.setdefault(row_of(s), {})[s.seed] = values[s.name]
    reference = by_row[REFERENCE]
    rows: dict[str, Any] = {}
    for row, by_seed in by_row.items():
        rows[row] = {}
        for m in METRICS:
            if not all(m in v for v in by_seed.values()):
                continue
            seeds = {seed: v[m] for seed, v in sorted(by_seed.items())}
            rows[row][m] = {
                "cell": cell(list(seeds.values())),
                "vs_reference": None
                if row == REFERENCE
                else paired_difference(seeds, {s: reference[s][m] for s in seeds}),
            }
    return {"rows": rows, "students": values}


def _table(metric: str, summary: dict[str, Any], evaluation: dict[str, Any]) -> list[str]:
    lines = [
        f"**{METRICS[metric]}**",
        "",
        f"| row | changes from `{REFERENCE}` | mean ± sd | − {REFERENCE}, paired by seed | "
        "per seed |",
        "|---|---|--:|--:|--:|",
    ]
    for row, cells in summary["rows"].items():
        if metric not in cells:
            continue
        c = cells[metric]
        seeds = ", ".join(f"{v:.2f}" for v in c["cell"]["values"])
        lines.append(
            f"| {row} | {ROWS[row].changes} | {format_cell(c['cell'])} | "
            f"{format_cell(c['vs_reference'], True)} | {seeds} |"
        )
    labels = ("teacher | real-valued ResNet-18, SimCLR, PyTorch", "raw pixels |")
    lines += baseline_lines(evaluation, metric, labels, blanks=2)
    return [*lines, ""]


def _plot(out_dir: Path, summary: dict[str, Any], evaluation: dict[str, Any]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(summary["rows"])
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.5 * len(rows) + 3), 4.4), sharey=True)
    x = np.arange(len(rows))
    lows = []
    for ax, metric in zip(axes, ("knn", "linear")):
        cells = [summary["rows"][r][metric]["cell"] for r in rows]
        means = [c["mean"] for c in cells]
        bars = ax.bar(x, means, 0.6, yerr=[c["std"] or 0.0 for c in cells], capsize=3)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, label_type="center")
        for i, c in enumerate(cells):
            jitter = np.linspace(-0.12, 0.12, len(c["values"])) if len(c["values"]) > 1 else [0]
            ax.scatter(i + np.asarray(jitter), c["values"], color="k", s=12, zorder=3)
            lows.append(min(c["values"]))
        ref = summary["rows"][REFERENCE][metric]["cell"]["mean"]
        ax.axhline(ref, color="k", linestyle="--", linewidth=1, label=f"{REFERENCE} (reference)")
        ax.axhline(
            evaluation["teacher"][f"{metric}_top1"],
            color="grey",
            linestyle=":",
            linewidth=1.2,
            label="teacher (real)",
        )
        ax.set_xticks(x, rows, fontsize=8, rotation=20)
        ax.set_title(METRICS[metric])
    axes[0].set_ylim(max(0.0, min(lows) - 15), 100)
    axes[0].set_ylabel("held-out top-1 (%)")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle("Binary students at the same budget: mean ± sd over seeds, seeds as dots")
    fig.tight_layout()
    with atomic_open(out_dir / "ablation.png", force=True) as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return "ablation.png"


def write_ablation_report(
    cfg: Any,
    students: list[StudentSpec],
    data: dict[str, Any],
    evaluation: dict[str, Any],
    timings: dict[str, float],
) -> dict[str, Any]:
    """Write ablation.json, ablation.md and ablation.png into ``cfg.out_dir``."""
    out_dir = Path(cfg.out_dir)
    calib = calibration(out_dir / "eval", [s.name for s in students if s.evaluate])
    summary = summarise(students, evaluation, calib)
    plot = _plot(out_dir, summary, evaluation)
    teacher = evaluation["teacher"]
    total = float(sum(timings.values()))
    loads = recorded_loads(out_dir)
    first, second = two_step_epochs(cfg.epochs)
    result = {
        "dataset": data["root"],
        "n_train": teacher["n_train"],
        "n_val": teacher["n_val"],
        "config": cfg.to_json(),
        "seeds": list(cfg.student_seeds),
        "reference": REFERENCE,
        "two_step_epochs": [first, second],
        "changes": {row: ROWS[row].changes for row in summary["rows"]},
        **summary,
        "teacher": {"knn": teacher["knn_top1"], "linear": teacher["linear_top1"]},
        "raw_pixels": evaluation.get("raw_pixels"),
        "calibration": calib,
        "stage_seconds": timings,
        "total_stage_seconds": total,
        "stage_load_average": loads,
        "cpu_count": os.cpu_count(),
        "plots": [plot],
    }
    write_text(
        out_dir / "ablation.json", json.dumps(result, indent=2, default=str) + "\n", force=True
    )
    lines = [
        "# s2bnn ablation: which parts of the S2-BNN recipe matter at this budget?",
        "",
        f"Data: `{data['root']}` ({len(data['classes'])} classes; {teacher['n_train']} training "
        f"images, also the kNN bank and the probe's training set; {teacher['n_val']} held-out "
        f"images). Teacher: real-valued ResNet-18, SimCLR, {epochs_text(cfg.teacher_epochs)}. "
        f"Students: `{cfg.backbone}` width {cfg.width_mult}, binary weights and activations, "
        f"all with the same budget: {epochs_text(cfg.epochs)}, batch {cfg.batch_size}, Adam lr "
        f"{cfg.lr} (scaled by batch/256 by solo-learn), weight decay 0, the demo's 32 px "
        "augmentation. Evaluated on the packed CPU engine (kNN k="
        f"{cfg.knn_k}, T={cfg.knn_temperature}; linear probe).",
        "",
        f"The reference, `{REFERENCE}`, is distillation only in one step with S2-BNN's official "
        "recipe: KL loss, the linear learning-rate decay once per epoch, the first crop shared "
        "by teacher and student. Every other row changes only what its second column says. "
        f"`two-step` has the same total budget as one step: {epochs_text(first)} of step 1 "
        f"(binary activations, real weights; not evaluated) then {epochs_text(second)} of step 2 "
        "(binary weights, initialised from step 1's last checkpoint), each with its own linear "
        "decay.",
        "",
        f"{cfg.seeds} seeds ({', '.join(str(s) for s in cfg.student_seeds)}): mean ± sample "
        f"standard deviation over seeds; the difference to `{REFERENCE}` is taken per seed "
        "(both students trained with the same solo-learn seed), then averaged. With few seeds "
        "a difference within about twice its spread is not evidence either way; a short "
        "budget on a small dataset ranks the rows for this budget only, not at the paper's 200 "
        "ImageNet epochs.",
        "",
    ]
    for metric in METRICS:
        lines += _table(metric, summary, evaluation)
    lines += [*stage_time_lines(timings, loads, os.cpu_count() or 1), f"![{plot}]({plot})", ""]
    write_text(out_dir / "ablation.md", "\n".join(lines), force=True)
    return {"ablation_md": str(out_dir / "ablation.md"), "total_stage_seconds": total}
