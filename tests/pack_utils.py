"""Test helpers: a packed network's integer accumulations against PyTorch's, unit by unit; a model
as a solo-learn run's checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from s2bnn_plugin import kernels as K
from s2bnn_plugin.backbones.blocks import ResidualBinaryConv
from s2bnn_plugin.nn import binary_sign
from s2bnn_plugin.runtime import PackedNetwork


def assert_accumulations_exact(model: nn.Module, net: PackedNetwork, x: torch.Tensor) -> None:
    """Fed PyTorch's own input, each packed unit's integer sums equal F.conv2d on +-1 tensors."""
    inputs: dict[str, torch.Tensor] = {}
    hooks = [
        m.register_forward_pre_hook(lambda mod, args, name=name: inputs.__setitem__(name, args[0]))
        for name, m in model.named_modules()
        if isinstance(m, ResidualBinaryConv)
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    modules = dict(model.named_modules())
    for u in net.model.units:
        m = modules[u.name]
        grouped = isinstance(m, nn.ModuleList)  # ReActNet-A's 1x1: a list of 1 or 2 units
        names = [f"{u.name}.{j}" for j in range(len(m))] if grouped else [u.name]
        xin = inputs[names[0]]
        expected = []
        for name in names:
            conv = modules[name].conv
            signs = binary_sign(conv.input_quantizer.shift(xin))
            expected.append(
                F.conv2d(signs, binary_sign(conv.weight), None, conv.stride, conv.padding)
            )
        expected = torch.cat(expected, 1).permute(0, 2, 3, 1).numpy().astype(np.int64)
        n, c, _, _ = xin.shape
        k, g, cg = u.kernel, u.groups, u.group_channels
        pad = k // 2
        h, w = xin.shape[2:]
        per = n * (h + 2 * pad) * (w + 2 * pad) * K.words_for(c)
        bits = np.zeros(g * per, np.uint64)
        xn = np.ascontiguousarray(xin.permute(0, 2, 3, 1).numpy()).ravel()
        rsign = u.rsign
        for j in range(g):
            part = np.zeros(per, np.uint64)
            K.pack_signs(xn, n, h, w, c, np.ascontiguousarray(rsign[j : j + 1]), pad, part)
            bits[j * per : (j + 1) * per] = part
        wt = u.weight
        wsum = K.tap_sums(wt, g * ((cg + K.LANES - 1) // K.LANES), k * k, K.words_for(c), c)
        out = np.zeros(expected.shape, np.int32)
        V = K.select_variant()
        wk = K.kernel_weights(wt, c, k, V)
        shape = K.ConvShape(n, h, w, c, k, u.stride, g, cg)
        K.binary_conv_acc(bits, shape, K.BinaryWeights(wk, wsum, V), 1, out)
        np.testing.assert_array_equal(out, expected, err_msg=u.name)


def as_trained(model: nn.Module, seed: int) -> nn.Module:
    """``model`` with non-default BatchNorm statistics, shifts and RPReLU slopes drawn from
    ``seed``, as after training (eval mode): the case where a packing error would show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.3, generator=g)
                m.running_var.uniform_(0.5, 2, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0, 0.3, generator=g)
        for n, p in model.named_parameters():
            if n.endswith(".shift.bias") or ".shift_in." in n or ".shift_out." in n:
                p.normal_(0, 0.2, generator=g)
            elif "prelu" in n:
                p.uniform_(-0.2, 0.5, generator=g)
    return model.eval()


def solo_checkpoint(folder: Path, model: nn.Module, name: str, kwargs: dict) -> Path:
    """``model`` as a solo-learn run's ``folder/run/last.ckpt`` (backbone weights under
    ``backbone.``, a projector beside them) with its ``args.json``; returns the checkpoint."""
    run = folder / "run"
    run.mkdir(exist_ok=True)
    state = {f"backbone.{k}": v for k, v in model.state_dict().items()}
    state["projector.0.weight"] = torch.zeros(2, 2)
    torch.save({"state_dict": state, "epoch": 1}, run / "last.ckpt")
    (run / "args.json").write_text(json.dumps({"backbone": {"name": name, "kwargs": kwargs}}))
    return run / "last.ckpt"
