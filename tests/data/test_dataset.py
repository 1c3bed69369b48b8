import numpy as np

from offrl.data.dataset import returns_to_go


def test_returns_to_go_restart_at_terminals_and_truncations():
    rewards = np.array([1.0, 1.0, 1.0, 2.0, 2.0, 3.0])
    terminals = np.array([0, 0, 1, 0, 0, 0], dtype=bool)
    timeouts = np.array([0, 0, 0, 0, 1, 1], dtype=bool)
    np.testing.assert_allclose(returns_to_go(rewards, terminals, timeouts, 0.5),
                               [1.75, 1.5, 1.0, 3.0, 2.0, 3.0])


def test_a_training_buffer_holds_normalized_observations_scaled_rewards_and_their_returns_to_go():
    import torch
    from tests_support import make_arrays

    from offrl.data.dataset import ObservationNormalizer, buffer_from_dataset, load_dataset
    from offrl.data.registry import register_dataset

    arrays = make_arrays()
    register_dataset("pendulum/rtg-v0", arrays, {"env_id": "Pendulum-v1"})
    dataset = load_dataset("pendulum/rtg-v0")
    normalizer = ObservationNormalizer.from_observations(dataset.tensors["observations"])
    buffer = buffer_from_dataset(dataset, normalizer=normalizer, reward_scale=2.0, mc_returns_gamma=0.9)
    batch = buffer.sample(len(dataset))  # sampled rows: compare each with its own source row
    rows = [int(torch.nonzero((dataset.tensors["actions"] == a).all(-1))[0]) for a in batch.actions]
    expected_rtg = returns_to_go(arrays["rewards"] * 2.0, arrays["terminals"], arrays["timeouts"], 0.9)
    torch.testing.assert_close(batch.rewards, torch.as_tensor(arrays["rewards"][rows] * 2.0))
    torch.testing.assert_close(batch.observations, normalizer(torch.as_tensor(arrays["observations"][rows])))
    torch.testing.assert_close(batch.mc_returns, torch.as_tensor(expected_rtg[rows], dtype=torch.float32))
    assert buffer_from_dataset(dataset).sample(4).mc_returns is None
