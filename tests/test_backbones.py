import re
from pathlib import Path

import pytest
import torch

from s2bnn_plugin.backbones import BACKBONES, create_backbone, reactnet18, reactnet_a
from s2bnn_plugin.nn import QuantConv2d, count_complexity

NAMES = sorted(BACKBONES)


def test_registry_has_both_backbones_and_no_resnet_prefix():
    assert NAMES == ["reactnet18", "reactnet_a"]
    # solo-learn special-cases names starting with "resnet"
    assert not any(n.startswith("resnet") for n in NAMES)


@pytest.mark.parametrize("name,dim", [("reactnet_a", 1024), ("reactnet18", 512)])
@pytest.mark.parametrize("size,cifar", [(32, True), (32, False), (224, False)])
def test_output_shape(name, dim, size, cifar):
    model = create_backbone(name, cifar=cifar).eval()
    assert model.num_features == dim
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, dim)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("width_mult", [0.1, 0.3, 0.5, 1.37])
def test_width_mult_and_odd_resolutions(name, width_mult):
    model = create_backbone(name, cifar=True, width_mult=width_mult)
    out = model(torch.randn(3, 3, 29, 35))
    assert out.shape == (3, model.num_features)
    base = create_backbone(name).num_features
    assert model.num_features == pytest.approx(base * width_mult, rel=0.2, abs=8)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("binary_weights", [True, False])
def test_binary_weights_setting(name, binary_weights):
    model = create_backbone(name, binary_weights=binary_weights, cifar=True, width_mult=0.25)
    convs = [m for m in model.modules() if isinstance(m, QuantConv2d)]
    assert convs and all(c.binary_input for c in convs)
    assert all(c.binary_kernel == binary_weights for c in convs)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(c.weight.grad is not None for c in convs)


