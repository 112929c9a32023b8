"""The typed model of a packed network: what a ``.s2bnn`` file describes, parsed and validated
once (by :mod:`.format` when a file is read, by the packer when a network is packed), then read
by attribute everywhere (the engine, the numpy reference, the float twin, the exporters).

Two levels, so that everything a network costs is known before any array is read or allocated:

- the *layout* (:class:`NetworkLayout`: the backbone it was packed from, the stem's and every
  unit's settings, no arrays) answers what its arrays are (:meth:`NetworkLayout.array_specs`,
  :attr:`~NetworkLayout.array_bytes`) and what one forward pass on an (N, C, H, W) input needs
  (:meth:`NetworkLayout.shapes`, :meth:`NetworkLayout.workspace`);
- the *model* (:class:`PackedModel`) is a layout with its arrays, as named fields of the stem
  and of every unit.

The chain is fixed: a real stem (convolution + BatchNorm, optionally a 3x3/2 max pool), binary
units, each reading the output of the one before, and a global average pool. Units come in
kinds (:mod:`s2bnn_plugin.runtime.units`); every kind subclasses :class:`UnitLayout` and
:class:`Unit` and answers for itself what the engine, the reference, the float twin and the
exporters need of it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Protocol

import numpy as np

from s2bnn_plugin.runtime.calls import ALIGN
from s2bnn_plugin.runtime.spec import PackedFormatError, need

if TYPE_CHECKING:
    from s2bnn_plugin.runtime.calls import KernelCall, UnitIO

__all__ = [
    "ArraySpec",
    "BackboneRef",
    "BatchNormValues",
    "MapShape",
    "NetworkLayout",
    "OpenVINOGraph",
    "PackedFormatError",
    "PackedModel",
    "Stem",
    "StemLayout",
    "Unit",
    "UnitLayout",
    "UnitTrace",
    "UnpackedUnit",
    "Workspace",
    "check_arrays",
    "conv_out",
    "words",
]

F32 = np.dtype(np.float32)

FLOAT_FORWARD_MAPS = 8
"""A float PyTorch model computing a packed network's maps holds, during one forward pass
without gradients, at most about this many of its largest map at once (measured: 2.6 to 6.1 for
reactnet_a and reactnet18 at 224-896 px, batch 4-32; the stem convolution's output counted
before its max pool)."""


def words(channels: int) -> int:
    """uint64 words holding one bit per channel."""
    return (channels + 63) // 64


def conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    """Output size of a convolution (or pool) over ``size`` positions."""
    return (size + 2 * pad - kernel) // stride + 1


class ArraySpec(NamedTuple):
    """The shape and dtype one array of the model must have."""

    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def check_arrays(arrays: Mapping[str, Any], specs: Mapping[str, ArraySpec], prefix: str) -> None:
    """``arrays`` (by suffix) against ``specs``: the same names, each of its dtype and shape."""
    missing = sorted(f"{prefix}{k}" for k in set(specs) - set(arrays))
    extra = sorted(f"{prefix}{k}" for k in set(arrays) - set(specs))
    need(not missing, f"arrays missing from the file: {missing[:5]}")
    need(not extra, f"unexpected arrays in the file: {extra[:5]}")
    for name, (shape, dtype) in specs.items():
        a = arrays[name]
        need(
            isinstance(a, np.ndarray) and a.dtype == dtype and a.shape == shape,
            f"array {prefix + name!r}: expected {dtype} {shape}, got "
            f"{getattr(a, 'dtype', type(a).__name__)} {getattr(a, 'shape', '')}",
        )


# ---------------------------------------------------------------------------------- backbone


@dataclass(frozen=True)
class BackboneRef:
    """The registered backbone a network was packed from: its factory's ``name`` and the
    keyword arguments (its ``BackboneConfig``) that rebuild it (the float twin does)."""

    name: str
    kwargs: dict[str, Any]


# ---------------------------------------------------------------------------------- stem


@dataclass(frozen=True)
class StemLayout:
    """The real stem: a ``kernel`` x ``kernel`` convolution (``stride``, zero ``padding``) to
    ``out_channels``, its BatchNorm, and a 3x3/2 max pool (padding 1) when ``maxpool``."""

    kernel: int
    stride: int
    padding: int
    out_channels: int
    maxpool: bool
    name: str

    def conv_size(self, h: int, w: int) -> tuple[int, int]:
        """The convolution's output size (before the max pool)."""
        k, s, p = self.kernel, self.stride, self.padding
        return conv_out(h, k, s, p), conv_out(w, k, s, p)

    def out_size(self, h: int, w: int) -> tuple[int, int]:
        h, w = self.conv_size(h, w)
        if self.maxpool:
            h, w = conv_out(h, 3, 2, 1), conv_out(w, 3, 2, 1)
        return h, w

    def array_specs(self, in_channels: int) -> dict[str, ArraySpec]:
        """By suffix: ``weight`` (cin, k, k, cout) and ``affine`` (2, cout): BatchNorm (with the
        convolution's bias folded in) as ``y * affine[0] + affine[1]``."""
        k, cout = self.kernel, self.out_channels
        return {
            "weight": ArraySpec((in_channels, k, k, cout), F32),
            "affine": ArraySpec((2, cout), F32),
        }

    def describe(self, in_channels: int) -> str:
        k = self.kernel
        return f"stem: conv {k}x{k}/{self.stride} {in_channels}->{self.out_channels} + BN" + (
            " + maxpool 3x3/2" if self.maxpool else ""
        )


