"""The residual binary convolution unit (kind ``binary_conv``), the unit every built-in backbone
is made of::

    y = BN(scale * conv(sign(x + shift), sign(W))) + residual(x)     [then RPReLU(y)]

- ``kernel`` 1 or 3 (zero padding ``kernel // 2``), ``stride`` 1 or 2;
- ``groups`` convolutions (up to 8) read the same input, each with its own thresholds and
  ``group_channels`` outputs, concatenated (ReActNet-A's paired 1x1 convolutions are 2 groups);
- the residual (:class:`Residual`): the input itself, its 2x2 average (stride 2), or a 1x1
  projection + BatchNorm (after a 2x2 average at stride 2; one group only);
- an optional RPReLU (shift, per-channel slope, shift).

Arrays (``units.<i>.<suffix>`` in a file): ``weight`` uint64, the kernels' block layout of the
sign bits (``kernels.pack_weights``; bit set = -1); ``rsign`` (groups, in_channels) the
thresholds; ``affine`` (3, C) weight scale and BatchNorm ``y * a + b``; ``activation`` (3, C)
RPReLU; ``proj_weight`` (in_channels, C) and ``proj_affine`` (2, C) for a projection.

This module is the kind's one home: its layout and arrays, its numpy reference, its compiled
calls (the one place the engine calls the binary convolution kernels), its values for the float
twin and its OpenVINO graph. It imports neither torch nor OpenVINO (the exporter hands it the
opset's helpers).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import numpy as np

from s2bnn_plugin.runtime import reference as ref
from s2bnn_plugin.runtime.calls import ALIGN, KernelCall, UnitCall, UnitIO
from s2bnn_plugin.runtime.model import (
    F32,
    ArraySpec,
    BatchNormValues,
    OpenVINOGraph,
    Unit,
    UnitLayout,
    UnitTrace,
    UnpackedUnit,
    check_arrays,
    conv_out,
    words,
)
from s2bnn_plugin.runtime.spec import (
    MAX_CHANNELS,
    need,
    spec_bool,
    spec_choice,
    spec_int,
)

__all__ = [
    "CHANNEL_MULTIPLE",
    "KIND",
    "LANES",
    "RESIDUALS",
    "BinaryConv",
    "BinaryConvKernels",
    "BinaryConvLayout",
    "Residual",
]

KIND = "binary_conv"
LANES = ref.LANES  # output channels per weight block (the kernels' block width)
MAX_GROUPS = 8
CHANNEL_MULTIPLE = 8  # OpenVINO's BinaryConvolution counts correctly only for these in_channels


class Residual(enum.Enum):
    """What the unit adds to its convolution's output: its input (``identity``, stride 1), the
    input's 2x2 average (``avgpool``, stride 2; ceil mode, windows cut by the border average what
    they hold), or a 1x1 projection + BatchNorm of it (``projection``, after a 2x2 average at
    stride 2). The values are the specification's names."""

    IDENTITY = "identity"
    AVGPOOL = "avgpool"
    PROJECTION = "projection"


RESIDUALS = tuple(r.value for r in Residual)


