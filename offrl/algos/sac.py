"""Soft Actor-Critic (Haarnoja et al. 2018, "SAC: Algorithms and Applications", arXiv:1812.05905).

Read top to bottom: config, the agent's state, the three losses, one update. The CQL file reuses the
agent and the actor/temperature losses and replaces only the critic loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from offrl.data.buffer import Batch
from offrl.nets import ACTOR_OUTPUT_INITS, ActorParameterization, TanhGaussianActor, TwinCritic

__all__ = ["SAC_METRICS", "SACConfig", "SACAgent", "make_optimizer", "sac_target", "sac_critic_loss",
           "frozen_critic_q", "actor_loss", "temperature_loss", "polyak_update", "sac_update"]


SAC_METRICS = ("critic_loss", "actor_loss", "q_data", "alpha", "entropy")


@dataclass
class SACConfig:
    """SAC hyper-parameters; defaults are the paper's (Table 1) unless noted."""

    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4
    batch_size: int = 256
    hidden: tuple[int, ...] = field(default=(256, 256))
    gamma: float = 0.99
    tau: float = 0.005  # Polyak rate of the target critics
    init_alpha: float = 1.0  # CleanRL and the paper's released code start α at 1
    autotune_alpha: bool = True
    target_entropy: float | None = None  # None: -|A| (paper)
    updates_per_step: int = 1
    # Offline SAC (the CQL paper's baseline) takes these from the CQL config it is compared with
    # (CQLConfig.sac_config), so that the two differ only in the conservative term.
    critic_hidden: tuple[int, ...] | None = None  # None: the actor's sizes (`hidden`)
    orthogonal_init: bool = False  # critics orthogonal (CORL's CQL); the paper's SAC keeps PyTorch's init
    normalize_observations: bool = False  # offline only: observations standardised by the dataset's mean and std
    # The actor's parameterisation (offrl.nets.ActorParameterization). These defaults are offrl's original actor,
    # the one the shipped behaviour policies were trained with: log σ = clamp(raw, -5, 2), PyTorch's default init.
    # CQLConfig's defaults are CORL's instead (see there).
    log_std_min: float = -5.0
    log_std_max: float = 2.0
    log_std_multiplier: float | None = None  # None: no learnable scale and shift of the raw log σ
    log_std_offset: float = 0.0
    actor_output_init: str = "default"  # "default", "xavier" (gain 1e-2) or "orthogonal" (gain 1e-2)

    def actor_parameterization(self) -> ActorParameterization:
        return ActorParameterization(self.log_std_min, self.log_std_max, self.log_std_multiplier,
                                     self.log_std_offset, self.actor_output_init)

    def validate(self) -> None:
        from offrl.errors import OfflineRLError

        validate_actor_fields(self)
        for name in ("actor_lr", "critic_lr", "alpha_lr", "tau", "init_alpha"):
            if not getattr(self, name) > 0:
                raise OfflineRLError(f"config: {name} must be > 0, found {getattr(self, name)!r}")
        if not 0 <= self.gamma < 1:
            raise OfflineRLError(f"config: gamma must be in [0, 1), found {self.gamma!r}")
        if self.batch_size < 1 or self.updates_per_step < 1:
            raise OfflineRLError("config: batch_size and updates_per_step must be >= 1")
        for name in ("hidden", "critic_hidden"):
            sizes = getattr(self, name)
            if sizes is not None and (not sizes or any(not isinstance(h, int) or h < 1 for h in sizes)):
                raise OfflineRLError(f"config: {name} must be a list of positive sizes, found {sizes!r}")


def validate_actor_fields(config) -> None:
    """The actor fields SACConfig and CQLConfig share."""
    from offrl.errors import OfflineRLError

    if not config.log_std_min < config.log_std_max:
        raise OfflineRLError(f"config: log_std_min ({config.log_std_min}) must be below log_std_max "
                             f"({config.log_std_max})")
    if config.actor_output_init not in ACTOR_OUTPUT_INITS:
        raise OfflineRLError(f"config: actor_output_init {config.actor_output_init!r} is not one of "
                             f"{', '.join(ACTOR_OUTPUT_INITS)}")


def make_optimizer(params, lr: float) -> torch.optim.Adam:
    params = list(params)
    # fused Adam: one kernel per step for all of a network's parameters, on CPU and CUDA alike, instead of the
    # foreach implementation's several; the CUDA-graph path needs its `capturable` form (offrl.cuda_graph).
    return torch.optim.Adam(params, lr=lr, fused=True)


