"""Policy rollouts with batched inference: K envs step in lockstep, one forward pass per step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from offrl.envs import make_env

__all__ = ["RolloutResult", "evaluate_policy"]


@dataclass(frozen=True)
class RolloutResult:
    returns: np.ndarray  # (episodes,)
    lengths: np.ndarray  # (episodes,)

    @property
    def mean(self) -> float:
        return float(self.returns.mean())

    @property
    def std(self) -> float:
        return float(self.returns.std())


def evaluate_policy(policy: Callable[[torch.Tensor], torch.Tensor], env_id: str, episodes: int, seed: int,
                    device: torch.device | str = "cpu") -> RolloutResult:
    """Run `episodes` episodes, env i reset with seed `seed + i`; `policy` maps (K, obs) → (K, act) in [-1, 1].

    The seeds depend only on `seed`, so two policies evaluated with one seed face the same start states.
    """
    envs = [make_env(env_id) for _ in range(episodes)]
    obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)]).astype(np.float32)
    returns = np.zeros(episodes)
    lengths = np.zeros(episodes, dtype=np.int64)
    active = np.ones(episodes, dtype=bool)
    while active.any():
        idx = np.flatnonzero(active)
        with torch.no_grad():
            actions = policy(torch.as_tensor(obs[idx], device=device)).cpu().numpy()
        for j, i in enumerate(idx):
            next_obs, reward, terminated, truncated, _ = envs[i].step(actions[j])
            returns[i] += reward
            lengths[i] += 1
            obs[i] = next_obs
            if terminated or truncated:
                active[i] = False
    for env in envs:
        env.close()
    return RolloutResult(returns=returns, lengths=lengths)
