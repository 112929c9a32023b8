"""Guided distribution calibration, S2-BNN's objective (no solo-learn needed here).

Teacher and student predictions are L2-normalised, divided by a temperature T and turned into
distributions; the loss is the soft cross-entropy ``-sum softmax(t/T) * log_softmax(s/T)``
averaged over the batch, i.e. KL(teacher || student) plus the teacher's (constant) entropy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CalibrationStats", "DistillationHead", "calibration_stats", "distillation_loss"]


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
