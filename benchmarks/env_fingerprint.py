"""A fingerprint of an env's dynamics under the installed Gymnasium and MuJoCo: the sha256 of the observations and
rewards of fixed episodes (reset seeds and uniform actions from fixed seeds), at least --min-steps steps in all.
The parity check trains and evaluates d3rlpy in its own venv (Gymnasium 1.0.0, d3rlpy's pin) and offrl in the
main one (a later Gymnasium); equal fingerprints in both say that the two evaluate on the same MDP. Needs only
gymnasium, mujoco and numpy.

    .venv/bin/python benchmarks/env_fingerprint.py HalfCheetah-v5 Hopper-v5 Walker2d-v5
    .venv-d3rlpy/bin/python benchmarks/env_fingerprint.py HalfCheetah-v5 Hopper-v5 Walker2d-v5
"""

from __future__ import annotations

import argparse
import hashlib

import gymnasium as gym
import numpy as np


def fingerprint(env_id: str, min_steps: int = 3_000, seed: int = 10_000_000) -> tuple[str, int]:
    """(sha256 hex of every observation and reward as float64 bytes, the number of steps) over whole episodes of
    uniform actions, episode i reset with seed + i, until at least `min_steps` steps (Hopper and Walker2d fall
    within tens of steps under random actions, so they take many episodes)."""
    digest, steps, i = hashlib.sha256(), 0, 0
    while steps < min_steps:
        env = gym.make(env_id)
        actions = np.random.default_rng(i)
        observation, _ = env.reset(seed=seed + i)
        digest.update(np.asarray(observation, np.float64).tobytes())
        done = False
        while not done:
            action = actions.uniform(env.action_space.low, env.action_space.high).astype(env.action_space.dtype)
            observation, reward, terminated, truncated, _ = env.step(action)
            digest.update(np.asarray(observation, np.float64).tobytes() + np.float64(reward).tobytes())
            steps += 1
            done = terminated or truncated
        env.close()
        i += 1
    return digest.hexdigest(), steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("env_ids", nargs="+")
    parser.add_argument("--min-steps", type=int, default=3_000)
    args = parser.parse_args()
    import mujoco

    for env_id in args.env_ids:
        digest, steps = fingerprint(env_id, args.min_steps)
        print(f"{env_id}: {digest} ({steps} steps; gymnasium {gym.__version__}, mujoco {mujoco.__version__})")


if __name__ == "__main__":
    main()
