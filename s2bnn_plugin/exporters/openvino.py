"""A packed network as an OpenVINO IR whose binary convolutions are native ``BinaryConvolution``s.

``export_openvino(packed, "student.xml", size=224)`` writes ``student.xml`` and ``student.bin``
(``s2bnn export-openvino``). The graph is built from the typed model of the packed network with
OpenVINO's opset API (no PyTorch): the stem and the global pool here, each unit by its kind's
``build_openvino`` (given this module's :class:`Graph`; the residual binary convolution's is in
:mod:`s2bnn_plugin.runtime.units.binary_conv`):

- every binary convolution: ``FakeQuantize(levels=2)`` with the unit's RSign shifts as thresholds,
  output 0/1, feeding a ``BinaryConvolution`` (opset1, ``xnor-popcount``, ``pad_value=0``) with
  1-bit weight constants. A ReActNet-A unit with two groups (its concatenated 1x1 convolutions)
  is two of them, their outputs concatenated;
- the float part (stem convolution and BatchNorm, max pool, weight scale, BatchNorm, residual,
  2x2 average, projection shortcut, RPReLU, global average) in plain ``Multiply`` / ``Add`` /
  ``PReLU`` / ``AvgPool`` / ``Convolution`` / ``ReduceMean`` ops, in float32.

Facts of OpenVINO's CPU plugin (2026.4) the graph relies on, each checked by the tests:

- the sign: ``FakeQuantize`` with ``input_low == input_high == t`` gives 1 for ``x > t``. The
  packed engine's bit is +1 for ``x + shift >= 0``, i.e. ``x >= -shift`` (float32 addition keeps
  the sign of the exact sum), so ``t`` is the float32 just below ``-shift``: ``sign(0) = +1``
  exactly. Its outputs must be 0 and 1: -1 / +1 compiles, but every value then reads as bit 1;
- ``pad_value=0.0`` makes ``BinaryConvolution`` skip padded taps: exactly the packed engine's zero
  padding;
- u1 weight constants are read LSB first (``np.packbits(..., bitorder="little")``), bit 1 = +1;
- its jit kernel miscounts when a binary convolution's input channels are not a multiple of 8
  (on inputs larger than one pixel): such a network is refused, naming the layer.

The IR is built for one input shape (N, C, H, W): the CPU plugin runs ``BinaryConvolution`` only
on static shapes. The shape is recorded in the model's ``rt_info`` (``s2bnn.input_shape``);
:func:`load_openvino` compiles the IR for any batch size at that H, W and refuses other sizes
with a clear message (OpenVINO's own error is a shape-compatibility check failure).

On CPUs with AMX the plugin's default inference precision is bf16: :func:`compile_openvino`
asks for ``f32`` unless told otherwise, so the features equal the packed engine's up to float
rounding (the plugin fuses the epilogue's multiplies and adds into the convolution, rounding
differently in the last bit).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from s2bnn_plugin.errors import FileMissing, S2BNNError, UsageError
from s2bnn_plugin.exporters.base import Exporter, ExportError
from s2bnn_plugin.files import atomic_files, check_output
from s2bnn_plugin.runtime.format import FORMAT_VERSION
from s2bnn_plugin.runtime.model import Unit
from s2bnn_plugin.runtime.network import PackedNetwork, load
from s2bnn_plugin.validate import require_whole

__all__ = [
    "EXPORTER",
    "INSTALL_HINT",
    "Graph",
    "OpenVINOExport",
    "OpenVINOExportError",
    "OpenVINOExporter",
    "OpenVINOMissing",
    "OpenVINONetwork",
    "build_openvino_model",
    "compile_openvino",
    "export_openvino",
    "export_openvino_command",
    "load_openvino",
    "require_openvino",
    "runtime_layer_types",
]

INSTALL_HINT = "pip install 's2bnn-plugin[openvino]' (or: pip install openvino)"
INPUT_NAME = "x"
OUTPUT_NAME = "features"
RT_KEY = "s2bnn"  # the model's rt_info section: input_shape, backbone, format_version


class OpenVINOMissing(S2BNNError, ImportError):
    """OpenVINO is not installed (an optional extra)."""


class OpenVINOExportError(ExportError):
    """A packed network, or an input, that the OpenVINO IR cannot express or was not built for."""


def require_openvino() -> Any:
    """The ``openvino`` module, or :class:`OpenVINOMissing` saying how to install it."""
    try:
        import openvino
    except ImportError as e:
        raise OpenVINOMissing(
            f"the OpenVINO export and baseline need the openvino package ({e}); install it: "
            f"{INSTALL_HINT}"
        ) from None
    return openvino


# ------------------------------------------------------------------------------------ builders


@dataclass
class Graph:
    """What the unit builders share: the opset, the current float map (N, C, H, W) the next
    unit reads, and constant helpers (see :class:`~s2bnn_plugin.runtime.model.OpenVINOGraph`)."""

    ops: Any
    ov: Any
    cur: Any

    def per_channel(self, values: np.ndarray) -> Any:
        """A (1, C, 1, 1) float32 constant that broadcasts over N, H, W."""
        return self.ops.constant(np.ascontiguousarray(values, np.float32).reshape(1, -1, 1, 1))

    def affine(self, x: Any, scale: np.ndarray, shift: np.ndarray, name: str) -> Any:
        return self.ops.add(
            self.ops.multiply(x, self.per_channel(scale)), self.per_channel(shift), name=name
        )

    def bits(self, signs: np.ndarray) -> Any:
        """+-1 weights (cout, cin, k, k) as a u1 constant: LSB first, bit 1 = +1."""
        packed = np.packbits((signs > 0).astype(np.uint8).ravel(), bitorder="little")
        tensor = self.ov.Tensor(packed, self.ov.Shape(list(signs.shape)), self.ov.Type.u1)
        return self.ov.op.Constant(tensor, shared_memory=False)  # a copy: ``packed`` goes away

    def avgpool2(self, x: Any, name: str) -> Any:
        """2x2 / 2 average, ceil mode, windows cut by the border averaging what they hold. An
        odd side is padded by one at its end (padding not averaged): OpenVINO refuses a window
        larger than a map of one pixel, which ceil mode alone would need."""
        shape = x.get_output_shape(0) if hasattr(x, "get_output_shape") else x.get_shape()
        h, w = (int(d) for d in shape[2:])
        return self.ops.avg_pool(
            x, [2, 2], [0, 0], [h % 2, w % 2], [2, 2], True, "floor", name=name
        )


class OpenVINOExporter(Exporter):
    """The OpenVINO IR target: a unit kind is built by its class's ``build_openvino(graph)``
    and refused where its ``openvino_refusal()`` says why it would not run exactly."""

    name = "OpenVINO"
    error = OpenVINOExportError

    def unit_builder(self, kind: type[Unit]) -> Callable[..., Any] | None:
        return getattr(kind, "build_openvino", None)

    def unit_refusal(self, unit: Unit) -> str | None:
        refusal = getattr(unit, "openvino_refusal", None)
        return refusal() if refusal is not None else None


EXPORTER = OpenVINOExporter()


def _input_shape(net: PackedNetwork, size: int | tuple[int, int], batch: int) -> list[int]:
    h, w = (size, size) if isinstance(size, int) else size
    for flag, v, what in (
        ("size", h, "the input height"),
        ("size", w, "the input width"),
        ("batch", batch, "the input batch"),
    ):
        require_whole(flag, v, 1, what)
    return [int(batch), net.in_channels, int(h), int(w)]


def build_openvino_model(
    net: PackedNetwork, size: int | tuple[int, int] = 224, *, batch: int = 1
) -> Any:
    """The ``openvino.Model`` of ``net`` for (batch, C, H, W) inputs (``size``: H = W, or
    (H, W)); raises :class:`OpenVINOExportError` for a network it cannot express, naming it."""
    ov = require_openvino()
    import openvino.opset13 as ops

    shape = _input_shape(net, size, batch)
    model = net.model
    EXPORTER.check_expressible(model)
    x = ops.parameter(shape, ov.Type.f32, name=INPUT_NAME)
    stem = model.stem
    s, p = stem.stride, stem.padding
    sw = np.ascontiguousarray(stem.weight.transpose(3, 0, 1, 2), np.float32)
    g = Graph(ops=ops, ov=ov, cur=None)
    cur = ops.convolution(x, ops.constant(sw), [s, s], [p, p], [p, p], [1, 1])
    cur = g.affine(cur, stem.affine[0], stem.affine[1], "stem")
    if stem.maxpool:
        cur = ops.max_pool(cur, [2, 2], [1, 1], [1, 1], [1, 1], [3, 3], name="stem/maxpool")
        cur = cur.output(0)
    for unit in model.units:
        g.cur = cur
        cur = EXPORTER.unit_builder(type(unit))(unit, g)
    axes = ops.constant(np.array([2, 3], np.int64))
    feats = ops.reduce_mean(cur, axes, False, name=OUTPUT_NAME)
    feats.output(0).get_tensor().set_names({OUTPUT_NAME})
    ir = ov.Model([feats.output(0)], [x], f"s2bnn-{net.backbone}")
    ir.set_rt_info(",".join(map(str, shape)), [RT_KEY, "input_shape"])
    ir.set_rt_info(net.backbone, [RT_KEY, "backbone"])
    ir.set_rt_info(str(FORMAT_VERSION), [RT_KEY, "format_version"])
    return ir


# ---------------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class OpenVINOExport:
    """What :func:`export_openvino` wrote."""

    xml: Path
    bin: Path
    input_shape: tuple[int, int, int, int]
    binary_convolutions: int


def export_openvino(
    packed: PackedNetwork | str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    size: int | tuple[int, int] = 224,
    batch: int = 1,
    force: bool = False,
) -> OpenVINOExport:
    """Write ``packed`` (a network or a packed file) as ``output`` (``.xml``) and the ``.bin``
    beside it. Everything is checked (openvino installed, the file's format version, every unit
    expressible, the output paths: :func:`s2bnn_plugin.files.check_output`) before anything is
    written; both files are written to a temporary folder beside them and moved into place
    together (:func:`s2bnn_plugin.files.atomic_files`), so no partial IR or lone ``.bin`` is
    ever left, and neither replaces an existing file unless ``force``."""
    xml = Path(output)
    if xml.suffix != ".xml":
        raise UsageError(f"the output must be an .xml file (its .bin goes beside it), got {xml}")
    binf = xml.with_suffix(".bin")
    inputs = [] if isinstance(packed, PackedNetwork) else [packed]
    for path in (xml, binf):
        check_output(path, force=force, option="-o", inputs=inputs)
    ov = require_openvino()
    net = packed if isinstance(packed, PackedNetwork) else load(packed)
    model = build_openvino_model(net, size, batch=batch)
    count = sum(op.get_type_name() == "BinaryConvolution" for op in model.get_ordered_ops())
    with atomic_files([xml, binf], force=force, what="s2bnn export-openvino") as (tmp_xml, _):
        ov.save_model(model, tmp_xml, compress_to_fp16=False)  # its .bin beside it
    shape = tuple(model.input(0).get_shape())
    return OpenVINOExport(xml=xml, bin=binf, input_shape=shape, binary_convolutions=count)


def export_openvino_command(
    packed: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    size: int = 224,
    batch: int = 1,
    force: bool = False,
) -> OpenVINOExport:
    """``s2bnn export-openvino FILE -o FILE.xml``: :func:`export_openvino`, then one line on what
    was written."""
    done = export_openvino(packed, output, size=size, batch=batch, force=force)
    shape = "x".join(map(str, done.input_shape))
    print(
        f"{packed} -> {done.xml} (+ {done.bin.name}): {done.binary_convolutions} "
        f"BinaryConvolution nodes, input {shape} float32 NCHW"
    )
    return done


# ---------------------------------------------------------------------------------- running


def compile_openvino(
    model: Any, *, threads: int | None = None, precision: str = "f32", device: str = "CPU"
) -> Any:
    """``model`` compiled for the CPU with ``precision`` (``f32``: the default hint is bf16 on
    CPUs with AMX), one stream and the latency hint, ``threads`` inference threads."""
    ov = require_openvino()
    config: dict[str, Any] = {
        "INFERENCE_PRECISION_HINT": precision,
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
    }
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads
    return ov.Core().compile_model(model, device, config)


def runtime_layer_types(compiled: Any) -> list[tuple[str, str, str]]:
    """(name, layer type, primitive) of every node the compiled model executes."""
    out = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()

        def get(key: str, info: Any = info) -> str:
            return info[key].astype(str) if key in info else ""

        out.append((op.get_friendly_name(), get("layerType"), get("primitiveType")))
    return out


class OpenVINONetwork:
    """An exported IR, run through OpenVINO: ``net(x)`` -> (N, num_features) features of a
    float32 NCHW batch at the size the IR was built for (any batch size: the IR is compiled
    again for each new one and kept)."""

    def __init__(self, model: Any, *, threads: int | None = None, precision: str = "f32"):
        self.model = model
        self.threads, self.precision = threads, precision
        shape = model.get_rt_info([RT_KEY, "input_shape"]).astype(str)
        self.input_shape = tuple(int(v) for v in shape.split(","))
        self._compiled: dict[int, Any] = {}

    def compiled(self, batch: int) -> Any:
        if batch not in self._compiled:
            model = self.model.clone()
            model.reshape({INPUT_NAME: [batch, *self.input_shape[1:]]})
            self._compiled[batch] = compile_openvino(
                model, threads=self.threads, precision=self.precision
            )
        return self._compiled[batch]

    def check_input(self, x: Any) -> np.ndarray:
        _, c, h, w = self.input_shape
        if not isinstance(x, np.ndarray) or x.dtype != np.float32:
            raise OpenVINOExportError(
                f"expected a numpy float32 array shaped (N, {c}, {h}, {w}), got "
                f"{getattr(x, 'dtype', type(x).__name__)}"
            )
        if x.ndim != 4 or x.shape[1:] != (c, h, w) or x.shape[0] < 1:
            raise OpenVINOExportError(
                f"this IR was built for inputs shaped (N, {c}, {h}, {w}), got {x.shape}; export "
                f"it again for another size (s2bnn export-openvino --size)"
            )
        return np.ascontiguousarray(x)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = self.check_input(x)
        return self.compiled(x.shape[0])(x)[0]


def load_openvino(
    xml: str | os.PathLike[str], *, threads: int | None = None, precision: str = "f32"
) -> OpenVINONetwork:
    """An IR written by :func:`export_openvino`, ready to run (see :class:`OpenVINONetwork`)."""
    ov = require_openvino()
    path = Path(xml)
    if not path.is_file():
        raise FileMissing(f"no OpenVINO IR at {path}")
    model = ov.Core().read_model(path)
    if not model.has_rt_info([RT_KEY, "input_shape"]):
        raise OpenVINOExportError(f"{path} was not written by s2bnn export-openvino")
    return OpenVINONetwork(model, threads=threads, precision=precision)
