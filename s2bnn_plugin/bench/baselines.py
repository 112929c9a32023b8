"""The float baselines the packed network is compared with besides the training model: the
same model with its weights binarised once, and that model in ONNX Runtime."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

__all__ = ["onnx_export", "onnx_session", "prebinarised"]


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
