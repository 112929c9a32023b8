"""Bit-packed XNOR-popcount kernels (Numba only). Installed as ``s2bnn_plugin.kernels``."""
