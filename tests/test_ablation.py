"""`s2bnn ablation`: each row differs from the reference in exactly the settings it names (the
configs solo-learn would compose), bad input refused before training, the report's arithmetic,
and (slow) a tiny ablation with the two-step row end to end that resumes without retraining."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from image_utils import TINY_RUN, random_dataset

from s2bnn_plugin.cli import main
from s2bnn_plugin.demo import DemoError, ablation, pipeline
from s2bnn_plugin.demo.ablation import (
    REFERENCE,
    AblationConfig,
    AblationError,
    ablation_students,
    check_ablation,
    estimate_seconds,
    run_ablation,
    two_step_epochs,
)

pytestmark = pytest.mark.solo


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return random_dataset(tmp_path_factory.mktemp("ablation_data"))  # 40 training images


def tiny(out: Path, data: Path, rows: list[str], **kwargs: Any) -> AblationConfig:
    settings = {**TINY_RUN, "epochs": 2, **kwargs}
    return AblationConfig(out_dir=out, data=str(data), rows=rows, **settings)


# ------------------------------------------------------------------ the rows, composed


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): d}


#: what identifies a run rather than configures it (the run's own name and folders)
_RUN_IDENTITY = {"name", "checkpoint.dir", "default_root_dir"}


def _composed(tmp_path: Path, monkeypatch, cfg: AblationConfig) -> dict[str, dict[str, Any]]:
    """Each student's config as solo-learn's main_pretrain.py would compose it (Hydra, from
    the command the pipeline hands to solo-learn), flattened."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    commands: list[list[str]] = []
    monkeypatch.setattr(
        pipeline.subprocess, "call", lambda command, **_: commands.append(command) or 0
    )
    out = {}
    for spec in ablation_students(cfg):
        init = "step1.ckpt" if spec.init_from else None
        with pytest.raises(DemoError, match="no last-epoch checkpoint"):
            pipeline.stage_student(cfg, spec, {"train": str(tmp_path)}, "t.ckpt", print, True, init)
        command = commands[-1]
        at = command.index("--config-path")
        folder, name, overrides = command[at + 1], command[at + 3], command[at + 4 : -1]
        with initialize_config_dir(folder, version_base=None):
            run = compose(config_name=name, overrides=overrides)
        flat = _flat(OmegaConf.to_container(run, resolve=False))
        out[spec.name] = {k: v for k, v in flat.items() if k not in _RUN_IDENTITY}
    return out


