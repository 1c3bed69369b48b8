import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from offrl.data import portable
from offrl.data.collect import CollectConfig, card_sampler, collect, rollout_transitions
from offrl.data.registry import card_path, data_path
from offrl.errors import OfflineRLError
from offrl.nets import ActorParameterization, TanhGaussianActor, tanh_gaussian_log_prob
from offrl.policies import load_policy


@pytest.mark.parametrize("name, ours, reference, low, high", [
    ("exp", portable.exp, np.exp, -700.0, 700.0),
    ("expm1", portable.expm1, np.expm1, -3.0, 3.0),
    ("tanh", portable.tanh, np.tanh, -25.0, 25.0),
    ("softplus", portable.softplus, lambda z: np.logaddexp(0.0, z), -40.0, 40.0),
    ("log", portable.log, np.log, 1e-300, 1e300),
    ("log1p", portable.log1p, np.log1p, -0.5, 1.0),
])
def test_elementary_functions_are_accurate_to_a_few_ulp(name, ours, reference, low, high):
    rng = np.random.default_rng(0)
    x = np.exp(rng.uniform(np.log(low), np.log(high), 50_000)) if name == "log" else rng.uniform(low, high, 50_000)
    x = np.concatenate([x, [0.0] if name != "log" else [1.0]])
    expected = reference(x)
    error = np.abs(ours(x) - expected) / np.maximum(np.abs(expected), np.finfo(np.float64).tiny)
    assert error.max() < 2e-15, f"{name}: worst relative error {error.max():.2e}"


def test_log1p_refuses_inputs_outside_its_domain():
    with pytest.raises(ValueError, match=r"\[-0.5, 1\]"):
        portable.log1p(np.array([2.0]))


def test_normal_stream_is_standard_normal_and_independent_of_request_sizes():
    draws = portable.PortableNormal(7).standard_normal((200_000,))
    assert abs(draws.mean()) < 0.01 and abs(draws.std() - 1.0) < 0.01
    assert abs(((draws - draws.mean()) ** 4).mean() / draws.var() ** 2 - 3.0) < 0.05  # kurtosis
    for q, z in ((0.025, -1.959964), (0.5, 0.0), (0.975, 1.959964)):
        assert abs(np.quantile(draws, q) - z) < 0.02
    pieces = portable.PortableNormal(7)
    again = np.concatenate([pieces.standard_normal((n,)) for n in (1, 5, 3, 9000, 190_991)])
    np.testing.assert_array_equal(again, draws)
    assert not np.array_equal(portable.PortableNormal(8).standard_normal((100,)), draws[:100])


@pytest.mark.parametrize("parameterization", [None, ActorParameterization(-20.0, 2.0, 1.3, -0.7, "xavier")],
                         ids=["original", "corl"])
def test_portable_actor_computes_what_the_torch_actor_computes(parameterization):
    torch.manual_seed(0)
    actor = TanhGaussianActor(17, 6, (64, 64), parameterization)
    obs = np.random.default_rng(1).normal(size=(32, 17)).astype(np.float32)
    ours = portable.PortableActor(actor.state_dict(), actor.parameterization)
    mean, log_std = ours.distribution_params(obs)
    with torch.no_grad():
        torch_actor = actor.double()
        expected_mean, expected_log_std = torch_actor.distribution_params(torch.as_tensor(obs, dtype=torch.float64))
    np.testing.assert_allclose(mean, expected_mean.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(log_std, expected_log_std.numpy(), rtol=0, atol=1e-12)

    actions, log_probs = ours.sample(obs, portable.PortableNormal(0))
    noise = portable.PortableNormal(0).standard_normal(mean.shape)
    pre_tanh = torch.as_tensor(mean + np.exp(log_std) * noise)
    np.testing.assert_allclose(actions, torch.tanh(pre_tanh).numpy(), rtol=0, atol=1e-14)
    expected_log_probs = tanh_gaussian_log_prob(pre_tanh, torch.as_tensor(mean), torch.as_tensor(log_std))
    np.testing.assert_allclose(log_probs, expected_log_probs.numpy(), rtol=1e-12, atol=1e-10)
    assert np.abs(actions).max() <= 1.0


_PROBE = """
import hashlib, sys, numpy as np
from numpy._core._multiarray_umath import __cpu_features__
from offrl.data.collect import rollout_transitions
from offrl.policies import load_policy
actor = load_policy("HalfCheetah-v5", "medium").actor
arrays, _ = rollout_transitions("HalfCheetah-v5", actor, 1200, seed=0, num_envs=3, sampler=sys.argv[1])
digest = hashlib.sha256()
for key in sorted(arrays):
    digest.update(np.ascontiguousarray(arrays[key]).tobytes())
print(digest.hexdigest(), int(__cpu_features__.get("X86_V3", False)))
"""


def _probe(sampler: str, **env: str) -> tuple[str, bool]:
    result = subprocess.run([sys.executable, "-c", _PROBE, sampler], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **env}, check=True)
    digest, v3 = result.stdout.split()
    return digest, v3 == "1"


