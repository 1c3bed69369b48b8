import json
import shutil

import numpy as np
import pytest
import torch

from offrl.envs import make_env
from offrl.errors import OfflineRLError
from offrl.policies import load_policy, policy_path
from offrl.shipped import shipped_policies_root

SHIPPED_ENVS = ("HalfCheetah-v5", "Hopper-v5", "Walker2d-v5", "Pendulum-v1")
TIERS = ("expert", "medium")


@pytest.mark.parametrize("env_id", SHIPPED_ENVS)
@pytest.mark.parametrize("tier", TIERS)
def test_shipped_policy_loads_matches_its_card_and_runs_an_episode(env_id, tier):
    policy = load_policy(env_id, tier)
    card = policy.card
    assert card["env_id"] == env_id and card["tier"] == tier
    assert card["eval_episodes"] >= 20
    for key in ("gymnasium", "mujoco", "training_steps", "seed", "return_mean", "return_std", "sha256", "command"):
        assert key in card
    env = make_env(env_id, seed=0)
    obs, _ = env.reset(seed=0)
    done, steps = False, 0
    while not done:
        action = policy.actor.act(torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0), deterministic=True)[0]
        obs, _, terminated, truncated, _ = env.step(action.numpy())
        done, steps = terminated or truncated, steps + 1
    assert steps > 0 and np.isfinite(obs).all()


def test_expert_beats_medium_on_every_env():
    for env_id in SHIPPED_ENVS:
        assert load_policy(env_id, "expert").card["return_mean"] > load_policy(env_id, "medium").card["return_mean"]


def test_policy_whose_weights_differ_from_the_card_is_refused(tmp_path):
    source = policy_path("Pendulum-v1", "expert")
    weights, card = tmp_path / "expert.pt", tmp_path / "expert.json"
    shutil.copy(source, weights)
    shutil.copy(source.with_suffix(".json"), card)
    with open(weights, "ab") as f:
        f.write(b"\0")
    with pytest.raises(OfflineRLError, match="sha256 .* does not match its card's"):
        load_policy(weights)


def test_policy_without_card_or_file_is_refused(tmp_path):
    with pytest.raises(OfflineRLError, match="no such file"):
        load_policy(tmp_path / "missing.pt")
    shutil.copy(policy_path("Pendulum-v1", "expert"), tmp_path / "orphan.pt")
    with pytest.raises(OfflineRLError, match="card .* is missing"):
        load_policy(tmp_path / "orphan.pt")
    (tmp_path / "orphan.json").write_text(json.dumps({"sha256": "0" * 64}))
    with pytest.raises(OfflineRLError, match="does not match"):
        load_policy(tmp_path / "orphan.pt")


def test_policy_root_in_a_source_checkout_is_the_repository_folder():
    assert shipped_policies_root().parts[-2:] == ("datasets", "policies")
