"""Q-estimate bias on real rollouts: the critic's Q̂(s_t, a_t) against the discounted Monte-Carlo return G_t.

Time limits are handled without bootstrapping (which would grade the critic with itself). A critic trained
with time-limit cuts treated as non-terminal estimates the return as if the episode went on, so rollouts
for the measure run H steps past the env's time limit, where H is the smallest horizon with
γ^H ≤ `tail_tolerance`: every state inside the time limit is measured, and the part of its return the
continued rollout still misses weighs at most that fraction. States whose return is cut shorter than
that (the last H of a rollout that did not terminate) are dropped. Terminated episodes are exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from offrl.evaluation.rollout import Episode

__all__ = ["Rollout", "QBiasReport", "discounted_returns", "dropped_tail", "q_bias", "q_estimates"]


@dataclass
class Rollout:
    rewards: np.ndarray  # (T,)
    q_estimates: np.ndarray  # (T,) Q̂(s_t, a_t) for the action taken
    terminated: bool  # true termination (vs. a time-limit cut)


@dataclass
class QBiasReport:
    mean_bias: float
    normalized_mean_bias: float  # mean of (Q̂ − G) / |mean G| (REDQ, Chen et al. 2021)
    normalized_std: float
    states: int  # states that entered the measure
    dropped_states: int  # states dropped at time-limit cuts
    curve: dict[str, np.ndarray]  # per-timestep means: t, q, mc_return, bias, count
    rule: str


def discounted_returns(rewards: np.ndarray, gamma: float) -> np.ndarray:
    returns = np.zeros(len(rewards))
    running = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        running = rewards[t] + gamma * running
        returns[t] = running
    return returns


def dropped_tail(gamma: float, tail_tolerance: float) -> int:
    return 0 if gamma == 0 else math.ceil(math.log(tail_tolerance) / math.log(gamma))


def q_bias(rollouts: list[Rollout], gamma: float, tail_tolerance: float = 0.01,
           measure_limit: int | None = None) -> QBiasReport:
    """Bias over the states of `rollouts`; with `measure_limit` (the env's own time limit) only states
    before it are measured, the rest of each rollout serves only to complete their returns."""
    horizon = dropped_tail(gamma, tail_tolerance)
    q_all, g_all, t_all, dropped = [], [], [], 0
    for rollout in rollouts:
        returns = discounted_returns(rollout.rewards, gamma)
        keep = len(returns) if rollout.terminated else max(0, len(returns) - horizon)
        if measure_limit is not None:
            dropped -= max(0, len(returns) - max(keep, measure_limit))  # past the limit: never meant to count
            keep = min(keep, measure_limit)
        dropped += len(returns) - keep
        q_all.append(rollout.q_estimates[:keep])
        g_all.append(returns[:keep])
        t_all.append(np.arange(keep))
    q, g, t = np.concatenate(q_all), np.concatenate(g_all), np.concatenate(t_all)
    rule = (f"rollouts continue {horizon} steps past the time limit (gamma^{horizon} <= {tail_tolerance}) to "
            f"complete returns; states whose return is still cut shorter than that are dropped; no bootstrapping")
    if len(q) == 0:
        nan = float("nan")
        return QBiasReport(nan, nan, nan, 0, dropped, {}, rule)
    bias = q - g
    scale = abs(float(g.mean())) or 1.0
    steps = np.arange(t.max() + 1)
    counts = np.bincount(t, minlength=len(steps))
    curve = {"t": steps, "count": counts,
             "q": np.bincount(t, q, len(steps)) / np.maximum(counts, 1),
             "mc_return": np.bincount(t, g, len(steps)) / np.maximum(counts, 1),
             "bias": np.bincount(t, bias, len(steps)) / np.maximum(counts, 1)}
    return QBiasReport(mean_bias=float(bias.mean()), normalized_mean_bias=float((bias / scale).mean()),
                       normalized_std=float((bias / scale).std()), states=len(q), dropped_states=dropped,
                       curve=curve, rule=rule)


def q_estimates(episodes: list[Episode], q_function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                device: torch.device | str = "cpu") -> list[Rollout]:
    """Q̂ of every recorded (s_t, a_t), one batched call per episode."""
    rollouts = []
    for episode in episodes:
        with torch.no_grad():
            q = q_function(torch.as_tensor(episode.observations, device=device),
                           torch.as_tensor(episode.actions, device=device))
        rollouts.append(Rollout(episode.rewards, q.cpu().numpy().astype(np.float64), episode.terminated))
    return rollouts
