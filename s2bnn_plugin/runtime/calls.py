"""What the engine (:mod:`.network`) and the unit kinds (:mod:`.units`) exchange to build a
forward pass: the compiled calls (:class:`KernelCall`), a binary convolution's kernel arguments
by name (:class:`UnitCall`), and the buffers one unit reads and writes (:class:`UnitIO`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

__all__ = ["ALIGN", "KernelCall", "UnitCall", "UnitIO", "UnitInput", "UnitOutput"]

ALIGN = 64  # bytes: every buffer the kernels stream starts on a cache line (kernels.aligned)


@dataclass(frozen=True)
class UnitCall:
    """One binary unit's kernel call, by name: :meth:`fused_args` are the arguments of
    :func:`~s2bnn_plugin.kernels.binary_conv_fused` (the whole unit), :meth:`conv_args` those of
    :func:`~s2bnn_plugin.kernels.binary_conv_acc` on the same input (its binary convolution
    alone: exact int32 accumulations), which the benchmark times beside it."""

    bits: np.ndarray  # packed input signs (groups, n, h + 2 pad, w + 2 pad, words)
    shape: Any  # kernels.ConvShape: the convolution's sizes
    weights: Any  # kernels.BinaryWeights: laid out for the network's kernel variant
    unit: Any  # kernels.FusedOutput: parameters, residual, outputs
    blocks_per_job: int  # blocks of output positions per parallel job

    @property
    def out_channels(self) -> int:
        return self.shape.groups * self.shape.cg

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        """(n, ho, wo, C) of the convolution's output (padding ``kernel // 2``)."""
        n, h, w, _, k, s = self.shape[:6]
        pad = k // 2
        ho, wo = (h + 2 * pad - k) // s + 1, (w + 2 * pad - k) // s + 1
        return n, ho, wo, self.out_channels

    def fused_args(self) -> tuple:
        """The arguments of ``binary_conv_fused``, in its order."""
        return (self.bits, self.shape, self.weights, self.unit, self.blocks_per_job)

    def conv_args(self, out: np.ndarray) -> tuple:
        """The arguments of ``binary_conv_acc`` over the same input and weights, writing its
        int32 accumulations (:attr:`out_shape`, flat or not) to ``out``."""
        return (self.bits, self.shape, self.weights, self.blocks_per_job, out)


@dataclass
class KernelCall:
    """One compiled call of the forward pass: ``fn(*args)``; for a binary unit, ``unit`` is its
    index and ``binary`` its arguments by name (``args`` is ``binary.fused_args()``)."""

    name: str
    fn: Any
    args: tuple
    unit: int | None = None
    binary: UnitCall | None = None

    def bound(self) -> Callable[[], Any]:
        """``fn(*args)`` bound to these very argument objects
        (:func:`~s2bnn_plugin.kernels.bind`): no type resolution per call, which the drivers'
        named-tuple arguments make cost 40-140 microseconds through Numba's dispatcher."""
        from s2bnn_plugin.kernels import bind

        return bind(self.fn, *self.args)


class UnitInput(NamedTuple):
    """What a unit reads: its input float map (flat NHWC) and its packed input signs (packed by
    the layer before, with this unit's thresholds and padding)."""

    map: np.ndarray
    bits: np.ndarray
    pooled: bool  # the layer before wrote only the map's 2x2 average


class UnitOutput(NamedTuple):
    """What a unit writes: its output float map and the next unit's packed input signs, with
    the next unit's thresholds (``(0, C)`` after the last unit) and padding."""

    map: np.ndarray
    bits: np.ndarray
    thresholds: np.ndarray
    pad: int
    pooled: bool  # write only the map's 2x2 average (all the next unit reads of it)


@dataclass(frozen=True)
class UnitIO:
    """The buffers of one unit in one pass of ``n`` images, its input ``h`` x ``w`` x
    ``channels``, its own scratch (or ``None``) and its share of the parallel jobs."""

    index: int
    n: int
    h: int
    w: int
    channels: int
    input: UnitInput
    output: UnitOutput
    scratch: np.ndarray | None
    blocks_per_job: int