def _differences(a: dict[str, Any], b: dict[str, Any]) -> set[str]:
    return {k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>")}


def test_each_row_differs_from_the_reference_in_exactly_the_settings_it_names(
    tmp_path, monkeypatch
):
    cfg = AblationConfig(out_dir=tmp_path, seeds=2)
    runs = _composed(tmp_path, monkeypatch, cfg)
    ref = runs["distill-s0"]
    # the reference: S2-BNN's official recipe on the demo's budget
    assert ref["method"] == "s2bnn"
    assert (ref["scheduler.name"], ref["scheduler.interval"]) == ("linear", "epoch")
    assert ref["method_kwargs.distill_crops"] == "first"
    assert ref["method_kwargs.loss"] == "kl"
    assert ref["backbone.kwargs.binary_weights"] is True
    assert ref["max_epochs"] == cfg.epochs == 6
    assert (ref["optimizer.name"], ref["optimizer.lr"]) == ("adam", cfg.lr)
    assert ref["optimizer.batch_size"] == cfg.batch_size
    assert ref["backbone.name"] == cfg.backbone and ref["method_kwargs.ssl_method"] == "none"
    expected = {
        "distill-cosine-s0": {"scheduler.name", "scheduler.interval"},
        "distill-burn-s0": {"method_kwargs.loss"},
        "contrastive-distill-s0": {
            "method_kwargs.ssl_method",
            "method_kwargs.ssl_weight",
            "method_kwargs.ssl_kwargs.proj_hidden_dim",
            "method_kwargs.ssl_kwargs.proj_output_dim",
            "method_kwargs.ssl_kwargs.temperature",
        },
        "two-step-step1-s0": {"backbone.kwargs.binary_weights", "max_epochs"},
        "two-step-s0": {"method_kwargs.student_init", "max_epochs"},
        "distill-s1": {"seed"},
    }
    for name, keys in expected.items():
        assert _differences(runs[name], ref) == keys, name
    assert runs["distill-cosine-s0"]["scheduler.name"] == "warmup_cosine"
    assert runs["distill-cosine-s0"]["scheduler.interval"] == "step"
    assert runs["distill-burn-s0"]["method_kwargs.loss"] == "burn"
    assert runs["contrastive-distill-s0"]["method_kwargs.ssl_method"] == "simclr"
    step1, step2 = runs["two-step-step1-s0"], runs["two-step-s0"]
    assert step1["backbone.kwargs.binary_weights"] is False
    assert (step1["max_epochs"], step2["max_epochs"]) == (3, 3)  # the same total budget
    assert step2["method_kwargs.student_init"] == "step1.ckpt"
    # the baseline: SimCLR on the same student, data, optimiser, epochs and augmentation
    con = runs["contrastive-s0"]
    assert con["method"] == "simclr" and "method_kwargs.teacher.ckpt" not in con
    shared = [k for k in ref if k.split(".")[0] in ("optimizer", "data", "backbone")]
    shared += ["max_epochs", "seed"] + [k for k in ref if k.startswith("augmentations")]
    assert {k: con.get(k) for k in shared} == {k: ref[k] for k in shared}
    assert con["scheduler.name"] == "warmup_cosine"  # linear is method=s2bnn's only


def test_the_students_per_seed_and_the_two_step_split():
    cfg = AblationConfig(rows=["two-step", "distill-burn"], seeds=2, epochs=5)
    specs = ablation_students(cfg)
    assert [s.name for s in specs] == [
        "distill-s0",  # the reference is always trained
        "distill-burn-s0",
        "two-step-step1-s0",
        "two-step-s0",
        "distill-s1",
        "distill-burn-s1",
        "two-step-step1-s1",
        "two-step-s1",
    ]
    by_name = {s.name: s for s in specs}
    assert (by_name["two-step-step1-s1"].epochs, by_name["two-step-s1"].epochs) == (2, 3)
    assert by_name["two-step-s1"].init_from == "two-step-step1-s1"
    assert not by_name["two-step-step1-s0"].evaluate and by_name["two-step-s0"].evaluate
    assert [s.seed for s in specs] == [0] * 4 + [1] * 4
    assert two_step_epochs(6) == (3, 3) and two_step_epochs(2) == (1, 1)


def test_a_row_added_to_the_table_trains_its_students(monkeypatch):
    """The rows are data: a new row (a recipe on the reference's) gets its students per seed,
    named, described and configured from its entry alone."""
    from s2bnn_plugin.demo.ablation_rows import REFERENCE_RECIPE, ROWS, AblationRow, Step

    row = AblationRow(
        "distill-hot",
        "the reference at T = 0.5",
        "method_kwargs.temperature=0.5",
        (Step(REFERENCE_RECIPE.adding("method_kwargs.temperature=0.5")),),
    )
    monkeypatch.setitem(ROWS, row.name, row)
    specs = ablation_students(AblationConfig(rows=["distill-hot"], seeds=2))
    assert [s.name for s in specs] == [
        "distill-s0",
        "distill-hot-s0",
        "distill-s1",
        "distill-hot-s1",
    ]
    hot, reference = specs[3], specs[2]
    assert hot.overrides == (*reference.overrides, "method_kwargs.temperature=0.5")
    assert hot.description == "the reference at T = 0.5, seed 1" and hot.seed == 1
    assert (hot.config, hot.distill, hot.objective) == ("s2bnn.yaml", True, None)


def test_the_default_run_is_estimated_under_40_minutes():
    cfg = AblationConfig()
    minutes = estimate_seconds(cfg, 10 * cfg.train_per_class) / 60
    assert 15 < minutes < 40
    # it grows with the budget: twice the epochs, about twice the students' time
    assert (
        estimate_seconds(AblationConfig(epochs=12), 5000) > 1.7 * estimate_seconds(cfg, 5000) - 400
    )


# ------------------------------------------------------------------ bad input, before training


@pytest.mark.parametrize(
    "settings,message",
    [
        (
            {"rows": ["distil-burn"]},
            "--rows: unknown row 'distil-burn' (did you mean distill-burn?); rows: contrastive, "
            "distill, distill-cosine, distill-burn, two-step, contrastive-distill",
        ),
        ({"rows": ["distill", "distill"]}, "--rows lists distill more than once"),
        ({"rows": []}, "no rows given; rows: contrastive,"),
        (
            {"seeds": 1},
            "--seeds 1: the differences to the reference are paired by seed and their spread "
            "needs at least 2 seeds; use --seeds 2 (or more)",
        ),
        (
            {"epochs": 1},
            "--epochs 1: the two-step row splits the epochs between its two steps and needs at "
            "least 2; use --epochs 2 (or more), or leave two-step out of --rows",
        ),
    ],
    ids=["unknown-row", "repeated-row", "no-rows", "one-seed", "two-step-one-epoch"],
)
def test_rows_and_numbers_that_cannot_give_the_table_are_refused(
    dataset, tmp_path, monkeypatch, settings, message
):
    def forbidden(*args, **kwargs):
        raise AssertionError("the ablation's stages started")

    monkeypatch.setattr(ablation, "run_pipeline", forbidden)
    cfg = AblationConfig(out_dir=tmp_path / "a", data=str(dataset))
    for key, value in settings.items():
        setattr(cfg, key, value)
    with pytest.raises(AblationError) as info:
        run_ablation(cfg, quiet=True, log=lambda _: None)
    assert message in str(info.value)
    assert not (tmp_path / "a").exists()


def test_one_epoch_runs_without_the_two_step_row():
    check_ablation(AblationConfig(epochs=1, rows=["distill", "distill-burn"]))


def test_a_batch_larger_than_the_data_is_refused_before_training(dataset, tmp_path):
    out = tmp_path / "a"
    cfg = tiny(out, dataset, ["distill"], batch_size=64)
    with pytest.raises(DemoError, match="the students' training batch of 64 images is larger"):
        run_ablation(cfg, quiet=True, log=lambda _: None)
    assert not (out / "runs").exists()


def test_cli_refuses_an_unknown_row_in_one_line(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["ablation", "--rows", "distill,too-step", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("s2bnn ablation: --rows: unknown row 'too-step' (did you mean two-step?)")
    assert err.count("\n") == 1 and not out.exists()


# ------------------------------------------------------------------ the report's arithmetic


def test_report_means_spreads_and_differences_paired_by_seed(tmp_path):
    """Two seeds, made-up evaluations: each cell against a hand computation."""
    from s2bnn_plugin.demo.ablation_report import write_ablation_report

    cfg = AblationConfig(out_dir=tmp_path, rows=["distill", "distill-burn", "two-step"])
    students = ablation_students(cfg)
    knn = {
        "distill-s0": 70.0,
        "distill-burn-s0": 73.0,
        "two-step-s0": 60.0,
        "distill-s1": 74.0,
        "distill-burn-s1": 75.0,
        "two-step-s1": 68.0,
    }
    ev = tmp_path / "eval"
    ev.mkdir()
    labels = np.random.default_rng(0).integers(0, 3, 50)
    np.save(ev / "teacher_knn_dist.npy", np.eye(3)[labels])
    np.save(ev / "teacher_linear_pred.npy", labels)
    evaluation = {"teacher": {"knn_top1": 80.0, "linear_top1": 82.0, "n_train": 40, "n_val": 50}}
    for i, (name, value) in enumerate(knn.items()):
        agree = labels.copy()
        agree[: 5 * i] = (agree[: 5 * i] + 1) % 3  # agreement 100 - 10 * i %
        np.save(ev / f"{name}_knn_dist.npy", np.eye(3)[agree])
        np.save(ev / f"{name}_linear_pred.npy", agree)
        evaluation[name] = {"knn_top1": value, "linear_top1": value + 1}
    write_ablation_report(cfg, students, {"root": "x", "classes": list("abc")}, evaluation, {})

    result = json.loads((tmp_path / "ablation.json").read_text())
    assert list(result["rows"]) == ["distill", "distill-burn", "two-step"]
    assert "two-step-step1-s0" not in result["students"]  # step 1 is not evaluated
    ref = result["rows"]["distill"]["knn"]
    assert ref["cell"]["mean"] == pytest.approx(72.0)
    assert ref["cell"]["std"] == pytest.approx(np.std([70, 74], ddof=1))
    assert ref["vs_reference"] is None
    burn = result["rows"]["distill-burn"]["knn"]
    assert burn["vs_reference"]["values"] == pytest.approx([3.0, 1.0])
    assert burn["vs_reference"]["mean"] == pytest.approx(2.0)
    assert burn["vs_reference"]["std"] == pytest.approx(np.std([3, 1], ddof=1))
    two = result["rows"]["two-step"]["knn"]
    assert two["vs_reference"]["values"] == pytest.approx([-10.0, -6.0])
    assert result["rows"]["two-step"]["linear"]["vs_reference"]["mean"] == pytest.approx(-8.0)
    agree = result["rows"]["distill-burn"]["agree_knn"]
    assert agree["cell"]["values"] == pytest.approx([90.0, 60.0])  # students 1 and 4
    assert agree["vs_reference"]["values"] == pytest.approx([-10.0, -10.0])
    assert result["two_step_epochs"] == [3, 3]
    md = (tmp_path / "ablation.md").read_text()
    assert "| distill | (the reference) | 72.00 ± 2.83 |  | 70.00, 74.00 |" in md
    assert "| distill-burn | method_kwargs.loss=burn" in md
    assert "| 74.00 ± 1.41 | +2.00 ± 1.41 | 73.00, 75.00 |" in md
    assert "| 64.00 ± 5.66 | -8.00 ± 2.83 | 60.00, 68.00 |" in md
    assert "3 epochs of step 1" in md
    assert (tmp_path / "ablation.png").stat().st_size > 1000


# ------------------------------------------------------------------ a tiny ablation, trained


@pytest.mark.slow
def test_tiny_ablation_with_two_steps_end_to_end_resumes_without_retraining(dataset, tmp_path):
    """Two seeds of the reference and the two-step row: interrupted after seed 0's step 1,
    resumed (step 2 starts from that step 1's checkpoint), nothing finished retrained."""
    out = tmp_path / "ablation"
    logs: list[str] = []

    def cfg() -> AblationConfig:
        return tiny(out, dataset, ["distill", "two-step"])

    run_ablation(cfg(), until="two-step-step1-s0", quiet=True, log=logs.append)  # "interrupted"
    assert any("students to train" in line and "about" in line for line in logs), logs
    step1 = json.loads((out / "stages" / "two-step-step1-s0.json").read_text())["checkpoint"]
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.ckpt")}
    assert Path(step1) in before and len(before) == 3  # teacher, distill, step 1
    assert not (out / "stages" / "two-step-s0.json").exists()

    logs.clear()
    run_ablation(cfg(), quiet=True, log=logs.append)
    assert sum("skipped" in line for line in logs) == 4, logs  # data, teacher, distill, step 1
    assert {p: p.stat().st_mtime_ns for p in before} == before

    # the runs are what their rows say (solo-learn's args.json of each)
    def args(name: str) -> dict[str, Any]:
        return json.loads(next((out / "runs" / name).rglob("args.json")).read_text())

    assert args("two-step-step1-s0")["backbone"]["kwargs"]["binary_weights"] is False
    assert args("two-step-s0")["method_kwargs"]["student_init"] == step1
    assert args("two-step-s0")["backbone"]["kwargs"]["binary_weights"] is True
    assert (
        args("two-step-s1")["method_kwargs"]["student_init"]
        == json.loads((out / "stages" / "two-step-step1-s1.json").read_text())["checkpoint"]
    )
    assert args("distill-s1")["seed"] == 1
    assert args("distill-s0")["scheduler"]["name"] == "linear"

    result = json.loads((out / "ablation.json").read_text())
    assert list(result["rows"]) == [REFERENCE, "two-step"]
    evaluated = {"distill-s0", "distill-s1", "two-step-s0", "two-step-s1"}
    assert set(result["students"]) == evaluated
    assert not (out / "eval" / "two-step-step1-s0.json").exists()
    ev = {n: json.loads((out / "eval" / f"{n}.json").read_text()) for n in evaluated}
    assert all(e["engine"].startswith("packed") for e in ev.values())
    for metric in ("knn", "linear"):
        two = [ev[f"two-step-s{s}"][f"{metric}_top1"] for s in (0, 1)]
        ref = [ev[f"distill-s{s}"][f"{metric}_top1"] for s in (0, 1)]
        diff = result["rows"]["two-step"][metric]["vs_reference"]
        assert diff["values"] == pytest.approx([a - b for a, b in zip(two, ref)])
        assert diff["std"] == pytest.approx(np.std(np.subtract(two, ref), ddof=1))
    assert "| two-step |" in (out / "ablation.md").read_text()
    assert (out / "ablation.png").stat().st_size > 1000

    # once more: everything finished, nothing retrained
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.ckpt")}
    logs.clear()
    run_ablation(cfg(), quiet=True, log=logs.append)
    assert sum("skipped" in line for line in logs) == 10, logs  # every stage
    assert stamps == {p: p.stat().st_mtime_ns for p in out.rglob("*.ckpt")}

    # other rows in the same folder would mix results: refused
    with pytest.raises(DemoError, match="other settings"):
        run_ablation(tiny(out, dataset, ["distill"]), quiet=True, log=logs.append)
