"""A bit-packed binary backbone that runs on the CPU alone (numpy + Numba, no PyTorch).

``net(x)`` maps a float32 NCHW batch to (N, num_features) float32 features. The Python layer
checks the input and owns the buffers; every layer is one compiled call:

    stem conv + BN [+ max pool] -> pack signs -> for each binary unit: fused XOR-popcount
    convolution + scale + BN + residual + RPReLU + next layer's signs -> global average pool

A batch is processed a few images at a time so that the float maps stay in cache, and all the
float maps of a pass live in two buffers used in turn (each unit reads one map and writes the
next): a pass touches two maps' worth of memory instead of all of them, 1.2-1.3x faster end to
end. A unit whose output only a pooled residual reads (the one before each stride-2 unit) writes
just its 2x2 average, a quarter of the bytes. The buffers of the last input shapes are kept for
the next call.

The engine knows no unit kind: it sizes the buffers from the model
(:meth:`~s2bnn_plugin.runtime.model.NetworkLayout.workspace`) and each unit builds its own
compiled calls on them (``Unit.engine_calls``; the binary convolution's in
:mod:`s2bnn_plugin.runtime.units.binary_conv`).

NaN inputs: a NaN pixel makes NaN every float value it reaches through the stem and the residual
paths (sign bits read NaN as -1, like ``torch.where(x >= 0, 1, -1)``), so that image's features
come out NaN, as in the PyTorch model; the other images of the batch are unaffected.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from s2bnn_plugin.errors import S2BNNError
from s2bnn_plugin.memory import require_memory
from s2bnn_plugin.runtime import reference as ref
from s2bnn_plugin.runtime.calls import KernelCall, UnitInput, UnitIO, UnitOutput
from s2bnn_plugin.runtime.format import read_packed, spec_of, write_packed
from s2bnn_plugin.runtime.model import PackedModel, UnitTrace, Workspace

__all__ = ["KernelVariantError", "PackedNetwork", "kernel_variant", "load"]

NETWORK_ENGINES = ("numba", "numpy")
CACHE_BYTES = 6 << 20  # float maps of one pass of images should fit well inside L2 + L3

_log = logging.getLogger(__name__)


@functools.cache
def _announce_compilation() -> None:
    """Say so, once per process, before the first call compiles the kernels (once per install
    or upgrade; later processes load the cached machine code): otherwise the first packed run
    just stalls."""
    from s2bnn_plugin.kernels.cache import FIRST_COMPILE, cache_dir, compiled_in

    if compiled_in() is None:
        _log.warning(
            "compiling the packed engine's CPU kernels for this machine: %s, once per install "
            "or upgrade (cached in %s)",
            FIRST_COMPILE,
            cache_dir(),
        )


@dataclass
class _Pass:
    """The compiled calls of one pass of images on a :class:`_Buffers`: the stem's, which takes
    each new input, and the rest bound once to the buffers (:meth:`KernelCall.bound`); ``out``
    holds the features they leave."""

    stem: KernelCall
    rest: list[Callable[[], Any]]
    out: np.ndarray


@dataclass
class _Buffers:
    """The allocated :class:`~s2bnn_plugin.runtime.model.Workspace` of one input shape, and the
    passes built on it (by thread count)."""

    plan: Workspace
    pool_out: tuple[bool, ...]  # per unit: it writes only its map's 2x2 average
    stem_conv: np.ndarray | None
    maps: list[np.ndarray]  # maps[0]: the stem's output; maps[i + 1]: unit i's
    bits: list[np.ndarray]  # bits[i]: unit i's packed input signs; one empty array after
    scratch: list[np.ndarray | None]
    passes: dict[int, _Pass] = field(default_factory=dict)  # by thread count


class KernelVariantError(S2BNNError, ValueError):
    """A kernel variant that this CPU cannot run, or no such variant."""


def kernel_variant(name: str | None = None) -> Any:
    """The kernel variant a packed network runs (:mod:`s2bnn_plugin.kernels.variants`): the one
    called ``name``, else the one ``S2BNN_KERNELS`` names, else the fastest this CPU runs. A
    variant the CPU cannot run is refused here, before anything is compiled."""
    from s2bnn_plugin.kernels import variants

    try:
        return variants.select(name)
    except variants.UnsupportedVariant as e:
        raise KernelVariantError(str(e)) from None


class PackedNetwork:
    """A packed binary backbone (a :class:`~s2bnn_plugin.runtime.model.PackedModel`): ``net(x)``
    -> features; ``save``; ``load``."""

    def __init__(self, model: PackedModel, *, kernels: str | None = None) -> None:
        self.model = model
        self.variant = kernel_variant(kernels)
        self._lock = threading.Lock()
        self._workspaces: dict[tuple[int, int, int], _Buffers] = {}
        self._prepared: list[Any] | None = None

    def __getstate__(self) -> dict:
        """Picklable (e.g. for worker processes): the model and the name of the kernel variant
        (each process checks that its own CPU runs it)."""
        return {"model": self.model, "kernels": self.variant.name}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["model"], kernels=state.get("kernels"))

    # -- description -----------------------------------------------------------------------
    @property
    def backbone(self) -> str:
        return self.model.backbone.name

    @property
    def backbone_kwargs(self) -> dict[str, Any]:
        return dict(self.model.backbone.kwargs)

    @property
    def in_channels(self) -> int:
        return self.model.in_channels

    @property
    def num_features(self) -> int:
        return self.model.num_features

    @property
    def nbytes(self) -> int:
        """Bytes of all arrays (the file adds a few hundred bytes of zip and JSON)."""
        return self.model.nbytes

    def __repr__(self) -> str:
        return (
            f"PackedNetwork({self.backbone}, {len(self.model.units)} binary units, "
            f"{self.num_features}-d features, {self.nbytes / 1e6:.2f} MB)"
        )

    def describe(self) -> str:
        """One line per layer: what the kernels will run."""
        lines = [self.model.stem.describe(self.in_channels)]
        lines += [f"unit {i:2d} {u.describe()}" for i, u in enumerate(self.model.units)]
        lines.append(f"global average pool -> {self.num_features}")
        return "\n".join(lines)

    # -- file ------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, *, force: bool = False) -> Path:
        """Write one self-describing file (see :mod:`s2bnn_plugin.runtime.format`); an existing
        ``path`` is replaced only with ``force``."""
        return write_packed(path, spec_of(self.model), self.model.named_arrays(), force=force)

    # -- inference -------------------------------------------------------------------------
    def check_input(self, x: Any) -> np.ndarray:
        """Validate a batch before any compiled code sees it; returns it C-contiguous."""
        c = self.in_channels
        if not isinstance(x, np.ndarray):
            raise TypeError(
                f"expected a numpy float32 array shaped (N, {c}, H, W), got {type(x).__name__}"
                " (torch tensors: x.numpy())"
            )
        if x.dtype != np.float32:
            raise ValueError(
                f"expected dtype float32, got {x.dtype} (convert with x.astype(np.float32))"
            )
        if x.ndim != 4 or x.shape[1] != c:
            raise ValueError(
                f"expected a batch shaped (N, {c}, H, W) (NCHW, {c} channels), got shape {x.shape}"
            )
        if x.shape[2] < 1 or x.shape[3] < 1:
            raise ValueError(f"expected H, W >= 1, got shape {x.shape}")
        return np.ascontiguousarray(x)

    def __call__(self, x: np.ndarray, *, engine: str = "numba") -> np.ndarray:
        """Features (N, num_features) float32 of a float32 NCHW batch.

        ``engine="numpy"`` runs the same computation without compiled code (slow; the reference
        the kernels are tested against). Threads: ``numba.set_num_threads``.
        """
        if engine not in NETWORK_ENGINES:
            raise ValueError(f"engine must be one of {NETWORK_ENGINES}, got {engine!r}")
        x = self.check_input(x)
        n = x.shape[0]
        if n == 0:
            return np.zeros((0, self.num_features), np.float32)
        if engine == "numpy":
            return self._forward_numpy(x)
        _announce_compilation()
        per_pass = self.images_per_pass(x.shape[2], x.shape[3])
        out = np.empty((n, self.num_features), np.float32)
        with self._lock:
            for start in range(0, n, per_pass):
                stop = min(n, start + per_pass)
                out[start:stop] = self._forward_numba(x[start:stop])
        return out

    # -- numba engine ----------------------------------------------------------------------
    def _prepared_units(self) -> list[Any]:
        """Every unit's arrays in the kernels' layouts (:meth:`Unit.prepare`), made once."""
        if self._prepared is None:
            self._prepared = [unit.prepare(self.variant) for unit in self.model.units]
        return self._prepared

    def _pools_output(self, h: int, w: int) -> tuple[bool, ...]:
        """Per unit: whether it writes only the 2x2 average of its output map -- all that the
        next unit reads of it when that unit reads only the average (a pooled residual; a
        quarter of the bytes; the next layer's signs come from the registers either way)."""
        units = self.model.units
        shapes = self.shapes(h, w)
        out: list[bool] = []
        for i, (unit, nxt) in enumerate(zip(units[:-1], units[1:])):
            hh, ww, _ = shapes[i]
            input_pooled = i > 0 and out[i - 1]
            fits = unit.can_pool_output(hh, ww, nxt.input_sign_sets, input_pooled)
            out.append(nxt.reads_pooled_input and fits)
        return (*out, False)

    def shapes(self, h: int, w: int) -> list[tuple[int, int, int]]:
        """(H, W, C) of the stem output and of every unit's output for an ``h`` x ``w`` input."""
        return self.model.shapes(h, w)

    def images_per_pass(self, h: int, w: int) -> int:
        """Images per pass: as many as keep the float maps in cache, and at least one per
        thread -- every compiled call then splits its work by image first (its jobs are split
        evenly between the threads), so that at batch > 1 each thread works on whole images of
        its own and a pass's fork-and-joins are shared by as many images as there are threads."""
        import numba

        largest = max(hh * ww * c for hh, ww, c in self.shapes(h, w)) * 4
        return max(numba.get_num_threads(), CACHE_BYTES // max(1, largest))

    def memory_needed(self, n: int, h: int, w: int) -> int:
        """Bytes the engine allocates for the features of ``n`` images of ``h`` x ``w`` besides
        the input: the arrays in the kernels' layouts, the buffers of at most two passes of
        images (a full one and the last, smaller one) and the features."""
        per_pass = min(n, self.images_per_pass(h, w))
        workspace = self.model.workspace(per_pass, h, w).nbytes
        return self.model.prepared_bytes + 2 * workspace + 4 * n * self.num_features

    def _buffers(self, n: int, h: int, w: int) -> _Buffers:
        from s2bnn_plugin.kernels import aligned

        key = (n, h, w)
        if key in self._workspaces:
            return self._workspaces[key]
        pool_out = self._pools_output(h, w)
        plan = self.model.workspace(n, h, w, pool_out)
        require_memory(plan.nbytes, f"the packed engine's buffers for {n} images of {h} x {w}")
        # Each unit reads one float map and writes the next: two buffers, used in turn, hold
        # them all, so the maps a forward pass touches stay few and warm in cache.
        pair = [aligned(np.empty(size, np.float32)) for size in plan.map_buffers]
        buf = _Buffers(
            plan=plan,
            pool_out=pool_out,
            stem_conv=np.empty(plan.stem_conv, np.float32) if plan.stem_conv else None,
            maps=[pair[i % 2][:size] for i, size in enumerate(plan.maps)],
            bits=[np.zeros(words, np.uint64) for words in plan.bits] + [np.zeros(0, np.uint64)],
            scratch=[np.empty(size, np.float32) if size else None for size in plan.scratch],
        )
        if len(self._workspaces) >= 2:  # a full pass and the last, smaller one
            self._workspaces.pop(next(iter(self._workspaces)))
        self._workspaces[key] = buf
        return buf

    def _blocks_per_job(self, n: int, positions: int, cin: int) -> int:
        """Blocks per parallel job (jobs never span images): as few jobs as make their number a
        multiple of the thread count. Numba splits a ``prange`` into equal parts, one per
        thread, so more jobs balance nothing; equal jobs differ by at most one block (at 14 and
        7 px a layer has only 49 and 13 blocks an image), and each job sets up its accumulator
        block once."""
        import numba

        from s2bnn_plugin.kernels import block_positions

        per_block = block_positions(cin)
        per_image = (positions + per_block - 1) // per_block
        threads = numba.get_num_threads()
        jobs = threads // math.gcd(n, threads)  # per image: n * jobs is a multiple of threads
        return max(1, -(-per_image // jobs))

    def kernel_calls(self, x: np.ndarray) -> tuple[list[KernelCall], np.ndarray]:
        """The compiled calls that compute the features of ``x`` (one pass of images), in order,
        and the array they leave the features in. Running ``call.fn(*call.args)`` for each is the
        forward pass; the benchmark re-runs single calls to time one layer."""
        from s2bnn_plugin import kernels as K

        x = self.check_input(x)
        prepared = self._prepared_units()
        n, _, h, w = x.shape
        buf = self._buffers(n, h, w)
        shapes = buf.plan.shapes
        stem, units = self.model.stem, self.model.units
        maps, bits = buf.maps, buf.bits
        calls = []
        args = (x, stem.weight, stem.stride, stem.padding, stem.affine)
        if stem.maxpool:
            calls.append(KernelCall("stem", K.conv_nchw_bn, (*args, buf.stem_conv)))
            ch, cw = stem.conv_size(h, w)
            args = (buf.stem_conv, n, ch, cw, shapes[0].c, maps[0])
            calls.append(KernelCall("maxpool", K.maxpool3x3s2, args))
        else:
            calls.append(KernelCall("stem", K.conv_nchw_bn, (*args, maps[0])))
        hh, ww, c = shapes[0]
        first = units[0]
        args = (maps[0], n, hh, ww, c, first.input_thresholds, first.input_pad, bits[0])
        calls.append(KernelCall("pack", K.pack_signs, args))
        pool_out = buf.pool_out
        for i, unit in enumerate(units):
            hh, ww, c = shapes[i]
            ho, wo, cout = shapes[i + 1]
            if i + 1 < len(units):
                thresholds, pad = units[i + 1].input_thresholds, units[i + 1].input_pad
            else:
                thresholds, pad = np.zeros((0, cout), np.float32), 0
            io = UnitIO(
                index=i,
                n=n,
                h=hh,
                w=ww,
                channels=c,
                input=UnitInput(maps[i], bits[i], i > 0 and pool_out[i - 1]),
                output=UnitOutput(maps[i + 1], bits[i + 1], thresholds, pad, pool_out[i]),
                scratch=buf.scratch[i],
                blocks_per_job=self._blocks_per_job(n, ho * wo, c),
            )
            calls.extend(unit.engine_calls(prepared[i], io))
        hh, ww, c = shapes[-1]
        out = np.empty((n, c), np.float32)
        calls.append(KernelCall("pool", K.global_avgpool, (maps[-1], n, hh * ww, c, out)))
        return calls, out

    def _forward_numba(self, x: np.ndarray) -> np.ndarray:
        import numba

        # The call list depends only on the input's shape and the thread count (the buffers are
        # kept per shape): built once. Only the stem's input changes between passes: the stem
        # goes through Numba's dispatcher, which checks the new input's type; every other call
        # reads and writes the same buffers each pass and is bound to them once.
        n, _, h, w = x.shape
        buf = self._buffers(n, h, w)
        threads = numba.get_num_threads()
        if threads not in buf.passes:
            calls, out = self.kernel_calls(x)
            buf.passes[threads] = _Pass(calls[0], [c.bound() for c in calls[1:]], out)
        one = buf.passes[threads]
        one.stem.fn(x, *one.stem.args[1:])
        for call in one.rest:
            call()
        return one.out

    # -- numpy engine ----------------------------------------------------------------------
    def _forward_numpy(self, x: np.ndarray) -> np.ndarray:
        feats, _ = self.trace_numpy(x)
        return feats

    def trace_numpy(self, x: np.ndarray) -> tuple[np.ndarray, list[UnitTrace]]:
        """Numpy forward that also returns, per unit, its input ``bits``, exact integer
        accumulations ``acc`` (N, Ho, Wo, C) and output map ``out`` (for tests and ``check``)."""
        x = self.check_input(x)
        stem = self.model.stem
        cur = ref.conv_nchw_bn(x, stem.weight, stem.stride, stem.padding, stem.affine)
        if stem.maxpool:
            cur = ref.maxpool3x3s2(cur)
        trace = []
        for unit in self.model.units:
            step = unit.reference(cur)
            trace.append(step)
            cur = step.out
        return ref.global_avgpool(cur), trace


def load(path: str | os.PathLike, *, kernels: str | None = None) -> PackedNetwork:
    """Read a file written by :meth:`PackedNetwork.save` (validated; see ``format``); ``kernels``
    forces a kernel variant (:func:`kernel_variant`)."""
    return PackedNetwork(read_packed(path), kernels=kernels)
