import minari
import numpy as np
import pytest
from minari.data_collector.episode_buffer import EpisodeBuffer

from offrl.data.dataset import load_dataset
from offrl.data.minari_io import export_minari, import_minari
from offrl.data.registry import register_dataset
from offrl.errors import OfflineRLError


@pytest.fixture(autouse=True)
def minari_store(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))


def make_minari_dataset(minari_id="test/pendulum/demo-v0", lengths=(4, 6, 5), refs=True):
    episodes = []
    for number, n in enumerate(lengths):
        # observation = (episode, step, 0): every pair can be checked against its episode and step
        obs = np.stack([np.full(n + 1, number), np.arange(n + 1), np.zeros(n + 1)], 1).astype(np.float32)
        episodes.append(EpisodeBuffer(
            id=number, observations=obs, actions=np.linspace(-2, 2, n).reshape(n, 1).astype(np.float32),
            rewards=np.full(n, float(number)), terminations=np.r_[np.zeros(n - 1, bool), [number == 0]],
            truncations=np.r_[np.zeros(n - 1, bool), [number != 0]], infos={}))
    kwargs = {"ref_min_score": -1000.0, "ref_max_score": -150.0} if refs else {}
    return minari.create_dataset_from_buffers(minari_id, episodes, env="Pendulum-v1", algorithm_name="test",
                                              **kwargs)


def test_import_aligns_every_episode_not_only_the_first():
    make_minari_dataset()
    card = import_minari("test/pendulum/demo-v0")
    dataset = load_dataset(card["id"])
    obs, next_obs = dataset.tensors["observations"].numpy(), dataset.tensors["next_observations"].numpy()
    assert len(obs) == 15 and card["episodes"] == 3
    np.testing.assert_array_equal(obs[:, 0], next_obs[:, 0])  # each pair lies within one episode
    np.testing.assert_array_equal(next_obs[:, 1], obs[:, 1] + 1)  # and is one step apart
    assert obs[4].tolist() == [1, 0, 0] and obs[10].tolist() == [2, 0, 0]  # episodes 1 and 2 start at step 0
    assert dataset.tensors["terminals"].nonzero().flatten().tolist() == [3]
    assert dataset.tensors["timeouts"].nonzero().flatten().tolist() == [9, 14]
    # Pendulum's torque lies in [-2, 2]; offrl stores actions in [-1, 1]
    np.testing.assert_allclose(dataset.tensors["actions"][:4, 0].numpy(), np.linspace(-1, 1, 4), atol=1e-6)
    assert card["reference_scores"]["random"]["return_mean"] == -1000.0
    assert card["reference_scores"]["expert"]["return_mean"] == -150.0


def test_import_without_reference_scores_says_so():
    make_minari_dataset(refs=False)
    card = import_minari("test/pendulum/demo-v0", dataset_id="pendulum/minari-v0")
    assert "no ref_min_score/ref_max_score" in card["reference_scores"]["note"]


def test_a_minari_id_not_in_the_local_store_is_a_clear_error():
    with pytest.raises(OfflineRLError, match="not in the local Minari store"):
        import_minari("mujoco/halfcheetah/medium-v0")


def test_export_opens_with_minari_and_round_trips():
    from tests_support import make_arrays

    arrays = make_arrays(n=12, obs_dim=3, act_dim=1, episode_len=4)
    for start in (0, 4, 8):  # make each episode contiguous, as real rollouts are
        arrays["next_observations"][start : start + 3] = arrays["observations"][start + 1 : start + 4]
    arrays["terminals"][3], arrays["timeouts"][3] = True, False
    register_dataset("pendulum/export-v0", arrays, {"env_id": "Pendulum-v1", "reference_scores": {
        "random": {"return_mean": -1200.0}, "expert": {"return_mean": -140.0}}})
    minari_id = export_minari("pendulum/export-v0")
    dataset = minari.load_dataset(minari_id)
    assert dataset.total_episodes == 3 and dataset.total_steps == 12
    assert dataset.storage.metadata["ref_min_score"] == -1200.0
    assert dataset.storage.metadata["ref_max_score"] == -140.0
    episodes = list(dataset.iterate_episodes())
    np.testing.assert_allclose(episodes[1].observations[:-1], arrays["observations"][4:8])
    np.testing.assert_allclose(episodes[1].actions[:, 0], arrays["actions"][4:8, 0] * 2, rtol=1e-6)
    assert episodes[0].terminations[-1] and episodes[2].truncations[-1]
    back = import_minari(minari_id, dataset_id="pendulum/roundtrip-v0")
    np.testing.assert_allclose(load_dataset(back["id"]).tensors["actions"].numpy(), arrays["actions"], atol=1e-6)
    with pytest.raises(OfflineRLError, match="already exists"):
        export_minari("pendulum/export-v0")


def test_export_refuses_non_contiguous_episodes():
    from tests_support import make_arrays

    register_dataset("pendulum/shuffled-v0", make_arrays(), {"env_id": "Pendulum-v1"})
    with pytest.raises(OfflineRLError, match="episode 0 .rows 0-4. is not contiguous"):
        export_minari("pendulum/shuffled-v0")
