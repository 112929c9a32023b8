"""``scheduler.name=linear``: S2-BNN's learning-rate schedule, for ``method=s2bnn``.

The official code (szq0214/S2-BNN, ``main_moco.py``, ``--cos``) sets ``lr = base_lr * (1 - epoch
/ epochs)`` at the start of every epoch: a linear decay towards zero (the last epoch trains at
``base_lr / epochs``). solo-learn builds only ``warmup_cosine``, ``step`` and ``none`` in
``BaseMethod.configure_optimizers`` and raises a ValueError for any other name once training
starts, so ``S2BNN.configure_optimizers`` builds this one itself (:class:`LinearDecay` in a
``LambdaLR``) and :func:`scheduler_problems` refuses the name, before any work, where nothing
would honour it (another method, main_linear.py).

With ``scheduler.interval=epoch`` the factor changes once per epoch, exactly as the official
code; with ``step`` (solo-learn's default) once per optimiser step, over
``trainer.estimated_stepping_batches``. ``scheduler.warmup_epochs`` (default 0 here, as the
official code) ramps linearly from ``warmup_start_lr`` to ``lr`` first; the decay then runs
from ``lr`` to ``scheduler.min_lr`` (default 0) over the remaining epochs or steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from s2bnn_plugin.validate import Range

__all__ = [
    "LINEAR",
    "SOLO_SCHEDULERS",
    "LinearDecay",
    "linear_decay",
    "s2bnn_linear_problems",
    "scheduler_problems",
]

LINEAR = "linear"
#: what solo-learn's ``BaseMethod.configure_optimizers`` builds at the pinned commit
SOLO_SCHEDULERS = ("warmup_cosine", "step", "none")
#: what main_linear.py's ``LinearModel.configure_optimizers`` builds
SOLO_LINEAR_SCHEDULERS = ("warmup_cosine", "reduce", "step", "exponential", "none")
INTERVALS = ("step", "epoch")
MISSING = "???"
NUMBER = Range()
NON_NEGATIVE = Range(0)
POSITIVE = Range(0, open_low=True)


@dataclass
class LinearDecay:
    """The lr factor (of the base lr) at scheduler step ``t`` (an epoch or an optimiser step).

    ``t < warmup``: ``start + (1 - start) * t / warmup``; then ``end + (1 - end) * (1 - (t -
    warmup) / (total - warmup))``, held at ``end`` past ``total``. A plain dataclass: LambdaLR
    saves its fields (floats) in the checkpoint, which ``torch.load(weights_only=True)`` reads.
    """

    warmup: float
    total: float
    start: float = 0.0
    end: float = 0.0

    def __call__(self, t: int) -> float:
        if t < self.warmup:
            return self.start + (1.0 - self.start) * t / self.warmup
        span = self.total - self.warmup
        done = min((t - self.warmup) / span, 1.0) if span > 0 else 1.0
        return self.end + (1.0 - self.end) * (1.0 - done)


def linear_decay(
    *,
    lr: float,
    max_epochs: int,
    warmup_epochs: float,
    warmup_start_lr: float,
    min_lr: float,
    steps_per_epoch: float | None = None,
) -> LinearDecay:
    """The factor function for an epoch schedule (``steps_per_epoch=None``) or a step one."""
    scale = 1.0 if steps_per_epoch is None else steps_per_epoch
    return LinearDecay(
        warmup=warmup_epochs * scale,
        total=max_epochs * scale,
        start=warmup_start_lr / lr if warmup_epochs > 0 else 1.0,
        end=min_lr / lr,
    )


def scheduler_problems(cfg: Any) -> list[str]:
    """What is wrong with ``cfg.scheduler`` for the script and method of ``cfg`` (a solo-learn
    pretrain or linear config, omegaconf or dict): ``linear`` where nothing honours it, and for
    ``method=s2bnn`` with ``linear``, settings out of range. Each message names the fix."""
    scheduler = _get(cfg, "scheduler")
    if not _is_mapping(scheduler):
        return []
    name = _get(scheduler, "name")
    if name is None or str(name).lower() != LINEAR:
        return []
    method = _get(cfg, "method")
    if method is None:  # a main_linear.py config: its LinearModel has no linear schedule
        return [
            f"scheduler.name={name}: main_linear.py's LinearModel builds only "
            f"{', '.join(SOLO_LINEAR_SCHEDULERS)}; the linear decay is method=s2bnn's "
            "(pretraining): set scheduler.name=warmup_cosine (or step)"
        ]
    if str(method) != "s2bnn":
        return [
            f"scheduler.name={name} with method={method}: only method=s2bnn builds the linear "
            f"decay; solo-learn's {method} builds only {', '.join(SOLO_SCHEDULERS)} (it fails "
            "with a ValueError once training starts): set scheduler.name=warmup_cosine, or "
            "method=s2bnn with method_kwargs.ssl_method=" + str(method) + " to train that "
            "objective under the linear decay"
        ]
    return s2bnn_linear_problems(cfg)


def s2bnn_linear_problems(cfg: Any) -> list[str]:
    """The settings of ``scheduler.name=linear`` under ``method=s2bnn`` that are out of range."""
    scheduler = _get(cfg, "scheduler") or {}
    out = []
    interval = _get(scheduler, "interval", "step")
    if interval not in INTERVALS:
        out.append(
            f"scheduler.interval={interval}: the linear decay steps per 'epoch' (as S2-BNN's "
            "code) or per 'step' (optimiser step): set one of those"
        )
    max_epochs = _get(cfg, "max_epochs", 1)
    warmup = _get(scheduler, "warmup_epochs", 0)
    if not NON_NEGATIVE.admits(warmup):
        out.append(f"scheduler.warmup_epochs={warmup} must be a number >= 0 (0: no warmup)")
    elif POSITIVE.admits(max_epochs) and warmup >= max_epochs:
        out.append(
            f"scheduler.warmup_epochs={warmup} leaves no epoch to decay in max_epochs="
            f"{max_epochs}: set warmup_epochs below max_epochs (S2-BNN's own schedule: 0)"
        )
    lr = _get(_get(cfg, "optimizer", {}) or {}, "lr")
    min_lr = _get(scheduler, "min_lr", 0.0)
    if not Range(0, lr if NUMBER.admits(lr) else None).admits(min_lr):
        out.append(
            f"scheduler.min_lr={min_lr} must be a number in [0, optimizer.lr={lr}] (the lr the "
            "decay ends at; S2-BNN's: 0)"
        )
    start = _get(scheduler, "warmup_start_lr", 3e-5)
    if POSITIVE.admits(warmup) and not NON_NEGATIVE.admits(start):
        out.append(f"scheduler.warmup_start_lr={start} must be a number >= 0")
    if NUMBER.admits(lr) and not POSITIVE.admits(lr):
        out.append(f"optimizer.lr={lr} must be > 0 for the linear decay (it scales from it)")
    return out


def _is_mapping(value: Any) -> bool:
    return hasattr(value, "get") and hasattr(value, "keys")


def _get(node: Any, key: str, default: Any = None) -> Any:
    from omegaconf.errors import OmegaConfBaseException

    try:
        value = node.get(key, default)
    except OmegaConfBaseException:  # a missing (???) value
        return MISSING
    return default if value is None and default is not None else value