class SACAgent(torch.nn.Module):
    """Actor, twin critic, its Polyak target, log α and their optimisers."""

    def __init__(self, obs_dim: int, act_dim: int, config: SACConfig):
        super().__init__()
        self.obs_dim, self.act_dim = obs_dim, act_dim
        critic_hidden = config.critic_hidden or config.hidden
        self.actor = TanhGaussianActor(obs_dim, act_dim, config.hidden, config.actor_parameterization())
        self.critic = TwinCritic(obs_dim, act_dim, critic_hidden, config.orthogonal_init)
        self.critic_target = TwinCritic(obs_dim, act_dim, critic_hidden)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.requires_grad_(False)
        self.log_alpha = torch.nn.Parameter(torch.tensor(float(config.init_alpha)).log())
        self.target_entropy = float(config.target_entropy if config.target_entropy is not None else -act_dim)
        self.actor_optimizer = make_optimizer(self.actor.parameters(), config.actor_lr)
        self.critic_optimizer = make_optimizer(self.critic.parameters(), config.critic_lr)
        self.alpha_optimizer = make_optimizer([self.log_alpha], config.alpha_lr)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"actor": self.actor_optimizer, "critic": self.critic_optimizer, "alpha": self.alpha_optimizer}


@torch.no_grad()
def sac_target(agent: SACAgent, batch: Batch, gamma: float, alpha: torch.Tensor) -> torch.Tensor:
    """r + γ(1 − terminal)(min_i Q'_i(s', a') − α log π(a'|s')), a' ~ π(·|s').

    `terminal` is true termination only; a time-limit cut still bootstraps.
    """
    next_action, next_log_prob = agent.actor(batch.next_observations)
    next_q = agent.critic_target(batch.next_observations, next_action).min(dim=0).values
    return batch.rewards + gamma * (1.0 - batch.terminals) * (next_q - alpha * next_log_prob)


def sac_critic_loss(agent: SACAgent, batch: Batch, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both critics regress onto the one shared target; returns (loss, Q on data (2, B))."""
    q_data = agent.critic(batch.observations, batch.actions)
    return F.mse_loss(q_data, target.expand_as(q_data), reduction="none").mean(dim=1).sum(), q_data


def frozen_critic_q(critic: TwinCritic, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Q through detached critic weights: the actor's loss differentiates through the action only, so no
    backward pass computes (and discards) the critics' weight gradients. (Detaching in the forward costs less
    than torch.func.functional_call's module swap, which was ~3% of a SAC update.)"""
    return critic(observations, actions, frozen=True)


def actor_loss(agent: SACAgent, batch: Batch, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """E_s[α log π(a|s) − min_i Q_i(s, a)], a reparameterised; returns (loss, log π)."""
    action, log_prob = agent.actor(batch.observations)
    q_pi = frozen_critic_q(agent.critic, batch.observations, action).min(dim=0).values
    return (alpha * log_prob - q_pi).mean(), log_prob


def temperature_loss(agent: SACAgent, log_prob: torch.Tensor, scale_by_alpha: bool = False) -> torch.Tensor:
    """−log α · (log π + target entropy): α grows while entropy is below target, shrinks above it. With
    `scale_by_alpha`, −α · (log π + target entropy) (d3rlpy's form): the same direction, a gradient α times as large."""
    multiplier = agent.log_alpha.exp() if scale_by_alpha else agent.log_alpha
    return -(multiplier * (log_prob.detach() + agent.target_entropy)).mean()


@torch.no_grad()
def polyak_update(target: torch.nn.Module, source: torch.nn.Module, tau: float) -> None:
    """target ← (1 − τ) target + τ source, one fused call over all tensors."""
    torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


def sac_update(agent: SACAgent, batch: Batch, config: SACConfig) -> dict[str, torch.Tensor]:
    """One SAC update. Returns metrics as detached tensors: reading them is the caller's host sync."""
    alpha = agent.log_alpha.exp().detach()

    target = sac_target(agent, batch, config.gamma, alpha)
    critic_loss, q_data = sac_critic_loss(agent, batch, target)
    agent.critic_optimizer.zero_grad(set_to_none=True)
    critic_loss.backward()
    agent.critic_optimizer.step()

    policy_loss, log_prob = actor_loss(agent, batch, alpha)
    agent.actor_optimizer.zero_grad(set_to_none=True)
    policy_loss.backward()
    agent.actor_optimizer.step()

    if config.autotune_alpha:
        alpha_loss = temperature_loss(agent, log_prob)
        agent.alpha_optimizer.zero_grad(set_to_none=True)
        alpha_loss.backward()
        agent.alpha_optimizer.step()

    polyak_update(agent.critic_target, agent.critic, config.tau)
    return {
        "critic_loss": critic_loss.detach(),
        "actor_loss": policy_loss.detach(),
        "q_data": q_data.detach().mean(),
        "alpha": alpha,
        "entropy": -log_prob.detach().mean(),
    }