@dataclass(frozen=True)
class BinaryConvLayout(UnitLayout):
    """A residual binary convolution unit's settings (see the module's docstring)."""

    kind: ClassVar[str] = KIND
    kernel: int
    stride: int
    groups: int
    group_channels: int
    residual: Residual
    has_activation: bool

    @classmethod
    def parse(cls, entry: Mapping[str, Any], where: str) -> BinaryConvLayout:
        kernel = spec_choice(entry, "kernel", where, (1, 3))
        stride = spec_choice(entry, "stride", where, (1, 2))
        cin = spec_int(entry, "in_channels", where, 1, MAX_CHANNELS)
        groups = spec_int(entry, "groups", where, 1, MAX_GROUPS)
        cg = spec_int(entry, "group_channels", where, 1, MAX_CHANNELS)
        activation = spec_bool(entry, "activation", f"{where}: 'activation' must be bool")
        residual = entry.get("residual")
        need(residual in RESIDUALS, f"{where}: 'residual' must be one of {RESIDUALS}")
        residual = Residual(residual)
        if residual is Residual.IDENTITY:
            need(
                stride == 1 and cin == cg,
                f"{where}: an identity residual needs stride 1 and in_channels == group_channels",
            )
        elif residual is Residual.AVGPOOL:
            need(
                stride == 2 and cin == cg,
                f"{where}: an avgpool residual needs stride 2 and in_channels == group_channels",
            )
        else:
            need(groups == 1, f"{where}: a projection residual needs groups == 1")
        return BinaryConvLayout(
            name=entry["name"],
            in_channels=cin,
            kernel=kernel,
            stride=stride,
            groups=groups,
            group_channels=cg,
            residual=residual,
            has_activation=activation,
        )

    def to_entry(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kernel": self.kernel,
            "stride": self.stride,
            "in_channels": self.in_channels,
            "groups": self.groups,
            "group_channels": self.group_channels,
            "residual": self.residual.value,
            "activation": self.has_activation,
        }

    @property
    def out_channels(self) -> int:
        return self.groups * self.group_channels

    @property
    def blocks(self) -> int:
        """Weight blocks of :data:`LANES` output channels (each group padded to whole blocks)."""
        return self.groups * ((self.group_channels + LANES - 1) // LANES)

    def out_size(self, h: int, w: int) -> tuple[int, int]:
        k, s = self.kernel, self.stride
        return conv_out(h, k, s, k // 2), conv_out(w, k, s, k // 2)

    def array_specs(self) -> dict[str, ArraySpec]:
        k, cin, cout = self.kernel, self.in_channels, self.out_channels
        specs = {
            "weight": ArraySpec((self.blocks * k * k * words(cin) * LANES,), np.dtype(np.uint64)),
            "rsign": ArraySpec((self.groups, cin), F32),
            "affine": ArraySpec((3, cout), F32),
        }
        if self.has_activation:
            specs["activation"] = ArraySpec((3, cout), F32)
        if self.residual is Residual.PROJECTION:
            specs["proj_weight"] = ArraySpec((cin, cout), F32)
            specs["proj_affine"] = ArraySpec((2, cout), F32)
        return specs

    @property
    def input_sign_sets(self) -> int:
        return self.groups

    @property
    def input_pad(self) -> int:
        return self.kernel // 2

    @property
    def reads_pooled_input(self) -> bool:
        return self.residual is Residual.AVGPOOL

    def scratch_floats(self, n: int, h: int, w: int) -> int:
        """A projection's output map (the residual the fused kernel adds)."""
        if self.residual is not Residual.PROJECTION:
            return 0
        ho, wo = self.out_size(h, w)
        return n * ho * wo * self.out_channels

    def prepared_bytes(self) -> int:
        """The weights in the kernels' layout (64-byte aligned; over 32 input channels the
        largest any kernel variant makes, ``avx2``'s nibble-split words, twice the stored
        bytes), their tap sums (int64 per tap and lane) and the (6, C) epilogue parameters."""
        k = self.kernel
        split = 2 if self.in_channels > 32 else 1
        weight = split * self.array_specs()["weight"].nbytes + ALIGN
        return weight + 8 * k * k * self.blocks * LANES + 4 * 6 * self.out_channels

    def pools_residual(self, input_pooled: bool) -> bool:
        """Whether the unit averages its residual's 2x2 windows itself: an average-pooled
        residual whose map the unit before did not already write pooled."""
        return self.residual is Residual.AVGPOOL and not input_pooled

    def describe(self) -> str:
        k, g = self.kernel, self.groups
        groups = f" ({g} x {self.group_channels})" if g > 1 else ""
        return (
            f"{self.name}: binary {k}x{k}/{self.stride} {self.in_channels}->"
            f"{self.out_channels}{groups}, residual {self.residual.value}"
            + (", RPReLU" if self.has_activation else "")
        )

    def with_arrays(self, arrays: Mapping[str, np.ndarray], index: int) -> BinaryConv:
        prefix = f"units.{index}."
        check_arrays(arrays, self.array_specs(), prefix)
        settings = {f.name: getattr(self, f.name) for f in dataclasses.fields(BinaryConvLayout)}
        unit = BinaryConv(**settings, **{k: np.ascontiguousarray(v) for k, v in arrays.items()})
        unit.check_contents(index)
        return unit


class BinaryConvKernels(NamedTuple):
    """A unit's arrays in the kernels' layouts (:meth:`BinaryConv.prepare`)."""

    weights: Any  # kernels.BinaryWeights: the variant's layout and the padding correction
    params: np.ndarray  # (6, C): affine rows then RPReLU rows, as the fused kernel reads them


def _identity_activation(channels: int) -> np.ndarray:
    """RPReLU parameters that change nothing (shift 0, slope 1, shift 0)."""
    act = np.zeros((3, channels), np.float32)
    act[1] = 1
    return act


def _sign_threshold(shift: np.ndarray) -> np.ndarray:
    """The FakeQuantize threshold ``t`` with ``x > t`` exactly when ``x + shift >= 0``."""
    return np.nextafter(-shift.astype(np.float32), np.float32(-np.inf))


@dataclass(frozen=True, eq=False)
class BinaryConv(BinaryConvLayout, Unit):
    """A residual binary convolution unit with its arrays (see the module's docstring)."""

    weight: np.ndarray
    rsign: np.ndarray
    affine: np.ndarray
    activation: np.ndarray | None = None
    proj_weight: np.ndarray | None = None
    proj_affine: np.ndarray | None = None

    __eq__ = object.__eq__  # arrays: equal only to itself (a layout compares its settings)
    __hash__ = object.__hash__
    accepts_activation: ClassVar[bool] = True

    def arrays(self) -> dict[str, np.ndarray]:
        named = {
            "weight": self.weight,
            "rsign": self.rsign,
            "affine": self.affine,
            "activation": self.activation,
            "proj_weight": self.proj_weight,
            "proj_affine": self.proj_affine,
        }
        return {k: v for k, v in named.items() if v is not None}

    def with_activation(self, params: np.ndarray) -> BinaryConv:
        """The unit followed by an RPReLU with ``params`` (3, C)."""
        return dataclasses.replace(self, has_activation=True, activation=params)

    def check_contents(self, index: int) -> None:
        """Padding bits and lanes are zero (they would count), thresholds are finite (the
        kernels compare against ``-shift``)."""
        k, cin, g, cg = self.kernel, self.in_channels, self.groups, self.group_channels
        bpg = (cg + LANES - 1) // LANES
        wt = self.weight.reshape(g, bpg, k * k, words(cin), LANES)
        if cin % 64:
            mask = np.uint64((1 << (cin % 64)) - 1)
            need(
                not np.any(wt[..., -1, :] & ~mask),
                f"unit {index}: weight bits set past in_channels (corrupted file?)",
            )
        if cg % LANES:
            need(
                not np.any(wt[:, -1, :, :, cg % LANES :]),
                f"unit {index}: weights set in padding lanes (corrupted file?)",
            )
        name = f"units.{index}.rsign"
        need(
            bool(np.isfinite(self.rsign).all()),
            f"array {name!r} (unit {index}'s sign thresholds) holds NaN or infinity: the "
            "model's RSign shifts are broken; fix or retrain the model and pack it again",
        )

    # -- what it computes -------------------------------------------------------------------
    @property
    def input_thresholds(self) -> np.ndarray:
        return self.rsign

    def signs(self) -> np.ndarray:
        """The weights as +-1 float64 (groups * group_channels, in_channels, k, k)."""
        return ref.unpack_weights(
            self.weight, self.kernel, self.in_channels, self.groups, self.group_channels
        )

    def reference(self, x: np.ndarray) -> UnitTrace:
        bits = ref.pack_signs(x, self.rsign, self.input_pad)
        residual = x
        if self.residual is Residual.PROJECTION:
            residual = ref.projection_shortcut(
                x, self.stride == 2, self.proj_weight, self.proj_affine
            )
        acc = ref.binary_conv(bits, self.signs(), self.kernel, self.stride, self.in_channels)
        aff = self.affine
        y = acc.astype(np.float32) * aff[0]
        y = y * aff[1] + aff[2]
        if self.residual is Residual.AVGPOOL:
            residual = ref.avgpool2(residual)
        y = y + np.concatenate([residual] * self.groups, axis=-1)
        if self.has_activation:
            act = self.activation
            y = y + act[0]
            y = np.where(y > 0, y, y * act[1])
            y = y + act[2]
        return UnitTrace(bits, acc, y)

    # -- the engine ---------------------------------------------------------------------------
    def prepare(self, variant: Any) -> BinaryConvKernels:
        from s2bnn_plugin.kernels import LANES as KERNEL_LANES
        from s2bnn_plugin.kernels import binary_weights

        if KERNEL_LANES != LANES:
            raise RuntimeError("kernels and file format disagree on the block width")
        k, cin, g, cg = self.kernel, self.in_channels, self.groups, self.group_channels
        activation = self.activation
        if activation is None:
            activation = _identity_activation(self.out_channels)
        params = np.concatenate([self.affine, activation])
        return BinaryConvKernels(binary_weights(self.weight, cin, k, g, cg, variant), params)

    def can_pool_output(self, h: int, w: int, next_sets: int, input_pooled: bool) -> bool:
        from s2bnn_plugin.kernels import pools_output

        pooled = self.pools_residual(input_pooled)
        cin, cg, k, s = self.in_channels, self.group_channels, self.kernel, self.stride
        return bool(pools_output(cin, cg, k, s, next_sets, pooled, h, w))

    def engine_calls(self, prepared: BinaryConvKernels, io: UnitIO) -> list[KernelCall]:
        """[the projection shortcut,] the fused unit: XOR-popcount convolution, scale,
        BatchNorm, residual, RPReLU and the next layer's signs in one call."""
        from s2bnn_plugin import kernels as K

        calls = []
        residual = io.input.map
        if self.residual is Residual.PROJECTION:
            residual = io.scratch
            args = (io.input.map, io.n, io.h, io.w, io.channels, self.stride == 2)
            args += (self.proj_weight, self.proj_affine, residual)
            calls.append(KernelCall(f"{self.name}.shortcut", K.projection_shortcut, args))
        shape = K.ConvShape(
            n=io.n, h=io.h, w=io.w, cin=io.channels, k=self.kernel, stride=self.stride,
            groups=self.groups, cg=self.group_channels,
        )  # fmt: skip
        out = K.FusedOutput(
            prm=prepared.params, res=residual, pooled=self.pools_residual(io.input.pooled),
            z=io.output.map, thr=io.output.thresholds, opad=io.output.pad, obits=io.output.bits,
            pool_out=io.output.pooled,
        )  # fmt: skip
        unit = UnitCall(
            bits=io.input.bits,
            shape=shape,
            weights=prepared.weights,
            unit=out,
            blocks_per_job=io.blocks_per_job,
        )
        fused = KernelCall(
            self.name, K.binary_conv_fused, unit.fused_args(), unit=io.index, binary=unit
        )
        calls.append(fused)
        return calls

    # -- the float twin -----------------------------------------------------------------------
    def unpack(self) -> UnpackedUnit:
        """Per group, its ``ResidualBinaryConv``'s values: latent weights ``sign * scale`` (the
        binary convolution's effective weight exactly), the RSign shift, the BatchNorm, the
        projection shortcut; and the RPReLU's."""
        signs = self.signs().astype(np.float32)
        cg = self.group_channels
        groups = []
        for g in range(self.groups):
            sl = slice(g * cg, (g + 1) * cg)
            values: dict[str, np.ndarray | BatchNormValues] = {
                "conv.weight": signs[sl] * self.affine[0, sl][:, None, None, None],
                "conv.input_quantizer.shift.bias": self.rsign[g],
                "bn": BatchNormValues(self.affine[1, sl], self.affine[2, sl]),
            }
            if self.residual is Residual.PROJECTION:
                values["shortcut.proj.weight"] = self.proj_weight.T[:, :, None, None]
                pa = self.proj_affine
                values["shortcut.bn"] = BatchNormValues(pa[0], pa[1])
            groups.append(values)
        activation = None
        if self.activation is not None:
            act = self.activation
            activation = {"shift_in.bias": act[0], "prelu.weight": act[1], "shift_out.bias": act[2]}
        return UnpackedUnit(tuple(groups), activation)

    # -- OpenVINO -----------------------------------------------------------------------------
    def openvino_refusal(self) -> str | None:
        """Why OpenVINO cannot run the unit exactly (``None``: it can)."""
        if self.in_channels % CHANNEL_MULTIPLE:
            return (
                f"has {self.in_channels} input channels; OpenVINO's BinaryConvolution computes "
                f"wrong sums unless they are a multiple of {CHANNEL_MULTIPLE} (choose a "
                "width_mult that gives such widths, e.g. 0.25, 0.5 or 1 for reactnet_a and "
                "reactnet18)"
            )
        return None

    def build_openvino(self, g: OpenVINOGraph) -> Any:
        """Per group: ``FakeQuantize(levels=2)`` signs (thresholds just below ``-shift``, output
        0/1) into a ``BinaryConvolution`` (``xnor-popcount``, ``pad_value=0``, 1-bit weights);
        then scale, BatchNorm, residual and RPReLU as float ops; groups concatenated."""
        ops, name, cur = g.ops, self.name, g.cur
        if self.residual is Residual.IDENTITY:
            residual = cur
        elif self.residual is Residual.AVGPOOL:
            residual = g.avgpool2(cur, f"{name}/residual_pool")
        else:
            x = g.avgpool2(cur, f"{name}/shortcut_pool") if self.stride == 2 else cur
            w = np.ascontiguousarray(self.proj_weight.T[:, :, None, None], np.float32)
            conv = ops.convolution(x, ops.constant(w), [1, 1], [0, 0], [0, 0], [1, 1])
            pa = self.proj_affine
            residual = g.affine(conv, pa[0], pa[1], f"{name}/shortcut")
        stride, cg, pad = self.stride, self.group_channels, self.kernel // 2
        signs, aff, act = self.signs(), self.affine, self.activation
        outs = []
        for j in range(self.groups):
            t = g.per_channel(_sign_threshold(self.rsign[j]))
            zero, one = ops.constant(np.float32(0)), ops.constant(np.float32(1))
            fq = ops.fake_quantize(cur, t, t, zero, one, 2, name=f"{name}/sign.{j}")
            conv = ops.binary_convolution(
                fq,
                g.bits(signs[j * cg : (j + 1) * cg]),
                [stride, stride],
                [pad, pad],
                [pad, pad],
                [1, 1],
                "xnor-popcount",
                0.0,
                name=f"{name}/binary_conv.{j}",
            )
            c = slice(j * cg, (j + 1) * cg)
            y = ops.multiply(conv, g.per_channel(aff[0, c]))
            y = g.affine(y, aff[1, c], aff[2, c], f"{name}/bn.{j}")
            y = ops.add(y, residual, name=f"{name}/residual.{j}")
            if act is not None:
                y = ops.add(y, g.per_channel(act[0, c]))
                y = ops.prelu(y, ops.constant(np.ascontiguousarray(act[1, c], np.float32)))
                y = ops.add(y, g.per_channel(act[2, c]), name=f"{name}/rprelu.{j}")
            outs.append(y)
        return outs[0] if self.groups == 1 else ops.concat(outs, 1, name=f"{name}/concat")
