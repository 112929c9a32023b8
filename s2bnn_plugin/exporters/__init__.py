"""Exporters of a packed network to other engines' formats (:mod:`.openvino`: an OpenVINO IR
with native ``BinaryConvolution`` layers). They need no torch."""
