import copy

import pytest
import torch

from s2bnn_plugin.nn import (
    QUANTIZERS,
    ApproxSign,
    QuantConv2d,
    RSign,
    ScaledSign,
    SteSign,
    binary_sign,
    get_quantizer,
    is_binary,
)

X = torch.tensor([-2.0, -1.0, -0.75, -0.25, 0.0, 0.25, 0.75, 1.0, 2.0])


def _grad(quantizer, x):
    x = x.clone().requires_grad_(True)
    quantizer(x).sum().backward()
    return x.grad


def test_sign_maps_zero_to_plus_one_and_never_zero():
    out = binary_sign(X)
    assert out.tolist() == [-1, -1, -1, -1, 1, 1, 1, 1, 1]
    for q in (ApproxSign(), SteSign()):
        assert torch.equal(q(X), out)


def test_approx_sign_gradient_is_reactnet_polynomial_derivative():
    expected = torch.where(X < 0, 2 + 2 * X, 2 - 2 * X) * (X.abs() < 1)
    assert torch.allclose(_grad(ApproxSign(), X), expected)
    # spot values: 2 + 2(-0.25) = 1.5, 2 - 2(0.75) = 0.5, peak 2 at 0, zero outside [-1, 1]
    g = _grad(ApproxSign(), X)
    assert g[3].item() == 1.5 and g[6].item() == 0.5 and g[4].item() == 2.0
    assert g[0].item() == 0 and g[8].item() == 0


def test_ste_sign_gradient_is_clipped_identity():
    assert _grad(SteSign(), X).tolist() == [0, 1, 1, 1, 1, 1, 1, 1, 0]


def test_scaled_sign_uses_detached_per_output_channel_mean_abs():
    w = torch.randn(4, 3, 3, 3)
    out = ScaledSign()(w)
    scale = w.abs().mean(dim=(1, 2, 3))
    for c in range(4):
        assert torch.allclose(out[c], scale[c] * binary_sign(w[c]))
    # the latent weight sees the clipped identity only: the scale carries no gradient
    wg = w.clone().requires_grad_(True)
    upstream = torch.randn_like(w)
    (ScaledSign()(wg) * upstream).sum().backward()
    expected = upstream * scale.reshape(-1, 1, 1, 1) * (w.abs() <= 1)
    assert torch.allclose(wg.grad, expected)


def test_get_quantizer_names_and_errors():
    assert isinstance(get_quantizer("approx_sign"), ApproxSign)
    assert get_quantizer(None) is None and get_quantizer("real") is None
    q = SteSign()
    assert get_quantizer(q) is q
    assert is_binary(q) and not is_binary(None)
    with pytest.raises(ValueError, match="unknown quantizer 'tanh'.*approx_sign"):
        get_quantizer("tanh")
    with pytest.raises(TypeError):
        get_quantizer(3)


def test_get_quantizer_builds_a_new_module_for_each_name():
    assert get_quantizer("ste_sign") is not get_quantizer("ste_sign")


def test_a_quantizer_object_is_taken_once_and_refused_the_second_time():
    q = SteSign()
    assert get_quantizer(q) is q
    with pytest.raises(ValueError, match=r"SteSign object is already used.*'ste_sign'.*deepcopy"):
        get_quantizer(q)
    copied = copy.deepcopy(q)
    assert get_quantizer(copied) is copied


def test_two_layers_never_share_a_quantizer_by_accident():
    rsign = RSign(3)
    first = QuantConv2d(3, 4, 3, input_quantizer=rsign, kernel_quantizer="scaled_sign")
    assert first.input_quantizer is rsign
    # the same RSign for a second layer would tie both layers' thresholds together
    with pytest.raises(ValueError, match=r"RSign object is already used by another layer"):
        QuantConv2d(3, 4, 1, input_quantizer=rsign)
    with pytest.raises(ValueError, match="already used"):
        QuantConv2d(3, 4, 1, kernel_quantizer=first.kernel_quantizer)
    # names and copies give every layer its own module and its own parameters
    second = QuantConv2d(
        3, 4, 1, input_quantizer=copy.deepcopy(rsign), kernel_quantizer="scaled_sign"
    )
    assert second.input_quantizer is not first.input_quantizer
    assert second.kernel_quantizer is not first.kernel_quantizer
    ids = [id(p) for p in first.parameters()]
    assert not any(id(p) in ids for p in second.parameters())


def test_backbone_layers_hold_distinct_quantizers():
    from s2bnn_plugin.backbones import create_backbone

    for name in ("reactnet_a", "reactnet18"):
        model = create_backbone(name, cifar=True, width_mult=0.1)
        convs = [m for m in model.modules() if isinstance(m, QuantConv2d)]
        quantizers = [q for c in convs for q in (c.input_quantizer, c.kernel_quantizer)]
        signs = [c.input_quantizer.sign for c in convs]
        assert len({id(q) for q in quantizers + signs}) == 3 * len(convs)


@pytest.mark.parametrize("cls", [*QUANTIZERS.values(), RSign])
def test_every_quantizer_documents_its_forward_and_surrogate_gradient(cls):
    doc = cls.__doc__
    assert "Forward" in doc and "Surrogate gradient" in doc and "dq/d" in doc, cls


class _ReferenceApproxSignFn(torch.autograd.Function):
    """ApproxSign's forward and backward written out on their own: the values and gradients the
    plugin's binarisers must reproduce exactly, whatever form their implementation takes."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        slope = torch.where(x < 0, 2.0 + 2.0 * x, 2.0 - 2.0 * x)
        return grad * torch.where(x.abs() < 1.0, slope, torch.zeros_like(slope)).to(grad.dtype)


class _ReferenceSteSignFn(_ReferenceApproxSignFn):
    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1.0).to(x.dtype).to(grad.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize(
    "quantizer,reference", [(ApproxSign, _ReferenceApproxSignFn), (SteSign, _ReferenceSteSignFn)]
)
def test_sign_forward_and_gradient_are_bit_for_bit_the_reference(quantizer, reference, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.cat([X, 1.5 * torch.randn(4096, generator=g)]).to(dtype)
    upstream = torch.randn(x.shape, generator=g).to(dtype)
    got, ref = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out, expected = quantizer()(got), reference.apply(ref)
    (out * upstream).sum().backward()
    (expected * upstream).sum().backward()
    assert out.dtype == dtype and torch.equal(out, expected)
    assert torch.equal(got.grad, ref.grad)


@pytest.mark.parametrize(
    "make", [ApproxSign, SteSign, ScaledSign, lambda: RSign(3), lambda: RSign(3, "ste_sign")]
)
def test_quantizers_compile_as_one_graph_with_the_same_values_and_gradients(make):
    # fullgraph=True raises at a graph break: one inside a sign splits a compiled backbone at
    # every layer, and each layer then compiles on its own, once per shape (reactnet_a hits
    # Dynamo's recompile limit). aot_eager traces forward and backward without a C++ compiler.
    torch._dynamo.reset()
    quantizer = make()
    compiled = torch.compile(quantizer, fullgraph=True, backend="aot_eager")
    x = torch.cat([X, torch.randn(87)]).reshape(2, 3, 4, 4)
    upstream = torch.randn(x.shape)
    grads = []
    for fn in (quantizer, compiled):
        xg = x.clone().requires_grad_(True)
        out = fn(xg)
        (out * upstream).sum().backward()
        grads.append((out.detach(), xg.grad))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
