"""Conservative Q-Learning, CQL(H) on top of SAC (Kumar et al. 2020, arXiv:2006.04779, eq. 4 and appendix F).

Read top to bottom: config, sampling the 3n actions, the critic loss, all losses of an update, the update.
Defaults follow CORL's gym-locomotion configs (configs/offline/cql/*/medium_v2.yaml); the shipped YAML files
cite each value.

The conservative term, per critic i:
    α_cql · ( E_s[ τ · logsumexp_j ((Q_i(s, a_j) − log μ(a_j)) / τ) ] − E_(s,a)~D[ Q_i(s, a) ] )
over 3n actions a_j at s: n uniform in [-1, 1]^|A| (density 0.5^|A|), n from π(·|s), n from π(·|s′),
each weighted by its own density (importance sampling).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from offrl.algos.sac import (
    SACAgent,
    SACConfig,
    frozen_critic_q,
    make_optimizer,
    polyak_update,
    temperature_loss,
    validate_actor_fields,
)
from offrl.cpu_kernels import native_cpu_bf16
from offrl.data.buffer import Batch
from offrl.errors import OfflineRLError
from offrl.nets import action_log_prob, sample_tanh_gaussian

__all__ = ["CQLConfig", "CQLAgent", "CQL_METRICS", "sample_cql_actions", "cql_critic_loss", "cql_losses",
           "compiled_cql_losses", "cql_update", "autocast_for"]

CQL_METRICS = ("critic_loss", "bellman_loss", "cql_loss", "actor_loss", "q_data", "q_random", "q_pi_s",
               "q_pi_next_s", "cql_gap", "alpha", "alpha_prime", "entropy")


@dataclass
class CQLConfig:
    """CQL-SAC hyper-parameters. Defaults: CORL gym-locomotion (halfcheetah/medium_v2.yaml) unless noted."""

    actor_lr: float = 3e-5  # CORL policy_lr
    critic_lr: float = 3e-4  # CORL qf_lr
    alpha_lr: float = 3e-5  # CORL optimises log α with policy_lr
    alpha_prime_lr: float = 3e-4  # CORL optimises log α′ with qf_lr
    batch_size: int = 256
    actor_hidden: tuple[int, ...] = field(default=(256, 256, 256))
    critic_hidden: tuple[int, ...] = field(default=(256, 256, 256))
    orthogonal_init: bool = True
    gamma: float = 0.99
    tau: float = 0.005  # Polyak rate (CORL soft_target_update_rate)
    init_alpha: float = 1.0  # CORL log_alpha starts at 0
    autotune_alpha: bool = True
    target_entropy: float | None = None  # None: −|A|
    cql_alpha: float = 10.0  # α_cql, CORL cql_min_q_weight
    n_actions: int = 10  # n per source; 3n sampled actions in all
    temperature: float = 1.0  # τ of the logsumexp (CORL cql_temp)
    importance_sample: bool = True
    lagrange: bool = False  # learn α′ so the gap tracks target_action_gap (CQL paper, eq. 30)
    target_action_gap: float = -1.0
    init_alpha_prime: float = math.e  # CORL log_alpha_prime starts at 1
    max_target_backup: bool = False
    backup_entropy: bool = False
    # a′ in the backup: "sample" draws a′ ~ π(·|s′) (CORL, young-geng/CQL); "mean" takes tanh of π's mean, as
    # d3rlpy's CQL does without soft_q_backup (d3rlpy/algos/qlearning/torch/cql_impl.py,
    # _compute_deterministic_target).
    target_action: str = "sample"
    # what multiplies (log π + target entropy) in the temperature loss: "log_alpha" (CORL, the SAC authors'
    # code) or "alpha" (d3rlpy's sac_impl.update_temp). Same sign and fixed point; under Adam they differ only
    # while α moves.
    alpha_loss: str = "log_alpha"
    bc_steps: int = 0  # policy trained by behaviour cloning for the first bc_steps updates
    normalize_observations: bool = True
    normalize_reward: bool = False  # CORL's locomotion reward scaling: r · 1000 / (max − min episode return)
    calibrated: bool = False  # Cal-QL (Nakamoto et al. 2023): policy-action Q-values in the gap floored at V_ref(s)
    precision: str = "fp32"  # "bf16": hidden layers under bf16 autocast; output layers, losses, targets stay fp32
    # The actor (offrl.nets.ActorParameterization), as CORL's TanhGaussianPolicy: log σ = clamp(m·raw + b, -20, 2)
    # with learnable m, b starting at 1 and -1 (CORL log_std_multiplier, log_std_offset; also Cal-QL and
    # young-geng/CQL), the output layer xavier-uniform with gain 1e-2 and zero bias (CORL init_module_weights,
    # which leaves the hidden layers at PyTorch's init). At init this actor's entropy is far lower than offrl's
    # original one (SACConfig's defaults), and α's small learning rate keeps the difference through short runs.
    log_std_min: float = -20.0
    log_std_max: float = 2.0
    log_std_multiplier: float | None = 1.0
    log_std_offset: float = -1.0
    actor_output_init: str = "xavier"

    def validate(self) -> None:
        for name in ("actor_lr", "critic_lr", "alpha_lr", "alpha_prime_lr", "tau", "temperature", "init_alpha",
                     "init_alpha_prime"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and value > 0 and math.isfinite(value)):
                raise OfflineRLError(f"config: {name} must be a positive number, found {value!r}")
        if self.cql_alpha < 0:
            raise OfflineRLError(f"config: cql_alpha must be >= 0, found {self.cql_alpha!r}")
        if not 0 <= self.gamma < 1:
            raise OfflineRLError(f"config: gamma must be in [0, 1), found {self.gamma!r}")
        for name in ("batch_size", "n_actions"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise OfflineRLError(f"config: {name} must be an integer >= 1, found {getattr(self, name)!r}")
        if self.precision not in ("fp32", "bf16"):
            raise OfflineRLError(f"config: precision must be fp32 or bf16, found {self.precision!r}")
        if self.target_action not in ("sample", "mean"):
            raise OfflineRLError(f"config: target_action must be sample or mean, found {self.target_action!r}")
        if self.target_action == "mean" and (self.max_target_backup or self.backup_entropy):
            raise OfflineRLError("config: target_action mean backs up one deterministic action; it cannot be "
                                 "combined with max_target_backup or backup_entropy")
        if self.alpha_loss not in ("log_alpha", "alpha"):
            raise OfflineRLError(f"config: alpha_loss must be log_alpha or alpha, found {self.alpha_loss!r}")
        if self.bc_steps < 0:
            raise OfflineRLError(f"config: bc_steps must be >= 0, found {self.bc_steps!r}")
        for name in ("actor_hidden", "critic_hidden"):
            sizes = getattr(self, name)
            if not sizes or any(not isinstance(h, int) or h < 1 for h in sizes):
                raise OfflineRLError(f"config: {name} must be a list of positive layer sizes, found {sizes!r}")
        validate_actor_fields(self)

    def sac_config(self) -> SACConfig:
        """The SAC part of this config: CQLAgent's networks, and offline SAC's whole config (`offrl sweep
        --algorithms sac`). That baseline runs offrl's SAC update, so it also differs from this config where
        SAC differs from CORL's CQL: soft backup (backup_entropy here), no BC warm start (bc_steps), the actor
        stepping after the critic (README, "Sweeps on Ray")."""
        return SACConfig(actor_lr=self.actor_lr, critic_lr=self.critic_lr, alpha_lr=self.alpha_lr,
                         batch_size=self.batch_size, hidden=self.actor_hidden, gamma=self.gamma, tau=self.tau,
                         init_alpha=self.init_alpha, autotune_alpha=self.autotune_alpha,
                         target_entropy=self.target_entropy, log_std_min=self.log_std_min,
                         log_std_max=self.log_std_max, log_std_multiplier=self.log_std_multiplier,
                         log_std_offset=self.log_std_offset, actor_output_init=self.actor_output_init,
                         critic_hidden=self.critic_hidden, orthogonal_init=self.orthogonal_init,
                         normalize_observations=self.normalize_observations)


class CQLAgent(SACAgent):
    """The SAC agent plus log α′ (the Lagrange multiplier of the conservative term)."""

    def __init__(self, obs_dim: int, act_dim: int, config: CQLConfig):
        super().__init__(obs_dim, act_dim, config.sac_config())
        self.log_alpha_prime = torch.nn.Parameter(torch.tensor(float(config.init_alpha_prime)).log())
        self.alpha_prime_optimizer = make_optimizer([self.log_alpha_prime], config.alpha_prime_lr)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {**super().optimizers(), "alpha_prime": self.alpha_prime_optimizer}


Params = tuple[torch.Tensor, torch.Tensor]  # (mean, log_std) of π(·|s) before the tanh


@torch.no_grad()
def sample_cql_actions(agent: CQLAgent, batch: Batch, n: int, policy_s: Params | None = None,
                       policy_next: Params | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The 3n actions at s and their log-densities: (3n, B, A) and (3n, B), order uniform, π(s), π(s′).

    Policy samples carry no gradient: the conservative term trains the critics, not the actor. Pass the
    policy's distribution parameters when the caller already computed them (no second actor pass).
    """
    batch_size, act_dim = batch.actions.shape
    uniform = torch.rand((n, batch_size, act_dim), device=batch.actions.device, dtype=batch.actions.dtype) * 2 - 1
    uniform_log_density = torch.full((n, batch_size), act_dim * math.log(0.5), device=batch.actions.device,
                                     dtype=batch.actions.dtype)
    mean_s, log_std_s = policy_s or agent.actor.distribution_params(batch.observations)
    mean_next, log_std_next = policy_next or agent.actor.distribution_params(batch.next_observations)
    pi_s, log_pi_s = sample_tanh_gaussian(mean_s.detach(), log_std_s.detach(), n)
    pi_next, log_pi_next = sample_tanh_gaussian(mean_next, log_std_next, n)
    return torch.cat([uniform, pi_s, pi_next]), torch.cat([uniform_log_density, log_pi_s, log_pi_next])


