"""One evaluation of a policy: normalized return with its named reference, Q-estimate bias, and d3rlpy's
env-free diagnostics on dataset states. Knows nothing of training: it takes anything that acts and
estimates Q on raw observations.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
import torch

from offrl.errors import OfflineRLError
from offrl.evaluation.q_bias import dropped_tail, q_bias, q_estimates
from offrl.evaluation.rollout import rollout_episodes
from offrl.evaluation.scores import ReferenceScores, normalized_return, reference_scores_from_card

__all__ = ["EVAL_SEED", "Q_BIAS_TAIL_TOLERANCE", "Policy", "EvaluationReport", "evaluate", "evaluate_in_env",
           "dataset_diagnostics"]

EVAL_SEED = 10_000_000  # evaluation start states: fixed per run seed, disjoint from collection seeds
Q_BIAS_TAIL_TOLERANCE = 0.01


class Policy(Protocol):
    """What evaluation needs: deterministic actions in [-1, 1] and Q̂ (in reward units) on raw observations."""

    def act(self, observations: torch.Tensor) -> torch.Tensor: ...
    def q(self, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor: ...


@dataclass
class EvaluationReport:
    """Every number one evaluation produces; fields that do not apply (no env, no Q bias) stay None."""

    reference: str  # the reference scores' source, or "raw" (scores are raw returns)
    normalized_return: float | None = None
    return_mean: float | None = None
    return_std: float | None = None
    episodes: int = 0
    q_bias_mean: float | None = None
    q_bias_normalized_mean: float | None = None
    q_bias_normalized_std: float | None = None
    q_bias_states: int | None = None
    q_bias_rule: str | None = None
    average_value_estimate: float | None = None  # d3rlpy's env-free estimators, on dataset states
    initial_state_value_estimate: float | None = None
    q_bias_curve: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The numbers (without the per-timestep Q-bias curve), for JSON and CSV rows."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "q_bias_curve"}


def evaluate_in_env(policy: Policy, env_id: str, episodes: int, seed: int, reference: ReferenceScores,
                    gamma: float, device: torch.device | str = "cpu", with_q_bias: bool = True) -> EvaluationReport:
    """Normalized return over `episodes` deterministic episodes (start states fixed by `seed`); with Q bias,
    the same rollouts continue past the time limit (offrl.evaluation.q_bias) and only the in-limit rewards
    count as the return."""
    time_limit = gym.spec(env_id).max_episode_steps  # read from the registry: no env built per evaluation
    with_q_bias = with_q_bias and getattr(policy, "q", None) is not None  # an actor alone has no Q to bias
    extended = time_limit + dropped_tail(gamma, Q_BIAS_TAIL_TOLERANCE) if with_q_bias and time_limit else None
    result = rollout_episodes(policy.act, env_id, episodes, EVAL_SEED + seed, device, record=with_q_bias,
                              max_episode_steps=extended)
    returns = np.array([e.rewards[:time_limit].sum() for e in result])
    report = EvaluationReport(reference=reference.source, return_mean=float(returns.mean()),
                              return_std=float(returns.std()), episodes=episodes,
                              normalized_return=normalized_return(float(returns.mean()), reference))
    if with_q_bias:
        bias = q_bias(q_estimates(result, policy.q, device), gamma, Q_BIAS_TAIL_TOLERANCE, time_limit)
        report.q_bias_mean, report.q_bias_normalized_mean = bias.mean_bias, bias.normalized_mean_bias
        report.q_bias_normalized_std, report.q_bias_states = bias.normalized_std, bias.states
        report.q_bias_rule, report.q_bias_curve = bias.rule, bias.curve
    return report


@torch.no_grad()
def dataset_diagnostics(policy: Policy, observations: torch.Tensor, terminals: torch.Tensor,
                        timeouts: torch.Tensor, max_states: int = 10_000) -> dict[str, float]:
    """d3rlpy's env-free estimators on raw dataset observations: mean Q(s, π(s)) over dataset states and
    over episode initial states (None for a policy without Q estimates)."""
    if getattr(policy, "q", None) is None:
        return {"average_value_estimate": None, "initial_state_value_estimate": None}
    step = max(1, len(observations) // max_states)
    sample = observations[::step]
    average_value = policy.q(sample, policy.act(sample)).mean().item()
    ends = torch.nonzero((terminals + timeouts) > 0).flatten()
    starts = torch.cat([torch.zeros(1, dtype=torch.long, device=ends.device), ends[:-1] + 1])
    initial = observations[starts]
    return {"average_value_estimate": average_value,
            "initial_state_value_estimate": policy.q(initial, policy.act(initial)).mean().item()}


def evaluate(agent: Any, dataset: Any = None, env_id: str | None = None, episodes: int = 10, seed: int = 0,
             reference: ReferenceScores | None = None, with_q_bias: bool = True) -> EvaluationReport:
    """Evaluate a trained agent (anything with `.policy`, or a `Policy`) in one call.

    In an env (`env_id`, else the dataset's, else the agent's): normalized return over `episodes` deterministic
    episodes against `reference` (default: the dataset's reference scores, else raw returns) and the Q-estimate
    bias against Monte-Carlo returns. On a dataset: d3rlpy's env-free value estimates too. With neither an env
    nor a dataset there is nothing to measure."""
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise OfflineRLError(f"evaluate: episodes must be an integer >= 1, found {episodes!r}")
    policy = getattr(agent, "policy", agent)
    if not callable(getattr(policy, "act", None)) or getattr(policy, "q", "missing") == "missing":
        raise OfflineRLError(f"evaluate: agent must be an offrl agent or a Policy (act and q), found "
                             f"{type(agent).__name__}")
    if dataset is not None and not isinstance(getattr(dataset, "tensors", None), dict):
        raise OfflineRLError(f"evaluate: dataset must be an OfflineDataset, found {type(dataset).__name__}")
    card = getattr(dataset, "card", None) or {}
    env_id = env_id or card.get("env_id") or getattr(agent, "env_id", None)
    if env_id is None and dataset is None:
        raise OfflineRLError("evaluate: give env_id or a dataset (the agent was trained without an env)")
    _check_dims(agent, dataset, env_id)
    reference = reference or reference_scores_from_card(card)
    gamma = getattr(getattr(agent, "config", None), "gamma", 0.99)
    device = getattr(agent, "device", "cpu")
    if env_id is not None:
        report = evaluate_in_env(policy, env_id, episodes, seed, reference, gamma, device, with_q_bias)
    else:
        report = EvaluationReport(reference="no env")
    if dataset is not None:
        t = {k: v.to(device) for k, v in dataset.tensors.items()}
        diagnostics = dataset_diagnostics(policy, t["observations"], t["terminals"], t["timeouts"])
        report.average_value_estimate = diagnostics["average_value_estimate"]
        report.initial_state_value_estimate = diagnostics["initial_state_value_estimate"]
    return report


def _check_dims(agent: Any, dataset: Any, env_id: str | None) -> None:
    """The agent's observation/action widths must match the env's and the dataset's (when the agent says them)."""
    from offrl.envs import env_spec, make_env

    dims = (getattr(agent, "obs_dim", None), getattr(agent, "act_dim", None))
    if env_id is not None:
        spec = env_spec(make_env(env_id))  # an unknown env id is one OfflineRLError
        if dims[0] and (spec.obs_dim, spec.act_dim) != dims:
            raise OfflineRLError(f"evaluate: the agent's obs/act dims {dims[0]}/{dims[1]} do not match env {env_id} "
                                 f"({spec.obs_dim}/{spec.act_dim})")
    if dataset is not None and dims[0]:
        width = int(dataset.tensors["observations"].shape[1])
        if width != dims[0]:
            raise OfflineRLError(f"evaluate: the dataset's observations have {width} columns, the agent takes "
                                 f"{dims[0]}")
