"""Training-step time of ``method=s2bnn`` against plain solo-learn SimCLR, same student, same batch.

Three models are built exactly as ``main_pretrain.py`` builds them (solo-learn's method classes,
``make_contiguous``, channels_last), on the same binary student and the same batch:

- ``simclr``: plain solo-learn SimCLR (the reference);
- ``s2bnn``: distillation only (``ssl_method=none``), the paper's best setting;
- ``s2bnn+simclr``: SimCLR and distillation together.

A step is what Lightning's automatic optimisation does: ``zero_grad``, ``training_step`` (the
method's own, logging stubbed out), ``backward``, ``optimizer.step`` with the optimiser from
``configure_optimizers`` (Adam, as the paper). Steps are interleaved across the three models
(round-robin, after warm-up) so that a machine's load drifts affect all of them alike; the median
is reported. The teacher is a MoCo v2-style checkpoint (torchvision ResNet, MLP head 2048-128),
written to a temporary folder and loaded through the plugin's loader.

The issue's target: the teacher's forward adds at most 30 % per step when the teacher is no
larger than the student. On a CPU shared with other jobs, wall-clock medians swing by tens of
percent (and two OpenMP threads on two busy cores spin-wait badly): use ``--threads 1 --clock cpu``
there, which counts only this process's CPU time.

    python benchmarks/bench_train_step.py                       # reactnet18 x1.0, resnet18 teacher
    python benchmarks/bench_train_step.py --threads 1 --clock cpu --steps 6   # a busy shared CPU
    python benchmarks/bench_train_step.py --device cuda --precision bf16-mixed --batch-size 256

``--eager-vs-compiled`` measures ``backbone.kwargs.compile`` instead: for ``reactnet_a`` and
``reactnet18`` a backbone step (backbone + linear head, cross-entropy, backward, Adam), and a
``method=s2bnn`` step (distillation only, student ``--backbone``), each eager and compiled, built
from the same initial weights in one process and interleaved; it prints the medians, the
compiled/eager ratio (> 1: compiled is faster), the first compiled call's time (compilation
included; Inductor's caches are off unless ``--warm-cache``, so it is what a fresh machine
pays), the teacher forward's share of the eager s2bnn step, the device, the CPU model and the
load average.

    python benchmarks/bench_train_step.py --eager-vs-compiled --batch-size 64 --size 32
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from s2bnn_plugin.bench.machine import cpu_name


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="reactnet18", help="student backbone (plugin name)")
    p.add_argument("--width-mult", type=float, default=1.0, help="student width multiplier")
    p.add_argument(
        "--teacher",
        default="resnet18",
        choices=["resnet18", "resnet34", "resnet50"],
        help="torchvision ResNet teacher (MLP head 2048-128, as MoCo v2)",
    )
    p.add_argument("--size", type=int, default=32, help="crop size; <= 64 uses CIFAR stems")
    p.add_argument("--batch-size", type=int, default=64, help="images per crop (2 crops)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per model")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per model first")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument(
        "--clock",
        default="wall",
        choices=["wall", "cpu"],
        help="wall: elapsed time; cpu: this process's CPU time (with --threads 1, a busy shared "
        "CPU machine's contention does not count; CPU only)",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--precision",
        default="32",
        choices=["32", "bf16-mixed", "16-mixed"],
        help="as Lightning's trainer.precision (mixed = autocast around the step's forward)",
    )
    p.add_argument(
        "--no-channels-last",
        action="store_true",
        help="as performance.disable_channel_last=True",
    )
    p.add_argument(
        "--eager-vs-compiled",
        action="store_true",
        help="time each backbone and the s2bnn step eager and with backbone.kwargs.compile=true",
    )
    p.add_argument(
        "--warm-cache",
        action="store_true",
        help="keep Inductor's on-disk caches (default: off, so the first call compiles from "
        "scratch)",
    )
    return p.parse_args(argv)


def make_teacher(name: str, cifar: bool, folder: Path) -> Path:
    """A MoCo v2-style checkpoint: ``state_dict`` with ``module.encoder_q.*`` keys."""
    import torchvision

    model = getattr(torchvision.models, name)()
    if cifar:
        model.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    dim = model.fc.in_features
    model.fc = nn.Sequential(nn.Linear(dim, 2048), nn.ReLU(), nn.Linear(2048, 128))
    path = folder / f"{name}_moco.pth.tar"
    state = {f"module.encoder_q.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state}, path)
    return path


def make_cfg(
    method: str, args: argparse.Namespace, method_kwargs: dict[str, Any], compile_: bool = False
):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(
        {
            "name": "bench",
            "method": method,
            "backbone": {
                "name": args.backbone,
                "kwargs": {
                    "cifar": args.size <= 64,
                    "width_mult": args.width_mult,
                    "compile": compile_,
                },
            },
            "method_kwargs": method_kwargs,
            "data": {
                "dataset": "custom",
                "train_path": ".",
                "val_path": None,
                "format": "image_folder",
                "num_workers": 0,
                "num_large_crops": 2,
                "num_small_crops": 0,
                "num_classes": 10,
            },
            "optimizer": {
                "name": "adam",
                "batch_size": args.batch_size,
                "lr": 3e-4,
                "classifier_lr": 3e-4,
                "weight_decay": 0.0,
            },
            "scheduler": {"name": "none"},
            "performance": {"disable_channel_last": args.no_channels_last},
            "checkpoint": {"enabled": False},
            "auto_resume": {"enabled": False},
            "max_epochs": 1,
            "devices": "1",
            "accelerator": "cpu",
            "num_nodes": 1,
        }
    )
    OmegaConf.set_struct(cfg, False)
    return cfg


SIMCLR = {"proj_hidden_dim": 2048, "proj_output_dim": 256, "temperature": 0.2}


def build_models(
    args: argparse.Namespace, teacher: Path, specs: dict[str, tuple[str, dict, bool]] | None = None
) -> dict[str, nn.Module]:
    """solo-learn method models by label: ``(method, method_kwargs, compile)`` each (default:
    simclr, s2bnn and s2bnn+simclr, eager)."""
    from solo.methods import METHODS
    from solo.utils.misc import make_contiguous

    s2bnn = s2bnn_kwargs(teacher)
    if specs is None:
        specs = {
            "simclr": ("simclr", dict(SIMCLR), False),
            "s2bnn": ("s2bnn", {**s2bnn, "ssl_method": "none"}, False),
            "s2bnn+simclr": (
                "s2bnn",
                {**s2bnn, "ssl_method": "simclr", "ssl_kwargs": SIMCLR},
                False,
            ),
        }
    models = {}
    for label, (method, kwargs, compile_) in specs.items():
        torch.manual_seed(0)  # the same initial student in every model
        model = METHODS[method](make_cfg(method, args, kwargs, compile_))
        make_contiguous(model)
        if not args.no_channels_last:
            model = model.to(memory_format=torch.channels_last)
        model = model.to(args.device)
        model.log = model.log_dict = lambda *a, **k: None  # no trainer to log to
        model.train()
        models[label] = model
    return models


def s2bnn_kwargs(teacher: Path) -> dict[str, Any]:
    return {"teacher": {"ckpt": str(teacher)}, "head_hidden_dim": 2048}


def params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def autocast(args: argparse.Namespace):
    if args.precision == "32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if args.precision == "bf16-mixed" else torch.float16
    return torch.autocast(torch.device(args.device).type, dtype=dtype)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")  # solo-learn's import-time deprecation noise
    logging.getLogger().setLevel(logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)

    from s2bnn_plugin.solo import register

    register()
    if args.eager_vs_compiled:
        return eager_vs_compiled(args)

    with tempfile.TemporaryDirectory() as tmp:
        teacher_path = make_teacher(args.teacher, args.size <= 64, Path(tmp))
        models = build_models(args, teacher_path)
    optimizers = {}
    for label, model in models.items():
        opt = model.configure_optimizers()
        optimizers[label] = opt[0][0] if isinstance(opt, tuple) else opt

    g = torch.Generator().manual_seed(0)
    crops = [
        torch.randn(args.batch_size, 3, args.size, args.size, generator=g).to(args.device)
        for _ in range(2)
    ]
    targets = torch.randint(0, 10, (args.batch_size,), generator=g).to(args.device)
    batch = [torch.arange(args.batch_size, device=args.device), crops, targets]

    scaler = torch.amp.GradScaler(enabled=args.precision == "16-mixed")
    if args.clock == "cpu" and args.device != "cpu":
        raise SystemExit("--clock cpu measures CPU time: use it with --device cpu")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    def step(label: str) -> float:
        model, opt = models[label], optimizers[label]
        sync(args.device)
        start = clock()
        opt.zero_grad(set_to_none=True)
        with autocast(args):
            out = model.training_step(batch, 0)
        loss = out["loss"] if isinstance(out, dict) else out
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sync(args.device)
        return clock() - start

    teacher = models["s2bnn"].teacher
    teacher_inputs = [
        c if args.no_channels_last else c.to(memory_format=torch.channels_last) for c in crops
    ]

    def teacher_forward() -> float:
        sync(args.device)
        start = clock()
        with autocast(args):
            for x in teacher_inputs:
                teacher(x)
        sync(args.device)
        return clock() - start

    labels = list(models)
    for _ in range(args.warmup):
        for label in labels:
            step(label)
        teacher_forward()
    times: dict[str, list[float]] = {label: [] for label in labels + ["teacher"]}
    for _ in range(args.steps):
        for label in labels:
            times[label].append(step(label))
        times["teacher"].append(teacher_forward())

    ms = {label: 1000 * statistics.median(t) for label, t in times.items()}
    student = params(models["simclr"].backbone)
    student_with_head = student + params(models["s2bnn"].distill_head)
    teacher_params = params(teacher)
    device = args.device
    if device.startswith("cuda"):
        device = torch.cuda.get_device_name()
    else:
        device = f"cpu, {torch.get_num_threads()} threads, {args.clock} clock"

    print(
        f"student {args.backbone} x{args.width_mult} ({student / 1e6:.2f} M params), "
        f"teacher {args.teacher}{' (cifar stem)' if args.size <= 64 else ''} + MLP head "
        f"({params(teacher.backbone) / 1e6:.2f} M backbone, {teacher_params / 1e6:.2f} M with "
        f"head); batch {args.batch_size} x 2 crops of {args.size} px; {device}; precision "
        f"{args.precision}; median of {args.steps} steps after {args.warmup} warm-up"
    )
    print()
    print("| model | trainable params | ms/step | vs simclr |")
    print("|---|---:|---:|---:|")
    for label in labels:
        trainable = sum(p.numel() for p in models[label].parameters() if p.requires_grad)
        ratio = ms[label] / ms["simclr"]
        print(f"| {label} | {trainable / 1e6:.2f} M | {ms[label]:.1f} | {ratio:.2f}x |")
    share = ms["teacher"] / ms["simclr"]
    print(f"| teacher forward only (2 crops) | 0 | {ms['teacher']:.1f} | {share:.2f}x |")
    print()
    overhead = ms["s2bnn+simclr"] / ms["simclr"] - 1
    alone = ms["s2bnn"] / ms["simclr"] - 1
    verdict = "meets" if max(overhead, alone) <= 0.30 else "MISSES"
    print(
        f"s2bnn+simclr adds {100 * overhead:.0f} % to a simclr step, s2bnn alone "
        f"{100 * alone:.0f} % (target <= 30 %, teacher "
        f"{teacher_params / 1e6:.2f} M vs student {student_with_head / 1e6:.2f} M, both with "
        f"their heads: {'no larger' if teacher_params <= student_with_head else 'LARGER'}): "
        f"{verdict}"
    )
    return 0


def load_average() -> str:
    try:
        return " ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def eager_vs_compiled(args: argparse.Namespace) -> int:
    """Backbone steps and the s2bnn step, eager and compiled, interleaved; see the module doc."""
    from s2bnn_plugin.backbones import create_backbone

    if not args.warm_cache:
        from torch._functorch import config as functorch_config
        from torch._inductor import config as inductor_config

        inductor_config.fx_graph_cache = False
        functorch_config.enable_autograd_cache = False
    if args.precision != "32":
        raise SystemExit("--eager-vs-compiled measures precision 32 only")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    device = args.device
    g = torch.Generator().manual_seed(0)
    size, batch = args.size, args.batch_size
    crops = [torch.randn(batch, 3, size, size, generator=g).to(device) for _ in range(2)]
    targets = torch.randint(0, 10, (batch,), generator=g).to(device)
    memory = torch.contiguous_format if args.no_channels_last else torch.channels_last

    def backbone_step(name: str, compile_: bool):
        torch.manual_seed(0)  # the same initial weights eager and compiled
        model = create_backbone(
            name, cifar=size <= 64, width_mult=args.width_mult, compile=compile_
        )
        head = nn.Linear(model.num_features, 10)
        model, head = model.to(device, memory_format=memory), head.to(device)
        opt = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=3e-4)
        x = crops[0].contiguous(memory_format=memory)

        def step() -> float:
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(head(model(x)), targets)
            loss.backward()
            opt.step()
            return loss.item()

        return step

    with tempfile.TemporaryDirectory() as tmp:
        teacher_path = make_teacher(args.teacher, size <= 64, Path(tmp))
        s2bnn = {**s2bnn_kwargs(teacher_path), "ssl_method": "none"}
        methods = build_models(
            args, teacher_path, {c: ("s2bnn", dict(s2bnn), c) for c in (False, True)}
        )
    batch_list = [torch.arange(batch, device=device), crops, targets]

    def method_step(model: nn.Module):
        opt = model.configure_optimizers()
        opt = opt[0][0] if isinstance(opt, tuple) else opt

        def step() -> float:
            opt.zero_grad(set_to_none=True)
            out = model.training_step(batch_list, 0)
            loss = out["loss"] if isinstance(out, dict) else out
            loss.backward()
            opt.step()
            return loss.item()

        return step

    teacher = methods[False].teacher
    teacher_inputs = [c.contiguous(memory_format=memory) for c in crops]

    def teacher_forward() -> float:
        for x in teacher_inputs:
            teacher(x)
        return 0.0

    rows = [
        (f"{name} x{args.width_mult} backbone step", name, compile_)
        for name in ("reactnet_a", "reactnet18")
        for compile_ in (False, True)
    ]
    steps: dict[tuple[str, bool], Any] = {
        (label, c): backbone_step(name, c) for label, name, c in rows
    }
    s2bnn_label = f"s2bnn step (student {args.backbone} x{args.width_mult})"
    for c in (False, True):
        steps[(s2bnn_label, c)] = method_step(methods[c])
    steps[("teacher forward (2 crops)", False)] = teacher_forward

    def timed(fn) -> tuple[float, float]:
        sync(device)
        start = clock()
        loss = fn()
        sync(device)
        return clock() - start, loss

    first: dict[tuple[str, bool], float] = {}
    first_loss: dict[tuple[str, bool], float] = {}
    for key, fn in steps.items():  # the first call compiles
        first[key], first_loss[key] = timed(fn)
    for _ in range(args.warmup):
        for fn in steps.values():
            fn()
    times: dict[tuple[str, bool], list[float]] = {key: [] for key in steps}
    for _ in range(args.steps):
        for key, fn in steps.items():
            times[key].append(timed(fn)[0])
    ms = {key: 1000 * statistics.median(t) for key, t in times.items()}

    where = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    print(
        f"device {where}; CPU {cpu_name()}; {torch.get_num_threads()} threads; "
        f"torch {torch.__version__}; load average {load_average()} (at the end); {args.clock} "
        f"clock; batch {batch} at {size} px (s2bnn: 2 crops, teacher {args.teacher}); "
        f"channels_last {not args.no_channels_last}; Inductor caches "
        f"{'kept' if args.warm_cache else 'off'}; median of {args.steps} interleaved steps "
        f"after {args.warmup} warm-up"
    )
    print()
    print(
        "| step | eager ms | compiled ms | compiled speed-up | first compiled call s "
        "| first loss eager / compiled |"
    )
    print("|---|---:|---:|---:|---:|---|")
    labels = [label for label, _, c in rows if not c] + [s2bnn_label]
    for label in labels:
        eager, compiled = ms[(label, False)], ms[(label, True)]
        print(
            f"| {label} | {eager:.1f} | {compiled:.1f} | {eager / compiled:.2f}x | "
            f"{first[(label, True)]:.1f} | {first_loss[(label, False)]:.6f} / "
            f"{first_loss[(label, True)]:.6f} |"
        )
    teacher_ms = ms[("teacher forward (2 crops)", False)]
    print()
    print(
        f"teacher forward: {teacher_ms:.1f} ms, {100 * teacher_ms / ms[(s2bnn_label, False)]:.0f} "
        f"% of the eager s2bnn step, {100 * teacher_ms / ms[(s2bnn_label, True)]:.0f} % of the "
        "compiled one (the teacher is not compiled)"
    )
    print(
        "first losses: from the same weights and batch; at full width they differ in the 2nd "
        "digit between eager and compiled as between eager runs with 1 and 2 threads (a BNN's "
        "signs amplify any change in rounding); tests compare steps on a tiny model"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
