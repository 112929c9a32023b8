"""The ``s2bnn`` command: a thin argparse layer over the plugin's modules.

Each sub-command is one ``_cmd_<name>`` function plus its parser in :func:`build_parser`; the
heavy imports (numba and its compiled kernels, solo-learn) happen inside the command that needs
them, so ``s2bnn --help`` costs only torch's import.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["build_parser", "main"]


def configs_dir() -> Path:
    """Where the Hydra configs shipped with the plugin are installed."""
    import s2bnn_plugin.solo_configs as configs

    return Path(configs.__file__).resolve().parent


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

    from s2bnn_plugin.solo import (
        CALLBACK_OVERRIDE,
        SoloLearnNotFound,
        find_solo_script,
        hydra_quote,
    )

    try:
        script = find_solo_script(script_name)
    except SoloLearnNotFound as exc:
        print(f"s2bnn {kind}: {exc}", file=sys.stderr)
        return 2
    extra = list(args.overrides)
    if not any(a.startswith(("--config-path", "-cp")) for a in extra):
        config_dir = configs_dir() / kind / args.dataset
        if not config_dir.is_dir():
            choices = sorted(p.name for p in (configs_dir() / kind).iterdir() if p.is_dir())
            print(f"s2bnn {kind}: no configs for dataset {args.dataset!r}; choose {choices}")
            return 2
        extra = ["--config-path", str(config_dir), "--config-name", args.config, *extra]
    command = [sys.executable, str(script), *(hydra_quote(a) for a in extra), CALLBACK_OVERRIDE]
    print("+ " + " ".join(command), flush=True)
    return subprocess.call(command)


def _cmd_pretrain(args: argparse.Namespace) -> int:
    return _run_solo("main_pretrain.py", "pretrain", args)


def _cmd_linear(args: argparse.Namespace) -> int:
    return _run_solo("main_linear.py", "linear", args)


def _per_class(value: str) -> int | None:
    return None if value == "all" else int(value)


def _cmd_eval(args: argparse.Namespace) -> int:
    """Features of a model on a dataset's train and val splits, then kNN and a linear probe."""
    try:
        return _eval(args)
    except (OSError, ValueError, RuntimeError) as exc:  # bad paths, data, files or shapes
        print(f"s2bnn eval: {exc}", file=sys.stderr)
        return 2


