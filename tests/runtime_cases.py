"""Packed files, inputs and features for checking the runtime elsewhere (needs the full install).

:func:`write_cases` packs small trained-like backbones (``reactnet_a``, ``reactnet18`` and
``TinyReActNet``, a backbone built from the plugin's blocks), with odd and non-square input
sizes (zero-padded borders at every stride), narrow (at most 32 channels) and wide (over 64)
layers, and stores, per case, the packed file, its input batch and the features this machine's
Numba engine computes. ``runtime_probe.py`` reads the folder where only numpy, Numba and the
plugin are installed (a venv without torch, an aarch64 root) and compares bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from runtime_probe import MANIFEST
from test_pack_rules import TinyReActNet, randomised

from s2bnn_plugin.backbones import create_backbone
from s2bnn_plugin.backbones.base import BackboneConfig
from s2bnn_plugin.packing import pack


class Case(NamedTuple):
    """One packed backbone and the input batch (n, 3, h, w) it is run on."""

    name: str
    backbone: str
    kwargs: dict
    batch: int
    height: int
    width: int


CASES = (
    # stem 10 channels (narrow), up to 307 (wide); 45 x 39: odd at every stride
    Case("a_odd", "reactnet_a", {"width_mult": 0.3}, 2, 45, 39),
    Case("a_cifar", "reactnet_a", {"width_mult": 0.25, "cifar": True}, 1, 17, 32),
    Case("r18_odd", "reactnet18", {"width_mult": 0.25}, 2, 37, 41),
    # full width: 64 to 512 channels, 15 x 13 px maps
    Case("r18_wide", "reactnet18", {"width_mult": 1.0, "cifar": True}, 1, 15, 13),
    Case("tiny_blocks", "tiny_reactnet", {"width_mult": 0.5}, 3, 19, 21),
)
# a few seconds to pack and run on the host: what the CI test runs
QUICK = tuple(c for c in CASES if c.name in ("a_odd", "r18_odd", "tiny_blocks"))


def build(case: Case, seed: int = 0) -> torch.nn.Module:
    """The case's backbone with non-default statistics, shifts and slopes (eval mode)."""
    torch.manual_seed(seed)
    if case.backbone == "tiny_reactnet":
        model = TinyReActNet(BackboneConfig.from_kwargs(case.backbone, case.kwargs))
    else:
        model = create_backbone(case.backbone, **case.kwargs)
    return randomised(model, seed)


def write_cases(folder: Path, cases: tuple[Case, ...] = CASES) -> dict[str, np.ndarray]:
    """Pack ``cases`` into ``folder`` with ``cases.json``; returns the stored features by name."""
    folder.mkdir(parents=True, exist_ok=True)
    entries, features = [], {}
    for i, case in enumerate(cases):
        net = pack(build(case))
        net.save(folder / f"{case.name}.s2bnn")
        rng = np.random.default_rng(i)
        x = rng.standard_normal((case.batch, 3, case.height, case.width)).astype(np.float32)
        features[case.name] = net(x)
        np.save(folder / f"{case.name}.input.npy", x)
        np.save(folder / f"{case.name}.features.npy", features[case.name])
        entries.append(
            {
                "name": case.name,
                "file": f"{case.name}.s2bnn",
                "input": f"{case.name}.input.npy",
                "features": f"{case.name}.features.npy",
            }
        )
    (folder / MANIFEST).write_text(json.dumps({"cases": entries}, indent=1))
    return features
