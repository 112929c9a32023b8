"""The ``s2bnn`` command: argument parsing over the plugin's typed command functions.

Each sub-command has one ``_add_<name>`` function that builds its parser and one ``_cmd_<name>``
function that only turns the parsed arguments into a call
(:mod:`s2bnn_plugin.check.commands`, :mod:`s2bnn_plugin.bench.commands`,
:mod:`s2bnn_plugin.evaluation.command`, :mod:`s2bnn_plugin.solo_learn.install`,
:mod:`s2bnn_plugin.doctor`, ...); the heavy imports (torch, numba and its kernels, solo-learn)
happen inside the command that needs them, so
``s2bnn --help`` imports neither torch nor torchvision.

Errors: the plugin's own (:class:`~s2bnn_plugin.errors.S2BNNError`: bad input, missing installs)
print one line to stderr and exit with code 2; ``--debug`` shows their traceback. Any other
exception is a bug and propagates with its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from s2bnn_plugin.errors import S2BNNError
from s2bnn_plugin.solo_learn.locate import configs_dir

__all__ = ["build_parser", "configs_dir", "main"]


def _cmd_configs(args: argparse.Namespace) -> int:
    root = configs_dir()
    print(root)
    if args.list:
        for path in sorted(root.rglob("*.yaml")):
            print("  " + str(path.relative_to(root)))
    return 0


def _cmd_backbones(args: argparse.Namespace) -> int:
    from s2bnn_plugin.backbones import create_backbone, list_backbones
    from s2bnn_plugin.nn import count_complexity

    size = args.size
    for name in list_backbones():
        model = create_backbone(name, width_mult=args.width_mult, cifar=args.cifar)
        c = count_complexity(model, (1, 3, size, size), num_classes=args.num_classes)
        print(f"{name:12s} {model.num_features:5d}-d  {c.summary()}")
    return 0


def _run_solo(script_name: str, kind: str, args: argparse.Namespace) -> int:
    """Run one of solo-learn's scripts with the plugin registered (also in DDP children)."""
    import subprocess

    from s2bnn_plugin.solo_learn.command import solo_command

    command = solo_command(
        script_name,
        list(args.overrides),
        kind=kind,
        dataset=args.dataset,
        config=args.config,
        python=sys.executable,
    )
    print("+ " + " ".join(command), flush=True)
    return subprocess.call(command)


def _cmd_pretrain(args: argparse.Namespace) -> int:
    return _run_solo("main_pretrain.py", "pretrain", args)


def _cmd_linear(args: argparse.Namespace) -> int:
    return _run_solo("main_linear.py", "linear", args)


def _per_class(value: str) -> int | None:
    """``--train-per-class`` / ``--val-per-class``: a whole number or ``all``."""
    if value == "all":
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number of images per class or 'all', got {value!r}"
        ) from None


def _cmd_eval(args: argparse.Namespace) -> int:
    """Features of a model on a dataset's train and val splits, then kNN and a linear probe."""
    from s2bnn_plugin.evaluation.command import EvalOptions, evaluate_model

    options = EvalOptions(
        engine=args.engine,
        size=args.size,
        crop_ratio=args.crop_ratio,
        batch_size=args.batch_size,
        k=args.k,
        temperature=args.temperature,
        weight_decay=args.weight_decay,
        raw_pixels=args.raw_pixels,
        train_per_class=args.train_per_class,
        val_per_class=args.val_per_class,
        seed=args.seed,
        data_root=args.data_root,
        json_path=args.json,
        force=args.force,
        progress=not args.no_progress,
    )
    evaluate_model(args.model, args.data, options)
    return 0


def _cmd_pack(args: argparse.Namespace) -> int:
    from s2bnn_plugin.arguments import parse_kwargs
    from s2bnn_plugin.check.commands import pack_checkpoint

    pack_checkpoint(
        args.checkpoint,
        args.output,
        force=args.force,
        backbone=args.backbone,
        backbone_kwargs=parse_kwargs(args.backbone_kwargs),
        check_size=args.check_size,
        min_cosine=args.min_cosine,
        max_flipped=args.max_flipped,
        progress=not args.no_progress,
    )
    return 0


