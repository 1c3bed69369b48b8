"""Off-policy evaluation of a fixed policy π from data alone: Fitted Q Evaluation and conservative policy
evaluation (Kumar et al. 2020, arXiv:2006.04779, section 3.1, eq. 1 and eq. 2).

Read top to bottom: config, the critic being learned, the target policy's interface, the backup, the three
losses, one update, the value estimate. The critics, their Polyak target and the optimiser are those of
`offrl.algos.sac`; the buffer is the one every algorithm samples.

Each method learns Q̂^π by minimising, over dataset transitions (s, a, r, s′),

    ½ E_D[(Q(s, a) − B̂^π Q̄(s, a))²] + α · penalty,     B̂^π Q̄(s, a) = r + γ (1 − terminal) E_{a′~π(s′)} Q̄(s′, a′)

with Q̄ the Polyak-averaged target critic, and
- `fqe`:   no penalty (Le et al. 2019; d3rlpy.ope.FQE). Its fixed point is Q^π where the data covers π.
- `cql-q`: eq. 1, penalty E_{s~D, a~μ}[Q(s, a)]. In the tabular case the fixed point is
           Q̂ = Q^π − α (I − γ P^π)⁻¹ [μ / π̂_β], a lower bound on Q^π at every (s, a) (Theorem 3.1).
           μ is `uniform` (in [-1, 1]^|A|), `policy` (π itself) or `softmax`: μ ∝ exp(Q/τ), the maximising μ of
           CQL(H)'s regulariser, the penalty then being τ·log ∫ exp(Q/τ) da, estimated from n uniform and n π
           samples each divided by its own density. (CQL(H) also subtracts E_D[Q]; with that term the bound
           would hold for V only, like eq. 2's. Without it, this is eq. 1: a bound at every (s, a).)
- `cql-v`: eq. 2 with μ = π, penalty E_{s~D, a~π}[Q(s, a)] − E_{(s,a)~D}[Q(s, a)]. The fixed point
           Q̂ = Q^π − α (I − γ P^π)⁻¹ [π / π̂_β − 1] is no longer below Q^π everywhere, but its value under π,
           V̂(s) = E_{a~π} Q̂(s, a), is below V^π(s) at every state (Theorem 3.2): a tighter bound on the value.

The ½ on the Bellman term is the paper's, and it is what makes α the scale of the fixed point's shift above.
The two critics are an ensemble of two estimates of the same Q^π: both regress onto the mean of the target
critics (a policy is evaluated, not improved, so there is no max to correct with a minimum).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F

from offrl.algos.sac import make_optimizer, polyak_update
from offrl.data.buffer import Batch
from offrl.errors import OfflineRLError
from offrl.nets import TwinCritic

__all__ = ["OPE_METHODS", "MU_CHOICES", "OPE_METRICS", "OPEConfig", "TargetPolicy", "OPECritic", "ope_backup",
           "conservative_penalty", "ope_losses", "ope_update", "policy_value"]

OPE_METHODS = ("fqe", "cql-q", "cql-v")
MU_CHOICES = ("softmax", "uniform", "policy")
OPE_METRICS = ("loss", "bellman_loss", "penalty", "q_data")


@dataclass
class OPEConfig:
    """Hyper-parameters of one estimator. Critic sizes and init follow the CQL `fast` config (offrl's CQL critics).

    Differences from d3rlpy 2.8.1's FQE (d3rlpy/ope/fqe.py), each deliberate:
    - the learning rate and the target's pace: d3rlpy uses lr 1e-4 and a hard target copy every 100 updates;
      offrl uses lr 1e-3 and Polyak τ = 0.02, because at CQL's lr 3e-4 and τ 0.005 the estimate of HalfCheetah's
      expert on medium-v1 was still rising after 60k updates, while with these it stops moving by ~30k (the
      probe curves in evaluation/RESULTS.md, "Off-policy evaluation budget");
    - π's next actions are samples of the stochastic policy (averaged over `backup_samples`), since the value
      estimated is the stochastic policy's; d3rlpy backs up its deterministic best action (offrl's
      `--deterministic` evaluates that policy instead);
    - two critics averaged (d3rlpy: one by default, the minimum when there are more), batch 256 (d3rlpy 100),
      observations standardised by the dataset's statistics (d3rlpy: not), the Bellman term halved (eq. 1's ½).
    """

    method: str = "fqe"  # fqe, cql-q or cql-v
    # α of the penalty (ignored by fqe); the fixed point moves by α / (data density ratio). 0.01 because that ratio
    # is enormous for a 6-D policy outside the data: at α 0.1 and 1 the eq. 2 estimate of HalfCheetah's expert on
    # medium-v1 kept falling far below zero (evaluation/RESULTS.md, "Off-policy evaluation budget (issue 16): probes").
    alpha: float = 0.01
    mu: str = "softmax"  # cql-q's μ (see the module docstring); cql-v's μ is π by definition
    n_actions: int = 10  # actions per state for the penalty (n uniform and n from π for `softmax`)
    backup_samples: int = 4  # a′ ~ π(s′) averaged in the backup: E_{a′~π} without a max, so more samples cut variance
    temperature: float = 1.0  # τ of the `softmax` penalty's logsumexp (CQL(H))
    critic_hidden: tuple[int, ...] = field(default=(256, 256))
    critic_lr: float = 1e-3  # see the class docstring
    batch_size: int = 256
    gamma: float = 0.99
    tau: float = 0.02  # Polyak rate of the target critics; see the class docstring
    orthogonal_init: bool = True  # CORL's CQL critics
    normalize_observations: bool = True  # the critics see observations standardised by the dataset's statistics

    def validate(self) -> None:
        if self.method not in OPE_METHODS:
            raise OfflineRLError(f"config: method must be one of {', '.join(OPE_METHODS)}, found {self.method!r}")
        if self.mu not in MU_CHOICES:
            raise OfflineRLError(f"config: mu must be one of {', '.join(MU_CHOICES)}, found {self.mu!r}")
        if isinstance(self.alpha, bool) or not (isinstance(self.alpha, int | float) and self.alpha >= 0
                                                 and math.isfinite(self.alpha)):
            raise OfflineRLError(f"config: alpha must be a number >= 0, found {self.alpha!r}")
        for name in ("critic_lr", "tau", "temperature"):
            value = getattr(self, name)
            if isinstance(value, bool) or not (isinstance(value, int | float) and value > 0 and math.isfinite(value)):
                raise OfflineRLError(f"config: {name} must be a positive number, found {value!r}")
        if not 0 <= self.gamma < 1:
            raise OfflineRLError(f"config: gamma must be in [0, 1), found {self.gamma!r}")
        for name in ("n_actions", "backup_samples", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise OfflineRLError(f"config: {name} must be an integer >= 1, found {value!r}")
        if not self.critic_hidden or any(not isinstance(h, int) or h < 1 for h in self.critic_hidden):
            raise OfflineRLError(f"config: critic_hidden must be a list of positive sizes, "
                                 f"found {self.critic_hidden!r}")


class TargetPolicy(Protocol):
    """The policy being evaluated, on the observations as the dataset stores them. `sample(obs, n)` returns
    actions in [-1, 1] of shape (n, B, A) and their log-densities (n, B); a deterministic policy returns one
    action per state, (1, B, A), and None for the densities."""

    obs_dim: int
    act_dim: int
    deterministic: bool

    def sample(self, observations: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor | None]: ...


class OPECritic(torch.nn.Module):
    """The learned Q̂^π: two critics (an ensemble, averaged), their Polyak target and one optimiser."""

    def __init__(self, obs_dim: int, act_dim: int, config: OPEConfig):
        super().__init__()
        self.critic = TwinCritic(obs_dim, act_dim, config.critic_hidden, config.orthogonal_init)
        self.critic_target = TwinCritic(obs_dim, act_dim, config.critic_hidden)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.requires_grad_(False)
        self.critic_optimizer = make_optimizer(self.critic.parameters(), config.critic_lr)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"critic": self.critic_optimizer}

    def q(self, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Q̂^π(s, a): the mean of the two critics, shape actions.shape[:-1]."""
        return self.critic(observations, actions).mean(dim=0)


