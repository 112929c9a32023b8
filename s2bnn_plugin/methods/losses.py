"""The distillation losses of ``method=s2bnn`` as registered objects, looked up by name
(``method_kwargs.loss``) in :data:`LOSSES`, as solo-learn looks its methods up by ``method``.

A loss class says what it is (``name``, ``summary``), which of the teacher's crops each student
crop is distilled from (``teacher_offset``), which settings of ``method_kwargs`` it alone reads
(``settings``: their keys, defaults and ranges, rows of the method's settings table), and
computes its value over the (student prediction, teacher prediction) pairs of a batch, with the
terms it logs. The formulas are :mod:`s2bnn_plugin.methods.distillation`'s.

Adding a loss: a :class:`DistillLoss` subclass decorated with :func:`register_loss`, its formula
in ``distillation.py`` with a test against a hand computation; ``method_kwargs.loss`` then
accepts its name, its settings are filled, checked and documented with the others.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import torch

from s2bnn_plugin.methods.distillation import burn_lambda, burn_loss, distillation_loss
from s2bnn_plugin.validate import Range, Setting

__all__ = [
    "LOSSES",
    "BurnDistillation",
    "DistillLoss",
    "DistillTerms",
    "KLDistillation",
    "Progress",
    "ProgressFn",
    "register_loss",
]


class Progress(NamedTuple):
    """Where training is: optimiser step ``step`` of ``total``."""

    step: int
    total: int


@dataclass(frozen=True)
class DistillTerms:
    """A batch's distillation loss (the mean over its pairs) and the terms the loss logs beside
    ``train_distill_loss`` (name -> value)."""

    loss: torch.Tensor
    logged: dict[str, torch.Tensor] = field(default_factory=dict)


Pair = tuple[torch.Tensor, torch.Tensor]
#: where training is, asked only by a loss that needs it (``None`` outside a trainer)
ProgressFn = Callable[[], "Progress | None"]


class DistillLoss:
    """Base of the registered losses. ``temperature`` is ``method_kwargs.temperature``;
    ``method_kwargs`` (defaults filled) holds the values of the loss's own ``settings``."""

    #: the value of ``method_kwargs.loss`` that selects it
    name: ClassVar[str]
    #: what it is, in a few words (the refusal of an unknown loss lists them)
    summary: ClassVar[str]
    #: the settings only this loss reads (keys of ``method_kwargs``), and what they are
    settings: ClassVar[tuple[Setting, ...]] = ()
    settings_are: ClassVar[str] = ""
    #: student crop i is distilled from the teacher's crop i + offset (cyclically)
    teacher_offset: ClassVar[int] = 0

    def __init__(self, temperature: float, method_kwargs: Mapping[str, Any]) -> None:
        self.temperature = temperature

    def pairs(self, n_crops: int, distill_crops: str) -> list[tuple[int, int]]:
        """(student crop, teacher crop) pairs distilled in a batch of ``n_crops`` large crops:
        ``first``: the first crop, seen by both (S2-BNN's distillation-only code); ``all``:
        every crop, against the teacher's crop ``teacher_offset`` further on; the same crop when
        there is only one."""
        if distill_crops == "first" or n_crops == 1:
            return [(0, 0)]
        return [(i, (i + self.teacher_offset) % n_crops) for i in range(n_crops)]

    def __call__(self, pairs: Sequence[Pair], progress: ProgressFn) -> DistillTerms:
        """The loss over ``pairs`` of (student, teacher) predictions; ``progress()`` says where
        training is, for a loss that changes over it."""
        raise NotImplementedError


#: the registered losses by name
LOSSES: dict[str, type[DistillLoss]] = {}


def register_loss(cls: type[DistillLoss]) -> type[DistillLoss]:
    """Add a loss class to :data:`LOSSES` under its ``name``."""
    if cls.name in LOSSES and LOSSES[cls.name] is not cls:
        raise ValueError(f"a distillation loss named {cls.name!r} is already registered")
    LOSSES[cls.name] = cls
    return cls


@register_loss
class KLDistillation(DistillLoss):
    """S2-BNN's guided distribution calibration: each crop against itself
    (:func:`~s2bnn_plugin.methods.distillation.distillation_loss`)."""

    name = "kl"
    summary = "S2-BNN's"

    def __call__(self, pairs: Sequence[Pair], progress: ProgressFn) -> DistillTerms:
        losses = [distillation_loss(s, t, self.temperature) for s, t in pairs]
        return DistillTerms(sum(losses) / len(losses))


_BURN_HINT = "the weight of BURN's KL term; 1 - it weighs the feature similarity term"


@register_loss
class BurnDistillation(DistillLoss):
    """BURN's feature similarity + KL mix (:func:`~s2bnn_plugin.methods.distillation.burn_loss`)
    with the KL weight moved from ``burn_lambda_start`` to ``burn_lambda_end`` over the
    optimiser steps, views paired across as BURN does (crop i against the teacher's crop i + 1:
    (0, 1) and (1, 0) for two crops). Logs each term and the weight."""

    name = "burn"
    summary = "BURN's feature similarity + KL mix"
    teacher_offset = 1
    settings_are = "BURN's weight schedule"
    #: BURN's configs: the KL weight from 0.1 to 0.3
    settings = (
        Setting(
            "burn_lambda_start",
            0.1,
            "BURN's KL weight at the first optimiser step",
            numbers=Range(0, 1),
            hint=_BURN_HINT,
        ),
        Setting(
            "burn_lambda_end",
            0.3,
            "BURN's KL weight at the last optimiser step",
            numbers=Range(0, 1),
            hint=_BURN_HINT,
        ),
    )

    def __init__(self, temperature: float, method_kwargs: Mapping[str, Any]) -> None:
        super().__init__(temperature, method_kwargs)
        self.kl_weights = (
            float(method_kwargs["burn_lambda_start"]),
            float(method_kwargs["burn_lambda_end"]),
        )

    def kl_weight(self, progress: Progress | None) -> float:
        """BURN's KL weight at ``progress`` (the start value outside a trainer)."""
        start, end = self.kl_weights
        if progress is None:
            return start
        return burn_lambda(progress.step, progress.total, start, end)

    def __call__(self, pairs: Sequence[Pair], progress: ProgressFn) -> DistillTerms:
        lam = self.kl_weight(progress())
        parts = [burn_loss(s, t, lam, self.temperature) for s, t in pairs]
        n = len(parts)
        loss = sum(p.loss for p in parts) / n
        return DistillTerms(
            loss,
            {
                "train_burn_feature_loss": sum(p.feature for p in parts) / n,
                "train_burn_kl_loss": sum(p.kl for p in parts) / n,
                "train_burn_lambda": torch.tensor(lam, device=loss.device),
            },
        )