def _eval(args: argparse.Namespace) -> int:
    import json

    from s2bnn_plugin.data import load_image_folder, resolve_dataset
    from s2bnn_plugin.evaluation import (
        evaluate,
        evaluate_raw_pixels,
        load_engines,
        prediction_agreement,
    )

    progress = not args.no_progress
    if not Path(args.model).is_file():
        raise FileNotFoundError(f"model file {args.model} does not exist")
    splits = resolve_dataset(
        args.data,
        size=args.size,
        train_per_class=args.train_per_class,
        val_per_class=args.val_per_class,
        seed=args.seed,
        data_root=args.data_root,
        progress=progress,
    )
    engines, notes = load_engines(args.model, args.engine)
    for note in notes:
        print(f"note: {note}")
    load = {"crop_ratio": args.crop_ratio, "progress": progress}
    train = load_image_folder(splits.train, args.size, **load)
    val = load_image_folder(splits.val, args.size, **load)
    print(
        f"data: {splits.root} ({len(train.class_names)} classes, {len(train.labels)} train / "
        f"{len(val.labels)} val images, {args.size} px)\nmodel: {args.model}"
    )
    options = {"k": args.k, "temperature": args.temperature, "weight_decay": args.weight_decay}
    results = [
        evaluate(
            extractor,
            train.images,
            train.labels,
            val.images,
            val.labels,
            name=name,
            batch_size=args.batch_size,
            progress=progress,
            **options,
        )
        for name, extractor in engines.items()
    ]
    if args.raw_pixels:
        results.append(
            evaluate_raw_pixels(
                train.images, train.labels, val.images, val.labels, weight_decay=args.weight_decay
            )
        )

    print(f"{'engine':<11}{'dim':>6}{'kNN top-1':>11}{'linear top-1':>14}{'img/s':>9}")
    for r in results:
        knn = "-" if r.knn is None else f"{r.knn.top1:.2f}"
        speed = "-" if r.images_per_second is None else f"{r.images_per_second:.0f}"
        print(f"{r.name:<11}{r.feature_dim:>6}{knn:>11}{r.linear.top1:>14.2f}{speed:>9}")
    report = {
        "model": str(args.model),
        "data": str(splits.root),
        "size": args.size,
        "classes": train.class_names,
        "results": [r.to_dict() for r in results],
    }
    by_name = {r.name: r for r in results}
    if "packed" in by_name and "torch" in by_name:
        same = prediction_agreement(
            by_name["packed"].knn.predictions, by_name["torch"].knn.predictions
        )
        report["knn_agreement_packed_vs_torch"] = same
        n = len(val.labels)
        print(
            f"kNN agreement, packed vs torch: {100 * same:.2f} % ({round(same * n)} / {n} images)"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def _cmd_pack(args: argparse.Namespace) -> int:
    from s2bnn_plugin.export.commands import pack

    return pack(args)


def _cmd_check(args: argparse.Namespace) -> int:
    from s2bnn_plugin.export.commands import check

    return check(args)


def _cmd_bench(args: argparse.Namespace) -> int:
    from s2bnn_plugin.export.commands import bench

    return bench(args)


def _add_export_commands(sub: argparse._SubParsersAction) -> None:
    """``pack``, ``check`` and ``bench``: the bit-packed CPU engine (s2bnn_plugin.export)."""
    ckpt_help = "a solo-learn .ckpt (args.json beside it) or a state dict file"
    p = sub.add_parser(
        "pack",
        help="bit-pack a trained binary backbone into one file for the CPU kernels",
        description="Loads a solo-learn checkpoint (backbone.* weights, args.json beside it) or "
        "a plain state dict (give --backbone and --backbone-kwargs), checks it against the float "
        "model and writes the packed network.",
    )
    p.add_argument("checkpoint", metavar="CKPT", help=ckpt_help)
    p.add_argument("-o", "--output", required=True, help="packed file to write")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.add_argument("--backbone", default=None, help="backbone name (instead of args.json)")
    p.add_argument("--backbone-kwargs", default=None, help="JSON, e.g. '{\"cifar\": true}'")
    p.add_argument("--check-size", type=int, default=64, help="image size of the quick check")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_pack)

    p = sub.add_parser(
        "check",
        help="a packed file: agreement with the float model, size, speed",
        description="Compares the packed network's features with the float model's (the "
        "checkpoint's with --ckpt, else the float twin rebuilt from the file), its file size "
        "with the fp32 state dict's, and its speed with PyTorch's.",
    )
    p.add_argument("file", metavar="FILE", help="packed network file")
    p.add_argument("--ckpt", default=None, help=ckpt_help + " to compare with")
    p.add_argument("--backbone", default=None, help="backbone name for a state dict --ckpt")
    p.add_argument("--backbone-kwargs", default=None, help="JSON kwargs for --backbone")
    p.add_argument("--size", type=int, default=224, help="image size (default 224)")
    p.add_argument("--batch", type=int, default=8, help="images (default 8)")
    p.add_argument("--threads", type=int, default=1, help="threads for both engines")
    p.add_argument("--repeats", type=int, default=3, help="best of this many timed runs")
    p.add_argument("-v", "--verbose", action="store_true", help="print the layers")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_check)

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
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_bench)