def _cmd_export_openvino(args: argparse.Namespace) -> int:
    from s2bnn_plugin.exporters.openvino import export_openvino_command

    export_openvino_command(
        args.file, args.output, size=args.size, batch=args.batch, force=args.force
    )
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from s2bnn_plugin.arguments import parse_kwargs
    from s2bnn_plugin.check.commands import check

    check(
        args.file,
        ckpt=args.ckpt,
        backbone=args.backbone,
        backbone_kwargs=parse_kwargs(args.backbone_kwargs),
        size=args.size,
        batch=args.batch,
        threads=args.threads,
        repeats=args.repeats,
        min_cosine=args.min_cosine,
        max_flipped=args.max_flipped,
        verbose=args.verbose,
        progress=not args.no_progress,
    )
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from s2bnn_plugin.bench.commands import bench

    bench(
        args.backbone,
        width_mult=args.width_mult,
        size=args.size,
        batches=tuple(args.batch),
        threads=tuple(args.threads),
        repeats=args.repeats,
        layers=args.layers,
        progress=not args.no_progress,
    )
    return 0


#: the options ``demo``, ``study`` and ``ablation`` share (:func:`_add_run_options`) that replace a
#: field of the command's config (``DemoConfig`` and its subclasses, same names) when given
_RUN_SETTINGS = ("epochs", "teacher_epochs", "train_per_class", "val_per_class", "width_mult")


def _load_solo_quietly() -> None:
    """Import solo-learn once up front when it is there, without the timm / torch deprecation
    noise its imports print; without it the stages say what to install when they need it."""
    import warnings

    from s2bnn_plugin.solo_learn.locate import require_solo, solo_available

    if solo_available():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            require_solo()


def _apply_run_settings(cfg: object, args: argparse.Namespace) -> None:
    """The given :data:`_RUN_SETTINGS` onto ``cfg``; the ones left out keep its defaults."""
    for key in _RUN_SETTINGS:
        value = getattr(args, key)
        if value is not None:
            setattr(cfg, key, value)


def _cmd_demo(args: argparse.Namespace) -> int:
    """The whole S2-BNN story on a CPU in one resumable command (see s2bnn_plugin.demo)."""
    from s2bnn_plugin.demo import DemoConfig, run_demo

    _load_solo_quietly()
    cfg = DemoConfig(out_dir=Path(args.out), data=args.data)
    _apply_run_settings(cfg, args)
    run_demo(cfg, until=args.until, quiet=args.quiet)
    return 0


def _cmd_study(args: argparse.Namespace) -> int:
    """Every objective's binary student alone and + distillation (see s2bnn_plugin.demo.study)."""
    from s2bnn_plugin.demo.study import StudyConfig, parse_method_kwargs, run_study

    _load_solo_quietly()
    cfg = StudyConfig(out_dir=Path(args.out), data=args.data, seeds=args.seeds)
    if args.methods is not None:
        cfg.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    cfg.method_kwargs = parse_method_kwargs(args.method_kwarg, cfg.method_kwargs)
    _apply_run_settings(cfg, args)
    run_study(cfg, until=args.until, quiet=args.quiet)
    return 0


def _cmd_ablation(args: argparse.Namespace) -> int:
    """The paper's ablation rows at the demo's budget (see s2bnn_plugin.demo.ablation)."""
    from s2bnn_plugin.demo.ablation import AblationConfig, run_ablation

    _load_solo_quietly()
    cfg = AblationConfig(out_dir=Path(args.out), data=args.data, seeds=args.seeds)
    if args.rows is not None:
        cfg.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    _apply_run_settings(cfg, args)
    run_ablation(cfg, until=args.until, quiet=args.quiet)
    return 0


def _cmd_setup_solo(args: argparse.Namespace) -> int:
    from s2bnn_plugin.solo_learn.install import setup_solo

    result = setup_solo(args.source, allow_other_commit=args.allow_other_commit, force=args.force)
    print(result.message)
    return 0


def _cmd_doctor(args: argparse.Namespace) -> int:
    from s2bnn_plugin.doctor import diagnose, render

    checks = diagnose(data_root=args.data_root)
    print(render(checks))
    return 0 if all(c.ok or not c.required for c in checks) else 1


# The parsers: one ``_add_<command>`` function per sub-command, in the order ``s2bnn --help``
# lists them (:data:`_SUBCOMMANDS`); options that several commands share are added by one function
# each, so that they cannot drift apart.

_Subparsers = argparse._SubParsersAction


