import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from tests_support import make_arrays

from offrl.data.collect import CollectConfig, collect, rollout_transitions
from offrl.data.hdf5 import episode_ends, read_transitions, write_transitions
from offrl.data.registry import card_path, data_path, read_card
from offrl.errors import OfflineRLError


def _config(tier, transitions=450, version=0, **kwargs):
    return CollectConfig(env_id="Pendulum-v1", tier=tier, transitions=transitions, seed=3, version=version,
                         num_envs=4, **kwargs)


def test_rollouts_give_exactly_n_contiguous_transitions_and_are_deterministic():
    first, _ = rollout_transitions("Pendulum-v1", None, 450, seed=3, num_envs=4)
    second, _ = rollout_transitions("Pendulum-v1", None, 450, seed=3, num_envs=4)
    assert len(first["rewards"]) == 450
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])
    ends = episode_ends(first["terminals"], first["timeouts"])
    assert ends.tolist() == [199, 399, 449]  # two full episodes, the third cut by the end of collection
    for start, end in zip([0, 200, 400], ends, strict=True):
        np.testing.assert_array_equal(first["observations"][start + 1 : end + 1],
                                      first["next_observations"][start:end])
    assert np.abs(first["actions"]).max() <= 1.0
    np.testing.assert_allclose(first["infos/action_log_probs"], np.log(0.5))


def test_random_tier_card_has_provenance_and_reference_scores(tiny_policies):
    card = collect(_config("random"), show_progress=False, command="offrl collect test")
    assert card["id"] == "pendulum/random-v0" and card["tier"] == "random"
    assert card["transitions"] == 450 and card["episodes"] == 3
    assert {"gymnasium", "mujoco", "offrl_version", "git_commit", "created", "sha256", "seed"} <= set(card)
    refs = card["reference_scores"]
    assert refs["random"]["episodes"] >= 20 and refs["random"]["return_mean"] < -500
    assert refs["expert"]["return_mean"] == -500.0 and refs["expert"]["episodes"] == 20
    assert card["collection"]["transitions_per_s"] > 0


def test_policy_tiers_record_their_policy_and_concatenate_into_medium_expert(tiny_policies):
    medium = collect(_config("medium"), show_progress=False)
    expert = collect(_config("expert"), show_progress=False)
    assert medium["policy"]["sha256"] == read_card_policy(tiny_policies, "medium")
    both = collect(_config("medium-expert"), show_progress=False)
    assert both["transitions"] == 900
    assert [s["id"] for s in both["sources"]] == ["pendulum/medium-v0", "pendulum/expert-v0"]
    assert [s["sha256"] for s in both["sources"]] == [medium["sha256"], expert["sha256"]]
    arrays, _ = read_transitions(data_path("pendulum/medium-expert-v0"))
    assert "infos/action_log_probs" in arrays


def read_card_policy(root, tier):
    import json

    return json.loads((root / "Pendulum-v1" / f"{tier}.json").read_text())["sha256"]


def test_medium_expert_without_its_sources_says_how_to_collect_them(tiny_policies):
    with pytest.raises(OfflineRLError, match="Collect it first: offrl collect --env Pendulum-v1 --tier medium"):
        collect(_config("medium-expert"), show_progress=False)
    assert not card_path("pendulum/medium-expert-v0").exists()


def test_medium_replay_needs_snapshots_or_a_replay_export_and_says_how_to_produce_them(tiny_policies, tmp_path):
    with pytest.raises(OfflineRLError, match="no replay snapshots shipped .*offrl ship-replay --run RUN"):
        collect(_config("medium-replay"), show_progress=False)
    with pytest.raises(OfflineRLError, match="needs the SAC replay buffer(.|\n)*offrl ship-policies"):
        collect(_config("medium-replay", sampler="torch"), show_progress=False)
    replay = tmp_path / "replay.hdf5"
    write_transitions(replay, make_arrays(n=20, obs_dim=3, act_dim=1))
    card = collect(_config("medium-replay", replay_file=str(replay)), show_progress=False)
    assert card["transitions"] == 20 and card["policy"]["path"] == str(replay)
    write_transitions(tmp_path / "wide.hdf5", make_arrays(n=20, obs_dim=5, act_dim=1))
    with pytest.raises(OfflineRLError, match="obs/act dims 5/1, env Pendulum-v1 has 3/1"):
        collect(_config("medium-replay", version=1, replay_file=str(tmp_path / "wide.hdf5")), show_progress=False)


