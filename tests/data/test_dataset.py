import numpy as np
import pytest

from offrl.data.dataset import returns_to_go
from offrl.errors import OfflineRLError


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


def test_collect_missing_rebuilds_a_file_whose_card_is_in_the_store():
    from offrl.data.collect import CollectConfig, collect
    from offrl.data.dataset import load_dataset
    from offrl.data.registry import data_path

    card = collect(CollectConfig(env_id="Pendulum-v1", tier="random", transitions=400, num_envs=2),
                   show_progress=False, command="test")
    data_path(card["id"]).unlink()  # a source checkout: the card is tracked, the file is not
    with pytest.raises(OfflineRLError, match="data file .* is missing"):
        load_dataset(card["id"])
    dataset = load_dataset(card["id"], collect_missing=True)
    assert dataset.card["sha256"] == card["sha256"] and len(dataset) == 400