@dataclass(frozen=True, eq=False)
class Stem(StemLayout):
    """The stem with its arrays (see :meth:`StemLayout.array_specs`)."""

    weight: np.ndarray
    affine: np.ndarray

    __eq__ = object.__eq__  # arrays: equal only to itself (a layout compares its settings)
    __hash__ = object.__hash__

    def arrays(self) -> dict[str, np.ndarray]:
        return {"weight": self.weight, "affine": self.affine}


# ---------------------------------------------------------------------------------- units


class UnitTrace(NamedTuple):
    """One unit in the numpy reference: its packed input signs, its exact integer
    accumulations (N, Ho, Wo, C) and its output float map (NHWC)."""

    bits: np.ndarray
    acc: np.ndarray
    out: np.ndarray


class BatchNormValues(NamedTuple):
    """An eval-mode BatchNorm that computes ``x * mul + add``."""

    mul: np.ndarray
    add: np.ndarray


class UnpackedUnit(NamedTuple):
    """A unit's values for the float twin, keyed by the names the rebuilt backbone's modules
    give them (relative to the module): ``groups`` holds one mapping per module that reads the
    unit's input (a ``ResidualBinaryConv``; ReActNet-A's concatenated 1x1 convolutions are two),
    ``activation`` the values of the activation module after the unit (``None``: none). A value
    is an array copied into the parameter or buffer of that name, or a
    :class:`BatchNormValues` set into the BatchNorm of that name."""

    groups: tuple[dict[str, np.ndarray | BatchNormValues], ...]
    activation: dict[str, np.ndarray] | None


class OpenVINOGraph(Protocol):
    """What a unit kind's OpenVINO builder gets from the exporter
    (:class:`s2bnn_plugin.exporters.openvino.Graph`): the opset module (``ops``), the float map
    (N, C, H, W) the unit reads (``cur``), and helpers for constants."""

    ops: Any
    cur: Any

    def per_channel(self, values: np.ndarray) -> Any: ...

    def affine(self, x: Any, scale: np.ndarray, shift: np.ndarray, name: str) -> Any: ...

    def bits(self, signs: np.ndarray) -> Any: ...

    def avgpool2(self, x: Any, name: str) -> Any: ...


