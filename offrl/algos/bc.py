"""Behaviour cloning: the tanh-Gaussian actor trained by maximum likelihood on the dataset's actions.

The baseline every offline-RL result is read against (CORL's `any_percent_bc`, d3rlpy's `BC`): no critic, no
conservative term, no environment reward. It uses the same actor as CQL-SAC (sizes, parameterisation, learning
rate, observation normalisation), so a grid compares the objectives, not the networks. Where CORL's BC is a
deterministic MLP trained by MSE, offrl's is the stochastic actor trained by log-likelihood, which is what
"the same network" means here; evaluation acts with tanh(mean), as for every agent.

Read top to bottom: config, the networks, the loss, one update.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from offrl.algos.sac import make_optimizer, validate_actor_fields
from offrl.data.buffer import Batch
from offrl.nets import ActorParameterization, TanhGaussianActor, action_log_prob

__all__ = ["BC_METRICS", "BCConfig", "BCNetworks", "bc_loss", "bc_update"]

BC_METRICS = ("actor_loss", "log_std")


@dataclass
class BCConfig:
    """Behaviour-cloning hyper-parameters; `BCConfig.from_cql(config)` takes a CQL config's actor."""

    actor_lr: float = 1e-4
    batch_size: int = 256
    actor_hidden: tuple[int, ...] = field(default=(256, 256))
    gamma: float = 0.99  # not used by the loss; the discount of the Q-bias rollouts (there is no critic to bias)
    normalize_observations: bool = True
    log_std_min: float = -20.0
    log_std_max: float = 2.0
    log_std_multiplier: float | None = 1.0
    log_std_offset: float = -1.0
    actor_output_init: str = "xavier"

    @classmethod
    def from_cql(cls, cql) -> BCConfig:
        return cls(actor_lr=cql.actor_lr, batch_size=cql.batch_size, actor_hidden=tuple(cql.actor_hidden),
                   gamma=cql.gamma, normalize_observations=cql.normalize_observations, log_std_min=cql.log_std_min,
                   log_std_max=cql.log_std_max, log_std_multiplier=cql.log_std_multiplier,
                   log_std_offset=cql.log_std_offset, actor_output_init=cql.actor_output_init)

    def validate(self) -> None:
        from offrl.errors import OfflineRLError

        if not self.actor_lr > 0:
            raise OfflineRLError(f"config: actor_lr must be > 0, found {self.actor_lr!r}")
        if self.batch_size < 1:
            raise OfflineRLError(f"config: batch_size must be >= 1, found {self.batch_size!r}")
        if not self.actor_hidden or any(not isinstance(h, int) or h < 1 for h in self.actor_hidden):
            raise OfflineRLError(f"config: actor_hidden must be a list of positive sizes, found {self.actor_hidden!r}")
        validate_actor_fields(self)

    def actor_parameterization(self) -> ActorParameterization:
        return ActorParameterization(self.log_std_min, self.log_std_max, self.log_std_multiplier,
                                     self.log_std_offset, self.actor_output_init)


class BCNetworks(torch.nn.Module):
    """The actor and its optimiser (what a checkpoint keeps)."""

    def __init__(self, obs_dim: int, act_dim: int, config: BCConfig):
        super().__init__()
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.actor = TanhGaussianActor(obs_dim, act_dim, config.actor_hidden, config.actor_parameterization())
        self.actor_optimizer = make_optimizer(self.actor.parameters(), config.actor_lr)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"actor": self.actor_optimizer}


def bc_loss(networks: BCNetworks, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The mean negative log-likelihood of the dataset's actions under π(·|s)."""
    mean, log_std = networks.actor.distribution_params(batch.observations)
    loss = -action_log_prob(batch.actions, mean, log_std).mean()
    return loss, {"actor_loss": loss.detach(), "log_std": log_std.detach().mean()}


def bc_update(networks: BCNetworks, batch: Batch) -> dict[str, torch.Tensor]:
    loss, metrics = bc_loss(networks, batch)
    networks.actor_optimizer.zero_grad(set_to_none=True)
    loss.backward()
    networks.actor_optimizer.step()
    return metrics
