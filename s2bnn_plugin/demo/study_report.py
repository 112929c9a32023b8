"""The study's outputs: study.md / study.json (one row per method: alone, + distillation, the
difference, and against distillation only) and study.png (the pairs side by side).

With several seeds each cell is the mean over seeds and its sample standard deviation; the
differences are paired by seed (the same seed's two students), then averaged.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

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

__all__ = ["summarise", "write_study_report"]


def summarise(
    students: list[StudentSpec], evaluation: dict[str, Any], calib: dict[str, Any]
) -> dict[str, Any]:
    """Per method and metric: cells alone, + distillation, their difference (paired by seed) and
    + distillation minus distillation only (paired by seed); the distillation-only cells."""
    values = {s.name: student_metrics(evaluation, calib, s.name) for s in students}
    only = {s.seed: values[s.name] for s in students if s.objective is None}
    pairs: dict[str, dict[int, dict[str, dict[str, float]]]] = {}
    for s in students:
        if s.objective is not None:
            kind = "distill" if s.distill else "alone"
            pairs.setdefault(s.objective, {}).setdefault(s.seed, {})[kind] = values[s.name]
    methods: dict[str, Any] = {}
    for method, by_seed in pairs.items():
        seeds = sorted(by_seed)
        methods[method] = {}
        for m in METRICS:
            alone = {s: by_seed[s]["alone"][m] for s in seeds}
            mixed = {s: by_seed[s]["distill"][m] for s in seeds}
            methods[method][m] = {
                "alone": cell(list(alone.values())),
                "distill": cell(list(mixed.values())),
                "difference": paired_difference(mixed, alone),
                "vs_distill_only": paired_difference(mixed, {s: only[s][m] for s in seeds}),
            }
    distill_only = {m: cell([only[s][m] for s in sorted(only)]) for m in METRICS}
    return {"methods": methods, "distill_only": distill_only, "students": values}


def _table(metric: str, summary: dict[str, Any], evaluation: dict[str, Any]) -> list[str]:
    lines = [
        f"**{METRICS[metric]}**",
        "",
        "| method | alone | + distillation | difference | + distillation vs distillation only |",
        "|---|--:|--:|--:|--:|",
    ]
    rows = summary["methods"]
    for method, cells in rows.items():
        c = cells[metric]
        lines.append(
            f"| {method} | {format_cell(c['alone'])} | {format_cell(c['distill'])} | "
            f"{format_cell(c['difference'], True)} | {format_cell(c['vs_distill_only'], True)} |"
        )
    if len(rows) > 1:
        mean = {
            k: float(np.mean([cells[metric][k]["mean"] for cells in rows.values()]))
            for k in ("alone", "distill", "difference", "vs_distill_only")
        }
        lines.append(
            f"| *mean of the {len(rows)} methods* | {mean['alone']:.2f} | {mean['distill']:.2f} "
            f"| {mean['difference']:+.2f} | {mean['vs_distill_only']:+.2f} |"
        )
    lines.append(
        f"| distillation only (S2-BNN) | | {format_cell(summary['distill_only'][metric])} | | |"
    )
    labels = ("teacher (real-valued ResNet-18, SimCLR, PyTorch)", "raw pixels")
    lines += baseline_lines(evaluation, metric, labels, blanks=3)
    return [*lines, ""]


def _plot(out_dir: Path, summary: dict[str, Any], evaluation: dict[str, Any]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(summary["methods"])
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(methods) + 3), 4.2), sharey=True)
    x = np.arange(len(methods))
    for ax, metric in zip(axes, ("knn", "linear")):
        for offset, kind, label in ((-0.2, "alone", "alone"), (0.2, "distill", "+ distillation")):
            cells = [summary["methods"][m][metric][kind] for m in methods]
            err = [c["std"] or 0.0 for c in cells] if cells and cells[0]["std"] else None
            bars = ax.bar(
                x + offset, [c["mean"] for c in cells], 0.4, yerr=err, capsize=3, label=label
            )
            ax.bar_label(bars, fmt="%.1f", fontsize=7)
        only = summary["distill_only"][metric]["mean"]
        ax.axhline(only, color="k", linestyle="--", linewidth=1, label="distillation only")
        ax.axhline(
            evaluation["teacher"][f"{metric}_top1"],
            color="grey",
            linestyle=":",
            linewidth=1.2,
            label="teacher (real)",
        )
        ax.set_xticks(x, methods, fontsize=8)
        ax.set_title(METRICS[metric])
    means = [
        summary["methods"][m][k][kind]["mean"]
        for m in methods
        for k in ("knn", "linear")
        for kind in ("alone", "distill")
    ]
    axes[0].set_ylim(max(0.0, min(means) - 15), 100)
    axes[0].set_ylabel("held-out top-1 (%)")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle("Binary students: each objective alone vs + S2-BNN distillation (same budget)")
    fig.tight_layout()
    with atomic_open(out_dir / "study.png", force=True) as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return "study.png"


def write_study_report(
    cfg: Any,
    students: list[StudentSpec],
    data: dict[str, Any],
    evaluation: dict[str, Any],
    timings: dict[str, float],
) -> dict[str, Any]:
    """Write study.json, study.md and study.png into ``cfg.out_dir``."""
    out_dir = Path(cfg.out_dir)
    calib = calibration(out_dir / "eval", [s.name for s in students])
    summary = summarise(students, evaluation, calib)
    plot = _plot(out_dir, summary, evaluation)
    teacher = evaluation["teacher"]
    total = float(sum(timings.values()))
    loads = recorded_loads(out_dir)
    result = {
        "dataset": data["root"],
        "n_train": teacher["n_train"],
        "n_val": teacher["n_val"],
        "config": cfg.to_json(),
        "seeds": list(cfg.student_seeds),
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
    write_text(out_dir / "study.json", json.dumps(result, indent=2, default=str) + "\n", force=True)
    seeds = len(cfg.student_seeds)
    lines = [
        "# s2bnn study: does distillation lift each objective's binary student?",
        "",
        f"Data: `{data['root']}` ({len(data['classes'])} classes; {teacher['n_train']} training "
        f"images, also the kNN bank and the probe's training set; {teacher['n_val']} held-out "
        "images). Teacher: real-valued ResNet-18, SimCLR, "
        f"{epochs_text(cfg.teacher_epochs)}. Students: `{cfg.backbone}` width {cfg.width_mult}, "
        "binary weights and activations, all with the same budget: "
        f"{epochs_text(cfg.epochs)}, batch {cfg.batch_size}, Adam lr {cfg.lr} (scaled by "
        "batch/256 by solo-learn), cosine "
        "schedule; each objective with solo-learn's CIFAR recipe"
        + (f" (departures: {json.dumps(cfg.method_kwargs)})" if cfg.method_kwargs else "")
        + ". Evaluated on the packed CPU engine (kNN k="
        + f"{cfg.knn_k}, T={cfg.knn_temperature}; linear probe).",
        "",
        (
            f"{seeds} seeds: mean ± sample standard deviation; differences paired by seed."
            if seeds > 1
            else "One seed: single measurements (binomial standard error of an accuracy on "
            f"{teacher['n_val']} held-out images: at most ±{50 / teacher['n_val'] ** 0.5:.1f} "
            "points)."
        ),
        "",
        "'difference' = (objective + distillation) − (objective alone); the last column = "
        "(objective + distillation) − (distillation only).",
        "",
    ]
    for metric in METRICS:
        lines += _table(metric, summary, evaluation)
    lines += [
        *stage_time_lines(timings, loads, os.cpu_count() or 1),
        f"![{plot}]({plot})",
        "",
    ]
    write_text(out_dir / "study.md", "\n".join(lines), force=True)
    return {"study_md": str(out_dir / "study.md"), "total_stage_seconds": total}
