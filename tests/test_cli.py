"""The ``s2bnn`` parser's structure: options that several sub-commands share are defined once, and
the shared budget options of ``demo``, ``study`` and ``ablation`` reach the command's config."""

from __future__ import annotations

import argparse

import pytest

from s2bnn_plugin import cli

#: the options ``demo``, ``study`` and ``ablation`` share (``--out`` and ``--until`` differ on
#: purpose: their own folder default, the demo's fixed stage list)
SHARED = {
    "--data",
    "--epochs",
    "--teacher-epochs",
    "--train-per-class",
    "--val-per-class",
    "--width-mult",
    "--quiet",
}


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def _options(parser: argparse.ArgumentParser) -> dict[str, dict]:
    """Each option string -> its definition (everything argparse keeps but the parser)."""
    return {
        s: {k: v for k, v in vars(a).items() if k != "container"}
        for a in parser._actions
        for s in a.option_strings
        if s not in ("-h", "--help")
    }


@pytest.mark.parametrize("command", ["study", "ablation"])
def test_demo_study_and_ablation_define_their_shared_options_alike(command):
    subs = _subparsers(cli.build_parser())
    demo, other = _options(subs["demo"]), _options(subs[command])
    common = set(demo) & set(other)
    assert common == SHARED | {"--out", "--until"}
    for option in SHARED:
        assert demo[option] == other[option], option


def test_demo_and_study_take_the_shared_options_from_one_definition(monkeypatch):
    """A change to the shared definition changes both parsers (neither keeps a copy)."""
    shared = cli._add_run_options

    def with_one_more(p: argparse.ArgumentParser) -> None:
        shared(p)
        p.add_argument("--probe-option", default="probe")

    monkeypatch.setattr(cli, "_add_run_options", with_one_more)
    subs = _subparsers(cli.build_parser())
    for name in ("demo", "study", "ablation"):
        assert "--probe-option" in _options(subs[name]), name
    assert "--probe-option" not in _options(subs["eval"])


@pytest.mark.parametrize("command", ["demo", "study", "ablation"])
def test_the_shared_budget_options_reach_the_config(command, monkeypatch, tmp_path):
    """Each given budget option replaces the config's field of the same name; the ones left out
    keep the config's defaults."""
    import s2bnn_plugin.demo as demo_package
    from s2bnn_plugin.demo import ablation, pipeline, study

    seen = {}

    def run(cfg, until=None, quiet=False):
        seen.update(cfg=cfg, until=until, quiet=quiet)

    monkeypatch.setattr(cli, "_load_solo_quietly", lambda: None)
    monkeypatch.setattr(demo_package, "run_demo", run)  # what the commands call
    monkeypatch.setattr(study, "run_study", run)
    monkeypatch.setattr(ablation, "run_ablation", run)
    config_type = {
        "demo": pipeline.DemoConfig,
        "study": study.StudyConfig,
        "ablation": ablation.AblationConfig,
    }[command]
    given = {"epochs": 3, "teacher_epochs": 2, "train_per_class": 7, "width_mult": 0.25}
    argv = [command, "--out", str(tmp_path), "--data", str(tmp_path / "d"), "--quiet"]
    for key, value in given.items():
        argv += ["--" + key.replace("_", "-"), str(value)]
    assert cli.main(argv) == 0
    cfg = seen["cfg"]
    assert isinstance(cfg, config_type)
    assert {key: getattr(cfg, key) for key in given} == given
    assert cfg.val_per_class == config_type().val_per_class  # not given: the default
    assert cfg.data == str(tmp_path / "d") and cfg.out_dir == tmp_path
    assert seen["quiet"] is True and seen["until"] is None
    assert set(cli._RUN_SETTINGS) == set(given) | {"val_per_class"}


def test_every_subcommand_has_its_own_parser_function():
    """One small ``_add_<command>`` per sub-command: the list builds exactly the commands."""
    names = list(_subparsers(cli.build_parser()))
    assert len(cli._SUBCOMMANDS) == len(names)
    expected = ["_add_" + name.replace("-", "_") for name in names]
    assert [f.__name__ for f in cli._SUBCOMMANDS] == expected


def test_the_ablation_options_reach_its_config(monkeypatch, tmp_path):
    """``--rows`` (comma-separated, spaces ignored), ``--seeds`` and ``--until`` reach
    ``run_ablation``; left out, the rows are all of them and the seeds 2."""
    from s2bnn_plugin.demo import ablation

    seen = []
    monkeypatch.setattr(cli, "_load_solo_quietly", lambda: None)
    monkeypatch.setattr(ablation, "run_ablation", lambda cfg, **kwargs: seen.append((cfg, kwargs)))
    argv = ["ablation", "--out", str(tmp_path), "--rows", "distill, two-step", "--seeds", "3"]
    assert cli.main([*argv, "--until", "teacher"]) == 0
    assert cli.main(["ablation", "--out", str(tmp_path)]) == 0
    (given, kwargs), (default, _) = seen
    assert given.rows == ["distill", "two-step"] and given.seeds == 3
    assert kwargs == {"until": "teacher", "quiet": False}
    assert default.rows == list(ablation.DEFAULT_ROWS) and default.seeds == 2
    assert default.out_dir == tmp_path


def test_the_eval_engine_choices_are_the_evaluations():
    """``s2bnn eval --engine`` lists its choices without importing torch; they stay the ones
    :mod:`s2bnn_plugin.evaluation` accepts."""
    from s2bnn_plugin.evaluation import EVAL_ENGINES

    engine = _options(_subparsers(cli.build_parser())["eval"])["--engine"]
    assert tuple(engine["choices"]) == EVAL_ENGINES
    assert engine["default"] in EVAL_ENGINES


def test_an_unknown_backbone_is_one_line_with_its_own_message(capsys):
    """``UnknownBackbone`` is a ``KeyError`` whose message prints without ``KeyError``'s
    quotes, so the commands pass it on as it is (no caller strips quotes)."""
    assert cli.main(["bench", "--backbone", "reactnet_b", "--no-progress"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(
        "s2bnn bench: unknown backbone 'reactnet_b' (did you mean 'reactnet_a'?)"
    )
    assert line.endswith("['reactnet18', 'reactnet_a']"), line


def test_the_per_class_constants_are_what_their_commands_use(monkeypatch, tmp_path):
    """``DEMO_*_PER_CLASS`` is the subset ``s2bnn demo`` trains on when not told otherwise,
    ``EVAL_*_PER_CLASS`` the one ``s2bnn eval`` evaluates on."""
    import s2bnn_plugin.demo as demo_package
    from s2bnn_plugin.data import (
        DEMO_TRAIN_PER_CLASS,
        DEMO_VAL_PER_CLASS,
        EVAL_TRAIN_PER_CLASS,
        EVAL_VAL_PER_CLASS,
    )

    seen = {}
    monkeypatch.setattr(cli, "_load_solo_quietly", lambda: None)
    monkeypatch.setattr(demo_package, "run_demo", lambda cfg, **kwargs: seen.update(cfg=cfg))
    assert cli.main(["demo", "--out", str(tmp_path)]) == 0
    cfg = seen["cfg"]
    assert (cfg.train_per_class, cfg.val_per_class) == (DEMO_TRAIN_PER_CLASS, DEMO_VAL_PER_CLASS)
    args = cli.build_parser().parse_args(["eval", "--model", "m.ckpt"])
    assert (args.train_per_class, args.val_per_class) == (EVAL_TRAIN_PER_CLASS, EVAL_VAL_PER_CLASS)
