"""The CPU fast path of the networks in `offrl.nets`.

Eager PyTorch runs a hidden Linear + ReLU as a GEMM, a bias pass and a ReLU pass, each writing and reading
back the whole activation; CQL's critics see 31 × batch rows per layer, so on a CPU those passes are a
visible part of an update. Here each hidden Linear + ReLU is one oneDNN call (bias and ReLU applied while
the GEMM's output is still in cache) with a hand-written backward, and the fp32 output layer takes bf16
activations without fp32 copies (`upcast_linear`). Both apply only to eager fp32/bf16 CPU work on at least
`FUSED_MIN_ROWS` rows; everything else (fewer rows, float64, CUDA, torch.compile) takes the plain operators
and computes the same values. `with fused_cpu_kernels(False):` switches the fast path off, e.g. to count
FLOPs with torch's counter or to time the plain path (the `fusion` rows of evaluation/bench.csv).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
import torch.nn.functional as F

__all__ = ["FUSED_MIN_ROWS", "fused_cpu_kernels", "linear_relu", "native_cpu_bf16", "upcast_linear"]

_fused_cpu_kernels_enabled = True
# Below ~1k rows the Python autograd.Function costs more than the passes it saves: SAC's batch-256 layers stay
# plain, CQL's critic grid fuses (see the `fusion` rows of evaluation/bench.csv).
FUSED_MIN_ROWS = 1024


@contextlib.contextmanager
def fused_cpu_kernels(enabled: bool) -> Iterator[None]:
    """Switch the CPU fast path (`linear_relu`, the bf16-input output layer) on or off, e.g. to count FLOPs
    with torch's counter, which sees only the plain operators, or to time the plain path."""
    global _fused_cpu_kernels_enabled
    previous, _fused_cpu_kernels_enabled = _fused_cpu_kernels_enabled, enabled
    try:
        yield
    finally:
        _fused_cpu_kernels_enabled = previous


@functools.cache  # the CPU does not change: asked once per process (autocast_for asks every update)
def native_cpu_bf16() -> bool:
    """Whether this CPU has bf16 matrix instructions (AVX512-BF16 or AMX). Without them oneDNN emulates bf16
    matrix products, far slower than fp32 (evaluation/RESULTS.md, "Speed II on an AVX2-only host"); plain
    AVX-512 is not enough. False where torch cannot tell."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):  # private torch helpers: absent in some builds
        return False


def _fusable_on_cpu(x: torch.Tensor) -> bool:
    """The CPU fast path applies to eager fp32/bf16 work on many rows; float64 (the reference tests), CUDA,
    traced code (torch.compile, CUDA graphs) and small batches take the plain operators."""
    if (not _fused_cpu_kernels_enabled or x.device.type != "cpu" or x.dtype not in (torch.float32, torch.bfloat16)
            or x.numel() < FUSED_MIN_ROWS * x.shape[-1] or torch.compiler.is_compiling()
            or not torch.backends.mkldnn.is_available()):
        return False
    lower = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
    if lower == torch.bfloat16:
        return torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return lower == torch.float32


def _weight_grad(grad_rows: torch.Tensor, input_rows: torch.Tensor) -> torch.Tensor:
    """gᵀx over all rows. For a narrow input (the critic's 23-wide first layer) the transposed product xᵀg is
    the faster GEMM: a 256×rows · rows×23 product runs far below the CPU's peak, 23×rows · rows×256 does not
    (part of what the `fusion` rows of evaluation/bench.csv time)."""
    if input_rows.shape[-1] < grad_rows.shape[-1]:
        return (input_rows.t() @ grad_rows).t()
    return grad_rows.t() @ input_rows


class _LinearReLU(torch.autograd.Function):
    """relu(x Wᵀ + b) as one oneDNN call, bias and ReLU applied while the GEMM's output is still in cache.

    Eager PyTorch writes the biased pre-activation and reads it back for the ReLU: two passes over
    31 × batch × 256 floats per critic layer in CQL. The backward masks the gradient with the saved output
    exactly as ReLU's own backward does."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        out = torch.ops.mkldnn._linear_pointwise(x, weight, bias, "relu", [], "")
        ctx.save_for_backward(x, weight, out)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight, out = ctx.saved_tensors
        grad_pre = torch.ops.aten.threshold_backward(grad_out, out, 0)
        grad_rows = grad_pre.reshape(-1, grad_pre.shape[-1])
        grad_x = grad_pre @ weight if ctx.needs_input_grad[0] else None
        grad_weight = _weight_grad(grad_rows, x.reshape(-1, x.shape[-1])) if ctx.needs_input_grad[1] else None
        grad_bias = grad_rows.sum(0) if ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias


def linear_relu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """relu(F.linear(x, weight, bias)), fused on CPU; under autocast it runs in the autocast dtype as
    F.linear would."""
    if not _fusable_on_cpu(x):
        return F.relu(F.linear(x, weight, bias))
    if torch.is_autocast_enabled("cpu"):
        dtype = torch.get_autocast_dtype("cpu")
        x, weight, bias = x.to(dtype), weight.to(dtype), bias.to(dtype)
    return _LinearReLU.apply(x.contiguous(), weight, bias)


class _LowPrecisionInputHead(torch.autograd.Function):
    """The fp32 output layer fed with bf16 hidden activations. Forward in fp32 as before; the backward
    returns the activations' gradient directly in bf16 (the dtype autocast would cast it to) and takes the
    weight gradient from a bf16 GEMM (fp32 accumulation inside, the result rounded to bf16 before it is
    cast back: the head's weight gradient carries bf16 precision, where the plain route's is fp32; the
    tests bound the difference). The plain `x.float()` route writes and reads back fp32 copies of the
    activations and of their gradient (see the bf16 `fusion` rows of evaluation/bench.csv)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        rows = x.reshape(-1, x.shape[-1]).to(weight.dtype)
        return torch.addmm(bias, rows, weight.t()).reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_rows = grad_out.reshape(-1, grad_out.shape[-1])
        low_grad_rows = grad_rows.to(x.dtype)
        grad_x = None
        if ctx.needs_input_grad[0]:
            low_weight = weight.to(x.dtype)
            # A Q head (one output): the outer product as a broadcast multiply, cheaper than a K=1 GEMM.
            grad_x = low_grad_rows * low_weight if weight.shape[0] == 1 else low_grad_rows @ low_weight
            grad_x = grad_x.reshape(x.shape)
        grad_weight = ((low_grad_rows.t() @ x.reshape(-1, x.shape[-1])).to(weight.dtype)
                       if ctx.needs_input_grad[1] else None)
        grad_bias = grad_rows.sum(0) if ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias


def upcast_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """F.linear(x.to(weight.dtype), weight, bias), the output layer run with autocast off. On the CPU fast
    path bf16 activations into an fp32 layer go through `_LowPrecisionInputHead` (same forward, bf16
    input gradient without fp32 copies)."""
    if x.dtype == torch.bfloat16 and weight.dtype == torch.float32 and _fusable_on_cpu(x):
        return _LowPrecisionInputHead.apply(x, weight, bias)
    return F.linear(x.to(weight.dtype), weight, bias)