def _cmd_demo(args: argparse.Namespace) -> int:
    """The whole S2-BNN story on a CPU in one resumable command (see s2bnn_plugin.demo)."""
    import warnings

    from s2bnn_plugin.demo import DemoConfig, DemoError, run_demo
    from s2bnn_plugin.solo import require_solo, solo_available

    if solo_available():
        with warnings.catch_warnings():  # timm / torch deprecation noise from solo-learn's imports
            warnings.simplefilter("ignore")
            require_solo()

    cfg = DemoConfig(out_dir=Path(args.out), data=args.data)
    for key in ("epochs", "teacher_epochs", "train_per_class", "val_per_class", "width_mult"):
        value = getattr(args, key)
        if value is not None:
            setattr(cfg, key, value)
    try:
        run_demo(cfg, until=args.until, quiet=args.quiet)
    except DemoError as e:
        print(f"s2bnn demo: {e}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="s2bnn",
        description="Self-supervised binary networks (S2-BNN) for solo-learn.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("configs", help="print where the solo-learn configs are installed")
    p.add_argument("--list", action="store_true", help="also list the yaml files")
    p.set_defaults(func=_cmd_configs)

    p = sub.add_parser("backbones", help="list the binary backbones with their size and OPs")
    p.add_argument("--size", type=int, default=224, help="input resolution (default 224)")
    p.add_argument("--width-mult", type=float, default=1.0)
    p.add_argument("--cifar", action="store_true", help="the 32 px stem")
    p.add_argument("--num-classes", type=int, default=1000, help="classifier counted in FLOPs")
    p.set_defaults(func=_cmd_backbones)

    for name, func, default in (
        ("pretrain", _cmd_pretrain, "s2bnn.yaml"),
        ("linear", _cmd_linear, "reactnet_a.yaml"),
    ):
        script = "main_pretrain.py" if name == "pretrain" else "main_linear.py"
        p = sub.add_parser(
            name,
            help=f"run solo-learn's {script} with the plugin registered",
            description=f"Runs solo-learn's {script} with the plugin registered. Arguments after "
            "the options are Hydra overrides (key=value), passed on; values holding '=' are "
            "quoted for you. Give --config-path/--config-name yourself to use other configs.",
        )
        p.add_argument("--dataset", default="custom", help="config folder (default custom)")
        p.add_argument("--config", default=default, help=f"config file (default {default})")
        p.add_argument("overrides", nargs=argparse.REMAINDER, help="Hydra overrides")
        p.set_defaults(func=func)

    from s2bnn_plugin.data import DEMO_TRAIN_PER_CLASS, DEMO_VAL_PER_CLASS

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
        default=DEMO_TRAIN_PER_CLASS,
        help=f"fashion-mnist: training images per class, or 'all' (default {DEMO_TRAIN_PER_CLASS})",
    )
    p.add_argument(
        "--val-per-class",
        type=_per_class,
        default=DEMO_VAL_PER_CLASS,
        help=f"fashion-mnist: held-out images per class, or 'all' (default {DEMO_VAL_PER_CLASS})",
    )
    p.add_argument("--seed", type=int, default=0, help="fashion-mnist: subsampling seed")
    p.add_argument(
        "--data-root",
        default=None,
        help="fashion-mnist: where to prepare it (default $S2BNN_DATA_DIR or ~/.cache/s2bnn/data)",
    )
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_eval)

    _add_export_commands(sub)

    from s2bnn_plugin.demo.pipeline import STAGES

    p = sub.add_parser(
        "demo",
        help="teacher + three binary students on a CPU, evaluated and plotted (resumable)",
        description="Trains a real-valued self-supervised teacher and three binary students "
        "(contrastive only, S2-BNN distillation only, both) with solo-learn's main_pretrain.py, "
        "evaluates them on the held-out split with the packed CPU engine, and writes "
        "results.md, results.json and PNG plots into --out. Run it again to resume: finished "
        "stages are skipped. Defaults take about 15 minutes on 2 CPU cores.",
    )
    p.add_argument("--out", default="s2bnn-demo", help="demo folder (default ./s2bnn-demo)")
    p.add_argument(
        "--data",
        default="fashion-mnist",
        help="'fashion-mnist' (Debian's dataset-fashion-mnist) or a folder holding train/ and "
        "val/ ImageFolders with at least 5 classes",
    )
    p.add_argument("--epochs", type=int, default=None, help="student epochs (same for all 3)")
    p.add_argument("--teacher-epochs", type=int, default=None)
    p.add_argument("--train-per-class", type=int, default=None, help="fashion-mnist subset")
    p.add_argument("--val-per-class", type=int, default=None, help="fashion-mnist subset")
    p.add_argument("--width-mult", type=float, default=None, help="student width")
    p.add_argument("--until", choices=STAGES, default=None, help="stop after this stage")
    p.add_argument("--quiet", action="store_true", help="training output to log files only")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
