import pytest
import torch

from s2bnn_plugin.nn import (
    ApproxSign,
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
