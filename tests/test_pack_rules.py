"""Packing by rules for blocks: the built-in backbones' output is unchanged, a backbone written
by a user (here, in this test) packs exactly, and a module without a rule is refused by name.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from torch import nn

from s2bnn_plugin.backbones import create_backbone
from s2bnn_plugin.export import PackedNetwork, pack

# ------------------------------------------------------------------------- byte compatibility


def dyadic_model(name: str, kwargs: dict, seed: int = 0) -> nn.Module:
    """A backbone whose every parameter and statistic is a small multiple of 1/16 or 1/8.

    Sums of such values are exact in float32 in any order, so the packed arrays (weight scales
    ``mean |w|``, folded BatchNorms) do not depend on the CPU's vector width: their digests below
    are the same on every machine.
    """
    g = torch.Generator().manual_seed(seed)
    model = create_backbone(name, **kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randint(-16, 17, p.shape, generator=g).float() / 16)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                mean = torch.randint(-8, 9, m.running_mean.shape, generator=g).float() / 8
                m.running_mean.copy_(mean)
                m.running_var.copy_(torch.randint(2, 17, m.running_var.shape, generator=g) / 8)
    return model.eval()


def packed_digest(net: PackedNetwork) -> str:
    """SHA-256 of the spec JSON (as the file writes it) and of every array, in file order."""
    h = hashlib.sha256(json.dumps(net.spec, sort_keys=True).encode())
    for name, a in net.arrays.items():
        h.update(f"{name}|{a.dtype.str}|{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


# Digests of the packer's output at commit 653d3d1, before packing went by rules for blocks
# (the class-by-class packer). A change here is a change of the file format's contents.
GOLDEN = {
    ("reactnet_a", '{"width_mult": 0.25, "cifar": true}'): (
        "0d0aaaff903ed4ae4c82afcd186bdda7f6deeff447b24376b9adb8d97313dd1e"
    ),
    ("reactnet_a", '{"width_mult": 0.3, "activation_ste": "ste_sign"}'): (
        "bd2c06e2b505c6e44be582dfce710357896b1a9f75c1cbd41a5cd26eac63271c"
    ),
    ("reactnet18", '{"width_mult": 0.25}'): (
        "c3a5704cf5f391b410e6da7ef973a97a481e2c25233906cf4feb66693cf38e14"
    ),
    ("reactnet18", '{"width_mult": 0.2, "cifar": true}'): (
        "00a7184d1f4226022f440e49e4c639922c523d0a0616fdb34c3bd226a9972a78"
    ),
}


@pytest.mark.parametrize("name,kwargs", list(GOLDEN))
def test_builtin_backbones_pack_to_the_same_spec_and_arrays_as_before(name, kwargs):
    net = pack(dyadic_model(name, json.loads(kwargs)))
    assert packed_digest(net) == GOLDEN[name, kwargs]
