"""Models to evaluate: a solo-learn checkpoint (PyTorch engine) or a packed file (CPU engine).

A solo-learn ``.ckpt`` holds no architecture, only weights; the run's ``args.json``, which
solo-learn writes beside it, names the backbone and its keyword arguments. The backbone is
rebuilt from those, the ``backbone.`` weights are loaded with ``strict=True`` (solo-learn's own
``main_linear`` loads with ``strict=False``, which silently skips misnamed weights), and
checkpoints are read with ``weights_only=True`` (no pickled code runs).

The packed engine lives in ``s2bnn_plugin.runtime`` (packing a checkpoint in memory in
``s2bnn_plugin.packing``), imported only when it is asked for.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from s2bnn_plugin.errors import FileMissing, S2BNNError, UsageError
from s2bnn_plugin.evaluation.features import FeatureExtractor, TorchExtractor
from s2bnn_plugin.memory import require_memory

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "EVAL_ENGINES",
    "is_checkpoint",
    "load_engines",
    "load_solo_backbone",
    "require_engine_memory",
]

#: Files read as solo-learn checkpoints; anything else is taken for a packed network file.
CHECKPOINT_SUFFIXES = (".ckpt",)
#: ``s2bnn eval --engine``: what computes the features (the packed CPU engine, PyTorch, both, or
#: ``auto``: see :func:`load_engines`); not the packed network's kernel choice (numba / numpy).
EVAL_ENGINES = ("auto", "packed", "torch", "both")


def is_checkpoint(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix in CHECKPOINT_SUFFIXES


def load_solo_backbone(ckpt: str | os.PathLike[str]) -> nn.Module:
    """The eval-mode backbone of a solo-learn checkpoint (``args.json`` beside it)."""
    from s2bnn_plugin.checkpoints import load_backbone

    return load_backbone(ckpt)[0]


def _load_packed(path: Path) -> FeatureExtractor:
    """:func:`s2bnn_plugin.runtime.load`, imported when called."""
    try:
        from s2bnn_plugin.runtime import load
    except ImportError as e:
        raise _no_packed_engine(e) from e
    return load(path)


def _pack(module: nn.Module) -> FeatureExtractor:
    """:func:`s2bnn_plugin.packing.pack`, imported when called."""
    try:
        from s2bnn_plugin.packing import pack
    except ImportError as e:
        raise _no_packed_engine(e) from e
    return pack(module)


def _no_packed_engine(e: ImportError) -> S2BNNError:
    return S2BNNError(
        f"the packed engine needs s2bnn_plugin.runtime and its Numba kernels ({e}); use "
        "--engine torch with a solo-learn checkpoint meanwhile"
    )


def load_engines(
    model: str | os.PathLike[str], engine: str = "auto"
) -> tuple[dict[str, FeatureExtractor], list[str]]:
    """Feature extractors by engine name for ``model``, and notes on choices made.

    A packed file runs on the ``packed`` engine only (it holds no float weights). A checkpoint
    runs on ``torch``, on ``packed`` (packed in memory), or ``both``; ``auto`` means ``packed``
    for a packed file and ``both`` for a checkpoint, falling back to ``torch`` alone when the
    backbone cannot be packed (e.g. a real-valued teacher).
    """
    if engine not in EVAL_ENGINES:
        raise UsageError(f"engine must be one of {EVAL_ENGINES}, got {engine!r}")
    path = Path(model)
    if not path.is_file():
        raise FileMissing(f"model file {path} does not exist")
    if not is_checkpoint(path):
        if engine in ("torch", "both"):
            raise UsageError(
                f"{path} is a packed network (no float weights): the torch engine needs the "
                f"solo-learn checkpoint ({'/'.join(CHECKPOINT_SUFFIXES)}) it was packed from"
            )
        return {"packed": _load_packed(path)}, []
    module = load_solo_backbone(path)
    engines: dict[str, FeatureExtractor] = {"torch": TorchExtractor(module)}
    notes: list[str] = []
    if engine in ("packed", "both"):
        engines["packed"] = _pack(module)
    elif engine == "auto":
        try:
            engines["packed"] = _pack(module)
        except (RuntimeError, ValueError, TypeError) as e:  # not packable, or no kernels
            notes.append(f"torch engine only: {e}")
    if engine == "packed":
        del engines["torch"]
    return engines, notes


def require_engine_memory(engines: dict[str, FeatureExtractor], batch: int, size: int) -> None:
    """Refuse (:class:`~s2bnn_plugin.memory.MemoryLimitError`) a batch the engines cannot hold:
    the packed engine's buffers for ``batch`` images of ``size`` px, and a PyTorch engine's
    forward when the packed network (its maps) is there to estimate it."""
    packed = engines.get("packed")
    if packed is None:
        return
    from s2bnn_plugin.runtime import PackedNetwork

    if not isinstance(packed, PackedNetwork):
        return
    cost = 4 * batch * packed.in_channels * size * size + packed.memory_needed(batch, size, size)
    if "torch" in engines:
        cost += packed.model.float_forward_bytes(batch, size, size)
    require_memory(cost, f"features of --batch-size {batch} images of --size {size} px")
