"""Environment construction and seeding.

Policies in offrl always act in [-1, 1]^|A|; `ScaledActionEnv` maps those actions affinely onto the
env's own Box bounds, so datasets store actions in the policy's [-1, 1] space for every env.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from offrl.errors import OfflineRLError

__all__ = ["EnvSpec", "ScaledActionEnv", "make_env", "env_spec", "seed_everything", "versions"]

FIRST_CLASS_ENVS = ("Pendulum-v1", "HalfCheetah-v5", "Hopper-v5", "Walker2d-v5")


def _install_mujoco_warning_filter() -> None:
    """MuJoCo 4 warns on every model load that Gymnasium's XML files use the deprecated `settotalmass`;
    that is Gymnasium's to fix and floods every collection and evaluation. Other warnings pass through."""
    try:
        import mujoco
    except ImportError:
        return

    def forward(message: str) -> None:
        if "settotalmass" not in message:
            import warnings

            warnings.warn(f"MuJoCo: {message}", RuntimeWarning, stacklevel=2)

    mujoco.set_mju_user_warning(forward)


_install_mujoco_warning_filter()


@dataclass(frozen=True)
class EnvSpec:
    """What a policy or dataset needs to know about an env to be checked against it."""

    env_id: str
    obs_dim: int
    act_dim: int
    max_episode_steps: int | None


class ScaledActionEnv(gym.Wrapper):
    """Accepts actions in [-1, 1] and rescales them to the wrapped env's Box bounds.

    Written here rather than using gymnasium's RescaleAction because that wrapper holds closures
    that cannot be pickled, and checkpoints of online runs store env state.
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        low = np.asarray(env.action_space.low, dtype=np.float64)
        high = np.asarray(env.action_space.high, dtype=np.float64)
        self._scale = (high - low) / 2.0
        self._offset = (high + low) / 2.0
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=env.action_space.shape, dtype=np.float32)

    def to_env_action(self, action: Any) -> np.ndarray:
        """[-1, 1] → the env's bounds; works on one action or a batch of them."""
        action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        return (self._offset + self._scale * action).astype(self.env.action_space.dtype)

    def step(self, action: Any):
        return self.env.step(self.to_env_action(action))

    def step_env_action(self, env_action: np.ndarray):
        """Step with an action already in the env's bounds (see `to_env_action`): lets a caller
        rescale a whole batch of actions in one vectorised call."""
        return self.env.step(env_action)


def _check_box(env_id: str, name: str, space: gym.Space) -> None:
    if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
        raise OfflineRLError(
            f"env {env_id!r}: offrl needs a 1-D Box {name} space, found {space!r}"
        )
    if name == "action" and not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
        raise OfflineRLError(f"env {env_id!r}: action space must be bounded, found {space!r}")


def make_env(env_id: str, seed: int | None = None, max_episode_steps: int | None = None) -> ScaledActionEnv:
    """Build a Gymnasium env whose policy-facing actions lie in [-1, 1].

    With a seed, the first reset and the action space are seeded (call `reset(seed=seed)` yourself
    only if you want to reseed later). `max_episode_steps` overrides the registered time limit.
    """
    try:
        base = gym.make(env_id, **({"max_episode_steps": max_episode_steps} if max_episode_steps else {}))
    except gym.error.Error as exc:
        raise OfflineRLError(f"unknown env id {env_id!r}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - gymnasium raises many types for a bad id/entry point
        raise OfflineRLError(f"env id {env_id!r} could not be created: {type(exc).__name__}: {exc}") from None
    _check_box(env_id, "observation", base.observation_space)
    _check_box(env_id, "action", base.action_space)
    env = ScaledActionEnv(base)
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env


def env_spec(env: gym.Env) -> EnvSpec:
    spec = env.spec
    return EnvSpec(
        env_id=spec.id if spec is not None else type(env.unwrapped).__name__,
        obs_dim=int(env.observation_space.shape[0]),
        act_dim=int(env.action_space.shape[0]),
        max_episode_steps=spec.max_episode_steps if spec is not None else None,
    )


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch; env seeding is done by `make_env`."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def versions() -> dict[str, str]:
    """Library versions that decide an env's dynamics, recorded in every card."""
    import mujoco

    return {"gymnasium": gym.__version__, "mujoco": mujoco.__version__}
