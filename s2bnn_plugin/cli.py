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

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