def _add_setup_solo(sub: _Subparsers) -> None:
    p = sub.add_parser(
        "setup-solo",
        help="install the pinned solo-learn for this Python (download, or --from PATH)",
        description="Puts solo-learn's source tree at the commit the plugin pins into a per-user "
        "cache folder and a .pth file into this Python's site-packages. Source: --from PATH (a "
        "checkout, a .tar.gz of one, or a folder holding one such .tar.gz), else "
        "$S2BNN_SOLO_SOURCE, else a download from GitHub. Safe to run again.",
    )
    p.add_argument("--from", dest="source", default=None, metavar="PATH", help="local source")
    p.add_argument(
        "--allow-other-commit",
        action="store_true",
        help="accept a solo-learn tree at another commit than the pinned one",
    )
    p.add_argument("--force", action="store_true", help="install again even if installed")
    p.set_defaults(func=_cmd_setup_solo)


def _add_doctor(sub: _Subparsers) -> None:
    p = sub.add_parser(
        "doctor",
        help="what this environment has and lacks for each feature, with the fixes",
        description="Checks torch, Numba and the CPU's vector popcount, whether the kernels "
        "are compiled (and the disk taken by other versions' machine code), solo-learn and its "
        "commit, registration, matplotlib, Fashion-MNIST and GPUs. Exit code 0 when everything "
        "the README's commands need is there (a GPU is optional).",
    )
    p.add_argument("--data-root", default=None, help="where Fashion-MNIST is prepared")
    p.set_defaults(func=_cmd_doctor)


def _add_configs(sub: _Subparsers) -> None:
    p = sub.add_parser("configs", help="print where the solo-learn configs are installed")
    p.add_argument("--list", action="store_true", help="also list the yaml files")
    p.set_defaults(func=_cmd_configs)


def _add_backbones(sub: _Subparsers) -> None:
    p = sub.add_parser("backbones", help="list the binary backbones with their size and OPs")
    p.add_argument("--size", type=int, default=224, help="input resolution (default 224)")
    p.add_argument("--width-mult", type=float, default=1.0)
    p.add_argument("--cifar", action="store_true", help="the 32 px stem")
    p.add_argument("--num-classes", type=int, default=1000, help="classifier counted in FLOPs")
    p.set_defaults(func=_cmd_backbones)


def _add_solo_script(
    sub: _Subparsers, name: str, script: str, default_config: str, func: object
) -> None:
    """``pretrain`` / ``linear``: one of solo-learn's scripts, Hydra overrides passed on."""
    p = sub.add_parser(
        name,
        help=f"run solo-learn's {script} with the plugin registered",
        description=f"Runs solo-learn's {script} with the plugin registered. Arguments after "
        "the options are Hydra overrides (key=value), passed on; values holding '=' are "
        "quoted for you. Give --config-path/--config-name yourself to use other configs.",
    )
    p.add_argument("--dataset", default="custom", help="config folder (default custom)")
    p.add_argument(
        "--config", default=default_config, help=f"config file (default {default_config})"
    )
    p.add_argument("overrides", nargs=argparse.REMAINDER, help="Hydra overrides")
    p.set_defaults(func=func)


def _add_pretrain(sub: _Subparsers) -> None:
    _add_solo_script(sub, "pretrain", "main_pretrain.py", "s2bnn.yaml", _cmd_pretrain)


def _add_linear(sub: _Subparsers) -> None:
    _add_solo_script(sub, "linear", "main_linear.py", "reactnet_a.yaml", _cmd_linear)


