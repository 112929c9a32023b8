"""Parameter and operation counts of a (binary) network, counted the way BNN papers count them.

FLOPs are real multiply-accumulates (first conv, real shortcuts, classifier); BOPs are binary
multiply-accumulates (convolutions whose inputs AND weights are 1-bit); ``OPs = FLOPs + BOPs / 64``
(Bi-Real Net / ReActNet's convention, one 64-bit word per 64 binary MACs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from s2bnn_plugin.nn.layers import QuantConv2d

__all__ = ["Complexity", "count_complexity"]


@dataclass(frozen=True)
class Complexity:
    params: int
    binary_params: int
    flops: int
    bops: int

    @property
    def ops(self) -> float:
        return self.flops + self.bops / 64

    def summary(self) -> str:
        return (
            f"params {self.params / 1e6:.2f} M ({self.binary_params / 1e6:.2f} M binary), "
            f"FLOPs {self.flops / 1e8:.3f} x 10^8, BOPs {self.bops / 1e9:.3f} x 10^9, "
            f"OPs {self.ops / 1e8:.3f} x 10^8"
        )


def _is_fully_binary(module: nn.Module) -> bool:
    return isinstance(module, QuantConv2d) and module.binary_input and module.binary_kernel


@torch.no_grad()
def count_complexity(
    model: nn.Module,
    input_size: tuple[int, int, int, int] = (1, 3, 224, 224),
    num_classes: int | None = None,
) -> Complexity:
    """Count per image by running one forward pass of ``input_size``.

    ``num_classes`` adds a linear classifier on ``model.num_features`` (the papers' figures
    include the 1000-way ImageNet classifier).
    """
    counts = {"flops": 0, "bops": 0}

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            per_out = module.in_channels // module.groups * module.kernel_size[0]
            per_out *= module.kernel_size[1]
            macs = output[0].numel() * per_out
        else:
            macs = module.in_features * module.out_features
        counts["bops" if _is_fully_binary(module) else "flops"] += macs

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(input_size))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    flops = counts["flops"]
    if num_classes:
        flops += model.num_features * num_classes
    binary_params = sum(m.weight.numel() for m in model.modules() if _is_fully_binary(m))
    params = sum(p.numel() for p in model.parameters())
    return Complexity(params, binary_params, flops, counts["bops"])