@dataclass(frozen=True)
class UnitLayout(ABC):
    """What the specification says of one unit of some kind (no arrays). ``kind`` is the name
    the kind is registered under (:mod:`s2bnn_plugin.runtime.units`); ``name`` the layer's path
    in the backbone it was packed from."""

    kind: ClassVar[str]
    name: str
    in_channels: int

    @classmethod
    @abstractmethod
    def parse(cls, entry: Mapping[str, Any], where: str) -> UnitLayout:
        """The layout of one entry of the specification's ``units`` (a JSON object), its fields
        checked; raises :class:`PackedFormatError` naming ``where`` and the field. (The kind's
        unit class inherits it and returns the layout, without arrays.)"""

    @abstractmethod
    def to_entry(self) -> dict[str, Any]:
        """The unit's entry in the specification (what :meth:`parse` reads back)."""

    @abstractmethod
    def with_arrays(self, arrays: Mapping[str, np.ndarray], index: int) -> Unit:
        """The unit with its arrays (by suffix), checked against :meth:`array_specs` and for
        contents the kernels rely on; it is unit ``index`` of its network (named in errors)."""

    @property
    @abstractmethod
    def out_channels(self) -> int: ...

    @abstractmethod
    def out_size(self, h: int, w: int) -> tuple[int, int]:
        """Output H, W for an ``h`` x ``w`` input."""

    @abstractmethod
    def array_specs(self) -> dict[str, ArraySpec]:
        """Every array the unit owns, by suffix (``units.<i>.<suffix>`` in a file)."""

    @property
    @abstractmethod
    def input_sign_sets(self) -> int:
        """Sets of packed signs the unit reads (one per set of thresholds)."""

    @property
    @abstractmethod
    def input_pad(self) -> int:
        """The zero border of the packed signs it reads (its convolution's padding)."""

    @property
    def reads_pooled_input(self) -> bool:
        """Whether all the unit reads of its input float map is the map's 2x2 average (its
        signs come packed by the unit before): that unit may then write only the average."""
        return False

    def scratch_floats(self, n: int, h: int, w: int) -> int:
        """Floats of scratch the unit needs for ``n`` images of ``h`` x ``w`` input."""
        return 0

    def prepared_bytes(self) -> int:
        """Bytes of its arrays in the kernels' layouts (what :meth:`Unit.prepare` makes)."""
        return sum(spec.nbytes for spec in self.array_specs().values())

    def input_bits_words(self, n: int, h: int, w: int) -> int:
        """uint64 words of its packed input signs for ``n`` images of ``h`` x ``w``."""
        p = self.input_pad
        return self.input_sign_sets * n * (h + 2 * p) * (w + 2 * p) * words(self.in_channels)

    @abstractmethod
    def describe(self) -> str:
        """One line: what the kernels will run."""


class Unit(UnitLayout):
    """A unit with its arrays: what every kind answers for the engine, the numpy reference, the
    float twin and the exporters. A kind's unit class subclasses its layout class and this."""

    accepts_activation: ClassVar[bool] = False
    """Whether an activation (RPReLU) may follow the unit (:meth:`with_activation`)."""

    def with_activation(self, params: np.ndarray) -> Unit:
        """The unit followed by an RPReLU with ``params`` (3, C): shift, slope, shift."""
        raise TypeError(f"a {self.kind} unit takes no activation")

    @abstractmethod
    def arrays(self) -> dict[str, np.ndarray]:
        """Its arrays by suffix, in file order (only those it has)."""

    @property
    @abstractmethod
    def input_thresholds(self) -> np.ndarray:
        """(sets, in_channels) float32: the unit reads ``x + t >= 0`` as sign +1 (the layer
        before packs its signs with these)."""

    @abstractmethod
    def reference(self, x: np.ndarray) -> UnitTrace:
        """The unit in plain numpy on its NHWC float32 input map (:mod:`.reference`)."""

    @abstractmethod
    def prepare(self, variant: Any) -> Any:
        """Its arrays in the layouts of the kernel variant ``variant`` (once per network;
        :meth:`engine_calls` gets them)."""

    @abstractmethod
    def can_pool_output(self, h: int, w: int, next_sets: int, input_pooled: bool) -> bool:
        """Whether its kernel can write only the 2x2 average of its output map."""

    @abstractmethod
    def engine_calls(self, prepared: Any, io: UnitIO) -> list[KernelCall]:
        """The compiled calls that compute the unit on ``io``'s buffers."""

    @abstractmethod
    def unpack(self) -> UnpackedUnit:
        """Its values for the float twin (:mod:`s2bnn_plugin.packing.unpack`)."""