def _add_eval(sub: _Subparsers) -> None:
    from s2bnn_plugin.data import EVAL_TRAIN_PER_CLASS, EVAL_VAL_PER_CLASS

    p = sub.add_parser(
        "eval",
        help="kNN and linear-probe accuracy of a checkpoint or packed network",
        description="Extracts features of the dataset's train/ and val/ splits, then reports "
        "solo-learn's weighted kNN top-1 (train split as the bank) and a linear probe's top-1 "
        "(fitted on train, tested on val). Images are resized to --size and normalised with "
        "ImageNet's mean and std.",
    )
    p.add_argument(
        "--model",
        required=True,
        help="a solo-learn .ckpt (args.json beside it) or a packed network file",
    )
    p.add_argument(
        "--data",
        default="fashion-mnist",
        help="'fashion-mnist' (Debian's dataset-fashion-mnist, prepared once) or a folder "
        "holding train/ and val/ ImageFolders (default fashion-mnist)",
    )
    p.add_argument(
        "--engine",
        default="auto",
        choices=["auto", "packed", "torch", "both"],
        help="auto: packed for a packed file; both for a checkpoint when it can be packed, "
        "else torch",
    )
    p.add_argument("--size", type=int, default=32, help="image size in pixels (default 32)")
    p.add_argument(
        "--crop-ratio",
        type=float,
        default=1.0,
        help="resize to size/ratio, then centre-crop size (solo-learn's custom: 0.875 at 224)",
    )
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--k", type=int, default=20, help="kNN neighbours (default 20)")
    p.add_argument("--temperature", type=float, default=0.07, help="kNN temperature")
    p.add_argument("--weight-decay", type=float, default=1e-2, help="linear probe L2 strength")
    p.add_argument("--raw-pixels", action="store_true", help="add the raw-pixel linear probe")
    p.add_argument(
        "--train-per-class",
        type=_per_class,
        default=EVAL_TRAIN_PER_CLASS,
        help=f"fashion-mnist: training images per class, or 'all' (default {EVAL_TRAIN_PER_CLASS})",
    )
    p.add_argument(
        "--val-per-class",
        type=_per_class,
        default=EVAL_VAL_PER_CLASS,
        help=f"fashion-mnist: held-out images per class, or 'all' (default {EVAL_VAL_PER_CLASS})",
    )
    p.add_argument("--seed", type=int, default=0, help="fashion-mnist: subsampling seed")
    p.add_argument(
        "--data-root",
        default=None,
        help="fashion-mnist: where to prepare it (default $S2BNN_DATA_DIR or ~/.cache/s2bnn/data)",
    )
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--force", action="store_true", help="overwrite an existing --json file")
    _add_no_progress(p)
    p.set_defaults(func=_cmd_eval)


def _add_no_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_agreement_bounds(p: argparse.ArgumentParser) -> None:
    """``--min-cosine`` and ``--max-flipped``: when the packed features count as the model's."""
    from s2bnn_plugin.check.agreement import MAX_FLIPPED, MIN_COSINE, MIN_IMAGES

    p.add_argument(
        "--min-cosine",
        type=float,
        default=MIN_COSINE,
        help="fail when any image's packed features have a lower cosine similarity with the "
        f"float model's (default {MIN_COSINE}; correct packings of trained models stay above "
        "0.99)",
    )
    p.add_argument(
        "--max-flipped",
        type=float,
        default=MAX_FLIPPED,
        help=f"fail when a larger share of the images (at least {MIN_IMAGES} are compared) has "
        f"a flipped sign bit (default {MAX_FLIPPED}; a correct packing flips up to 20 %% at "
        "224 px, a wrong student every image)",
    )


_CKPT_HELP = "a solo-learn .ckpt (args.json beside it) or a state dict file"


def _add_pack(sub: _Subparsers) -> None:
    p = sub.add_parser(
        "pack",
        help="bit-pack a trained binary backbone into one file for the CPU kernels",
        description="Loads a solo-learn checkpoint (backbone.* weights, args.json beside it) or "
        "a plain state dict (give --backbone and --backbone-kwargs), checks it against the float "
        "model and writes the packed network.",
    )
    p.add_argument("checkpoint", metavar="CKPT", help=_CKPT_HELP)
    p.add_argument("-o", "--output", required=True, help="packed file to write")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.add_argument("--backbone", default=None, help="backbone name (instead of args.json)")
    p.add_argument("--backbone-kwargs", default=None, help="JSON, e.g. '{\"cifar\": true}'")
    p.add_argument("--check-size", type=int, default=64, help="image size of the quick check")
    _add_agreement_bounds(p)
    _add_no_progress(p)
    p.set_defaults(func=_cmd_pack)


def _add_export_openvino(sub: _Subparsers) -> None:
    p = sub.add_parser(
        "export-openvino",
        help="a packed file as an OpenVINO IR with native BinaryConvolution layers",
        description="Writes FILE.xml and FILE.bin: every binary convolution a BinaryConvolution "
        "(1-bit weights) fed by FakeQuantize(levels=2) signs, the float parts plain ops, for one "
        "input size. Needs openvino: pip install 's2bnn-plugin[openvino]'.",
    )
    p.add_argument("file", metavar="FILE", help="packed network file (s2bnn pack)")
    p.add_argument("-o", "--output", required=True, help="the .xml to write (.bin beside it)")
    p.add_argument("--size", type=int, default=224, help="input H = W the IR is built for")
    p.add_argument("--batch", type=int, default=1, help="batch size of the IR's input shape")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.set_defaults(func=_cmd_export_openvino)