@torch.no_grad()
def cql_target(agent: CQLAgent, batch: Batch, config: CQLConfig, alpha: torch.Tensor,
               policy_next: Params | None = None) -> torch.Tensor:
    """Clipped double-Q target at a sampled or the mean next action; optional max-over-n backup and entropy
    bonus (both off in CORL's configs)."""
    mean_next, log_std_next = policy_next or agent.actor.distribution_params(batch.next_observations)
    if config.max_target_backup:
        next_actions, next_log_prob = sample_tanh_gaussian(mean_next, log_std_next, config.n_actions)
        q_next = agent.critic_target(batch.next_observations, next_actions).min(dim=0).values  # (n, B)
        q_next, best = q_next.max(dim=0)
        next_log_prob = next_log_prob.gather(0, best.unsqueeze(0)).squeeze(0)
    elif config.target_action == "mean":
        q_next = agent.critic_target(batch.next_observations, torch.tanh(mean_next)).min(dim=0).values
    else:
        next_actions, next_log_prob = sample_tanh_gaussian(mean_next, log_std_next)
        q_next = agent.critic_target(batch.next_observations, next_actions).min(dim=0).values
    if config.backup_entropy:
        q_next = q_next - alpha * next_log_prob
    return batch.rewards + config.gamma * (1.0 - batch.terminals) * q_next


