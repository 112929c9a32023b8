"""The ``s2bnn`` command: a thin argparse layer over the plugin's modules.

Each sub-command is one ``_cmd_<name>`` function plus its parser in :func:`build_parser`; heavy
imports (torch, numba, solo-learn) happen inside the command that needs them, so ``s2bnn --help``
is instant.
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

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
