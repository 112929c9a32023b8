"""The distillation losses of ``method=s2bnn`` (no solo-learn needed here).

``kl`` (S2-BNN's guided distribution calibration, :func:`distillation_loss`): teacher and
student predictions are L2-normalised, divided by a temperature T and turned into distributions;
the loss is the soft cross-entropy ``-sum softmax(t/T) * log_softmax(s/T)`` averaged over the
batch, i.e. KL(teacher || student) plus the teacher's (constant) entropy.

``burn`` (BURN, Kim & Choi, CVPR 2022, :func:`burn_loss`): per image,
``(1 - lambda) * ||s/|s| - t/|t|||^2 + lambda * KL(softmax(t/T) || softmax(s/T))``, averaged
over the batch, with lambda moved from a start to an end value along a half cosine
(:func:`burn_lambda`). As in BURN's code (naver-ai/burn, ``KLDivMSEMovingLambdaHead`` and
``BURNHook``) the KL term takes the raw predictions over T (not L2-normalised first, unlike
``kl``) and is the true KL divergence (it is 0 when the distributions agree).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BurnLoss",
    "CalibrationStats",
    "DistillationHead",
    "burn_lambda",
    "burn_loss",
    "calibration_stats",
    "distillation_loss",
]


def _log_probs(x: torch.Tensor, temperature: float) -> torch.Tensor:
    return F.log_softmax(F.normalize(x.float(), dim=1) / temperature, dim=1)


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float = 0.2
) -> torch.Tensor:
    """Soft cross-entropy of the student's distribution against the teacher's (batch mean)."""
    if student.shape != teacher.shape:
        raise ValueError(
            f"student prediction {tuple(student.shape)} and teacher prediction "
            f"{tuple(teacher.shape)} must have the same shape"
        )
    target = _log_probs(teacher.detach(), temperature).exp()
    return -(target * _log_probs(student, temperature)).sum(dim=1).mean()


@dataclass(frozen=True)
class BurnLoss:
    """BURN's loss of one student/teacher pair and its two terms (batch means)."""

    loss: torch.Tensor  # (1 - lam) * feature + lam * kl
    feature: torch.Tensor  # mean squared distance of the L2-normalised predictions
    kl: torch.Tensor  # mean KL(softmax(teacher / T) || softmax(student / T))


def burn_loss(
    student: torch.Tensor, teacher: torch.Tensor, lam: float, temperature: float = 0.2
) -> BurnLoss:
    """BURN's feature similarity + KL mix with weight ``lam`` on the KL term (see the module
    docstring); the teacher is a target (no gradient reaches it)."""
    if student.shape != teacher.shape:
        raise ValueError(
            f"student prediction {tuple(student.shape)} and teacher prediction "
            f"{tuple(teacher.shape)} must have the same shape"
        )
    s, t = student.float(), teacher.detach().float()
    feature = (F.normalize(s, dim=1) - F.normalize(t, dim=1)).pow(2).sum(dim=1).mean()
    log_t = F.log_softmax(t / temperature, dim=1)
    log_s = F.log_softmax(s / temperature, dim=1)
    kl = (log_t.exp() * (log_t - log_s)).sum(dim=1).mean()
    return BurnLoss(loss=(1.0 - lam) * feature + lam * kl, feature=feature, kl=kl)


def burn_lambda(step: int, total_steps: int, start: float, end: float) -> float:
    """BURN's weight of the KL term at optimiser step ``step`` of ``total_steps``: from
    ``start`` at step 0 to ``end`` at the last, along a half cosine (``BURNHook``)."""
    if total_steps <= 0:
        return end
    done = min(max(step / total_steps, 0.0), 1.0)
    return end - (end - start) * (math.cos(math.pi * done) + 1.0) / 2.0


@dataclass(frozen=True)
class CalibrationStats:
    """How well the student's distribution matches the teacher's (the paper's calibration view)."""

    agreement: torch.Tensor  # fraction of images whose top-1 "class" is the same
    teacher_entropy: torch.Tensor  # mean entropy of the teacher's distributions (nats)
    student_entropy: torch.Tensor


@torch.no_grad()
def calibration_stats(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float = 0.2
) -> CalibrationStats:
    ls, lt = _log_probs(student, temperature), _log_probs(teacher, temperature)
    return CalibrationStats(
        agreement=(ls.argmax(1) == lt.argmax(1)).float().mean(),
        teacher_entropy=-(lt.exp() * lt).sum(1).mean(),
        student_entropy=-(ls.exp() * ls).sum(1).mean(),
    )


class DistillationHead(nn.Sequential):
    """The student's MLP head: backbone features to the teacher's prediction dimension
    (Linear - BN - ReLU - Linear, the shape of the MoCo v2 / SimCLR projectors)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__(
            nn.Linear(in_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )
