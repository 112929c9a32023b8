"""`s2bnn study`: the students it plans, bad input refused before training, the report's
arithmetic, and (slow) a tiny study end to end that resumes without retraining."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import numpy as np
import pytest
from image_utils import TINY_RUN, random_dataset

from s2bnn_plugin.cli import main
from s2bnn_plugin.demo import DemoError, study
from s2bnn_plugin.demo.study import (
    METHOD_KEYS,
    STUDY_KWARGS,
    StudyConfig,
    StudyError,
    available_methods,
    check_fits,
    check_method_kwargs,
    parse_method_kwargs,
    run_study,
    study_students,
)
from s2bnn_plugin.methods.ssl_defaults import ssl_defaults

pytestmark = pytest.mark.solo


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return random_dataset(tmp_path_factory.mktemp("study_data"))  # 40 training images, 20 held out


def tiny(out: Path, data: Path, methods: list[str], **kwargs) -> StudyConfig:
    return StudyConfig(
        out_dir=out,
        data=str(data),
        methods=methods,
        **TINY_RUN,
        **kwargs,
    )


# ------------------------------------------------------------------ planning, no training


def test_students_pair_each_method_with_identical_objective_settings():
    cfg = StudyConfig(methods=["byol", "mocov2plus"], seeds=2)
    specs = study_students(cfg)
    assert [s.name for s in specs] == [
        "distill-only-s0",
        "byol-alone-s0",
        "byol-distill-s0",
        "mocov2plus-alone-s0",
        "mocov2plus-distill-s0",
        "distill-only-s1",
        "byol-alone-s1",
        "byol-distill-s1",
        "mocov2plus-alone-s1",
        "mocov2plus-distill-s1",
    ]
    by_name = {s.name: s for s in specs}
    assert [s.seed for s in specs] == [0] * 5 + [1] * 5
    for method in ("byol", "mocov2plus"):
        alone = by_name[f"{method}-alone-s0"]
        mixed = by_name[f"{method}-distill-s0"]
        assert (alone.distill, mixed.distill) == (False, True)
        assert alone.config == "bnn_mocov2plus.yaml" and mixed.config == "s2bnn.yaml"
        assert f"method={method}" in alone.overrides
        assert f"method_kwargs.ssl_method={method}" in mixed.overrides
        # the same objective settings (solo-learn's CIFAR recipe + the study's departures)
        kwargs, momentum = ssl_defaults(method)
        kwargs.update(STUDY_KWARGS.get(method, {}))
        own = {
            o.split("=")[0].removeprefix("++method_kwargs."): o.split("=")[1]
            for o in alone.overrides
            if o.startswith("++method_kwargs.")
        }
        mixed_own = {
            o.split("=")[0].removeprefix("++method_kwargs.ssl_kwargs."): o.split("=")[1]
            for o in mixed.overrides
            if o.startswith("++method_kwargs.ssl_kwargs.")
        }
        assert own == mixed_own == {k: str(v) for k, v in kwargs.items()}
        moment = sorted(o for o in alone.overrides if "momentum" in o)
        assert moment == sorted(o for o in mixed.overrides if "momentum" in o)
        assert moment == sorted(f"++momentum.{k}={v}" for k, v in momentum.items())
    # the queue the recipe sets for CIFAR's 50,000 images is replaced, and the base config's
    # MoCo-only keys are removed for BYOL
    assert "++method_kwargs.queue_size=4096" in by_name["mocov2plus-alone-s0"].overrides
    assert "~method_kwargs.queue_size" in by_name["byol-alone-s0"].overrides
    assert by_name["distill-only-s1"].objective is None


def test_method_kwargs_are_parsed_and_merged():
    got = parse_method_kwargs(
        ["mocov2plus.queue_size=2048", "swav.num_prototypes=100"], STUDY_KWARGS
    )
    assert got == {"mocov2plus": {"queue_size": 2048}, "swav": {"num_prototypes": 100}}
    assert STUDY_KWARGS == {"mocov2plus": {"queue_size": 4096}}  # not modified
    with pytest.raises(StudyError, match="METHOD.KEY=VALUE"):
        parse_method_kwargs(["queue_size=3"])


@pytest.mark.parametrize(
    "methods,kwargs,n_train,message",
    [
        (["mocov2plus"], None, 4000, "queue_size 4096 is longer than the data"),
        (["mocov2plus"], {"mocov2plus": {"queue_size": 100}}, 4000, "not a multiple of the batch"),
        (["simclr"], None, 40, "larger than the 40 training images"),
    ],
    ids=["queue-too-long", "queue-not-batches", "batch-too-large"],
)
def test_settings_that_cannot_run_on_the_data_are_refused(methods, kwargs, n_train, message):
    cfg = StudyConfig(methods=methods)
    if kwargs is not None:
        cfg.method_kwargs = kwargs
    with pytest.raises(StudyError, match=message):
        check_fits(cfg, n_train)


def test_settings_that_fit_pass():
    check_fits(StudyConfig(), 5000)  # the defaults on the default data
    # SwAV's queue (3,840) only starts at epoch 50: not used by a short study
    check_fits(StudyConfig(methods=["swav"]), 1000)
    with pytest.raises(StudyError, match="swav: queue_size 3840"):
        check_fits(StudyConfig(methods=["swav"], epochs=60), 1000)


# ------------------------------------------------------------------ bad input, before training


@pytest.mark.parametrize(
    "methods,message",
    [
        (["simclr", "simclrr"], r"unknown method\(s\): simclrr; available: .*barlow_twins.*byol"),
        (["mae"], "mae cannot be studied: it needs a ViT backbone"),
        (["simclr", "simclr"], "more than once"),
        (["s2bnn"], "distillation itself"),
        (["byol", "simsiam"], "simsiam cannot be studied: .*weights-only"),
    ],
    ids=["unknown", "vit-only", "repeated", "s2bnn", "checkpoint-not-weights-only"],
)
def test_bad_methods_are_refused_before_anything_runs(dataset, tmp_path, methods, message):
    out = tmp_path / "study"
    with pytest.raises(StudyError, match=message):
        run_study(tiny(out, dataset, methods), quiet=True, log=lambda _: None)
    assert not out.exists()


def test_queue_longer_than_the_data_is_refused_before_training(dataset, tmp_path):
    out = tmp_path / "study"
    cfg = tiny(out, dataset, ["simclr", "mocov2plus"])  # the default queue: 4,096 > 40 images
    with pytest.raises(StudyError, match="mocov2plus: queue_size 4096 is longer than the data"):
        run_study(cfg, quiet=True, log=lambda _: None)
    assert not (out / "runs").exists()


def test_cli_lists_the_available_methods(tmp_path, capsys):
    argv = ["study", "--methods", "simclr,nope", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "unknown method(s): nope" in err and "vicreg" in err
    assert not (tmp_path / "o").exists()


def _forbid_running(monkeypatch) -> None:
    """The stages must not start: a check that lets bad input through fails the test at once
    instead of training a study."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the study's stages started")

    monkeypatch.setattr(study, "run_pipeline", forbidden)


