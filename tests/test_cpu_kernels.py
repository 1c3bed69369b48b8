"""The CPU fast path (offrl.cpu_kernels) computes what the plain operators compute, and stays off where it
does not apply."""

import pytest
import torch

from offrl.cpu_kernels import FUSED_MIN_ROWS, fused_cpu_kernels, linear_relu
from offrl.nets import MLP


def _output_and_grads(net: MLP, x: torch.Tensor, grad_out: torch.Tensor) -> list[torch.Tensor]:
    out = net(x)
    return [out, *torch.autograd.grad(out, [x, *net.parameters()], grad_out)]


@pytest.mark.parametrize("leading", [(FUSED_MIN_ROWS,), (7, FUSED_MIN_ROWS // 4)])
def test_fused_mlp_computes_the_plain_forward_and_gradients_in_fp32(leading):
    torch.manual_seed(0)
    net = MLP(23, (64, 48), 1)
    x = torch.randn(*leading, 23, requires_grad=True)
    grad_out = torch.randn(*leading, 1)
    assert type(linear_relu(x, net[0].weight, net[0].bias).grad_fn).__name__ == "_LinearReLUBackward"
    fused = _output_and_grads(net, x, grad_out)
    with fused_cpu_kernels(False):
        assert type(linear_relu(x, net[0].weight, net[0].bias).grad_fn).__name__ == "ReluBackward0"
        plain = _output_and_grads(net, x, grad_out)
    for got, expected in zip(fused, plain, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_fused_mlp_under_bf16_autocast_agrees_with_autocast_linear_and_keeps_fp32_outputs():
    torch.manual_seed(0)
    net = MLP(23, (64, 48), 4)
    x = torch.randn(7, FUSED_MIN_ROWS // 4, 23, requires_grad=True)
    grad_out = torch.randn(7, FUSED_MIN_ROWS // 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = _output_and_grads(net, x, grad_out)
        with fused_cpu_kernels(False):
            plain = _output_and_grads(net, x, grad_out)
    assert fused[0].dtype == torch.float32
    assert [g.dtype for g in fused] == [g.dtype for g in plain]
    for got, expected in zip(fused, plain, strict=True):
        scale = expected.abs().max()
        assert (got - expected).abs().max() <= 2e-2 * scale  # a few bf16 roundings (2^-8 each) apart


def test_float64_and_small_batches_take_the_plain_operators_and_checkpoints_keep_the_sequential_keys():
    net = MLP(5, (8, 8), 1)
    small = torch.randn(FUSED_MIN_ROWS - 1, 5, requires_grad=True)
    assert type(linear_relu(small, net[0].weight, net[0].bias).grad_fn).__name__ == "ReluBackward0"
    net = net.double()
    x = torch.randn(FUSED_MIN_ROWS, 5, dtype=torch.float64)
    assert type(linear_relu(x.requires_grad_(), net[0].weight, net[0].bias).grad_fn).__name__ == "ReluBackward0"
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast leaves float64 alone, and so does the fast path
        assert linear_relu(x, net[0].weight, net[0].bias).dtype == torch.float64
    assert list(net.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
    plain = torch.nn.Sequential(*net)  # the same children run by nn.Sequential: the plain reference
    torch.testing.assert_close(net(x), plain(x))