def cql_critic_loss(agent: CQLAgent, batch: Batch, config: CQLConfig, target: torch.Tensor,
                    sampled_actions: torch.Tensor, sampled_log_density: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """The two parts of the critic loss: the Bellman MSE (summed over both critics) and the per-critic
    conservative gap E_s[τ·logsumexp] − E_D[Q], shape (2,), which `cql_update` weights by α_cql (and α′).

    Every critic evaluation is one call: data actions and the 3n sampled actions form a (3n + 1, B) grid.
    """
    n = config.n_actions
    grid_actions = torch.cat([batch.actions.unsqueeze(0), sampled_actions])  # (3n + 1, B, A)
    q_grid = agent.critic(batch.observations, grid_actions)  # (2, 3n + 1, B); s broadcasts over the grid
    q_data, q_sampled = q_grid[:, 0], q_grid[:, 1:]

    bellman_loss = F.mse_loss(q_data, target.expand_as(q_data), reduction="none").mean(dim=1).sum()
    diagnostics = {"q_data": q_data.mean(), "q_random": q_sampled[:, :n].mean(),
                   "q_pi_s": q_sampled[:, n:2 * n].mean(), "q_pi_next_s": q_sampled[:, 2 * n:].mean(),
                   "bellman_loss": bellman_loss}
    if config.calibrated:
        # Cal-QL, inside the conservative term only: Q of policy actions (not the uniform ones) becomes
        # max(Q, V_ref(s)), V_ref the Monte-Carlo return-to-go of the trajectory the state came from.
        if batch.mc_returns is None:
            raise ValueError("calibrated CQL needs batches with mc_returns (a buffer built with_mc_returns)")
        q_policy = q_sampled[:, n:]
        bound = batch.mc_returns.expand_as(q_policy)
        diagnostics["calql_below_bound"] = (q_policy < bound).float().mean()
        q_sampled = torch.cat([q_sampled[:, :n], torch.maximum(q_policy, bound)], dim=1)
    weighted = q_sampled - sampled_log_density if config.importance_sample else q_sampled
    logsumexp = config.temperature * torch.logsumexp(weighted / config.temperature, dim=1)  # (2, B)
    gap = (logsumexp - q_data).mean(dim=1)  # (2,): E_s[logsumexp] − E_D[Q], per critic
    return bellman_loss, gap, diagnostics


# torch up to 2.10 keeps the bf16 weight casts that autocast caches under no_grad and hands them to later
# grad-mode passes in the same autocast region, which then give those weights no gradient (pytorch#158232, fixed
# by pytorch#165068, merged 2025-12-10; ultralytics/thop 2.2.4's release note puts the affected releases at 2.10
# and older). Every update here makes such passes first (targets, sampled actions), so on those releases
# the cache is off: each use casts again, which is correct everywhere and a little slower.
def autocast_cache_is_safe(torch_version: str) -> bool:
    return tuple(int(part) for part in torch_version.split("+")[0].split(".")[:2]) >= (2, 11)


AUTOCAST_CACHE = autocast_cache_is_safe(torch.__version__)


def bf16_autocast(device_type: str, enabled: bool) -> torch.autocast:
    """bf16 autocast (a no-op when not `enabled`), its weight cache on only where torch gets it right."""
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=enabled, cache_enabled=AUTOCAST_CACHE)