@pytest.mark.parametrize(
    "methods,items,message",
    [
        (
            ["simclr"],
            ["simclr.temprature=0.1"],
            "--method-kwarg simclr.temprature: simclr has no setting 'temprature' (did you mean "
            "temperature?); simclr reads: proj_hidden_dim, proj_output_dim, temperature",
        ),
        (
            ["simclr", "byol"],
            ["mocov2plus.queue_size=128"],
            "--method-kwarg mocov2plus.queue_size: mocov2plus is not in this study; its "
            "methods: simclr, byol (add it with --methods, or drop the setting)",
        ),
        (
            ["simclr", "byol"],
            ["simclrr.temperature=0.1"],
            "simclrr is not in this study (did you mean simclr?)",
        ),
        (["swav"], ["swav.sk_iters=5", "swav.queue.size=1"], "swav has no setting 'queue.size'"),
    ],
    ids=["typo-in-key", "method-not-studied", "typo-in-method", "nested-key"],
)
def test_method_kwargs_no_studied_method_reads_are_refused_before_anything_runs(
    dataset, tmp_path, monkeypatch, methods, items, message
):
    _forbid_running(monkeypatch)
    out = tmp_path / "study"
    cfg = tiny(out, dataset, methods)
    cfg.method_kwargs = parse_method_kwargs(items, cfg.method_kwargs)
    with pytest.raises(StudyError) as info:
        run_study(cfg, quiet=True, log=lambda _: None)
    assert message in str(info.value)
    assert not out.exists()


def test_method_kwargs_the_methods_read_pass():
    items = ["mocov2plus.queue_size=2048", "swav.sk_iters=5", "dino.clip_grad=1.0"]
    cfg = StudyConfig(methods=["mocov2plus", "swav", "dino"])
    cfg.method_kwargs = parse_method_kwargs(items, cfg.method_kwargs)
    check_method_kwargs(cfg)
    # the study's own departure for MoCo v2+ is not a setting given: a study without it passes
    check_method_kwargs(StudyConfig(methods=["simclr"]))