@pytest.mark.parametrize("name", NAMES)
def test_step1_weights_load_into_step2(name):
    step1 = create_backbone(name, binary_weights=False, cifar=True, width_mult=0.25)
    step2 = create_backbone(name, binary_weights=True, cifar=True, width_mult=0.25)
    result = step2.load_state_dict(step1.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys


@pytest.mark.parametrize("name", NAMES)
def test_channels_last_equivalence(name):
    model = create_backbone(name, cifar=True, width_mult=0.25).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        model_cl = model.to(memory_format=torch.channels_last)
        out = model_cl(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(ref, out, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_parameter_order_is_deterministic(name):
    a = create_backbone(name, width_mult=0.25)
    b = create_backbone(name, width_mult=0.25)
    assert [n for n, _ in a.named_parameters()] == [n for n, _ in b.named_parameters()]
    assert [p.shape for p in a.parameters()] == [p.shape for p in b.parameters()]


def test_solo_signature_method_positional_or_none():
    assert reactnet_a("simclr", width_mult=0.25).num_features == 256
    assert reactnet18(method=None, width_mult=0.25).num_features == 128


def test_unknown_kwarg_names_accepted_ones():
    expected = r"unknown keyword argument\(s\) \['widht_mult'\].*width_mult"
    with pytest.raises(TypeError, match=expected):
        reactnet_a(widht_mult=0.5)


@pytest.mark.parametrize("bad", [0, -1.0])
def test_width_mult_must_be_positive(bad):
    with pytest.raises(ValueError, match="width_mult must be > 0"):
        reactnet18(width_mult=bad)


def test_bad_flag_and_ste_values():
    with pytest.raises(TypeError, match="binary_weights must be true or false"):
        reactnet_a(binary_weights="yes")
    with pytest.raises(ValueError, match="activation_ste must be"):
        reactnet_a(activation_ste="scaled_sign")
    # the choice reaches every binary activation (not just the constructor's arguments)
    from s2bnn_plugin.nn.layers import QuantConv2d

    for ste, expected in (("ste_sign", "ste_sign"), ("approx_sign", "approx_sign")):
        convs = [m for m in reactnet_a(activation_ste=ste).modules() if isinstance(m, QuantConv2d)]
        names = {c.input_quantizer.sign.name for c in convs if c.input_quantizer is not None}
        assert names == {expected}, (ste, names)


@pytest.mark.parametrize("shape", [(3, 32, 32), (2, 1, 32, 32), (2, 4, 32, 32)])
def test_input_must_be_4d_rgb(shape):
    model = reactnet18(cifar=True, width_mult=0.1)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.randn(*shape))


def test_reactnet_a_complexity_matches_paper():
    c = count_complexity(reactnet_a(), num_classes=1000)
    # Paper (ReActNet / S2-BNN): 0.12 x 10^8 FLOPs and 0.87 x 10^8 OPs, 29.3 M params with fc.
    assert c.flops == 11_862_016  # 3x3x3x32 stem at 112x112 + the 1024x1000 classifier
    assert round(c.flops / 1e8, 2) == 0.12
    assert round(c.ops / 1e8, 2) == 0.87
    assert round((c.params + 1024 * 1000 + 1000) / 1e6, 1) == 29.3
    step1 = count_complexity(reactnet_a(binary_weights=False))
    assert step1.bops == 0  # real weights: nothing is XNOR-popcount


def test_reactnet18_complexity():
    c = count_complexity(reactnet18(), num_classes=1000)
    # 16 binary 3x3 convs at 56/28/14/7 px: 1.676 x 10^9 binary MACs (Bi-Real-18 reports 1.68).
    assert c.bops == 1_676_279_808
    assert round(c.ops / 1e8, 1) == 1.6


def _tiny(name: str, **kwargs):
    torch.manual_seed(0)
    return create_backbone(name, cifar=True, width_mult=0.125, **kwargs)


@pytest.mark.parametrize("name", NAMES)
def test_backbones_compile_as_one_graph_for_training(name):
    # fullgraph=True raises at any graph break; the eager backend runs Dynamo's tracing (of the
    # sign Functions' backward too) without AOT or Inductor (no C++ compiler, a few seconds)
    torch._dynamo.reset()
    model = _tiny(name)
    x = torch.randn(2, 3, 16, 16)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    grads = []
    for fn in (model, compiled):
        model.zero_grad()
        out = fn(x)
        out.square().sum().backward()
        grads.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    (ref, ref_grads), (out, out_grads) = grads
    assert torch.allclose(ref, out, rtol=1e-5, atol=1e-6)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(ref_grads, out_grads))


def test_compile_setting_is_checked_and_keeps_the_models_keys_and_config():
    import copy
    import dataclasses

    from s2bnn_plugin.export import pack

    with pytest.raises(TypeError, match="compile must be true or false, got 'yes'"):
        reactnet_a(compile="yes")
    with pytest.raises(TypeError, match=r"accepted: \[.*'compile'\]"):
        reactnet_a(compiel=True)
    for name in NAMES:
        eager, compiled = _tiny(name), _tiny(name, compile=True)
        assert compiled.compile_features and not eager.compile_features
        assert type(compiled) is type(eager)
        # the same state_dict keys (no torch.compile "_orig_mod." prefix) and the same config,
        # which is what a packed file records: compile is a way to run, not part of the model
        assert list(compiled.state_dict()) == list(eager.state_dict())
        assert compiled.load_state_dict(eager.state_dict()) is not None
        assert compiled.config == eager.config
        assert "compile" not in dataclasses.asdict(compiled.config)
        assert copy.deepcopy(compiled).compile_features
        compiled.load_state_dict(eager.state_dict())
        packed, packed_eager = pack(compiled.eval()), pack(eager.eval())
        assert packed.spec["backbone"] == packed_eager.spec["backbone"]
        assert packed.spec["backbone"]["kwargs"] == dataclasses.asdict(eager.config)


def test_compiled_backbone_trains_as_one_graph_without_recompiling():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    student, copy_ = _tiny("reactnet_a", compile=True), _tiny("reactnet_a", compile=True)
    eager = _tiny("reactnet_a")
    for model in (student, copy_):
        model.compile_backend = "eager"  # Dynamo alone: what decides graphs and recompiles
    head = torch.nn.Linear(student.num_features, 3)
    opt = torch.optim.Adam([*student.parameters(), *head.parameters()], lr=1e-3)
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 0])
    eager_loss = torch.nn.functional.cross_entropy(head(eager(x)), y).item()
    losses = []
    for _ in range(3):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(student(x)), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    copy_(x).sum().backward()  # a second model of the same architecture reuses the graph
    # one graph for the whole backbone (a graph break inside it would give one per piece),
    # compiled once: no recompilation across steps, modules or instances
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert counters["frames"]["ok"] == 1, dict(counters["frames"])
    assert losses[0] == pytest.approx(eager_loss, rel=1e-5)
    assert losses[-1] < losses[0]


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_compiled_training_steps_agree_with_eager_steps(name):
    # Inductor, as backbone.kwargs.compile=true runs it: on a CPU it needs a C++ compiler
    import copy
    import os
    import shutil

    from torch._dynamo.utils import counters

    cxx = os.environ.get("CXX", "g++")
    assert shutil.which(cxx), f"torch.compile on a CPU needs a C++ compiler: {cxx} is not on PATH"
    torch._dynamo.reset()
    counters.clear()
    x, y = torch.randn(8, 3, 16, 16), torch.arange(8) % 3
    model, eager = _tiny(name, compile=True), _tiny(name)
    head = torch.nn.Linear(model.num_features, 3)
    opt = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=1e-3)

    def loss_and_grad(backbone, head):
        loss = torch.nn.functional.cross_entropy(head(backbone(x)), y)
        params = [*backbone.parameters(), *head.parameters()]
        grads = torch.autograd.grad(loss, params)
        return loss.item(), torch.cat([g.flatten() for g in grads])

    losses = []
    for _ in range(3):
        # each compiled step against an eager step from the same weights: the same loss and
        # gradient up to the order of floating-point operations (Inductor fuses them). Whole
        # trajectories are not compared: Adam's first steps move every weight by about lr
        # whatever the gradient's size, so a BNN's trajectory changes with any rounding (eager
        # with 1 thread and with 2 threads part after two steps too).
        eager.load_state_dict(model.state_dict())
        ref_loss, ref_grad = loss_and_grad(eager, copy.deepcopy(head))
        opt.zero_grad()
        loss, grad = loss_and_grad(model, head)
        assert loss == pytest.approx(ref_loss, rel=1e-4)
        assert (grad - ref_grad).norm() <= 1e-3 * ref_grad.norm()
        offset = 0
        for p in [*model.parameters(), *head.parameters()]:
            p.grad = grad[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        opt.step()
        losses.append(loss)
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    assert losses[-1] < losses[0]


def _contributing_backbone() -> str:
    """The Python block of CONTRIBUTING's "Adding a backbone", as written there."""
    text = (Path(__file__).resolve().parents[1] / "CONTRIBUTING.md").read_text()
    section = text.split("### Adding a backbone", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_contributing_backbone_honours_compile(monkeypatch):
    """A backbone written exactly as CONTRIBUTING shows registers, takes its keyword arguments
    and runs its features through torch.compile with backbone.kwargs.compile=true (Dynamo's
    counters see its graph), computing what the eager model computes."""
    from torch._dynamo.utils import counters

    from s2bnn_plugin import backbones

    monkeypatch.setattr(backbones, "BACKBONES", dict(backbones.BACKBONES))
    namespace: dict = {}
    exec(compile(_contributing_backbone(), "CONTRIBUTING.md", "exec"), namespace)
    assert backbones.BACKBONES["my_bnn"] is namespace["my_bnn"]
    compiled = backbones.create_backbone("my_bnn", compile=True, width_mult=0.5).eval()
    eager = backbones.create_backbone("my_bnn", width_mult=0.5).eval()
    assert compiled.compile_features and not eager.compile_features
    assert compiled.num_features == eager.num_features == 32
    eager.load_state_dict(compiled.state_dict())
    compiled.compile_backend = "eager"  # Dynamo alone: no C++ compiler needed
    torch._dynamo.reset()
    counters.clear()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = eager(x)
        assert not counters["stats"]["unique_graphs"]
        torch.testing.assert_close(compiled(x), expected)
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    with pytest.raises(TypeError, match="compile must be true or false, got 'yes'"):
        namespace["my_bnn"](compile="yes")


def test_a_config_refuses_compile_rather_than_dropping_it():
    from s2bnn_plugin.backbones import BackboneArgumentError, BackboneConfig

    with pytest.raises(BackboneArgumentError, match=r"build_backbone\(cls, kwargs\)"):
        BackboneConfig.from_kwargs("my_bnn", {"compile": True, "width_mult": 0.5})
    assert BackboneConfig.from_kwargs("my_bnn", {"width_mult": 0.5}).width_mult == 0.5
