"""`s2bnn demo`: stage resume and bad input, on a tiny generated ImageFolder with tiny models
(real solo-learn training subprocesses; skipped without solo-learn)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from image_utils import TINY_RUN, random_dataset, random_image_folder

from s2bnn_plugin.cli import main
from s2bnn_plugin.demo import DemoConfig, DemoError, run_demo

pytestmark = pytest.mark.solo


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return random_dataset(tmp_path_factory.mktemp("demo_data"))  # 40 training images, 20 held out


def tiny(out: Path, data: Path) -> DemoConfig:
    return DemoConfig(
        out_dir=out,
        data=str(data),
        **TINY_RUN,
    )


@pytest.mark.slow
def test_resume_skips_finished_stages_and_keeps_checkpoints(dataset, tmp_path):
    out = tmp_path / "demo"
    logs: list[str] = []
    run_demo(tiny(out, dataset), until="teacher", quiet=True, log=logs.append)  # "interrupted"
    teacher = json.loads((out / "stages" / "teacher.json").read_text())["checkpoint"]
    before = (Path(teacher).stat().st_mtime_ns, Path(teacher).read_bytes())
    assert not (out / "stages" / "distill.json").exists()

    logs.clear()
    run_demo(tiny(out, dataset), quiet=True, log=logs.append)
    assert any("teacher" in line and "skipped" in line for line in logs), logs
    assert (Path(teacher).stat().st_mtime_ns, Path(teacher).read_bytes()) == before
    results = json.loads((out / "results.json").read_text())
    assert set(results["results"]) == {"raw_pixels", "teacher", "contrastive", "distill", "mixed"}
    table = (out / "results.md").read_text()
    for name in ("contrastive", "distill", "mixed"):
        assert results["results"][name]["engine"].startswith("packed")
        # a percentage of the 20 held-out images, and the one the table shows
        top1 = results["results"][name]["knn_top1"]
        assert top1 * 20 / 100 == pytest.approx(round(top1 * 20 / 100), abs=1e-9), top1
        assert f"{top1:.2f}" in table
    for png in ("accuracy.png", "calibration.png"):
        assert (out / png).stat().st_size > 1000
    assert "distillation only" in (out / "results.md").read_text()

    # a third run finds everything finished and touches nothing
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.ckpt")}
    logs.clear()
    run_demo(tiny(out, dataset), quiet=True, log=logs.append)
    assert sum("skipped" in line for line in logs) == 7, logs
    assert stamps == {p: p.stat().st_mtime_ns for p in out.rglob("*.ckpt")}

    # other settings in the same folder would mix results: refused
    changed = tiny(out, dataset)
    changed.epochs = 2
    with pytest.raises(DemoError, match="other settings"):
        run_demo(changed, quiet=True, log=logs.append)


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda root: None, "does not exist"),
        (
            lambda root: [(root / s / "a").mkdir(parents=True) for s in ("train", "val")],
            "no images",
        ),
        (
            lambda root: [random_image_folder(root / s, 4, 2) for s in ("train", "val")],
            "at least 5",
        ),
        (lambda root: random_image_folder(root / "train", 5, 2), "no val/"),
    ],
    ids=["missing", "no-images", "four-classes", "no-val"],
)
def test_bad_data_is_refused_before_anything_runs(tmp_path, make, message):
    data = tmp_path / "data"
    make(data)
    out = tmp_path / "demo"
    with pytest.raises(DemoError, match=message):
        run_demo(tiny(out, data), quiet=True, log=lambda _: None)
    assert not (out / "runs").exists()


def test_cli_reports_bad_data(tmp_path, capsys):
    assert main(["demo", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.fashion_mnist
@pytest.mark.slow
def test_relative_out_dir_with_default_data(tmp_path, monkeypatch):
    """`make demo` passes a relative --out; solo-learn's runs start in their own folders."""
    monkeypatch.chdir(tmp_path)
    cfg = tiny(Path("demo"), Path("unused"))
    cfg.data, cfg.train_per_class, cfg.val_per_class = "fashion-mnist", 3, 2
    run_demo(cfg, until="teacher", quiet=True, log=lambda _: None)
    stage = json.loads((tmp_path / "demo" / "stages" / "teacher.json").read_text())
    assert Path(stage["checkpoint"]).is_file()


def _forbid(monkeypatch, stage: str) -> None:
    """Make a stage fail at once: a check that lets bad input through fails the test instead of
    preparing data or training."""

    def forbidden(*args, **kwargs):
        raise AssertionError(f"{stage} started")

    monkeypatch.setattr(f"s2bnn_plugin.demo.pipeline.{stage}", forbidden)