def test_cli_refuses_a_misspelt_method_kwarg(tmp_path, capsys, monkeypatch):
    _forbid_running(monkeypatch)
    out = tmp_path / "o"
    argv = ["study", "--method-kwarg", "simclr.temprature=0.1", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "simclr has no setting 'temprature' (did you mean temperature?)" in err
    assert err.count("\n") == 1 and not out.exists()


def test_method_keys_are_the_keys_solo_learn_reads():
    """METHOD_KEYS against the source of every studied method at the pinned commit: moving the
    pin to a solo-learn whose methods read other keys fails here."""
    from solo.methods import METHODS

    assert set(METHOD_KEYS) == set(available_methods())
    for name in available_methods():
        source = Path(inspect.getsourcefile(METHODS[name])).read_text()
        assert METHOD_KEYS[name] == set(re.findall(r"method_kwargs\.(\w+)", source)), name


def test_cli_refuses_numbers_that_cannot_train_before_anything_runs(tmp_path, capsys, monkeypatch):
    _forbid_running(monkeypatch)
    out = tmp_path / "o"
    assert main(["study", "--epochs", "0", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--epochs must be a whole number >= 1 (every student's training epochs), got 0" in err
    assert not out.exists()


# ------------------------------------------------------------------ the report's arithmetic


def test_report_means_spreads_and_paired_differences(tmp_path):
    """Two seeds, made-up evaluations: each cell against a hand computation."""
    from s2bnn_plugin.demo.study_report import write_study_report

    cfg = StudyConfig(out_dir=tmp_path, methods=["simclr"], seeds=2)
    students = study_students(cfg)
    knn = {
        "distill-only-s0": 70.0,
        "simclr-alone-s0": 60.0,
        "simclr-distill-s0": 66.0,
        "distill-only-s1": 72.0,
        "simclr-alone-s1": 64.0,
        "simclr-distill-s1": 67.0,
    }
    ev = tmp_path / "eval"
    ev.mkdir()
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 50)
    teacher = np.eye(3)[labels]
    np.save(ev / "teacher_knn_dist.npy", teacher)
    np.save(ev / "teacher_linear_pred.npy", labels)
    evaluation = {"teacher": {"knn_top1": 75.0, "linear_top1": 78.0, "n_train": 40, "n_val": 50}}
    for i, (name, value) in enumerate(knn.items()):
        agree = labels.copy()
        agree[: 5 * i] = (agree[: 5 * i] + 1) % 3  # agreement 100 - 10 * i %
        np.save(ev / f"{name}_knn_dist.npy", np.eye(3)[agree])
        np.save(ev / f"{name}_linear_pred.npy", agree)
        evaluation[name] = {"knn_top1": value, "linear_top1": value + 1}
    data = {"root": "x", "classes": ["a", "b", "c"]}
    write_study_report(cfg, students, data, evaluation, {"teacher": 1.0})

    result = json.loads((tmp_path / "study.json").read_text())
    cells = result["methods"]["simclr"]["knn"]
    assert cells["alone"]["mean"] == pytest.approx(62.0)
    assert cells["alone"]["std"] == pytest.approx(np.std([60, 64], ddof=1))
    assert cells["distill"]["mean"] == pytest.approx(66.5)
    assert cells["difference"]["values"] == pytest.approx([6.0, 3.0])
    assert cells["difference"]["std"] == pytest.approx(np.std([6, 3], ddof=1))
    assert cells["vs_distill_only"]["values"] == pytest.approx([-4.0, -5.0])
    assert result["distill_only"]["knn"]["values"] == pytest.approx([70.0, 72.0])
    agree = result["methods"]["simclr"]["agree_knn"]
    assert agree["alone"]["values"] == pytest.approx([90.0, 60.0])  # students 1 and 4
    assert agree["distill"]["values"] == pytest.approx([80.0, 50.0])
    md = (tmp_path / "study.md").read_text()
    assert "| simclr | 62.00 ± 2.83 | 66.50 ± 0.71 | +4.50 ± 2.12 | -4.50 ± 0.71 |" in md
    assert "| distillation only (S2-BNN) | | 71.00 ± 1.41 | | |" in md
    assert "| teacher (real-valued ResNet-18, SimCLR, PyTorch) | 75.00 |" in md
    assert (tmp_path / "study.png").stat().st_size > 1000


# ------------------------------------------------------------------ a tiny study, trained


@pytest.mark.slow
def test_tiny_study_end_to_end_resumes_without_retraining(dataset, tmp_path):
    out = tmp_path / "study"
    logs: list[str] = []
    kwargs = {"method_kwargs": {"mocov2plus": {"queue_size": 32}}}  # 40 images, batch 8

    def cfg() -> StudyConfig:
        return tiny(out, dataset, ["simclr", "mocov2plus"], **kwargs)

    run_study(cfg(), until="simclr-alone-s0", quiet=True, log=logs.append)  # "interrupted"
    first = json.loads((out / "stages" / "simclr-alone-s0.json").read_text())["checkpoint"]
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.ckpt")}
    assert Path(first) in before and len(before) == 3  # teacher, distill-only, simclr alone
    assert not (out / "stages" / "simclr-distill-s0.json").exists()

    logs.clear()
    run_study(cfg(), quiet=True, log=logs.append)
    skipped = [line for line in logs if "skipped" in line]
    assert len(skipped) == 4, logs  # data, teacher, distill-only, simclr alone
    assert {p: p.stat().st_mtime_ns for p in before} == before
    result = json.loads((out / "study.json").read_text())
    assert set(result["methods"]) == {"simclr", "mocov2plus"}
    assert set(result["students"]) == {
        "distill-only-s0",
        "simclr-alone-s0",
        "simclr-distill-s0",
        "mocov2plus-alone-s0",
        "mocov2plus-distill-s0",
    }
    for method in ("simclr", "mocov2plus"):
        cells = result["methods"][method]["knn"]
        assert cells["difference"]["mean"] == pytest.approx(
            cells["distill"]["mean"] - cells["alone"]["mean"]
        )
    evals = [json.loads(p.read_text()) for p in (out / "eval").glob("*-s0.json")]
    assert len(evals) == 5 and all(e["engine"].startswith("packed") for e in evals)
    # the students really are what their names say (solo-learn's args.json of each run)
    args = json.loads(next((out / "runs" / "mocov2plus-distill-s0").rglob("args.json")).read_text())
    assert args["method"] == "s2bnn"
    assert args["method_kwargs"]["ssl_method"] == "mocov2plus"
    assert args["method_kwargs"]["ssl_kwargs"]["queue_size"] == 32
    args = json.loads(next((out / "runs" / "mocov2plus-alone-s0").rglob("args.json")).read_text())
    assert args["method"] == "mocov2plus" and args["method_kwargs"]["queue_size"] == 32
    md = (out / "study.md").read_text()
    assert "| mocov2plus |" in md and "distillation only" in md
    assert (out / "study.png").stat().st_size > 1000

    # once more: everything finished, nothing retrained
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.ckpt")}
    logs.clear()
    run_study(cfg(), quiet=True, log=logs.append)
    assert sum("skipped" in line for line in logs) == 9, logs  # every stage
    assert stamps == {p: p.stat().st_mtime_ns for p in out.rglob("*.ckpt")}

    # other methods in the same folder would mix results: refused
    with pytest.raises(DemoError, match="other settings"):
        run_study(tiny(out, dataset, ["simclr"]), quiet=True, log=logs.append)


@pytest.mark.slow
def test_two_seeds_train_different_students_and_the_report_aggregates_their_evaluations(
    dataset, tmp_path
):
    """Seeds 0 and 1, trained: each seed's students are their own runs (solo-learn's seed,
    other weights), and every cell of study.json is the mean and spread of the evaluations the
    eval stage wrote, paired by seed."""
    import torch

    out = tmp_path / "study"
    run_study(tiny(out, dataset, ["simclr"], seeds=2), quiet=True, log=lambda _: None)
    result = json.loads((out / "study.json").read_text())
    kinds = ("distill-only", "simclr-alone", "simclr-distill")
    names = [f"{kind}-s{seed}" for seed in (0, 1) for kind in kinds]
    assert set(result["students"]) == set(names)

    weights = {}
    for name in ("distill-only-s0", "distill-only-s1"):
        args = json.loads(next((out / "runs" / name).rglob("args.json")).read_text())
        assert args["seed"] == int(name[-1])
        ckpt = json.loads((out / "stages" / f"{name}.json").read_text())["checkpoint"]
        state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
        backbone = [v.flatten().double() for k, v in state.items() if k.startswith("backbone.")]
        weights[name] = torch.cat(backbone)  # every weight and statistic, as one vector
    assert not torch.equal(weights["distill-only-s0"], weights["distill-only-s1"])

    ev = {n: json.loads((out / "eval" / f"{n}.json").read_text()) for n in names}
    for metric in ("knn", "linear"):

        def scores(kind: str, metric: str = metric) -> np.ndarray:
            return np.array([ev[f"{kind}-s{seed}"][f"{metric}_top1"] for seed in (0, 1)])

        alone, distill, only = (
            scores("simclr-alone"),
            scores("simclr-distill"),
            scores("distill-only"),
        )
        cells = result["methods"]["simclr"][metric]
        for cell, values in (
            (cells["alone"], alone),
            (cells["distill"], distill),
            (cells["difference"], distill - alone),
            (cells["vs_distill_only"], distill - only),
            (result["distill_only"][metric], only),
        ):
            assert cell["values"] == pytest.approx(values.tolist())
            assert cell["mean"] == pytest.approx(values.mean())
            assert cell["std"] == pytest.approx(values.std(ddof=1))
