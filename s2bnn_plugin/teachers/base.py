"""The frozen teacher: a real-valued network whose prediction the binary student learns to match."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from s2bnn_plugin.errors import S2BNNError

__all__ = ["Teacher", "TeacherError"]

OUTPUTS = ("projector", "backbone")


class TeacherError(S2BNNError, ValueError):
    """A teacher checkpoint that cannot be used; the message says why and what to do."""


class Teacher(nn.Module):
    """Wraps a loaded network: frozen, eval mode, no gradients, (B, 3, H, W) -> (B, D).

    ``head`` maps the network's backbone features to its prediction (the projector / MLP head);
    ``output="backbone"`` skips it.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module | None,
        output: str = "projector",
        source: str = "",
        forward_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        if output not in OUTPUTS:
            raise TeacherError(f"teacher.output must be one of {list(OUTPUTS)}, got {output!r}")
        if output == "projector" and head is None and forward_fn is None:
            raise TeacherError(
                f"the teacher from {source} has no projector/MLP head; set teacher.output=backbone"
            )
        self.backbone = backbone
        self.head = head if output == "projector" else None
        self.output = output
        self.source = source
        self._forward_fn = forward_fn
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Teacher:
        """A teacher stays in eval mode (frozen BatchNorm statistics) whatever its owner does."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._forward_fn is not None:
            return self._forward_fn(x)
        out = self.backbone(x)
        if self.head is not None:
            out = self.head(out)
        return out

    @torch.no_grad()
    def output_dim(self, image_size: int = 224) -> int:
        """Run one image through the teacher and check it predicts a (1, D) tensor."""
        param = next(self.parameters(), None)
        device = param.device if param is not None else "cpu"
        out = self(torch.zeros(1, 3, image_size, image_size, device=device))
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 1:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise TeacherError(
                f"the teacher from {self.source} outputs {shape} for one image, not a (1, D) "
                "vector the distillation head can match; choose teacher.output=backbone or "
                "another checkpoint"
            )
        return int(out.shape[1])