@pytest.mark.parametrize(
    "setting,value,message",
    [
        ("teacher_epochs", 0, "--teacher-epochs must be a whole number >= 1 (the teacher's"),
        ("epochs", -1, "--epochs must be a whole number >= 1"),
        ("train_per_class", 0, "--train-per-class must be a whole number >= 1"),
        ("val_per_class", 2.5, "--val-per-class must be a whole number >= 1"),
        ("width_mult", float("nan"), "--width-mult must be a finite number > 0"),
        ("width_mult", -1.0, "--width-mult must be a finite number > 0"),
        ("batch_size", 1, "the setting batch_size must be a whole number >= 2"),
        ("teacher_batch_size", 0, "the setting teacher_batch_size must be a whole number >= 2"),
        ("eval_batch_size", 0, "the setting eval_batch_size must be a whole number >= 1"),
        ("lr", float("inf"), "the setting lr must be a finite number > 0"),
        ("knn_k", 0, "the setting knn_k must be a whole number >= 1"),
        ("knn_temperature", 0.0, "the setting knn_temperature must be a finite number > 0"),
        ("seed", -1, "the setting seed must be a whole number >= 0"),
        ("backbone", "resnet18", "the setting backbone must be one of"),
    ],
    ids=lambda v: v if isinstance(v, str) and " " not in v else None,
)
def test_numbers_that_cannot_train_are_refused_before_anything_runs(
    dataset, tmp_path, monkeypatch, setting, value, message
):
    _forbid(monkeypatch, "stage_data")
    out = tmp_path / "demo"
    cfg = tiny(out, dataset)
    setattr(cfg, setting, value)
    with pytest.raises(DemoError) as info:
        run_demo(cfg, quiet=True, log=lambda _: None)
    assert message in str(info.value) and repr(value) in str(info.value)
    assert not out.exists()


def test_cli_refuses_zero_teacher_epochs_before_anything_runs(tmp_path, capsys, monkeypatch):
    """Zero teacher epochs would fail after the data stage with solo-learn's ZeroDivisionError,
    and again on every rerun: refused before anything runs."""
    _forbid(monkeypatch, "stage_data")
    out = tmp_path / "o"
    assert main(["demo", "--teacher-epochs", "0", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert (
        "--teacher-epochs must be a whole number >= 1 (the teacher's training epochs), got 0" in err
    )
    assert err.count("\n") == 1 and not out.exists()


@pytest.mark.parametrize("setting", ["teacher_batch_size", "batch_size"])
def test_a_batch_larger_than_the_data_is_refused_before_training(
    dataset, tmp_path, monkeypatch, setting
):
    _forbid(monkeypatch, "stage_teacher")
    out = tmp_path / "demo"
    cfg = tiny(out, dataset)
    setattr(cfg, setting, 41)  # 40 training images
    with pytest.raises(DemoError, match="of 41 images is larger than the 40 training images"):
        run_demo(cfg, quiet=True, log=lambda _: None)
    assert not (out / "runs").exists()


@pytest.mark.solo
@pytest.mark.parametrize("student", ["distill", "mixed"])
def test_the_demo_students_keep_their_recipe_whatever_the_shipped_configs_say(
    tmp_path, monkeypatch, student
):
    """The demo's measured tables are for a cosine decay per step over both large crops. The
    shipped S2-BNN configs it starts from follow the official recipe (a linear decay per epoch,
    one shared crop for distillation only); the demo's overrides must not inherit it. The
    command the demo hands to solo-learn is composed by Hydra as the script would."""
    from hydra import compose, initialize_config_dir

    from s2bnn_plugin.demo import pipeline

    commands = []
    monkeypatch.setattr(
        pipeline.subprocess, "call", lambda command, **_: commands.append(command) or 0
    )
    cfg = DemoConfig(out_dir=tmp_path)
    spec = next(s for s in pipeline.demo_students(cfg) if s.name == student)
    with pytest.raises(DemoError, match="no last-epoch checkpoint"):
        pipeline.stage_student(cfg, spec, {"train": str(tmp_path)}, "t.ckpt", print, True)
    (command,) = commands
    at = command.index("--config-path")
    folder, name, overrides = command[at + 1], command[at + 3], command[at + 4 : -1]
    with initialize_config_dir(folder, version_base=None):
        run = compose(config_name=name, overrides=overrides)
    assert run.scheduler.name == "warmup_cosine"
    assert run.scheduler.interval == "step"
    assert run.scheduler.warmup_epochs == 0
    assert run.method_kwargs.distill_crops == "all"
    assert run.method_kwargs.get("loss", "kl") == "kl"


def test_the_stages_are_numbered_from_one_derived_list(dataset, tmp_path, monkeypatch):
    """Every stage's "[i/N]" is its place in stage_list (data, teacher, the students in order,
    eval, report), an intermediate student included, and a finished stage keeps its number."""
    from s2bnn_plugin.demo import pipeline

    def stub(name):
        return lambda *args, **kwargs: {"checkpoint": f"{name}.ckpt", "train": str(dataset)}

    for stage in ("stage_data", "stage_teacher", "stage_eval"):
        monkeypatch.setattr(pipeline, stage, stub(stage))
    monkeypatch.setattr(pipeline, "stage_student", lambda cfg, spec, *a, **k: stub(spec.name)())
    monkeypatch.setattr(pipeline, "check_solo", lambda: None)
    cfg = tiny(tmp_path / "demo", dataset)
    step1 = pipeline.STUDENTS["distill"].spec(cfg, "step1", seed=0)
    students = [replace(step1, evaluate=False), *pipeline.demo_students(cfg)]
    expected = pipeline.stage_list(s.name for s in students)
    assert expected == [
        "data",
        "teacher",
        "step1",
        "contrastive",
        "distill",
        "mixed",
        "eval",
        "report",
    ]
    words = {"teacher": "teacher", "eval": "evaluation", "report": "report", "data": "data"}
    for _ in range(2):  # the second run finds every stage finished
        logs: list[str] = []
        pipeline.run_pipeline(
            cfg, students, lambda *a: {"report": True}, report_title="report", log=logs.append
        )
        for i, name in enumerate(expected, 1):
            lines = [line for line in logs if line.startswith(f"[{i}/8] ")]
            assert lines and all(words.get(name, f"'{name}'") in line for line in lines), (
                name,
                logs,
            )
