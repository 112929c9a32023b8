"""The random states a checkpoint must hold for a resumed run to equal an uninterrupted one.

Lightning saves weights, optimiser, schedulers and loop counters, but not the Python, NumPy and
torch (CPU and CUDA) random states. Those decide the data order (``RandomSampler`` draws its seed
from torch's), the seeds of data-loader workers (drawn from torch's when an epoch's iterator is
created) and every augmentation run in the main process. :func:`capture` returns them as plain
tensors, lists and numbers, which ``torch.load(..., weights_only=True)`` reads back without
pickle; :func:`restore` sets them again.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["FORMAT_VERSION", "capture", "restore"]

FORMAT_VERSION = 1


def capture() -> dict[str, Any]:
    """This process's random states, as plain tensors, lists and numbers."""
    version, mt_state, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)  # noqa: NPY002
    state: dict[str, Any] = {
        "version": FORMAT_VERSION,
        "python": {"version": version, "state": list(mt_state), "gauss_next": gauss_next},
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
    }
    return state


def restore(state: dict[str, Any]) -> None:
    """Set this process's random states to ``state`` (from :func:`capture`)."""
    if state.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"random states of format {state.get('version')!r}; this version reads {FORMAT_VERSION}"
        )
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(v) for v in py["state"]), py["gauss_next"]))
    npy = state["numpy"]
    np.random.set_state(  # noqa: NPY002 (the global state is what augmentations use)
        (
            npy["name"],
            npy["keys"].numpy().astype(np.uint32),
            int(npy["pos"]),
            int(npy["has_gauss"]),
            float(npy["cached_gaussian"]),
        )
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
