"""Building blocks of binary networks: quantizers (binarisers with their STEs) and layers."""

from s2bnn_plugin.nn.complexity import Complexity, count_complexity
from s2bnn_plugin.nn.layers import LearnableBias, QuantConv2d, RPReLU, RSign
from s2bnn_plugin.nn.quantizers import (
    QUANTIZERS,
    ApproxSign,
    Quantizer,
    ScaledSign,
    SteSign,
    binary_sign,
    get_quantizer,
    is_binary,
)

__all__ = [
    "Complexity",
    "count_complexity",
    "QUANTIZERS",
    "ApproxSign",
    "LearnableBias",
    "QuantConv2d",
    "Quantizer",
    "RPReLU",
    "RSign",
    "ScaledSign",
    "SteSign",
    "binary_sign",
    "get_quantizer",
    "is_binary",
]