# ---------------------------------------------------------------------------------- network


class MapShape(NamedTuple):
    """H, W, C of a float map."""

    h: int
    w: int
    c: int


@dataclass(frozen=True)
class Workspace:
    """What one forward pass of ``images`` images allocates, in elements (float32 floats,
    uint64 words): the engine's buffers, sized from the layout alone."""

    images: int
    shapes: tuple[MapShape, ...]  # the stem's output, then every unit's
    stem_conv: int  # floats of the stem convolution's output before its max pool (0: none)
    maps: tuple[int, ...]  # floats of every float map as written (pooled: its 2x2 average)
    map_buffers: tuple[int, int]  # the two buffers the maps take turns in
    bits: tuple[int, ...]  # words of every unit's packed input signs
    scratch: tuple[int, ...]  # floats of every unit's scratch
    features: int  # floats of the output features

    @property
    def nbytes(self) -> int:
        """Bytes, with the nibble-split copy of the largest packed input that the ``avx2``
        kernels make for the layer reading it (one layer's at a time)."""
        floats = self.stem_conv + sum(self.map_buffers) + sum(self.scratch) + self.features
        split = 2 * max(self.bits, default=0)
        return 4 * floats + 8 * (sum(self.bits) + split) + 2 * ALIGN


@dataclass(frozen=True)
class NetworkLayout:
    """A packed network without its arrays: the backbone it was packed from, its input
    channels and feature size, the stem and the units in order."""

    backbone: BackboneRef
    in_channels: int
    num_features: int
    stem: StemLayout
    units: tuple[UnitLayout, ...]

    def array_specs(self) -> dict[str, ArraySpec]:
        """Every array by its name in a file (``stem.<suffix>``, ``units.<i>.<suffix>``)."""
        out = {f"stem.{k}": v for k, v in self.stem.array_specs(self.in_channels).items()}
        for i, unit in enumerate(self.units):
            out.update({f"units.{i}.{k}": v for k, v in unit.array_specs().items()})
        return out

    @property
    def array_bytes(self) -> int:
        """Bytes of all its arrays."""
        return sum(spec.nbytes for spec in self.array_specs().values())

    @property
    def prepared_bytes(self) -> int:
        """Bytes of its units' arrays in the kernels' layouts (made once, when it first runs)."""
        return sum(unit.prepared_bytes() for unit in self.units)

    def float_forward_bytes(self, n: int, h: int, w: int) -> int:
        """An upper estimate of what a float PyTorch model computing the same maps (its float
        twin, the model it was packed from) allocates for one forward pass of ``n`` images of
        ``h`` x ``w`` without gradients: :data:`FLOAT_FORWARD_MAPS` of its largest map."""
        ch, cw = self.stem.conv_size(h, w)
        largest = max(
            ch * cw * self.stem.out_channels, *(s.h * s.w * s.c for s in self.shapes(h, w))
        )
        return 4 * n * FLOAT_FORWARD_MAPS * largest

    def shapes(self, h: int, w: int) -> list[MapShape]:
        """The stem's output map and every unit's, for an ``h`` x ``w`` input."""
        h, w = self.stem.out_size(h, w)
        out = [MapShape(h, w, self.stem.out_channels)]
        for unit in self.units:
            h, w = unit.out_size(h, w)
            out.append(MapShape(h, w, unit.out_channels))
        return out

    def workspace(
        self, n: int, h: int, w: int, pooled_outputs: tuple[bool, ...] | None = None
    ) -> Workspace:
        """The engine's buffers for one pass of ``n`` images of ``h`` x ``w``. Each unit reads
        one float map and writes the next: two buffers, used in turn, hold them all.
        ``pooled_outputs`` (per unit: it writes only its map's 2x2 average; the engine decides)
        shrinks them; without it, the largest the pass can take."""
        shapes = self.shapes(h, w)
        pooled = (False, *(pooled_outputs or (False,) * len(self.units)))
        maps = tuple(
            n * (s.h // 2) * (s.w // 2) * s.c if p else n * s.h * s.w * s.c
            for s, p in zip(shapes, pooled)
        )
        stem_conv = 0
        if self.stem.maxpool:
            ch, cw = self.stem.conv_size(h, w)
            stem_conv = n * ch * cw * self.stem.out_channels
        return Workspace(
            images=n,
            shapes=tuple(shapes),
            stem_conv=stem_conv,
            maps=maps,
            map_buffers=(max(maps[0::2]), max(maps[1::2])),
            bits=tuple(u.input_bits_words(n, s.h, s.w) for u, s in zip(self.units, shapes)),
            scratch=tuple(u.scratch_floats(n, s.h, s.w) for u, s in zip(self.units, shapes)),
            features=n * shapes[-1].c,
        )


@dataclass(frozen=True, eq=False)
class PackedModel(NetworkLayout):
    """A packed network: its layout with the stem's and every unit's arrays."""

    stem: Stem
    units: tuple[Unit, ...]

    __eq__ = object.__eq__  # arrays: equal only to itself (a layout compares its settings)
    __hash__ = object.__hash__

    @classmethod
    def from_arrays(cls, layout: NetworkLayout, arrays: Mapping[str, np.ndarray]) -> PackedModel:
        """``layout`` with ``arrays`` (by their names in a file), every name, dtype and shape
        checked against :meth:`NetworkLayout.array_specs`, each unit's contents by its kind, and
        every float array for NaN and infinity; raises :class:`PackedFormatError`."""
        expected = layout.array_specs()
        missing = sorted(set(expected) - set(arrays))
        extra = sorted(set(arrays) - set(expected))
        need(not missing, f"arrays missing from the file: {missing[:5]}")
        need(not extra, f"unexpected arrays in the file: {extra[:5]}")
        stem_arrays = {k: arrays[f"stem.{k}"] for k in layout.stem.array_specs(1)}
        check_arrays(stem_arrays, layout.stem.array_specs(layout.in_channels), "stem.")
        settings = {f.name: getattr(layout.stem, f.name) for f in fields(StemLayout)}
        stem = Stem(**settings, **{k: np.ascontiguousarray(v) for k, v in stem_arrays.items()})
        units = []
        for i, unit in enumerate(layout.units):
            own = {k: arrays[f"units.{i}.{k}"] for k in unit.array_specs()}
            units.append(unit.with_arrays(own, i))
        model = cls(
            backbone=layout.backbone,
            in_channels=layout.in_channels,
            num_features=layout.num_features,
            stem=stem,
            units=tuple(units),
        )
        for layer, name, a in model.layers():
            need(
                a.dtype.kind != "f" or bool(np.isfinite(a).all()),
                f"array {name!r} (layer {layer}) holds NaN or infinity: the network it packs "
                "computes NaN; pack it again from a model without NaN or infinity in its weights "
                "and statistics (an earlier checkpoint, or a retrained model)",
            )
        return model

    def named_arrays(self) -> dict[str, np.ndarray]:
        """Every array by its name in a file, in file order."""
        out = {f"stem.{k}": v for k, v in self.stem.arrays().items()}
        for i, unit in enumerate(self.units):
            out.update({f"units.{i}.{k}": v for k, v in unit.arrays().items()})
        return out

    def layers(self) -> Iterator[tuple[str, str, np.ndarray]]:
        """``(layer name, array name, array)`` of every array, in file order."""
        for k, v in self.stem.arrays().items():
            yield self.stem.name, f"stem.{k}", v
        for i, unit in enumerate(self.units):
            for k, v in unit.arrays().items():
                yield unit.name, f"units.{i}.{k}", v

    @property
    def nbytes(self) -> int:
        """Bytes of all its arrays."""
        return sum(a.nbytes for a in self.named_arrays().values())
