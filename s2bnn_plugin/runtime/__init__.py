"""The packed runtime: a bit-packed binary student on the CPU alone (numpy + Numba, no PyTorch).

``load(path)`` reads a ``.s2bnn`` file (format: :mod:`s2bnn_plugin.runtime.format`) into a
:class:`PackedNetwork`; ``net(x)`` maps a float32 NCHW numpy batch to (N, num_features)
features; ``net.save(path)`` writes it back. Packing a PyTorch backbone needs torch and lives in
:mod:`s2bnn_plugin.packing`; the kernels are :mod:`s2bnn_plugin.kernels`.

Nothing in this package imports torch or OpenVINO (an import-linter contract), and importing it
compiles nothing.
"""

from __future__ import annotations

from s2bnn_plugin.runtime.format import FORMAT, FORMAT_VERSION, PackedFormatError
from s2bnn_plugin.runtime.network import PackedNetwork, load

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "PackedFormatError",
    "PackedNetwork",
    "load",
]