def autocast_for(config: CQLConfig, device: torch.device | str):
    """The numeric context every update of this config runs in (bf16 autocast or a no-op). Training in bf16 on
    a CPU without bf16 instructions warns (once per call site: Python's default warning filter)."""
    device_type = torch.device(device).type
    if config.precision == "bf16" and device_type == "cpu" and not native_cpu_bf16():
        warnings.warn("precision bf16 on a CPU without AVX512-BF16 or AMX: its bf16 matrix products are emulated, "
                      "many times slower than fp32 (evaluation/RESULTS.md); use precision fp32 on this machine "
                      "(--set precision=fp32, or a config without -bf16)", stacklevel=2)
    return bf16_autocast(device_type, config.precision == "bf16")


def cql_losses(agent: CQLAgent, batch: Batch, config: CQLConfig, behaviour_cloning: bool
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Every loss of one CQL-SAC update, summed: actor, critics, temperature and (Lagrange) α′.

    Each parameter group sees only the gradient of its own loss, because every path from one loss into
    another group's parameters is detached: the actor's loss reads the critics through detached weights,
    the critics read the policy through detached samples, α and α′ read detached log-probs and gaps. So one
    backward pass over the sum trains all of them, and the whole function can be compiled as one graph.
    All losses use the networks as they were before this update (as CORL does).
    """
    alpha = agent.log_alpha.exp().detach()

    # One actor pass per state set, shared by every sample drawn below.
    policy_s = agent.actor.distribution_params(batch.observations)
    with torch.no_grad():
        policy_next = agent.actor.distribution_params(batch.next_observations)

    # Actor: behaviour cloning during warm-up, then the SAC objective against the current critics.
    action, log_prob = sample_tanh_gaussian(*policy_s)
    if behaviour_cloning:
        policy_loss = (alpha * log_prob - action_log_prob(batch.actions, *policy_s)).mean()
    else:
        q_pi = frozen_critic_q(agent.critic, batch.observations, action)
        policy_loss = (alpha * log_prob - q_pi.min(dim=0).values).mean()

    # Critics: Bellman error plus the conservative gap, weighted by α_cql (and α′ in the Lagrange variant).
    target = cql_target(agent, batch, config, alpha, policy_next)
    sampled_actions, sampled_log_density = sample_cql_actions(agent, batch, config.n_actions, policy_s, policy_next)
    bellman_loss, gap, diagnostics = cql_critic_loss(agent, batch, config, target, sampled_actions,
                                                     sampled_log_density)
    total = policy_loss + bellman_loss
    if config.lagrange:
        alpha_prime = agent.log_alpha_prime.exp().clamp(0.0, 1e6)
        cql_loss = (alpha_prime.detach() * config.cql_alpha * (gap - config.target_action_gap)).sum()
        # α′ grows while the gap exceeds its target and shrinks below it (dual ascent on eq. 30).
        total = total - (alpha_prime * config.cql_alpha * (gap.detach() - config.target_action_gap)).mean()
    else:
        alpha_prime = agent.log_alpha_prime.detach().exp()
        cql_loss = config.cql_alpha * gap.sum()
    total = total + cql_loss
    if config.autotune_alpha:
        total = total + temperature_loss(agent, log_prob, scale_by_alpha=config.alpha_loss == "alpha")

    return total, {"critic_loss": (bellman_loss + cql_loss).detach(), "cql_loss": cql_loss.detach(),
                   "actor_loss": policy_loss.detach(), "cql_gap": gap.detach().mean(), "alpha": alpha,
                   "alpha_prime": alpha_prime.detach(), "entropy": -log_prob.detach().mean(),
                   **{k: v.detach() for k, v in diagnostics.items()}}


def compiled_cql_losses(device: torch.device | str):
    """`cql_losses` under torch.compile: forward and backward as compiled graphs, replayed as CUDA graphs on
    CUDA (mode "reduce-overhead": one launch instead of hundreds of small kernels per update). On CPU it is
    slower than eager (`python -m benchmarks.bench --only updates --compile`), so CPU runs stay eager unless asked."""
    on_cuda = torch.device(device).type == "cuda"
    compiled = torch.compile(cql_losses, mode="reduce-overhead" if on_cuda else None)

    def losses(agent: CQLAgent, batch: Batch, config: CQLConfig, behaviour_cloning: bool):
        if on_cuda:
            torch.compiler.cudagraph_mark_step_begin()  # the previous update's outputs may be overwritten now
        return compiled(agent, batch, config, behaviour_cloning)

    return losses


def cql_update(agent: CQLAgent, batch: Batch, config: CQLConfig, step: int, losses=cql_losses
               ) -> dict[str, torch.Tensor]:
    """One CQL-SAC update: the losses (`losses` may be a compiled `cql_losses`), one backward pass, every
    optimiser, Polyak. Returns detached metric tensors; nothing here synchronises with the host."""
    total, metrics = losses(agent, batch, config, step < config.bc_steps)
    optimizers = agent.optimizers().values()
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    total.backward()
    for optimizer in optimizers:
        optimizer.step()  # a parameter without a gradient (α when not autotuned, α′ without Lagrange) is skipped
    polyak_update(agent.critic_target, agent.critic, config.tau)
    return metrics