def _add_check(sub: _Subparsers) -> None:
    p = sub.add_parser(
        "check",
        help="a packed file: agreement with the float model, size, speed",
        description="Compares the packed network's features with the float model's (the "
        "checkpoint's with --ckpt, else the float twin rebuilt from the file), its file size "
        "with the fp32 state dict's, and its speed with PyTorch's.",
    )
    p.add_argument("file", metavar="FILE", help="packed network file")
    p.add_argument("--ckpt", default=None, help=_CKPT_HELP + " to compare with")
    p.add_argument("--backbone", default=None, help="backbone name for a state dict --ckpt")
    p.add_argument("--backbone-kwargs", default=None, help="JSON kwargs for --backbone")
    p.add_argument("--size", type=int, default=224, help="image size (default 224)")
    p.add_argument("--batch", type=int, default=8, help="images (default 8)")
    p.add_argument("--threads", type=int, default=1, help="threads for both engines")
    p.add_argument("--repeats", type=int, default=3, help="best of this many timed runs")
    _add_agreement_bounds(p)
    p.add_argument("-v", "--verbose", action="store_true", help="print the layers")
    _add_no_progress(p)
    p.set_defaults(func=_cmd_check)


def _add_bench(sub: _Subparsers) -> None:
    p = sub.add_parser(
        "bench",
        help="quick speed table: packed CPU engine vs PyTorch fp32",
        description="Times a random-weight backbone end to end (and with --layers every binary "
        "layer) against PyTorch fp32 on the same input and thread count.",
    )
    p.add_argument("--backbone", default="reactnet_a", help="backbone (default reactnet_a)")
    p.add_argument("--width-mult", type=float, default=1.0)
    p.add_argument("--size", type=int, default=224, help="input resolution (default 224)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 32], help="batch sizes")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts")
    p.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    p.add_argument("--layers", action="store_true", help="also time every binary layer")
    _add_no_progress(p)
    p.set_defaults(func=_cmd_bench)


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """The options ``demo``, ``study`` and ``ablation`` share: the data, the training budget
    (:data:`_RUN_SETTINGS`, each unset unless given) and where the training output goes."""
    p.add_argument(
        "--data",
        default="fashion-mnist",
        help="'fashion-mnist' (Debian's dataset-fashion-mnist) or a folder holding train/ and "
        "val/ ImageFolders with at least 5 classes",
    )
    p.add_argument("--epochs", type=int, default=None, help="student epochs (same for all)")
    p.add_argument("--teacher-epochs", type=int, default=None)
    p.add_argument("--train-per-class", type=int, default=None, help="fashion-mnist subset")
    p.add_argument("--val-per-class", type=int, default=None, help="fashion-mnist subset")
    p.add_argument("--width-mult", type=float, default=None, help="student width")
    p.add_argument("--quiet", action="store_true", help="training output to log files only")


def _add_demo(sub: _Subparsers) -> None:
    from s2bnn_plugin.demo.pipeline import STAGES

    p = sub.add_parser(
        "demo",
        help="teacher + three binary students on a CPU, evaluated and plotted (resumable)",
        description="Trains a real-valued self-supervised teacher and three binary students "
        "(contrastive only, S2-BNN distillation only, both) with solo-learn's main_pretrain.py, "
        "evaluates them on the held-out split with the packed CPU engine, and writes "
        "results.md, results.json and PNG plots into --out. Run it again to resume: finished "
        "stages are skipped. Defaults take about 8 minutes on 2 CPU cores.",
    )
    p.add_argument("--out", default="s2bnn-demo", help="demo folder (default ./s2bnn-demo)")
    _add_run_options(p)
    p.add_argument("--until", choices=STAGES, default=None, help="stop after this stage")
    p.set_defaults(func=_cmd_demo)


