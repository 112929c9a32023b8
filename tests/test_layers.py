import torch
import torch.nn.functional as F

from s2bnn_plugin.nn import QuantConv2d, RPReLU, RSign, binary_sign


def test_rsign_thresholds_per_channel():
    q = RSign(3)
    with torch.no_grad():
        q.shift.bias.copy_(torch.tensor([0.5, -0.5, 0.0]))
    x = torch.full((1, 3, 1, 1), -0.25)
    assert q(x).flatten().tolist() == [1.0, -1.0, -1.0]


def test_rprelu_is_shift_prelu_shift():
    act = RPReLU(2)
    with torch.no_grad():
        act.shift_in.bias.copy_(torch.tensor([1.0, -1.0]))
        act.prelu.weight.copy_(torch.tensor([0.25, 0.5]))
        act.shift_out.bias.copy_(torch.tensor([0.1, 0.2]))
    x = torch.tensor([-3.0, 0.5]).reshape(1, 2, 1, 1).expand(1, 2, 1, 1).clone()
    # ch0: -3 + 1 = -2 -> 0.25 * -2 = -0.5 -> -0.4 ; ch1: 0.5 - 1 = -0.5 -> -0.25 -> -0.05
    assert torch.allclose(act(x).flatten(), torch.tensor([-0.4, -0.05]))


def test_quant_conv_is_conv_of_signs_times_scale_with_zero_padding():
    conv = QuantConv2d(
        5, 4, 3, stride=2, padding=1, input_quantizer="ste_sign", kernel_quantizer="scaled_sign"
    )
    x = torch.randn(2, 5, 7, 9)
    scale = conv.weight.abs().mean(dim=(1, 2, 3)).reshape(1, -1, 1, 1)
    ints = F.conv2d(binary_sign(x), binary_sign(conv.weight), stride=2, padding=1)
    assert torch.allclose(conv(x), scale * ints, atol=1e-5)


def test_quant_conv_without_kernel_quantizer_keeps_real_weights():
    conv = QuantConv2d(3, 2, 1, input_quantizer="approx_sign", kernel_quantizer=None)
    x = torch.randn(1, 3, 4, 4)
    assert conv.binary_input and not conv.binary_kernel
    assert torch.allclose(conv(x), F.conv2d(binary_sign(x), conv.weight))
