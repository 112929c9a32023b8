"""solo-learn integration of the backbones (needs solo-learn; skipped otherwise)."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.solo

SMALL = {"cifar": True, "width_mult": 0.125}


@pytest.fixture(scope="module")
def solo_methods():
    from s2bnn_plugin.solo import register

    register()
    import solo.methods

    return solo.methods


def test_register_is_idempotent_and_adds_backbones(solo_methods):
    from s2bnn_plugin.backbones import BACKBONES
    from s2bnn_plugin.solo import register

    before = dict(solo_methods.BaseMethod._BACKBONES)
    register()
    assert solo_methods.BaseMethod._BACKBONES == before
    for name, factory in BACKBONES.items():
        assert solo_methods.BaseMethod._BACKBONES[name] is factory


def test_register_refuses_to_overwrite_a_different_object(solo_methods):
    from s2bnn_plugin.solo import register

    registry = solo_methods.BaseMethod._BACKBONES
    original = registry["reactnet_a"]
    registry["reactnet_a"] = registry["resnet18"]
    try:
        with pytest.raises(RuntimeError, match="already has a backbone named 'reactnet_a'"):
            register()
    finally:
        registry["reactnet_a"] = original


def test_hydra_callback_registers(solo_methods):
    from s2bnn_plugin.solo import RegisterS2BNN

    del solo_methods.BaseMethod._BACKBONES["reactnet18"]
    RegisterS2BNN()
    assert "reactnet18" in solo_methods.BaseMethod._BACKBONES


@pytest.mark.parametrize("backbone", ["reactnet_a", "reactnet18"])
@pytest.mark.parametrize("method", ["simclr", "byol", "mocov2plus"])
def test_solo_method_trains_binary_backbone_and_main_linear_loads_every_key(
    solo_methods, method, backbone, tmp_path
):
    from solo.utils.misc import make_contiguous
    from solo_utils import base_cfg, fit, main_linear_load

    from s2bnn_plugin.backbones import create_backbone

    cfg = base_cfg(method, backbone, SMALL)
    model = solo_methods.METHODS[method](cfg)
    make_contiguous(model)
    model = model.to(memory_format=torch.channels_last)  # as main_pretrain does
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    trainer = fit(model, cfg, steps=2)
    assert trainer.global_step == 2
    after = model.backbone.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any("conv.weight" in k for k in changed), "binary conv latent weights did not train"

    # a checkpoint as solo-learn writes it, read back as main_linear.py reads it
    ckpt = tmp_path / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    fresh = create_backbone(backbone, method=None, **SMALL)
    missing, unexpected = main_linear_load(fresh, state)
    assert missing == []
    assert set(unexpected) <= {k for k in unexpected if k.startswith("momentum_")}
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, after[k].contiguous()), k


@pytest.mark.slow
def test_solo_training_loop_with_a_compiled_student_compiles_once(solo_methods, monkeypatch):
    # backbone.kwargs.compile=true through solo-learn's own method and Lightning's loop (BYOL:
    # a student and a momentum copy, which runs without gradients). Dynamo's eager backend
    # decides graphs and recompiles as Inductor would, without a C++ compiler.
    from lightning.pytorch.callbacks import Callback
    from solo.utils.misc import make_contiguous
    from solo_utils import base_cfg, fit, main_linear_load
    from torch._dynamo.utils import counters

    from s2bnn_plugin.backbones import BinaryBackbone, create_backbone

    monkeypatch.setattr(BinaryBackbone, "compile_backend", "eager")
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", False)

    class NoRecompileAfterWarmUp(Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if batch_idx == 1:
                torch._dynamo.config.error_on_recompile = True

    torch._dynamo.reset()
    counters.clear()
    cfg = base_cfg("byol", "reactnet_a", {**SMALL, "compile": True})
    model = solo_methods.METHODS["byol"](cfg)
    assert model.backbone.compile_features and model.momentum_backbone.compile_features
    make_contiguous(model)
    model = model.to(memory_format=torch.channels_last)
    trainer = fit(model, cfg, steps=4, callbacks=[NoRecompileAfterWarmUp()])
    assert trainer.global_step == 4
    # one graph with gradients (the student), one without (the momentum copy), and once more
    # for the copy at step 2: solo-learn's momentum update assigns new tensors to its
    # parameters (``mp.data = tau * mp.data + ...``), and under channels_last a 1x1 weight's
    # size-1 dimensions then have other strides, which Dynamo guards on. Then none: steps 3-4
    # run with error_on_recompile. No graph break.
    assert counters["stats"]["unique_graphs"] == 3, dict(counters["stats"])
    assert not counters["graph_break"], dict(counters["graph_break"])
    # its state dict is an eager model's: main_linear.py loads every key
    missing, _ = main_linear_load(create_backbone("reactnet_a", **SMALL), model.state_dict())
    assert missing == []
