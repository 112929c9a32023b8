"""Benchmarking the packed CPU engine: timing against PyTorch fp32, where the time goes, the
float baselines and the tables (``s2bnn bench``, ``s2bnn check``, ``benchmarks/``).

Modules: :mod:`.timing` (best-of timings taken alternately, end to end, per layer, thread
scaling), :mod:`.profile` (every compiled call of the forward pass, each fused unit beside its
binary convolution alone), :mod:`.baselines` (the model with its weights binarised once, ONNX
Runtime), :mod:`.tables` (markdown), :mod:`.machine` (the CPU a run was on), :mod:`.commands`
(``s2bnn bench``).
The runtime (:mod:`s2bnn_plugin.runtime`) does not import this package.
"""
