"""The baselines the packed network is compared with besides the training model: the same model
with its weights binarised once, that model in ONNX Runtime and in OpenVINO (fp32, and bf16 where
the CPU runs it natively), and the packed network exported as an OpenVINO BinaryConvolution IR."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from s2bnn_plugin.exporters.openvino import (
    OpenVINOMissing,
    build_openvino_model,
    compile_openvino,
    require_openvino,
    runtime_layer_types,
)
from s2bnn_plugin.runtime import PackedNetwork

__all__ = [
    "OpenVINOBaseline",
    "onnx_export",
    "onnx_session",
    "openvino_baselines",
    "openvino_binary",
    "prebinarised",
]


def prebinarised(model: nn.Module) -> nn.Module:
    """A copy whose binary convolutions hold ``sign(w) * mean|w|`` as plain weights.

    The training model re-binarises every weight on each forward (cheap next to a training
    step, but a large share of a batch-1 inference); this copy computes the same features with
    that work done once -- the fairer float baseline for inference speed.
    """
    import copy

    from s2bnn_plugin.nn import QuantConv2d

    twin = copy.deepcopy(model).eval()
    with torch.no_grad():
        for m in twin.modules():
            if isinstance(m, QuantConv2d) and m.kernel_quantizer is not None:
                m.weight.copy_(m.quantized_weight())
                m.kernel_quantizer = None
    return twin


def onnx_export(model: nn.Module, size: int) -> tuple[bytes | None, str]:
    """``model`` (eval mode) as an ONNX graph (``torch.onnx.export``, TorchScript exporter, a
    dynamic batch axis), or ``None`` and the reason; the second item names the runtime."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None, "onnxruntime not installed (pip install 's2bnn-plugin[bench]')"
    import warnings

    buf = io.BytesIO()
    x = torch.zeros(1, 3, size, size)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model.eval(),
                (x,),
                buf,
                dynamo=False,
                input_names=["x"],
                output_names=["features"],
                dynamic_axes={"x": {0: "batch"}},
                opset_version=17,
            )
    except Exception as e:  # any exporter failure only drops the column
        return None, f"torch.onnx.export failed: {type(e).__name__}: {e}"
    return buf.getvalue(), f"onnxruntime {ort.__version__}"


def onnx_session(graph: bytes, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """An ONNX Runtime CPU session (fp32, default graph optimisations, ``threads`` intra-op
    threads) of an :func:`onnx_export` graph, as a callable on NCHW float32 batches."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
    return lambda xn: session.run(None, {"x": xn})[0]


@dataclass(frozen=True)
class OpenVINOBaseline:
    """One OpenVINO engine of the benchmark: ``make(batch, threads)`` compiles it for that
    batch (the 1-bit IR has static shapes) and returns a callable on NCHW float32 batches."""

    name: str
    make: Callable[[int, int], Callable[[np.ndarray], np.ndarray]]


def openvino_binary(packed: PackedNetwork, size: int) -> tuple[OpenVINOBaseline | None, str]:
    """``packed`` exported as a BinaryConvolution IR and run by OpenVINO (one stream, the latency
    hint), and the primitive OpenVINO picked for its binary convolutions on this CPU (its
    instruction set, e.g. ``jit_avx2_u1``: ``ONEDNN_MAX_CPU_ISA`` caps it); or None and why not."""
    try:
        require_openvino()
    except OpenVINOMissing as e:
        return None, str(e)

    def binary(batch: int, threads: int) -> Callable[[np.ndarray], np.ndarray]:
        compiled = compile_openvino(
            build_openvino_model(packed, size, batch=batch), threads=threads
        )
        return lambda xn: compiled(xn)[0]

    compiled = compile_openvino(build_openvino_model(packed, size, batch=1), threads=1)
    primitives = sorted(
        {prim for _, kind, prim in runtime_layer_types(compiled) if kind == "BinaryConvolution"}
    )
    return OpenVINOBaseline("OpenVINO 1-bit IR", binary), ", ".join(primitives)


def openvino_baselines(
    float_model: nn.Module, packed: PackedNetwork, size: int
) -> tuple[list[OpenVINOBaseline], list[str]]:
    """OpenVINO fp32 and bf16 of ``float_model`` (``ov.convert_model``; bf16 only where the CPU
    lists it among its optimisation capabilities) and ``packed`` exported as a BinaryConvolution
    IR (f32 epilogue), all with one stream, the latency hint and ``threads`` inference threads;
    and why any of them is left out."""
    try:
        ov = require_openvino()
    except OpenVINOMissing as e:
        return [], [str(e)]
    x = torch.zeros(1, packed.in_channels, size, size)
    converted = ov.convert_model(float_model.eval(), example_input=x)
    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    version = ov.get_version().split("-")[0]

    def float_engine(precision: str) -> Callable[[int, int], Callable[[np.ndarray], np.ndarray]]:
        def make(batch: int, threads: int) -> Callable[[np.ndarray], np.ndarray]:
            model = converted.clone()
            model.reshape([batch, packed.in_channels, size, size])
            compiled = compile_openvino(model, threads=threads, precision=precision)
            return lambda xn: compiled(xn)[0]

        return make

    def binary(batch: int, threads: int) -> Callable[[np.ndarray], np.ndarray]:
        compiled = compile_openvino(
            build_openvino_model(packed, size, batch=batch), threads=threads
        )
        return lambda xn: compiled(xn)[0]

    engines = [OpenVINOBaseline(f"OpenVINO {version} fp32", float_engine("f32"))]
    skipped = []
    if "BF16" in caps:
        engines.append(OpenVINOBaseline(f"OpenVINO {version} bf16", float_engine("bf16")))
    else:
        skipped.append(f"OpenVINO bf16 skipped: this CPU's capabilities are {caps} (no BF16)")
    engines.append(OpenVINOBaseline(f"OpenVINO {version} 1-bit IR", binary))
    return engines, skipped