def _add_study(sub: _Subparsers) -> None:
    from s2bnn_plugin.demo.study import DEFAULT_METHODS

    p = sub.add_parser(
        "study",
        help="each solo-learn objective's binary student alone vs + distillation (resumable)",
        description="Trains the demo's real-valued teacher, then for each method and seed two "
        "binary students with the same budget (the objective alone; the objective + S2-BNN "
        "distillation) and one distillation-only student, evaluates them with the packed CPU "
        "engine and writes study.md, study.json and study.png into --out. Each objective runs "
        "with solo-learn's CIFAR recipe for it. Run it again to resume: finished stages are "
        "skipped. The defaults (6 methods, 13 students) take about 34 minutes on 2 idle CPU "
        "cores (README, 'Study').",
    )
    p.add_argument("--out", default="s2bnn-study", help="study folder (default ./s2bnn-study)")
    _add_run_options(p)
    p.add_argument(
        "--methods",
        default=None,
        help=f"comma-separated solo-learn methods (default {','.join(DEFAULT_METHODS)})",
    )
    p.add_argument("--seeds", type=int, default=1, help="students per cell (default 1)")
    p.add_argument(
        "--method-kwarg",
        action="append",
        default=[],
        metavar="METHOD.KEY=VALUE",
        help="replace one of a method's recipe settings, e.g. mocov2plus.queue_size=2048 "
        "(repeatable)",
    )
    p.add_argument("--until", default=None, help="stop after this stage (e.g. teacher)")
    p.set_defaults(func=_cmd_study)


def _add_ablation(sub: _Subparsers) -> None:
    from s2bnn_plugin.demo.ablation import DEFAULT_ROWS, REFERENCE

    p = sub.add_parser(
        "ablation",
        help="the paper's ablation rows on binary students at the demo's budget (resumable)",
        description="Trains the demo's real-valued teacher, then per seed one binary student "
        f"per row with the demo's budget: {', '.join(DEFAULT_ROWS)}. The reference, "
        f"{REFERENCE}, is distillation only with S2-BNN's official recipe (KL, linear decay per "
        "epoch, the first crop shared); every other row changes only what it names, and its "
        "differences are paired by seed. Evaluates them with the packed CPU engine and writes "
        "ablation.md, ablation.json and ablation.png into --out. Run it again to resume: "
        "finished stages are skipped. The defaults (6 rows, 2 seeds: 14 trainings) take about "
        "50 minutes on 2 busy CPU cores (docs/demo-and-study.md); it prints an estimate first.",
    )
    p.add_argument(
        "--out", default="s2bnn-ablation", help="ablation folder (default ./s2bnn-ablation)"
    )
    _add_run_options(p)
    p.add_argument(
        "--rows",
        default=None,
        help=f"comma-separated rows (default all: {','.join(DEFAULT_ROWS)}); {REFERENCE}, the "
        "reference, is always trained",
    )
    p.add_argument("--seeds", type=int, default=2, help="students per row, at least 2 (default 2)")
    p.add_argument("--until", default=None, help="stop after this stage (e.g. teacher)")
    p.set_defaults(func=_cmd_ablation)


#: every sub-command's parser, in the order ``s2bnn --help`` lists them
_SUBCOMMANDS = (
    _add_setup_solo,
    _add_doctor,
    _add_configs,
    _add_backbones,
    _add_pretrain,
    _add_linear,
    _add_eval,
    _add_pack,
    _add_export_openvino,
    _add_check,
    _add_bench,
    _add_demo,
    _add_study,
    _add_ablation,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="s2bnn",
        description="Self-supervised binary networks (S2-BNN) for solo-learn.",
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of the plugin's own errors"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_parser in _SUBCOMMANDS:
        add_parser(sub)
    return parser


@contextlib.contextmanager
def _notices() -> Iterator[None]:
    """The plugin's log notices (the first packed run saying that it compiles the kernels) on
    stderr as plain lines, written above a running progress bar instead of glued to it."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    logger = logging.getLogger("s2bnn_plugin")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False
    try:
        with logging_redirect_tqdm(loggers=[logger]):
            yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with _notices():
            return int(args.func(args) or 0)
    except S2BNNError as e:
        if args.debug:
            raise
        print(f"s2bnn {args.command}: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader went away (``s2bnn configs --list | head``): stop quietly, as Unix tools
        # do; the interpreter's final flush of stdout would raise again, so point it elsewhere
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by the pipe


if __name__ == "__main__":
    sys.exit(main())
