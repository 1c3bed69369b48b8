"""Networks: MLPs, the twin critic and the tanh-squashed Gaussian actor."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from offrl.cpu_kernels import linear_relu, upcast_linear

__all__ = ["mlp", "MLP", "TwinCritic", "ActorParameterization", "ACTOR_OUTPUT_INITS", "TanhGaussianActor",
           "tanh_gaussian_log_prob", "sample_tanh_gaussian", "action_log_prob"]

LOG_STD_MIN = -5.0
LOG_STD_MAX = 2.0
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class Float32Linear(nn.Linear):
    """The output layer: always fp32, also under bf16 autocast, so Q-values, means and log-stds (and the
    logsumexp, losses and targets computed from them) keep full precision; only hidden layers run in bf16."""

    def forward(self, x: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return upcast_linear(x, *_parameters(self, frozen))


def _parameters(layer: nn.Linear, frozen: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's weight and bias, detached when `frozen` (a loss that must not reach them)."""
    return (layer.weight.detach(), layer.bias.detach()) if frozen else (layer.weight, layer.bias)


class MLP(nn.Sequential):
    """Linear → ReLU → … → Float32Linear, each hidden Linear + ReLU evaluated by `offrl.cpu_kernels.linear_relu`.

    The children are those of the plain `nn.Sequential` (same state_dict keys: shipped policies and
    checkpoints load unchanged)."""

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int):
        layers: list[nn.Module] = []
        dims = [in_dim, *hidden]
        for d_in, d_out in zip(dims[:-1], dims[1:], strict=True):
            layers += [nn.Linear(d_in, d_out), nn.ReLU()]
        layers.append(Float32Linear(dims[-1], out_dim))
        super().__init__(*layers)

    def forward(self, x: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        """`frozen`: through detached weights, so a loss differentiates only through `x`."""
        *hidden, output = self
        for linear in hidden[::2]:
            x = linear_relu(x, *_parameters(linear, frozen))
        return output(x, frozen)


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
    observations of shape (B, obs_dim). Kept as the plain layout, two independent MLPs:
    - splitting the first layer into W_s·s (once per state) + W_a·a (per grid row) did not pay off over a
      whole CQL update (it lost under bf16), so s is repeated and concatenated;
    - a bmm-stacked ensemble was no faster for critic fwd+bwd alone (the `critics` rows of evaluation/bench.csv)
      and slower inside the whole CQL update (a prototype, not kept).
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (256, 256), orthogonal_init: bool = False):
        super().__init__()
        self.q1 = mlp(obs_dim + act_dim, hidden, 1, orthogonal_init)
        self.q2 = mlp(obs_dim + act_dim, hidden, 1, orthogonal_init)

    def forward(self, obs: torch.Tensor, act: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        """`frozen`: through detached weights (the actor's loss: no critic weight gradient is computed)."""
        obs_act = torch.cat([obs.expand(*act.shape[:-1], obs.shape[-1]), act], dim=-1)
        return torch.stack([self.q1(obs_act, frozen).squeeze(-1), self.q2(obs_act, frozen).squeeze(-1)])


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


ACTOR_OUTPUT_INITS = ("default", "xavier", "orthogonal")


@dataclass(frozen=True)
class ActorParameterization:
    """How the actor's last layer becomes (mean, log σ), and how that layer starts.

    log σ = clamp(multiplier·raw + offset, log_std_min, log_std_max), where multiplier and offset are learnable
    scalars starting at the given values (CORL, Cal-QL and young-geng/CQL) or absent (`multiplier=None`: log σ =
    clamp(raw)). `output_init`: "default" (PyTorch's Linear init), "xavier" (CORL's TanhGaussianPolicy: xavier
    uniform, gain 1e-2) or "orthogonal" (Cal-QL, young-geng: orthogonal, gain 1e-2); the last two zero the bias.
    The defaults are offrl's original actor, which the shipped behaviour policies were trained with."""

    log_std_min: float = LOG_STD_MIN
    log_std_max: float = LOG_STD_MAX
    multiplier: float | None = None
    offset: float = 0.0
    output_init: str = "default"


class TanhGaussianActor(nn.Module):
    """Diagonal Gaussian squashed by tanh into [-1, 1]; sampling is reparameterised."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (256, 256),
                 parameterization: ActorParameterization | None = None):
        super().__init__()
        self.obs_dim = obs_dim
        self.act_dim = act_dim
        self.hidden = tuple(hidden)
        self.parameterization = parameterization = parameterization or ActorParameterization()
        self.net = mlp(obs_dim, hidden, 2 * act_dim)
        output = self.net[-1]
        if parameterization.output_init == "xavier":
            nn.init.xavier_uniform_(output.weight, gain=1e-2)
            nn.init.zeros_(output.bias)
        elif parameterization.output_init == "orthogonal":
            nn.init.orthogonal_(output.weight, gain=1e-2)
            nn.init.zeros_(output.bias)
        if parameterization.multiplier is not None:  # state_dict gains two keys only for this parameterisation
            self.log_std_multiplier = nn.Parameter(torch.tensor(float(parameterization.multiplier)))
            self.log_std_offset = nn.Parameter(torch.tensor(float(parameterization.offset)))

    def distribution_params(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.net(obs).chunk(2, dim=-1)
        p = self.parameterization
        if p.multiplier is not None:
            log_std = self.log_std_multiplier * log_std + self.log_std_offset
        elif p.offset:
            log_std = log_std + p.offset
        return mean, log_std.clamp(p.log_std_min, p.log_std_max)

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