# The critics see normalised observations (`normalize`); π sees the observations as the dataset stores them.
Normalize = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def ope_backup(model: OPECritic, policy: TargetPolicy, batch: Batch, config: OPEConfig, normalize: Normalize
               ) -> torch.Tensor:
    """B̂^π Q̄(s, a) = r + γ (1 − terminal) E_{a′~π(s′)} Q̄(s′, a′). A time-limit cut still bootstraps."""
    next_actions, _ = policy.sample(batch.next_observations, config.backup_samples)  # (k, B, A)
    next_q = model.critic_target(normalize(batch.next_observations), next_actions).mean(dim=(0, 1))  # (B,)
    return batch.rewards + config.gamma * (1.0 - batch.terminals) * next_q


def conservative_penalty(model: OPECritic, policy: TargetPolicy, batch: Batch, config: OPEConfig, normalize: Normalize,
                         q_data: torch.Tensor) -> torch.Tensor:
    """The penalty per critic, shape (2,); its weight α is applied by `ope_losses`."""
    observations = normalize(batch.observations)
    batch_size, act_dim = batch.actions.shape
    n = config.n_actions
    with torch.no_grad():  # the penalty trains the critics, never π
        pi_actions, pi_log_density = policy.sample(batch.observations, n)
    if config.method == "cql-v":
        # eq. 2, μ = π: push Q down under π, up on the data's actions; V̂ = E_π Q̂ is then a lower bound.
        return model.critic(observations, pi_actions).mean(dim=(1, 2)) - q_data.mean(dim=1)
    uniform = torch.rand((n, batch_size, act_dim), device=batch.actions.device, dtype=batch.actions.dtype) * 2 - 1
    if config.mu == "uniform":  # eq. 1, μ uniform on [-1, 1]^|A|
        return model.critic(observations, uniform).mean(dim=(1, 2))
    if config.mu == "policy":  # eq. 1, μ = π
        return model.critic(observations, pi_actions).mean(dim=(1, 2))
    # eq. 1 with μ ∝ exp(Q / τ) (CQL(H)'s μ): E_s[τ log ∫ exp(Q(s, a) / τ) da], the integral estimated by
    # importance sampling from n uniform and n π actions, each divided by its own density (outside the 1/τ:
    # dividing the log-density by τ too, as CORL's CQL does, would tilt μ by the proposal for τ ≠ 1).
    if pi_log_density is None:
        raise OfflineRLError("cql-q with mu=softmax needs a stochastic policy (the densities of its actions); "
                             "use mu=uniform or mu=policy for a deterministic one")
    actions = torch.cat([uniform, pi_actions])
    log_density = torch.cat([torch.full((n, batch_size), act_dim * math.log(0.5), device=uniform.device,
                                        dtype=uniform.dtype), pi_log_density])
    weighted = model.critic(observations, actions) / config.temperature - log_density  # (2, 2n, B)
    return (config.temperature * torch.logsumexp(weighted, dim=1)).mean(dim=1)