def test_collect_refuses_an_existing_version_and_rebuilds_a_missing_file_byte_for_byte(tiny_policies):
    card = collect(_config("random"), show_progress=False)
    with pytest.raises(OfflineRLError, match="already exists.*--version 1"):
        collect(_config("random"), show_progress=False)
    original = data_path("pendulum/random-v0").read_bytes()
    data_path("pendulum/random-v0").unlink()  # a fresh clone: card tracked, file ignored
    assert collect(_config("random"), show_progress=False)["sha256"] == card["sha256"]
    assert data_path("pendulum/random-v0").read_bytes() == original


def test_rebuild_that_does_not_reproduce_the_card_writes_nothing(tiny_policies):
    collect(_config("random"), show_progress=False)
    data_path("pendulum/random-v0").unlink()
    card_file = card_path("pendulum/random-v0")
    card_file.write_text(card_file.read_text().replace('"seed": 3', '"seed": 4'))  # card no longer matches
    with pytest.raises(OfflineRLError, match="does not reproduce the card's bytes"):
        collect(CollectConfig(env_id="Pendulum-v1", tier="random", transitions=450, seed=9, num_envs=4),
                show_progress=False)
    assert not data_path("pendulum/random-v0").exists()
    assert read_card("pendulum/random-v0")["seed"] == 4


def test_interrupt_during_the_write_leaves_no_file_and_no_card(tiny_policies, monkeypatch):
    calls = {"n": 0}
    original = h5py.Group.create_dataset

    def interrupted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", interrupted)
    with pytest.raises(KeyboardInterrupt):
        collect(_config("random"), show_progress=False)
    folder = data_path("pendulum/random-v0").parent
    assert not card_path("pendulum/random-v0").exists() and list(folder.iterdir()) == []


def test_kill_9_during_collection_leaves_nothing_under_the_final_name(tmp_path):
    env = {**os.environ, "OFFRL_DATASETS_PATH": str(tmp_path / "store")}
    process = subprocess.Popen([sys.executable, "-m", "offrl.cli", "collect", "--env", "Pendulum-v1", "--tier",
                                "random", "--transitions", "5000000", "--quiet"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(4)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "store" / "pendulum" / "random-v0.hdf5").exists()
    assert not (tmp_path / "store" / "pendulum" / "random-v0.json").exists()


def test_bad_tier_and_unknown_env_are_clear_errors(tiny_policies):
    with pytest.raises(OfflineRLError, match="--tier 'good' is not one of"):
        collect(_config("good"), show_progress=False)
    with pytest.raises(OfflineRLError, match="unknown env id"):
        collect(CollectConfig(env_id="Nope-v0", tier="random", transitions=10), show_progress=False)


def test_medium_replay_from_shipped_snapshots_rebuilds_byte_for_byte(tmp_path, monkeypatch):
    """The portable medium-replay tier: a pretrain run's snapshots shipped (`offrl ship-replay`), then rolled out
    in training order after the warm-up's uniform actions; a fresh store rebuilds the file from the card."""
    from offrl.algos.sac import SACConfig
    from offrl.policies import ship_replay_snapshots
    from offrl.train.online import PretrainSettings, pretrain

    run = pretrain(PretrainSettings(env_id="Pendulum-v1", env_steps=500, learning_starts=100, eval_every=100,
                                    eval_episodes=1, checkpoint_every=200,
                                    sac=SACConfig(hidden=(8,), batch_size=32)), tmp_path / "run", show_progress=False)
    monkeypatch.setenv("OFFRL_POLICIES_PATH", str(tmp_path / "policies"))
    card = ship_replay_snapshots(run, up_to=500, every=200)
    # segments [100, 200), [200, 400), [400, 500), each represented by the snapshot nearest its middle
    assert [(s["begin"], s["end"], s["step"]) for s in card["segments"]] == [(100, 200, 100), (200, 400, 300),
                                                                             (400, 500, 400)]
    replay = collect(_config("medium-replay", transitions=500), show_progress=False)
    assert replay["transitions"] == 500 and replay["collection"]["sampler"] == "portable-1"
    assert [s["step"] for s in replay["policy"]["snapshots"]] == [100, 300, 400]
    original = data_path("pendulum/medium-replay-v0").read_bytes()
    data_path("pendulum/medium-replay-v0").unlink()
    assert collect(_config("medium-replay", transitions=500), show_progress=False)["sha256"] == replay["sha256"]
    assert data_path("pendulum/medium-replay-v0").read_bytes() == original
    (tmp_path / "policies" / "Pendulum-v1" / "replay" / "actor_300.pt").write_bytes(b"tampered")
    data_path("pendulum/medium-replay-v0").unlink()
    with pytest.raises(OfflineRLError, match="actor_300.pt: missing or its sha256 differs"):
        collect(_config("medium-replay", transitions=500), show_progress=False)
