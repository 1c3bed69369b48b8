import pytest
import torch

from offrl.data.buffer import ReplayBuffer
from offrl.data.dataset import MixedSampler, ObservationNormalizer
from offrl.errors import OfflineRLError


def filled(n, capacity, marker=0.0):
    buffer = ReplayBuffer(2, 1, capacity)
    buffer.add_batch({"observations": torch.arange(n).float().unsqueeze(1).repeat(1, 2) + marker,
                      "actions": torch.zeros(n, 1), "rewards": torch.full((n,), marker),
                      "next_observations": torch.zeros(n, 2), "terminals": torch.zeros(n), "timeouts": torch.zeros(n)})
    return buffer


def test_fifo_overwrites_the_oldest_and_keeps_insertion_order():
    buffer = filled(5, 4)
    assert len(buffer) == 4
    assert buffer.transitions()["observations"][:, 0].tolist() == [1, 2, 3, 4]
    buffer.add([9, 9], [0.5], 1.0, [0, 0], True, False)
    assert buffer.transitions()["observations"][:, 0].tolist() == [2, 3, 4, 9]
    assert buffer.total_added == 6


def test_state_dict_round_trip_holds_only_the_stored_rows():
    buffer = filled(3, 100)
    state = buffer.state_dict()
    assert state["transitions"]["observations"].untyped_storage().nbytes() == 3 * 2 * 4
    other = ReplayBuffer(2, 1, 100)
    other.load_state_dict(state)
    assert torch.equal(other.transitions()["observations"], buffer.transitions()["observations"])


def test_samples_come_from_stored_rows_only():
    buffer = filled(10, 1000)
    batch = buffer.sample(512, torch.Generator().manual_seed(0))
    assert batch.observations[:, 0].max() <= 9 and batch.observations.shape == (512, 2)


def test_mixed_sampler_draws_the_set_share_from_each_source():
    offline, online = filled(100, 100, marker=0.0), filled(50, 100, marker=1000.0)
    batch = MixedSampler(offline, online, 0.25).sample(256)
    from_online = (batch.rewards == 1000.0).sum().item()
    assert from_online == 192


def test_mixed_sampler_is_exact_while_online_buffer_is_smaller_than_its_share():
    offline, online = filled(100, 100), filled(3, 100, marker=1000.0)  # 3 rows, share is 128
    batch = MixedSampler(offline, online, 0.5).sample(256)
    assert (batch.rewards == 1000.0).sum().item() == 128
    empty = ReplayBuffer(2, 1, 10)
    assert (MixedSampler(offline, empty, 0.5).sample(64).rewards == 0).all()


def test_proportional_sampling_is_uniform_over_the_union():
    offline, online = filled(300, 300), filled(100, 100, marker=1000.0)
    batch = MixedSampler(offline, online, "proportional").sample(40_000, torch.Generator().manual_seed(0))
    share = (batch.rewards == 1000.0).float().mean().item()
    assert share == pytest.approx(0.25, abs=0.01)
    assert batch.observations[batch.rewards == 1000.0][:, 0].max() < 1100


def test_bad_offline_ratio_is_refused():
    with pytest.raises(OfflineRLError, match="offline_ratio"):
        MixedSampler(filled(1, 1), filled(1, 1), 1.5)


def test_observation_normalizer_statistics_and_round_trip(tmp_path):
    obs = torch.tensor([[1.0, 5.0], [3.0, 5.0]])
    normalizer = ObservationNormalizer.from_observations(obs)
    torch.testing.assert_close(normalizer.mean, torch.tensor([2.0, 5.0]))
    assert torch.isfinite(normalizer(obs)).all()  # the constant feature does not divide by zero
    normalizer.save(tmp_path / "n.json")
    loaded = ObservationNormalizer.load(tmp_path / "n.json")
    torch.testing.assert_close(loaded(obs), normalizer(obs))
