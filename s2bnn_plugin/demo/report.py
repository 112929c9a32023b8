"""The demo's outputs: results.md / results.json and PNG plots (accuracy, calibration, curves).

Calibration follows the paper's analysis (teacher vs student prediction distributions): on the
held-out images each model's prediction distribution is its normalised weighted-kNN class vote;
we compare its entropy with the teacher's and count top-1 agreement with the teacher.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from s2bnn_plugin.files import atomic_open, write_text

__all__ = ["calibration", "write_report"]

LABELS = {
    "teacher": "teacher (real ResNet-18, SimCLR, torch)",
    "contrastive": "BNN: contrastive only (SimCLR)",
    "distill": "BNN: distillation only (S2-BNN)",
    "mixed": "BNN: contrastive + distillation",
    "raw_pixels": "raw pixels (linear probe)",
}
STUDENT_NAMES = ("contrastive", "distill", "mixed")


def _entropy(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(np.clip(p, 1e-12, 1.0))).sum(axis=1)


def calibration(
    eval_dir: Path, names: tuple[str, ...] | list[str] = STUDENT_NAMES
) -> dict[str, dict[str, float]]:
    """Entropy and top-1 agreement with the teacher of each student's kNN distributions (and of
    its linear probe's predictions with the teacher's)."""
    teacher = np.load(eval_dir / "teacher_knn_dist.npy")
    t_lin = np.load(eval_dir / "teacher_linear_pred.npy")
    out = {"teacher": {"mean_entropy": float(_entropy(teacher).mean())}}
    for name in names:
        dist = np.load(eval_dir / f"{name}_knn_dist.npy")
        lin = np.load(eval_dir / f"{name}_linear_pred.npy")
        out[name] = {
            "mean_entropy": float(_entropy(dist).mean()),
            "knn_agreement_with_teacher": float(100 * np.mean(dist.argmax(1) == teacher.argmax(1))),
            "linear_agreement_with_teacher": float(100 * np.mean(lin == t_lin)),
            "kl_teacher_student": float(
                np.mean(
                    (
                        teacher
                        * (np.log(np.clip(teacher, 1e-12, 1)) - np.log(np.clip(dist, 1e-12, 1)))
                    ).sum(1)
                )
            ),
        }
    return out


def _plots(out_dir: Path, rows: dict[str, Any], calib: dict[str, Any], timings: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    names = ["raw_pixels", "teacher", *STUDENT_NAMES]
    fig, ax = plt.subplots(figsize=(8, 4))
    x = np.arange(len(names))
    knn = [rows[n].get("knn_top1") or 0 for n in names]
    lin = [rows[n]["linear_top1"] for n in names]
    b1 = ax.bar(x - 0.2, knn, 0.4, label="kNN (k=20, T=0.07)")
    b2 = ax.bar(x + 0.2, lin, 0.4, label="linear probe")
    ax.bar_label(b1, fmt="%.1f", fontsize=7)
    ax.bar_label(b2, fmt="%.1f", fontsize=7)
    ax.set_xticks(x, [LABELS[n].replace(" (", "\n(") for n in names], fontsize=7)
    low = min(v for v in knn + lin if v > 0)
    ax.set_ylim(max(0, low - 15), 100)
    ax.set_ylabel("held-out top-1 (%)")
    ax.set_title("Accuracy at equal budget (students on the packed CPU engine)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_open(out_dir / "accuracy.png", force=True) as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    written.append("accuracy.png")

    eval_dir = out_dir / "eval"
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    bins = np.linspace(0, np.log(len(np.load(eval_dir / "teacher_knn_dist.npy")[0])), 30)
    for name in ("teacher", *STUDENT_NAMES):
        ent = _entropy(np.load(eval_dir / f"{name}_knn_dist.npy"))
        ax1.hist(ent, bins=bins, histtype="step", linewidth=1.5, label=LABELS[name].split(" (")[0])
    ax1.set_xlabel("entropy of the kNN prediction distribution (nats)")
    ax1.set_ylabel("held-out images")
    ax1.set_title("Prediction entropy: teacher vs students")
    ax1.legend(fontsize=7)
    agree_knn = [calib[n]["knn_agreement_with_teacher"] for n in STUDENT_NAMES]
    agree_lin = [calib[n]["linear_agreement_with_teacher"] for n in STUDENT_NAMES]
    x = np.arange(len(STUDENT_NAMES))
    c1 = ax2.bar(x - 0.2, agree_knn, 0.4, label="kNN top-1")
    c2 = ax2.bar(x + 0.2, agree_lin, 0.4, label="linear-probe top-1")
    ax2.bar_label(c1, fmt="%.1f", fontsize=7)
    ax2.bar_label(c2, fmt="%.1f", fontsize=7)
    ax2.set_xticks(x, ["contrastive", "distillation", "contr. + distill."], fontsize=8)
    ax2.set_ylim(0, 100)
    ax2.set_ylabel("agreement with the teacher (%)")
    ax2.set_title("Top-1 agreement with the teacher")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    with atomic_open(out_dir / "calibration.png", force=True) as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    written.append("calibration.png")

    # the paper's calibration view during training: how the student's distribution over the
    # teacher's prediction space approaches the teacher's (logged each epoch by method=s2bnn)
    keys = ("train_teacher_student_agreement", "train_student_entropy", "train_teacher_entropy")
    curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for name in STUDENT_NAMES:
        for path in sorted((out_dir / "runs" / name).rglob("metrics.csv")):
            with open(path) as f:
                for row in csv.DictReader(f):
                    for key in keys:
                        value = row.get(f"{key}_epoch")
                        if value:
                            points = curves.setdefault(name, {}).setdefault(key, [])
                            points.append((int(row["epoch"]) + 1, float(value)))
    if curves:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
        teacher_drawn = False
        for name, series in curves.items():
            label = LABELS[name].split(" (")[0]
            if keys[0] in series:
                ax1.plot(*zip(*sorted(series[keys[0]])), marker="o", label=label)
            if keys[1] in series:
                ax2.plot(*zip(*sorted(series[keys[1]])), marker="o", label=label)
            if keys[2] in series and not teacher_drawn:  # the same frozen teacher for all
                ax2.plot(*zip(*sorted(series[keys[2]])), "k--", label="teacher")
                teacher_drawn = True
        ax1.set(xlabel="epoch", ylabel="top-1 agreement", ylim=(0, 1))
        ax1.set_title("Student vs teacher: same top-1 'class'")
        ax2.set(xlabel="epoch", ylabel="entropy (nats)")
        ax2.set_title("Prediction entropy (T = distillation temperature)")
        for ax in (ax1, ax2):
            ax.legend(fontsize=7)
        fig.tight_layout()
        with atomic_open(out_dir / "training_calibration.png", force=True) as f:
            fig.savefig(f, format="png", dpi=110)
        plt.close(fig)
        written.append("training_calibration.png")
    return written


def write_report(
    cfg: Any, data: dict[str, Any], evaluation: dict[str, Any], timings: dict[str, float]
) -> dict[str, Any]:
    """Write results.json, results.md and the plots into ``cfg.out_dir``."""
    out_dir = Path(cfg.out_dir)
    calib = calibration(out_dir / "eval")
    rows = {n: evaluation[n] for n in ("raw_pixels", "teacher", *STUDENT_NAMES)}
    gap = {
        metric: rows["distill"][f"{metric}_top1"] - rows["contrastive"][f"{metric}_top1"]
        for metric in ("knn", "linear")
    }
    plots = _plots(out_dir, rows, calib, timings)
    n_train = rows["teacher"]["n_train"]
    n_val = rows["teacher"]["n_val"]
    result = {
        "dataset": data["root"],
        "n_train": n_train,
        "n_val": n_val,
        "config": cfg.to_json(),
        "results": rows,
        "calibration": calib,
        "distill_minus_contrastive": gap,
        "stage_seconds": timings,
        "plots": plots,
    }
    write_text(
        out_dir / "results.json", json.dumps(result, indent=2, default=str) + "\n", force=True
    )

    lines = [
        "# s2bnn demo results",
        "",
        f"Data: `{data['root']}` ({len(data['classes'])} classes; {n_train} training images, "
        f"the kNN bank and probe's training set; {n_val} held-out images).",
        f"Students: `{cfg.backbone}` (binary weights and activations), width {cfg.width_mult}, "
        f"same budget: {cfg.epochs} epochs, batch {cfg.batch_size}, Adam lr {cfg.lr} "
        "(scaled by batch/256 by solo-learn), cosine schedule.",
        "",
        "| model | engine | feature dim | kNN top-1 (%) | linear top-1 (%) | agreement with "
        "teacher, kNN / linear (%) | mean kNN entropy (nats) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        knn = "-" if row.get("knn_top1") is None else f"{row['knn_top1']:.2f}"
        c = calib.get(name, {})
        agree = (
            f"{c['knn_agreement_with_teacher']:.1f} / {c['linear_agreement_with_teacher']:.1f}"
            if "knn_agreement_with_teacher" in c
            else "-"
        )
        ent = f"{c['mean_entropy']:.3f}" if "mean_entropy" in c else "-"
        engine = row.get("engine", "-").split(" (")[0]
        lines.append(
            f"| {LABELS[name]} | {engine} | {row['feature_dim']} | {knn} | "
            f"{row['linear_top1']:.2f} | {agree} | {ent} |"
        )
    lines += [
        "",
        f"Distillation only minus contrastive only: kNN {gap['knn']:+.2f} points, linear "
        f"{gap['linear']:+.2f} points.",
        "",
        "Stage wall times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()),
        "",
        *[f"![{p}]({p})" for p in plots],
        "",
    ]
    write_text(out_dir / "results.md", "\n".join(lines), force=True)
    return {"results_md": str(out_dir / "results.md"), "gap": gap}
