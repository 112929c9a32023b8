"""Training objectives. ``distillation`` (the loss formulas) and ``losses`` (the registered
losses ``method_kwargs.loss`` names) need only torch; ``s2bnn`` (the solo-learn method,
imported by :func:`s2bnn_plugin.solo.register`) subclasses solo-learn's ``BaseMethod``."""

from s2bnn_plugin.methods.distillation import (
    CalibrationStats,
    DistillationHead,
    calibration_stats,
    distillation_loss,
)

__all__ = ["CalibrationStats", "DistillationHead", "calibration_stats", "distillation_loss"]