def test_portable_collection_gives_the_same_bytes_under_other_cpu_dispatch_paths():
    """numpy's and torch's kernels for a CPU without AVX2 (what an older host runs) versus this host's own:
    the portable sampler's HalfCheetah rollouts of the shipped medium policy hash the same."""
    native, _ = _probe("portable")
    baseline, v3_used = _probe("portable", NPY_DISABLE_CPU_FEATURES="X86_V3", ATEN_CPU_CAPABILITY="default")
    assert not v3_used  # the second process really ran numpy's pre-AVX2 (x86-64-v2) kernels
    assert baseline == native


def test_portable_rollouts_follow_the_policy_and_are_deterministic():
    policy = load_policy("HalfCheetah-v5", "medium")
    first, _ = rollout_transitions("HalfCheetah-v5", policy.actor, 600, seed=0, num_envs=2)
    second, _ = rollout_transitions("HalfCheetah-v5", policy.actor, 600, seed=0, num_envs=2)
    other_seed, _ = rollout_transitions("HalfCheetah-v5", policy.actor, 600, seed=1, num_envs=2)
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])
    assert not np.array_equal(first["actions"], other_seed["actions"])
    # The stored log-probs are those of the stored actions under the policy (torch's formula, float32 data).
    with torch.no_grad():
        mean, log_std = policy.actor.distribution_params(torch.as_tensor(first["observations"]))
        actions = torch.as_tensor(first["actions"]).clamp(-1 + 1e-6, 1 - 1e-6)
        pre_tanh = torch.atanh(actions.double())
        expected = tanh_gaussian_log_prob(pre_tanh, mean.double(), log_std.double()).numpy()
    near_edge = np.abs(first["actions"]).max(axis=1) > 0.999  # atanh of a rounded float32 is ill-conditioned there
    np.testing.assert_allclose(first["infos/action_log_probs"][~near_edge], expected[~near_edge], atol=2e-3)
    # The medium policy runs forward: a return far above the uniform policy's (about -0.3 per step).
    assert first["rewards"].mean() > 1.0


def _config(tier, **kwargs):
    return CollectConfig(env_id="Pendulum-v1", tier=tier, transitions=450, seed=3, num_envs=4, **kwargs)


def test_cards_record_the_sampler_and_a_rebuild_follows_the_card(tiny_policies):
    card = collect(_config("medium"), show_progress=False)
    assert card["collection"]["sampler"] == portable.SAMPLER_VERSION
    original = data_path("pendulum/medium-v0").read_bytes()
    data_path("pendulum/medium-v0").unlink()
    rebuilt = collect(_config("medium", sampler="torch"), show_progress=False)  # the card's sampler wins
    assert rebuilt["sha256"] == card["sha256"] and data_path("pendulum/medium-v0").read_bytes() == original

    torch_card = collect(_config("medium", version=1, sampler="torch"), show_progress=False)
    assert torch_card["collection"]["sampler"] == "torch" and torch_card["sha256"] != card["sha256"]
    assert "sampler" not in collect(_config("random"), show_progress=False)["collection"]  # uniform actions


def test_card_sampler_reads_old_cards_and_refuses_unknown_samplers():
    assert card_sampler({"id": "x/medium-v0", "collection": {"num_envs": 16}}) == "torch"  # the v0 cards
    assert card_sampler({"collection": {"sampler": portable.SAMPLER_VERSION}}) == "portable"
    with pytest.raises(OfflineRLError, match="x/medium-v9: collected with sampler 'portable-99'"):
        card_sampler({"id": "x/medium-v9", "collection": {"sampler": "portable-99"}})
    with pytest.raises(OfflineRLError, match="--sampler 'fast' is not one of portable, torch"):
        _config("medium", sampler="fast").validate()


def test_shipped_v1_cards_name_the_portable_sampler():
    """The default dataset ids must rebuild on any CPU: their cards say they were made by this sampler."""
    from offrl.shipped import shipped_root

    cards = sorted(shipped_root().glob("*/*-v1.json"))
    assert cards, "no v1 dataset cards shipped"
    for path in cards:
        card = json.loads(path.read_text())
        if card["tier"] in ("medium", "expert"):
            assert card["collection"]["sampler"] == portable.SAMPLER_VERSION, path
        assert len(card["sha256"]) == 64, path


def test_store_card_rebuild_errors_name_the_sampler(tiny_policies):
    collect(_config("medium"), show_progress=False)
    data_path("pendulum/medium-v0").unlink()
    path = card_path("pendulum/medium-v0")
    path.write_text(path.read_text().replace(portable.SAMPLER_VERSION, "portable-0"))
    with pytest.raises(OfflineRLError, match="sampler 'portable-0'"):
        collect(_config("medium"), show_progress=False)
    assert not data_path("pendulum/medium-v0").exists()
