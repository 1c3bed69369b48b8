import gymnasium as gym
import numpy as np
import pytest
import torch

from offrl.evaluation.q_bias import Rollout, discounted_returns, dropped_tail, q_bias, q_estimates
from offrl.evaluation.rollout import rollout_episodes

GAMMA = 0.99


class Countdown(gym.Env):
    """Reward 1 per step; observation = steps taken. With `horizon`, the episode terminates after that
    many steps, so Q^π(s_t, a) = (1 − γ^(horizon − t)) / (1 − γ) for every policy, in closed form."""

    def __init__(self, horizon=None):
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.horizon = horizon

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        terminated = self.horizon is not None and self.t >= self.horizon
        return np.array([self.t], np.float32), 1.0, terminated, False, {}


gym.register("offrl-test/Countdown-v0", entry_point=Countdown, kwargs={"horizon": 50})
gym.register("offrl-test/Forever-v0", entry_point=Countdown, kwargs={"horizon": None}, max_episode_steps=600)


def true_q(obs, horizon):
    remaining = horizon - obs[:, 0]
    return (1 - GAMMA ** remaining) / (1 - GAMMA)


def test_discounted_returns_on_a_hand_made_episode():
    np.testing.assert_allclose(discounted_returns(np.array([1.0, 0.0, 2.0]), 0.5), [1.5, 1.0, 2.0])


def test_bias_is_exact_on_an_environment_with_known_q():
    policy = lambda obs: torch.zeros(len(obs), 1)  # noqa: E731
    episodes = rollout_episodes(policy, "offrl-test/Countdown-v0", 3, seed=0, record=True)
    exact = q_bias(q_estimates(episodes, lambda o, a: torch.as_tensor(true_q(o.double().numpy(), 50))), GAMMA)
    assert exact.states == 150 and exact.dropped_states == 0
    assert abs(exact.mean_bias) < 1e-9 and abs(exact.normalized_mean_bias) < 1e-9
    shifted = q_bias(q_estimates(episodes, lambda o, a: torch.as_tensor(true_q(o.double().numpy(), 50) + 2.5)),
                     GAMMA)
    assert shifted.mean_bias == pytest.approx(2.5, abs=1e-9)
    returns = np.concatenate([discounted_returns(np.ones(50), GAMMA)] * 3)
    assert shifted.normalized_mean_bias == pytest.approx(2.5 / returns.mean(), abs=1e-9)
    assert shifted.normalized_std == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(shifted.curve["bias"], 2.5, atol=1e-9)
    assert shifted.curve["count"].tolist() == [3] * 50


def test_time_limit_cuts_drop_the_states_whose_return_is_cut_short():
    policy = lambda obs: torch.zeros(len(obs), 1)  # noqa: E731
    episodes = rollout_episodes(policy, "offrl-test/Forever-v0", 2, seed=0, record=True)
    assert not episodes[0].terminated and len(episodes[0].rewards) == 600
    horizon = dropped_tail(GAMMA, 0.01)
    assert GAMMA ** horizon <= 0.01 < GAMMA ** (horizon - 1)
    report = q_bias(q_estimates(episodes, lambda o, a: torch.full((len(o),), 1 / (1 - GAMMA))), GAMMA)
    assert report.states == 2 * (600 - horizon) and report.dropped_states == 2 * horizon
    assert 0 < report.mean_bias <= 0.01 / (1 - GAMMA)  # what the kept returns miss weighs at most 1%


def test_rollouts_past_the_time_limit_measure_every_state_inside_it():
    policy = lambda obs: torch.zeros(len(obs), 1)  # noqa: E731
    horizon = dropped_tail(GAMMA, 0.01)
    episodes = rollout_episodes(policy, "offrl-test/Forever-v0", 2, seed=0, record=True,
                                max_episode_steps=600 + horizon)
    report = q_bias(q_estimates(episodes, lambda o, a: torch.full((len(o),), 1 / (1 - GAMMA))), GAMMA,
                    measure_limit=600)
    assert report.states == 2 * 600 and report.dropped_states == 0
    assert 0 < report.mean_bias <= 0.01 / (1 - GAMMA)


def test_terminated_rollouts_keep_every_state():
    rollouts = [Rollout(np.ones(5), np.zeros(5), terminated=True), Rollout(np.ones(5), np.zeros(5), terminated=False)]
    report = q_bias(rollouts, 0.5, tail_tolerance=0.2)  # horizon 3
    assert report.states == 5 + 2 and report.dropped_states == 3
