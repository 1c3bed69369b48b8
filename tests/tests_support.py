"""Small hand-made data shared by several test files."""

import numpy as np


def make_arrays(n=10, obs_dim=3, act_dim=1, episode_len=5, seed=0):
    rng = np.random.default_rng(seed)
    timeouts = np.zeros(n, dtype=bool)
    timeouts[episode_len - 1 :: episode_len] = True
    timeouts[-1] = True
    return {"observations": rng.normal(size=(n, obs_dim)).astype(np.float32),
            "actions": rng.uniform(-1, 1, (n, act_dim)).astype(np.float32),
            "rewards": rng.normal(size=n).astype(np.float32),
            "next_observations": rng.normal(size=(n, obs_dim)).astype(np.float32),
            "terminals": np.zeros(n, dtype=bool), "timeouts": timeouts}
