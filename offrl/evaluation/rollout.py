"""Policy rollouts with batched inference: K envs step in lockstep, one forward pass per step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from offrl.envs import make_env

__all__ = ["Episode", "RolloutResult", "rollout_episodes", "evaluate_policy", "uniform_random_policy"]


@dataclass
class Episode:
    rewards: np.ndarray  # (T,)
    terminated: bool  # true termination, not a time-limit cut
    observations: np.ndarray | None = None  # (T, obs) when recorded
    actions: np.ndarray | None = None  # (T, act) in [-1, 1], when recorded

    @property
    def total_reward(self) -> float:
        return float(self.rewards.sum())


@dataclass(frozen=True)
class RolloutResult:
    returns: np.ndarray  # (episodes,)

    @property
    def mean(self) -> float:
        return float(self.returns.mean())

    @property
    def std(self) -> float:
        return float(self.returns.std())


def rollout_episodes(policy: Callable[[torch.Tensor], torch.Tensor], env_id: str, episodes: int, seed: int,
                     device: torch.device | str = "cpu", record: bool = False,
                     max_episode_steps: int | None = None) -> list[Episode]:
    """Run `episodes` episodes, env i reset with seed `seed + i`; `policy` maps (K, obs) → (K, act) in [-1, 1].

    The seeds depend only on `seed`, so two policies evaluated with one seed face the same start states.
    `max_episode_steps` overrides the env's time limit (Q-bias rollouts run past it).
    """
    envs = [make_env(env_id, max_episode_steps=max_episode_steps) for _ in range(episodes)]
    obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)]).astype(np.float32)
    rewards: list[list[float]] = [[] for _ in envs]
    observations: list[list[np.ndarray]] = [[] for _ in envs]
    actions_taken: list[list[np.ndarray]] = [[] for _ in envs]
    terminated = [False] * episodes
    active = list(range(episodes))
    while active:
        with torch.no_grad():
            actions = policy(torch.as_tensor(obs[active], device=device)).cpu().numpy()
        still_running = []
        for j, i in enumerate(active):
            if record:
                observations[i].append(obs[i].copy())
                actions_taken[i].append(actions[j])
            next_obs, reward, term, trunc, _ = envs[i].step(actions[j])
            rewards[i].append(float(reward))
            obs[i] = next_obs
            if term or trunc:
                terminated[i] = bool(term)
            else:
                still_running.append(i)
        active = still_running
    for env in envs:
        env.close()
    return [Episode(rewards=np.asarray(rewards[i]), terminated=terminated[i],
                    observations=np.stack(observations[i]) if record else None,
                    actions=np.stack(actions_taken[i]) if record else None) for i in range(episodes)]


def uniform_random_policy(act_dim: int, seed: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Uniform actions in [-1, 1] from a generator of its own: the random reference score is repeatable
    and does not disturb the global RNG."""
    generator = torch.Generator().manual_seed(seed)
    return lambda obs: torch.rand(obs.shape[0], act_dim, generator=generator) * 2 - 1


def evaluate_policy(policy: Callable[[torch.Tensor], torch.Tensor], env_id: str, episodes: int, seed: int,
                    device: torch.device | str = "cpu") -> RolloutResult:
    result = rollout_episodes(policy, env_id, episodes, seed, device)
    return RolloutResult(returns=np.array([e.total_reward for e in result]))
