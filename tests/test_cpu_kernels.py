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


@pytest.mark.parametrize("hidden", [(256, 256), (256, 256, 256)], ids=["2x256", "3x256"])
def test_the_fp32_fast_path_is_as_close_to_a_float64_reference_as_the_plain_one_for_both_critic_sizes(hidden):
    """The critic sizes CQL runs (d3rlpy's 2×256, CORL's 3×256) on its 31-row grid (batch 64): output and every
    gradient of the fused fp32 network against the same network in float64, within what fp32 rounding allows
    and no further from it than the plain fp32 operators are."""
    torch.manual_seed(0)
    net = MLP(23, hidden, 1)
    x = torch.randn(31, 64, 23, requires_grad=True)
    grad_out = torch.randn(31, 64, 1)
    assert type(linear_relu(x, net[0].weight, net[0].bias).grad_fn).__name__ == "_LinearReLUBackward"
    fused = _output_and_grads(net, x, grad_out)
    with fused_cpu_kernels(False):
        plain = _output_and_grads(net, x, grad_out)
    reference = _output_and_grads(_double_copy(net), x.detach().double().requires_grad_(), grad_out.double())
    for got, same, expected in zip(fused, plain, reference, strict=True):
        scale = expected.abs().max().item()
        fused_error = (got.double() - expected).abs().max().item()
        plain_error = (same.double() - expected).abs().max().item()
        assert fused_error <= 1e-5 * scale + 1e-7
        assert fused_error <= 4 * plain_error + 1e-6 * scale


def _double_copy(net: MLP) -> MLP:
    copy = MLP(net[0].in_features, [layer.out_features for layer in list(net)[:-1:2]], net[-1].out_features)
    copy.load_state_dict(net.state_dict())
    return copy.double()


def _bf16_fast_path() -> bool:
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


@pytest.mark.parametrize("outputs", [1, 4], ids=["Q head", "4 outputs"])
def test_fused_mlp_under_bf16_autocast_agrees_with_autocast_linear_and_keeps_fp32_outputs(outputs):
    torch.manual_seed(0)
    net = MLP(23, (64, 48), outputs)
    x = torch.randn(7, FUSED_MIN_ROWS // 4, 23, requires_grad=True)
    grad_out = torch.randn(7, FUSED_MIN_ROWS // 4, outputs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        # the fast path runs exactly where oneDNN has native bf16; elsewhere the plain operators do
        expected_node = "_LinearReLUBackward" if _bf16_fast_path() else "ReluBackward0"
        assert type(linear_relu(x, net[0].weight, net[0].bias).grad_fn).__name__ == expected_node
        if not _bf16_fast_path():
            pytest.skip("this CPU has no native bf16 (oneDNN): the bf16 fast path does not run here")
        fused = _output_and_grads(net, x, grad_out)
        with fused_cpu_kernels(False):
            plain = _output_and_grads(net, x, grad_out)
    assert fused[0].dtype == torch.float32
    assert [g.dtype for g in fused] == [g.dtype for g in plain]
    for got, expected in zip(fused, plain, strict=True):
        scale = expected.abs().max()
        assert (got - expected).abs().max() <= 2e-2 * scale  # a few bf16 roundings (2^-8 each) apart


@pytest.mark.parametrize("outputs", [1, 4], ids=["Q head (broadcast outer product)", "4 outputs"])
def test_the_bf16_input_head_computes_the_plain_heads_values_and_gradients_within_bf16_rounding(outputs):
    """`_LowPrecisionInputHead` directly (it runs on any CPU, emulated where bf16 is not native), against the
    plain route F.linear(x.float(), W, b) in float64: forward exact to fp32, gradients within bf16 rounding."""
    from offrl.cpu_kernels import _LowPrecisionInputHead

    torch.manual_seed(0)
    x = torch.randn(FUSED_MIN_ROWS, 64).to(torch.bfloat16).requires_grad_()
    weight = torch.randn(outputs, 64, requires_grad=True)
    bias = torch.randn(outputs, requires_grad=True)
    grad_out = torch.randn(FUSED_MIN_ROWS, outputs)
    out = _LowPrecisionInputHead.apply(x, weight, bias)
    grads = torch.autograd.grad(out, [x, weight, bias], grad_out)
    assert out.dtype == torch.float32 and grads[0].dtype == torch.bfloat16 and grads[1].dtype == torch.float32
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, weight, bias))
    out64 = torch.nn.functional.linear(x64, w64, b64)
    grads64 = torch.autograd.grad(out64, [x64, w64, b64], grad_out.double())
    torch.testing.assert_close(out.double(), out64, rtol=1e-5, atol=1e-5)
    for got, expected in zip(grads, grads64, strict=True):
        assert (got.double() - expected).abs().max() <= 2e-2 * expected.abs().max()


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
