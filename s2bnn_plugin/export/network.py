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

NaN inputs: a NaN pixel makes NaN every float value it reaches through the stem and the residual
paths (sign bits read NaN as -1, like ``torch.where(x >= 0, 1, -1)``), so that image's features
come out NaN, as in the PyTorch model; the other images of the batch are unaffected.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from s2bnn_plugin.export import reference as ref
from s2bnn_plugin.export.format import check_arrays, read_packed, validate, write_packed

__all__ = ["KernelCall", "PackedNetwork", "UnitCall", "load"]

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


def _aligned(a: np.ndarray, align: int = 64) -> np.ndarray:
    """A C-contiguous copy of ``a`` whose data starts on an ``align``-byte boundary."""
    raw = np.empty(a.nbytes + align, np.uint8)
    start = (-raw.ctypes.data) % align
    out = raw[start : start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def _identity_activation(channels: int) -> np.ndarray:
    """RPReLU parameters that change nothing (shift 0, slope 1, shift 0)."""
    act = np.zeros((3, channels), np.float32)
    act[1] = 1
    return act


def _pools_residual(unit: dict, i: int, pool_out: list[bool]) -> bool:
    """Whether unit ``i`` averages its residual's 2x2 windows itself: an average-pooled
    residual that the unit before did not already write pooled (``pool_out``)."""
    return unit["residual"] == "avgpool" and not (i > 0 and pool_out[i - 1])


@dataclass(frozen=True)
class UnitCall:
    """One binary unit's kernel call, by name: :meth:`fused_args` are the arguments of
    :func:`~s2bnn_plugin.kernels.binary_conv_fused` (the whole unit), :meth:`conv_args` those of
    :func:`~s2bnn_plugin.kernels.binary_conv_acc` on the same input (its binary convolution
    alone: exact int32 accumulations), which the benchmark times beside it."""

    bits: np.ndarray  # packed input signs (groups, n, h + 2 pad, w + 2 pad, words)
    n: int
    h: int
    w: int
    in_channels: int
    kernel: int
    stride: int
    weight: np.ndarray  # kernels.kernel_weights layout
    wsum: np.ndarray  # kernels.tap_sums
    groups: int
    group_channels: int
    params: np.ndarray  # (6, C): weight scale, BatchNorm multiplier and offset, RPReLU
    residual: np.ndarray  # flat NHWC float32, group_channels channels
    pooled: bool  # the unit averages the residual's 2x2 windows itself
    out: np.ndarray  # the output float map (its 2x2 average with pool_out)
    thresholds: np.ndarray  # (T, C): the next layer's RSign shifts
    out_pad: int  # zero border of the packed output (the next kernel's padding)
    out_bits: np.ndarray  # the next layer's packed signs
    pool_out: bool  # writes only the output map's 2x2 average
    blocks_per_job: int  # blocks of output positions per parallel job

    @property
    def out_channels(self) -> int:
        return self.groups * self.group_channels

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        """(n, ho, wo, C) of the convolution's output (padding ``kernel // 2``)."""
        k, s, pad = self.kernel, self.stride, self.kernel // 2
        ho, wo = (self.h + 2 * pad - k) // s + 1, (self.w + 2 * pad - k) // s + 1
        return self.n, ho, wo, self.out_channels

    def fused_args(self) -> tuple:
        """The arguments of ``binary_conv_fused``, in its order."""
        return (
            self.bits, self.n, self.h, self.w, self.in_channels, self.kernel, self.stride,
            self.weight, self.wsum, self.groups, self.group_channels, self.params, self.residual,
            self.pooled, self.out, self.thresholds, self.out_pad, self.out_bits, self.pool_out,
            self.blocks_per_job,
        )  # fmt: skip

    def conv_args(self, out: np.ndarray) -> tuple:
        """The arguments of ``binary_conv_acc`` over the same input and weights, writing its
        int32 accumulations (:attr:`out_shape`, flat or not) to ``out``."""
        return (
            self.bits, self.n, self.h, self.w, self.in_channels, self.kernel, self.stride,
            self.weight, self.wsum, self.groups, self.group_channels, self.blocks_per_job, out,
        )  # fmt: skip


@dataclass
class KernelCall:
    """One compiled call of the forward pass: ``fn(*args)``; for a binary unit, ``unit`` is its
    index and ``binary`` its arguments by name (``args`` is ``binary.fused_args()``)."""

    name: str
    fn: Any
    args: tuple
    unit: int | None = None
    binary: UnitCall | None = None


@dataclass
class _Unit:
    """Runtime view of one binary unit (arrays ready for the kernels)."""

    spec: dict
    prefix: str
    weight: np.ndarray
    wsum: np.ndarray
    params: np.ndarray  # (6, C): affine rows then RPReLU rows, as the fused kernel reads them
    thr_next: np.ndarray  # the next unit's RSign shifts (T, C); T = 0 for the last unit
    pad_next: int
    proj_weight: np.ndarray | None
    proj_affine: np.ndarray | None

    @property
    def cout(self) -> int:
        return self.spec["groups"] * self.spec["group_channels"]


class PackedNetwork:
    """A packed ``reactnet_a`` / ``reactnet18``: ``net(x)`` -> features; ``save``; ``load``."""

    def __init__(self, spec: dict, arrays: dict[str, np.ndarray]) -> None:
        validate(spec)
        check_arrays(spec, arrays)
        self.spec = spec
        self.arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
        self._lock = threading.Lock()
        self._workspaces: dict[tuple[int, int, int], dict] = {}
        self._units: list[_Unit] | None = None

    def __getstate__(self) -> dict:
        """Picklable (e.g. for worker processes): only the specification and the arrays."""
        return {"spec": self.spec, "arrays": self.arrays}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["spec"], state["arrays"])

    # -- description -----------------------------------------------------------------------
    @property
    def backbone(self) -> str:
        return self.spec["backbone"]["name"]

    @property
    def backbone_kwargs(self) -> dict[str, Any]:
        return dict(self.spec["backbone"]["kwargs"])

    @property
    def in_channels(self) -> int:
        return self.spec["in_channels"]

    @property
    def num_features(self) -> int:
        return self.spec["num_features"]

    @property
    def nbytes(self) -> int:
        """Bytes of all arrays (the file adds a few hundred bytes of zip and JSON)."""
        return sum(a.nbytes for a in self.arrays.values())

    def __repr__(self) -> str:
        return (
            f"PackedNetwork({self.backbone}, {len(self.spec['units'])} binary units, "
            f"{self.num_features}-d features, {self.nbytes / 1e6:.2f} MB)"
        )

    def describe(self) -> str:
        """One line per layer: what the kernels will run."""
        stem = self.spec["stem"]
        lines = [
            f"stem: conv {stem['kernel']}x{stem['kernel']}/{stem['stride']} "
            f"{self.in_channels}->{stem['out_channels']} + BN"
            + (" + maxpool 3x3/2" if stem["maxpool"] else "")
        ]
        for i, u in enumerate(self.spec["units"]):
            cout = u["groups"] * u["group_channels"]
            groups = f" ({u['groups']} x {u['group_channels']})" if u["groups"] > 1 else ""
            lines.append(
                f"unit {i:2d} {u['name']}: binary {u['kernel']}x{u['kernel']}/{u['stride']} "
                f"{u['in_channels']}->{cout}{groups}, residual {u['residual']}"
                + (", RPReLU" if u["activation"] else "")
            )
        lines.append(f"global average pool -> {self.num_features}")
        return "\n".join(lines)

    # -- file ------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, *, force: bool = False) -> Path:
        """Write one self-describing file (see :mod:`s2bnn_plugin.export.format`); an existing
        ``path`` is replaced only with ``force``."""
        return write_packed(path, self.spec, self.arrays, force=force)

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
    def _runtime_units(self) -> list[_Unit]:
        if self._units is None:
            from s2bnn_plugin.kernels import LANES, kernel_weights, tap_sums

            if LANES != ref.LANES:
                raise RuntimeError("kernels and file format disagree on the block width")
            units = []
            specs = self.spec["units"]
            for i, u in enumerate(specs):
                p = f"units.{i}."
                k, cin, g, cg = u["kernel"], u["in_channels"], u["groups"], u["group_channels"]
                blocks = g * ((cg + LANES - 1) // LANES)
                stored = self.arrays[p + "weight"]
                wsum = tap_sums(stored, blocks, k * k, (cin + 63) // 64, cin)
                weight = _aligned(kernel_weights(stored, cin))
                cout = g * cg
                nxt = specs[i + 1] if i + 1 < len(specs) else None
                units.append(
                    _Unit(
                        spec=u,
                        prefix=p,
                        weight=weight,
                        wsum=wsum,
                        params=np.concatenate(
                            [
                                self.arrays[p + "affine"],
                                self.arrays.get(p + "activation", _identity_activation(cout)),
                            ]
                        ),
                        thr_next=(
                            self.arrays[f"units.{i + 1}.rsign"]
                            if nxt
                            else np.zeros((0, cout), np.float32)
                        ),
                        pad_next=nxt["kernel"] // 2 if nxt else 0,
                        proj_weight=self.arrays.get(p + "proj_weight"),
                        proj_affine=self.arrays.get(p + "proj_affine"),
                    )
                )
            self._units = units
        return self._units

    def _pools_output(self, h: int, w: int) -> list[bool]:
        """Per unit: whether it writes only the 2x2 average of its output map -- all that the
        next unit reads of it when that unit's residual is average-pooled (a quarter of the
        bytes; the next layer's signs come from the registers either way)."""
        from s2bnn_plugin.kernels import pools_output

        specs = self.spec["units"]
        shapes = self.shapes(h, w)
        out: list[bool] = []
        for i, u in enumerate(specs[:-1]):
            hh, ww, c = shapes[i]
            pooled = _pools_residual(u, i, out)
            t_sets = self.arrays[f"units.{i + 1}.rsign"].shape[0]
            fits = pools_output(
                c, u["group_channels"], u["kernel"], u["stride"], t_sets, pooled, hh, ww
            )
            out.append(specs[i + 1]["residual"] == "avgpool" and bool(fits))
        return [*out, False]

    def shapes(self, h: int, w: int) -> list[tuple[int, int, int]]:
        """(H, W, C) of the stem output and of every unit's output for an ``h`` x ``w`` input."""
        stem = self.spec["stem"]
        k, s, p = stem["kernel"], stem["stride"], stem["padding"]
        h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        if stem["maxpool"]:
            h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        shapes = [(h, w, stem["out_channels"])]
        for u in self.spec["units"]:
            k, s = u["kernel"], u["stride"]
            h, w = (h + 2 * (k // 2) - k) // s + 1, (w + 2 * (k // 2) - k) // s + 1
            shapes.append((h, w, u["groups"] * u["group_channels"]))
        return shapes

    def images_per_pass(self, h: int, w: int) -> int:
        """Images per pass: as many as keep the float maps in cache, and at least one per
        thread -- every compiled call then splits its work by image first (its jobs are split
        evenly between the threads), so that at batch > 1 each thread works on whole images of
        its own and a pass's fork-and-joins are shared by as many images as there are threads."""
        import numba

        largest = max(hh * ww * c for hh, ww, c in self.shapes(h, w)) * 4
        return max(numba.get_num_threads(), CACHE_BYTES // max(1, largest))

    def _buffers(self, n: int, h: int, w: int) -> dict:
        key = (n, h, w)
        if key in self._workspaces:
            return self._workspaces[key]
        shapes = self.shapes(h, w)
        specs = self.spec["units"]
        buf: dict[str, Any] = {}
        sh, sw, sc = shapes[0]
        if self.spec["stem"]["maxpool"]:
            stem = self.spec["stem"]
            k, s, p = stem["kernel"], stem["stride"], stem["padding"]
            ch, cw = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
            buf["stem_conv"] = np.empty(n * ch * cw * sc, np.float32)
        # Each unit reads one float map and writes the next: two buffers, used in turn, hold
        # them all, so the maps a forward pass touches stay few and warm in cache.
        buf["pool_out"] = self._pools_output(h, w)
        pooled = [False, *buf["pool_out"]]  # maps[i + 1] is unit i's output
        sizes = [
            n * (hh // 2) * (ww // 2) * c if pool else n * hh * ww * c
            for (hh, ww, c), pool in zip(shapes, pooled)
        ]
        pair = [_aligned(np.empty(max(sizes[j::2]), np.float32)) for j in range(2)]
        buf["maps"] = [pair[i % 2][:size] for i, size in enumerate(sizes)]
        bits = []
        for i, u in enumerate(specs):
            hh, ww, c = shapes[i]
            p = u["kernel"] // 2
            bits.append(
                np.zeros(
                    u["groups"] * n * (hh + 2 * p) * (ww + 2 * p) * ((c + 63) // 64), np.uint64
                )
            )
        bits.append(np.zeros(0, np.uint64))
        buf["bits"] = bits
        buf["proj"] = [
            np.empty(n * shapes[i + 1][0] * shapes[i + 1][1] * shapes[i + 1][2], np.float32)
            if u["residual"] == "projection"
            else None
            for i, u in enumerate(specs)
        ]
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
        units = self._runtime_units()
        n, _, h, w = x.shape
        shapes = self.shapes(h, w)
        buf = self._buffers(n, h, w)
        stem = self.spec["stem"]
        sw, saff = self.arrays["stem.weight"], self.arrays["stem.affine"]
        maps, bits = buf["maps"], buf["bits"]
        calls = []
        stride, pad = stem["stride"], stem["padding"]
        if stem["maxpool"]:
            conv = buf["stem_conv"]
            calls.append(KernelCall("stem", K.conv_nchw_bn, (x, sw, stride, pad, saff, conv)))
            ch = (h + 2 * pad - stem["kernel"]) // stride + 1
            cw = (w + 2 * pad - stem["kernel"]) // stride + 1
            args = (conv, n, ch, cw, shapes[0][2], maps[0])
            calls.append(KernelCall("maxpool", K.maxpool3x3s2, args))
        else:
            calls.append(KernelCall("stem", K.conv_nchw_bn, (x, sw, stride, pad, saff, maps[0])))
        hh, ww, c = shapes[0]
        first = self.spec["units"][0]
        thr = self.arrays["units.0.rsign"]
        args = (maps[0], n, hh, ww, c, thr, first["kernel"] // 2, bits[0])
        calls.append(KernelCall("pack", K.pack_signs, args))
        pool_out = buf["pool_out"]
        for i, u in enumerate(units):
            s = u.spec
            hh, ww, c = shapes[i]
            ho, wo, cout = shapes[i + 1]
            res = maps[i]
            pooled = _pools_residual(s, i, pool_out)
            if s["residual"] == "projection":
                res = buf["proj"][i]
                args = (maps[i], n, hh, ww, c, s["stride"] == 2, u.proj_weight, u.proj_affine, res)
                calls.append(KernelCall(f"{s['name']}.shortcut", K.projection_shortcut, args))
            unit = UnitCall(
                bits=bits[i],
                n=n,
                h=hh,
                w=ww,
                in_channels=c,
                kernel=s["kernel"],
                stride=s["stride"],
                weight=u.weight,
                wsum=u.wsum,
                groups=s["groups"],
                group_channels=s["group_channels"],
                params=u.params,
                residual=res,
                pooled=pooled,
                out=maps[i + 1],
                thresholds=u.thr_next,
                out_pad=u.pad_next,
                out_bits=bits[i + 1],
                pool_out=pool_out[i],
                blocks_per_job=self._blocks_per_job(n, ho * wo, c),
            )
            calls.append(
                KernelCall(s["name"], K.binary_conv_fused, unit.fused_args(), unit=i, binary=unit)
            )
        hh, ww, c = shapes[-1]
        out = np.empty((n, c), np.float32)
        calls.append(KernelCall("pool", K.global_avgpool, (maps[-1], n, hh * ww, c, out)))
        return calls, out

    def _forward_numba(self, x: np.ndarray) -> np.ndarray:
        import numba

        # The call list depends only on the input's shape and the thread count (the buffers are
        # kept per shape): built once, only the input itself is swapped in.
        n, _, h, w = x.shape
        buf = self._buffers(n, h, w)
        key = ("plan", numba.get_num_threads())
        if key not in buf:
            buf[key] = self.kernel_calls(x)
        calls, out = buf[key]
        first = calls[0]
        calls[0] = dataclasses.replace(first, args=(x, *first.args[1:]))  # the stem's input
        for call in calls:
            call.fn(*call.args)
        return out

    def to_torch(self):
        """The float PyTorch twin of this packed network (see :mod:`.unpack`)."""
        from s2bnn_plugin.export.unpack import unpack

        return unpack(self)

    # -- numpy engine ----------------------------------------------------------------------
    def _forward_numpy(self, x: np.ndarray) -> np.ndarray:
        feats, _ = self.trace_numpy(x)
        return feats

    def trace_numpy(self, x: np.ndarray) -> tuple[np.ndarray, list[dict[str, np.ndarray]]]:
        """Numpy forward that also returns, per unit, its input ``bits``, exact integer
        accumulations ``acc`` (N, Ho, Wo, C) and output map ``out`` (for tests and ``check``)."""
        x = self.check_input(x)
        a = self.arrays
        stem = self.spec["stem"]
        cur = ref.conv_nchw_bn(
            x, a["stem.weight"], stem["stride"], stem["padding"], a["stem.affine"]
        )
        if stem["maxpool"]:
            cur = ref.maxpool3x3s2(cur)
        trace = []
        for i, u in enumerate(self.spec["units"]):
            p = f"units.{i}."
            bits = ref.pack_signs(cur, a[p + "rsign"], u["kernel"] // 2)
            residual = cur
            if u["residual"] == "projection":
                residual = ref.projection_shortcut(
                    cur, u["stride"] == 2, a[p + "proj_weight"], a[p + "proj_affine"]
                )
            acc, cur = ref.binary_unit(bits, u, a, p, residual)
            trace.append({"bits": bits, "acc": acc, "out": cur})
        return ref.global_avgpool(cur), trace


def load(path: str | os.PathLike) -> PackedNetwork:
    """Read a file written by :meth:`PackedNetwork.save` (validated; see ``format``)."""
    spec, arrays = read_packed(path)
    return PackedNetwork(spec, arrays)
