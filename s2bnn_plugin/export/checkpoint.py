"""Moved to :mod:`s2bnn_plugin.checkpoints` (export, evaluation and the demo share it); kept so
that ``s2bnn_plugin.export.checkpoint.load_backbone`` goes on working."""

from s2bnn_plugin.checkpoints import load_backbone, read_args_json

__all__ = ["load_backbone", "read_args_json"]
