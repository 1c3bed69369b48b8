"""Networks: MLPs, the twin critic and the tanh-squashed Gaussian actor."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["mlp", "MLP", "linear_relu", "fused_cpu_kernels", "FUSED_MIN_ROWS", "TwinCritic", "TanhGaussianActor",
           "tanh_gaussian_log_prob", "sample_tanh_gaussian", "action_log_prob"]

LOG_STD_MIN = -5.0
LOG_STD_MAX = 2.0
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


_fused_cpu_kernels_enabled = True
# Below ~1k rows the Python autograd.Function costs more than the passes it saves: a SAC update (batch 256)
# ran 10-20% slower fused, a CQL update (31 x 256 critic rows) 11-20% faster (2-core Xeon, 2x256).
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
    """gᵀx over all rows. For a narrow input (the critic's 23-wide first layer) the transposed product
    xᵀg is 1.5-2.3× faster on the Xeon (a 256×7936 · 7936×23 GEMM runs far below peak; 23×7936 · 7936×256
    does not)."""
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
    weight gradient from a bf16 GEMM with fp32 accumulation. The plain `x.float()` route writes and reads
    back fp32 copies of the activations and of their gradient: ~20% of a bf16 CQL update (torch profiler)."""

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
            # A Q head (one output): the outer product as a broadcast multiply, not a K=1 GEMM (+2% per update).
            grad_x = low_grad_rows * low_weight if weight.shape[0] == 1 else low_grad_rows @ low_weight
            grad_x = grad_x.reshape(x.shape)
        grad_weight = ((low_grad_rows.t() @ x.reshape(-1, x.shape[-1])).to(weight.dtype)
                       if ctx.needs_input_grad[1] else None)
        grad_bias = grad_rows.sum(0) if ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias


class Float32Linear(nn.Linear):
    """The output layer: always fp32, also under bf16 autocast, so Q-values, means and log-stds (and the
    logsumexp, losses and targets computed from them) keep full precision; only hidden layers run in bf16."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            if x.dtype == torch.bfloat16 and self.weight.dtype == torch.float32 and _fusable_on_cpu(x):
                return _LowPrecisionInputHead.apply(x, self.weight, self.bias)
            return super().forward(x.to(self.weight.dtype))


class MLP(nn.Sequential):
    """Linear → ReLU → … → Float32Linear, each hidden Linear + ReLU evaluated by `linear_relu`.

    The children are those of the plain `nn.Sequential` (same state_dict keys: shipped policies and
    checkpoints load unchanged)."""

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int):
        layers: list[nn.Module] = []
        dims = [in_dim, *hidden]
        for d_in, d_out in zip(dims[:-1], dims[1:], strict=True):
            layers += [nn.Linear(d_in, d_out), nn.ReLU()]
        layers.append(Float32Linear(dims[-1], out_dim))
        super().__init__(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *hidden, output = self
        for linear in hidden[::2]:
            x = linear_relu(x, linear.weight, linear.bias)
        return output(x)


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int, orthogonal_init: bool = False) -> MLP:
    net = MLP(in_dim, hidden, out_dim)
    if orthogonal_init:
        # CORL's CQL: hidden layers orthogonal with gain sqrt(2), the output layer with gain 1e-2, zero biases.
        linears = [layer for layer in net if isinstance(layer, nn.Linear)]
        for layer in linears:
            nn.init.orthogonal_(layer.weight, gain=math.sqrt(2.0) if layer is not linears[-1] else 1e-2)
            nn.init.zeros_(layer.bias)
    return net


class TwinCritic(nn.Module):
    """Two independent Q-networks evaluated in one call: `critic(obs, act) -> (2, *act.shape[:-1])`.

    `obs` broadcasts against the leading dimensions of `act`, so CQL passes its (3n + 1, B) action grid with
    observations of shape (B, obs_dim). Measured on the 2-core Xeon, and kept as the plain layout:
    - splitting the first layer into W_s·s (once per state) + W_a·a (per grid row) gained 2% fp32 and lost
      6% bf16 in the whole CQL update (interleaved A/B, 2 threads, 2x256), so s is repeated and concatenated;
    - a bmm-stacked ensemble is as fast or faster for critic fwd+bwd alone (`offrl bench --only critics`:
      23.7 vs 23.4 calls/s, 30.8 vs 23.7 in an earlier sitting) but measured slower inside the whole CQL
      update (16.8 vs 19.8 updates/s fp32; a throwaway prototype, not kept).
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (256, 256), orthogonal_init: bool = False):
        super().__init__()
        self.q1 = mlp(obs_dim + act_dim, hidden, 1, orthogonal_init)
        self.q2 = mlp(obs_dim + act_dim, hidden, 1, orthogonal_init)

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        obs_act = torch.cat([obs.expand(*act.shape[:-1], obs.shape[-1]), act], dim=-1)
        return torch.stack([self.q1(obs_act).squeeze(-1), self.q2(obs_act).squeeze(-1)])


def tanh_gaussian_log_prob(pre_tanh: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log π(tanh(u)) for u ~ N(mean, exp(log_std)), summed over the action dimension.

    The change-of-variables term log(1 - tanh(u)^2) is written as 2(log 2 - u - softplus(-2u)),
    which stays finite where tanh saturates (SAC paper, appendix C; same identity as in TF Probability).
    """
    normal_log_prob = -0.5 * ((pre_tanh - mean) / log_std.exp()) ** 2 - log_std - _HALF_LOG_2PI
    log_det_jacobian = 2.0 * (math.log(2.0) - pre_tanh - F.softplus(-2.0 * pre_tanh))
    return (normal_log_prob - log_det_jacobian).sum(-1)


def sample_tanh_gaussian(mean: torch.Tensor, log_std: torch.Tensor, n: int | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Reparameterised tanh-Gaussian samples and their log-probs: one per row, or n per row as (n, B, A)."""
    shape = mean.shape if n is None else (n, *mean.shape)
    pre_tanh = mean + log_std.exp() * torch.randn(shape, dtype=mean.dtype, device=mean.device)
    return torch.tanh(pre_tanh), tanh_gaussian_log_prob(pre_tanh, mean, log_std)


def action_log_prob(actions: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor, eps: float = 1e-6
                    ) -> torch.Tensor:
    """log-density of given actions in [-1, 1]; |a| is clipped just below 1 so atanh stays finite."""
    return tanh_gaussian_log_prob(torch.atanh(actions.clamp(-1.0 + eps, 1.0 - eps)), mean, log_std)


class TanhGaussianActor(nn.Module):
    """Diagonal Gaussian squashed by tanh into [-1, 1]; sampling is reparameterised."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (256, 256)):
        super().__init__()
        self.obs_dim = obs_dim
        self.act_dim = act_dim
        self.hidden = tuple(hidden)
        self.net = mlp(obs_dim, hidden, 2 * act_dim)

    def distribution_params(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.net(obs).chunk(2, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A reparameterised sample and its log-probability."""
        return sample_tanh_gaussian(*self.distribution_params(obs))

    def sample_n(self, obs: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """n samples per state from one forward pass: actions (n, B, A) and log-probs (n, B)."""
        return sample_tanh_gaussian(*self.distribution_params(obs), n)

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """log π(a|s) of given actions in [-1, 1] (for behaviour cloning)."""
        return action_log_prob(actions, *self.distribution_params(obs))

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        mean, log_std = self.distribution_params(obs)
        if deterministic:
            return torch.tanh(mean)
        return torch.tanh(mean + log_std.exp() * torch.randn_like(mean))
