import minari
import numpy as np
import pytest
from minari.data_collector.episode_buffer import EpisodeBuffer

from offrl.data.dataset import load_dataset
from offrl.data.minari_io import export_minari, import_minari, import_minari_if_local
from offrl.data.registry import card_path, register_dataset
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


def make_halfcheetah_minari_dataset(minari_id="mujoco/halfcheetah/medium-v0", lengths=(3, 4)):
    """A few short HalfCheetah-v5 episodes of random numbers (obs 17, actions 6), no reference scores."""
    rng = np.random.default_rng(0)
    episodes = [EpisodeBuffer(
        id=number, observations=rng.normal(size=(n + 1, 17)),
        actions=rng.uniform(-1, 1, size=(n, 6)).astype(np.float32), rewards=rng.normal(size=n),
        terminations=np.zeros(n, bool), truncations=np.r_[np.zeros(n - 1, bool), [True]], infos={})
        for number, n in enumerate(lengths)]
    return minari.create_dataset_from_buffers(minari_id, episodes, env="HalfCheetah-v5", algorithm_name="test")


def test_minari_mujoco_dataset_without_scores_gets_d4rl_family_scores_labelled_as_such():
    make_halfcheetah_minari_dataset()
    card = import_minari("mujoco/halfcheetah/medium-v0")
    refs = card["reference_scores"]
    assert card["env_id"] == "HalfCheetah-v5" and (card["obs_dim"], card["act_dim"]) == (17, 6)
    assert refs["basis"] == "d4rl-env-family" and "note" not in refs
    assert refs["random"]["return_mean"] == -280.178953 and refs["expert"]["return_mean"] == 12135.0
    for kind, name in (("random", "REF_MIN_SCORE"), ("expert", "REF_MAX_SCORE")):
        source = refs[kind]["source"]
        assert "D4RL" in source and name in source and "d4rl/infos.py" in source and "halfcheetah" in source
        assert "Minari's metadata" in source and "has no" in source
    from offrl.evaluation.scores import reference_scores_from_card

    assert "D4RL REF_MIN_SCORE" in reference_scores_from_card(card).source
    assert card["command"] == "offrl datasets import-minari mujoco/halfcheetah/medium-v0"


def test_minari_metadata_scores_are_labelled_as_minaris():
    make_minari_dataset()
    refs = import_minari("test/pendulum/demo-v0")["reference_scores"]
    assert refs["basis"] == "minari-metadata" and "Minari metadata" in refs["random"]["source"]


def test_a_non_d4rl_env_without_scores_gets_a_note_and_no_scores():
    make_minari_dataset(refs=False)
    card = import_minari("test/pendulum/demo-v0")
    assert set(card["reference_scores"]) == {"note"}
    assert "Pendulum-v1" in card["reference_scores"]["note"]


def test_the_command_reproduces_the_import():
    make_minari_dataset(refs=False)
    assert import_minari("test/pendulum/demo-v0")["command"] == "offrl datasets import-minari test/pendulum/demo-v0"
    card = import_minari("test/pendulum/demo-v0", dataset_id="pendulum/other-v0", env_id="Pendulum-v1")
    assert card["command"] == ("offrl datasets import-minari test/pendulum/demo-v0 --id pendulum/other-v0 "
                               "--env Pendulum-v1")


def test_import_minari_if_local_imports_once_and_only_what_is_local():
    make_halfcheetah_minari_dataset()
    card = import_minari_if_local("mujoco/halfcheetah/medium-v0")
    assert card is not None and card["id"] == "mujoco/halfcheetah/medium-v0" and card["transitions"] == 7
    assert card["reference_scores"]["basis"] == "d4rl-env-family"
    path = card_path("mujoco/halfcheetah/medium-v0")
    before = path.read_bytes()
    assert import_minari_if_local("mujoco/halfcheetah/medium-v0") is None  # card exists: nothing touched
    assert path.read_bytes() == before
    assert load_dataset("mujoco/halfcheetah/medium-v0").tensors["actions"].shape == (7, 6)
    assert import_minari_if_local("mujoco/halfcheetah/expert-v0") is None  # not in the local Minari store
    assert not card_path("mujoco/halfcheetah/expert-v0").exists()


def test_import_minari_if_local_maps_minari_ids_to_offrl_ids():
    make_minari_dataset(minari_id="Test/pendulum/demo-v0")
    card = import_minari_if_local("test/pendulum/demo-v0")
    assert card is not None and card["source"]["minari_id"] == "Test/pendulum/demo-v0"
    assert card["command"] == "offrl datasets import-minari Test/pendulum/demo-v0"


def test_import_minari_if_local_failure_names_the_minari_id_in_one_line():
    make_minari_dataset(minari_id="test/pendulum/broken-v0")
    data = minari.list_local_datasets()  # the store is real; now damage the dataset's file
    assert "test/pendulum/broken-v0" in data
    from offrl.data.minari_io import minari_root

    for file in (minari_root() / "test/pendulum/broken-v0/data").glob("main_data.*"):
        file.write_bytes(b"not a dataset")
    with pytest.raises(OfflineRLError) as info:
        import_minari_if_local("test/pendulum/broken-v0")
    message = str(info.value)
    assert "test/pendulum/broken-v0" in message and "\n" not in message
    assert not card_path("test/pendulum/broken-v0").exists()
