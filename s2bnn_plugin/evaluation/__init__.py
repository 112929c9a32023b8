"""Evaluating frozen encoders: feature extraction, solo-learn's weighted kNN, a linear probe.

Everything works on a "feature extractor" (any callable mapping float32 NCHW numpy batches to
(N, D) features), so the packed CPU engine and PyTorch are evaluated by the same code.
"""

from s2bnn_plugin.evaluation.evaluate import (
    EvaluationResult,
    evaluate,
    evaluate_features,
    evaluate_raw_pixels,
)
from s2bnn_plugin.evaluation.features import (
    FeatureExtractor,
    TorchExtractor,
    as_extractor,
    extract_features,
)
from s2bnn_plugin.evaluation.knn import (
    KNNResult,
    knn_agreement,
    knn_classify,
    knn_scores,
    prediction_agreement,
)
from s2bnn_plugin.evaluation.linear import LinearProbeResult, linear_probe, raw_pixel_probe
from s2bnn_plugin.evaluation.models import (
    EVAL_ENGINES,
    is_checkpoint,
    load_engines,
    load_solo_backbone,
)

__all__ = [
    "EVAL_ENGINES",
    "EvaluationResult",
    "FeatureExtractor",
    "KNNResult",
    "LinearProbeResult",
    "TorchExtractor",
    "as_extractor",
    "evaluate",
    "evaluate_features",
    "evaluate_raw_pixels",
    "extract_features",
    "is_checkpoint",
    "knn_agreement",
    "knn_classify",
    "knn_scores",
    "linear_probe",
    "load_engines",
    "load_solo_backbone",
    "prediction_agreement",
    "raw_pixel_probe",
]