def ope_losses(model: OPECritic, policy: TargetPolicy, batch: Batch, config: OPEConfig, normalize: Normalize
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The estimator's loss (summed over the two critics) and its metrics."""
    target = ope_backup(model, policy, batch, config, normalize)
    q_data = model.critic(normalize(batch.observations), batch.actions)  # (2, B)
    bellman_loss = 0.5 * F.mse_loss(q_data, target.expand_as(q_data), reduction="none").mean(dim=1).sum()
    if config.method == "fqe":
        penalty = torch.zeros(2, device=q_data.device)
    else:
        penalty = conservative_penalty(model, policy, batch, config, normalize, q_data)
    loss = bellman_loss + config.alpha * penalty.sum()
    return loss, {"loss": loss.detach(), "bellman_loss": bellman_loss.detach(), "penalty": penalty.detach().mean(),
                  "q_data": q_data.detach().mean()}


def ope_update(model: OPECritic, policy: TargetPolicy, batch: Batch, config: OPEConfig, normalize: Normalize
               ) -> dict[str, torch.Tensor]:
    """One update of Q̂^π: the loss, one backward pass, Adam, Polyak. Metrics stay on the device."""
    loss, metrics = ope_losses(model, policy, batch, config, normalize)
    model.critic_optimizer.zero_grad(set_to_none=True)
    loss.backward()
    model.critic_optimizer.step()
    polyak_update(model.critic_target, model.critic, config.tau)
    return metrics


@torch.no_grad()
def policy_value(model: OPECritic, policy: TargetPolicy, observations: torch.Tensor, normalize: Normalize,
                 samples: int = 32) -> torch.Tensor:
    """V̂^π(s) = E_{a~π(s)} Q̂^π(s, a) at each of the given (initial) states, shape (B,)."""
    actions, _ = policy.sample(observations, samples)
    return model.q(normalize(observations), actions).mean(dim=0)
