"""The packed runtime: a bit-packed binary student on the CPU alone (numpy + Numba, no PyTorch).

``load(path)`` reads a ``.s2bnn`` file (format: :mod:`s2bnn_plugin.runtime.format`) into a
:class:`PackedNetwork`; ``net(x)`` maps a float32 NCHW numpy batch to (N, num_features)
features; ``net.save(path)`` writes it back. ``net.model`` is the network's typed model
(:mod:`s2bnn_plugin.runtime.model`: the stem and the units, one module per unit kind in
:mod:`s2bnn_plugin.runtime.units`), which the engine (:mod:`.network`), the numpy reference
(:mod:`.reference`), the float twin and the exporters read. Packing a PyTorch backbone needs
torch and lives in :mod:`s2bnn_plugin.packing`; the kernels are :mod:`s2bnn_plugin.kernels`.

Nothing in this package imports torch or OpenVINO (an import-linter contract), and importing it
compiles nothing.
"""

from __future__ import annotations

from s2bnn_plugin.runtime.format import FORMAT, FORMAT_VERSION, PackedFormatError
from s2bnn_plugin.runtime.model import PackedModel
from s2bnn_plugin.runtime.network import PackedNetwork, load

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "PackedFormatError",
    "PackedModel",
    "PackedNetwork",
    "load",
]
