import numpy as np
import pytest
import torch

from offrl.envs import env_spec, make_env, seed_everything
from offrl.errors import OfflineRLError


def test_actions_in_unit_box_are_rescaled_to_env_bounds():
    env = make_env("Pendulum-v1", seed=0)  # torque bounds are [-2, 2]
    assert env.action_space.low.tolist() == [-1.0] and env.action_space.high.tolist() == [1.0]
    env.reset(seed=0)
    env.unwrapped.state = np.array([0.0, 0.0])
    env.step(np.array([0.5], dtype=np.float32))
    assert env.unwrapped.last_u == pytest.approx(1.0)  # 0.5 of the way to +2


def test_first_class_envs_build_with_their_dims():
    dims = {"HalfCheetah-v5": (17, 6), "Hopper-v5": (11, 3), "Walker2d-v5": (17, 6), "Pendulum-v1": (3, 1)}
    for env_id, (obs_dim, act_dim) in dims.items():
        spec = env_spec(make_env(env_id, seed=0))
        assert (spec.obs_dim, spec.act_dim) == (obs_dim, act_dim)


def test_seeding_makes_reset_and_action_sampling_repeatable():
    first, second = make_env("Hopper-v5", seed=3), make_env("Hopper-v5", seed=3)
    np.testing.assert_array_equal(first.reset(seed=3)[0], second.reset(seed=3)[0])
    np.testing.assert_array_equal(first.action_space.sample(), second.action_space.sample())
    seed_everything(5)
    a = torch.rand(3)
    seed_everything(5)
    assert torch.equal(a, torch.rand(3))


def test_unknown_env_id_is_one_clear_error():
    with pytest.raises(OfflineRLError, match="unknown env id 'NoSuchEnv-v0'"):
        make_env("NoSuchEnv-v0")


def test_non_box_action_space_is_refused():
    with pytest.raises(OfflineRLError, match="CartPole-v1.*Box action space"):
        make_env("CartPole-v1")
