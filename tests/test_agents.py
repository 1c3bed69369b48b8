import numpy as np
import pytest
import torch

import offrl
from offrl.data.collect import rollout_transitions

TINY = {"actor_hidden": [16, 16], "critic_hidden": [16, 16], "n_actions": 2, "batch_size": 32, "bc_steps": 5}


@pytest.fixture
def pendulum_arrays():
    arrays, _ = rollout_transitions("Pendulum-v1", None, 600, seed=0, num_envs=2)
    return arrays


def _dataset(arrays, **extra):
    keys = ("observations", "actions", "rewards", "terminals", "timeouts")
    return offrl.dataset_from_arrays(*(arrays[k] for k in keys), next_observations=arrays["next_observations"],
                                     **extra)


def test_fit_predict_save_load_round_trip(pendulum_arrays, tmp_path):
    dataset = _dataset(pendulum_arrays, env_id="Pendulum-v1", reference_scores=(-1200.0, -150.0))
    agent = offrl.CQL("fast", **TINY)
    assert agent.config.cql_alpha == 10.0 and agent.config.actor_hidden == (16, 16)
    seen = []
    report = agent.fit(dataset, 20, log_every=10, eval_episodes=1, show_progress=False,
                       callbacks=[lambda event, step, row: seen.append((event, step))])
    assert seen == [("log", 10), ("log", 20), ("evaluation", 20)]
    assert report.updates == 20 and "given to dataset_from_arrays" in report.reference
    assert report.q_bias_states > 0 and report.average_value_estimate is not None
    obs = pendulum_arrays["observations"][:5]
    actions = agent.predict(obs)
    assert actions.shape == (5, 1) and np.abs(actions).max() <= 1.0
    assert agent.predict(obs[0]).shape == (1,)
    assert agent.predict_value(obs, actions).shape == (5,)
    path = agent.save(tmp_path / "agent.pt")
    restored = offrl.load_agent(path)
    assert isinstance(restored, offrl.CQL) and restored.config == agent.config
    np.testing.assert_array_equal(restored.predict(obs), actions)
    evaluation = offrl.evaluate(restored, dataset, episodes=1)
    assert evaluation.reference == report.reference and evaluation.q_bias_states > 0


def test_same_seed_same_numbers(pendulum_arrays):
    dataset = _dataset(pendulum_arrays, env_id="Pendulum-v1")
    runs = [offrl.CQL("fast", **TINY).fit(dataset, 10, eval_env=False, show_progress=False) for _ in range(2)]
    assert runs[0].average_value_estimate == runs[1].average_value_estimate


def test_data_without_env_or_reference_trains_with_env_free_diagnostics(pendulum_arrays):
    dataset = _dataset(pendulum_arrays)
    report = offrl.SAC(hidden=(16, 16), batch_size=32).fit(dataset, 10, show_progress=False)
    assert report.algorithm == "SAC-offline" and report.reference == "no env"
    assert report.final_normalized_return is None and np.isfinite(report.initial_state_value_estimate)
    report = offrl.CalQL("fast", **TINY).fit(_dataset(pendulum_arrays, env_id="Pendulum-v1"), 10,
                                             final_eval_episodes=1, show_progress=False)
    assert report.algorithm == "Cal-QL" and report.reference == "raw"
    assert report.final_normalized_return == pytest.approx(report.mean_return)  # raw: the score is the return


def test_next_observations_may_be_left_out(pendulum_arrays):
    keys = ("observations", "actions", "rewards", "terminals", "timeouts")
    dataset = offrl.dataset_from_arrays(*(pendulum_arrays[k] for k in keys))
    episodes = int(pendulum_arrays["timeouts"].sum())
    assert len(dataset) == 600 - episodes  # each episode's last row has no known successor (qlearning_dataset)


@pytest.mark.parametrize("change, message", [
    (lambda a: {**a, "rewards": a["rewards"][:-1]}, "observations has 600 rows, rewards has 599"),
    (lambda a: {**a, "observations": np.where(np.arange(600)[:, None] == 3, np.nan, a["observations"])},
     "observations holds NaN or inf"),
    (lambda a: {**a, "actions": a["actions"] * 3}, "actions must lie in"),
])
def test_bad_arrays_raise_one_error_naming_the_argument(pendulum_arrays, change, message):
    with pytest.raises(offrl.OfflineRLError, match=message):
        _dataset(change(pendulum_arrays))


def test_arrays_that_do_not_fit_the_env_are_refused(pendulum_arrays):
    with pytest.raises(offrl.OfflineRLError, match="observations have 3 columns, env Hopper-v5 has 11"):
        _dataset(pendulum_arrays, env_id="Hopper-v5")


def test_unknown_or_invalid_config_fields_are_refused_like_yaml():
    with pytest.raises(offrl.OfflineRLError, match="unknown key.*learning_rate"):
        offrl.CQL("fast", learning_rate=1.0)
    with pytest.raises(offrl.OfflineRLError, match="critic_lr must be a positive number"):
        offrl.CQL("fast", critic_lr=-1.0)
    with pytest.raises(offrl.OfflineRLError, match="no such shipped config"):
        offrl.CQL("nope")
    assert offrl.CQL("fast", critic_lr="3e-4").config.critic_lr == pytest.approx(3e-4)  # YAML's 3e-4 string


def test_predict_refuses_wrong_shapes_and_untrained_agents(pendulum_arrays):
    agent = offrl.CQL("fast", **TINY)
    with pytest.raises(offrl.OfflineRLError, match="not trained or loaded"):
        agent.predict(pendulum_arrays["observations"])
    agent.fit(_dataset(pendulum_arrays), 5, show_progress=False)
    with pytest.raises(offrl.OfflineRLError, match=r"observations: expected shape \(3,\) or \(N, 3\)"):
        agent.predict(np.zeros((2, 4)))


def test_load_agent_refuses_other_files(tmp_path):
    torch.save({"format": "something"}, tmp_path / "x.pt")
    with pytest.raises(offrl.OfflineRLError, match="not an offrl agent file"):
        offrl.load_agent(tmp_path / "x.pt")
    (tmp_path / "y.pt").write_bytes(b"junk")
    with pytest.raises(offrl.OfflineRLError, match="cannot be read"):
        offrl.load_agent(tmp_path / "y.pt")


def test_predict_and_evaluation_normalize_observations_and_report_q_in_reward_units(pendulum_arrays):
    """The actor and critics see normalized observations and scaled rewards; a user (and the evaluation rollouts,
    which act through the same `policy`) gives raw observations and reads Q in the data's reward units."""
    from offrl.data.dataset import ObservationNormalizer

    agent = offrl.CQL(**TINY, normalize_observations=True)
    agent.fit(_dataset(pendulum_arrays, env_id="Pendulum-v1"), 10, eval_env=False, show_progress=False)
    normalizer = agent.normalizer
    assert isinstance(normalizer, ObservationNormalizer) and not torch.allclose(normalizer.std, torch.ones(3))
    obs = pendulum_arrays["observations"][:6]
    with torch.no_grad():
        mean, _ = agent.networks.actor.distribution_params(normalizer(torch.as_tensor(obs)))
    np.testing.assert_allclose(agent.predict(obs), torch.tanh(mean).numpy(), rtol=0, atol=1e-6)
    agent.reward_scale = 0.25
    actions = agent.predict(obs)
    with torch.no_grad():
        q = agent.networks.critic(normalizer(torch.as_tensor(obs)), torch.as_tensor(actions)).min(dim=0).values
    np.testing.assert_allclose(agent.predict_value(obs, actions), (q / 0.25).numpy(), rtol=1e-5)


def test_offline_sac_from_a_cql_config_differs_from_cql_only_in_the_conservative_term(pendulum_arrays, tmp_path):
    from offrl.algos.cql import CQLConfig
    from offrl.sweep import _agent

    dataset = _dataset(pendulum_arrays, env_id="Pendulum-v1")
    cql_config = CQLConfig(actor_hidden=(16, 16), critic_hidden=(8, 8, 8), orthogonal_init=True, batch_size=32)
    sac_config = cql_config.sac_config()
    assert (sac_config.critic_hidden, sac_config.orthogonal_init, sac_config.normalize_observations) == \
        ((8, 8, 8), True, True)
    sac, cql = offrl.SAC(sac_config), offrl.CQL(cql_config)
    for agent in (sac, cql):
        agent.fit(dataset, 2, eval_env=False, show_progress=False)
    # the same critic shapes and the same (orthogonal, zero-bias) init; observations standardised by the data
    assert [p.shape for p in sac.networks.critic.parameters()] == [p.shape for p in cql.networks.critic.parameters()]
    torch.testing.assert_close(sac.normalizer.mean, cql.normalizer.mean)
    assert not torch.allclose(sac.normalizer.std, torch.ones_like(sac.normalizer.std))
    first = offrl.SAC(sac_config)
    first.build(3, 1)
    weight = first.networks.critic.q1[0].weight.detach()
    assert first.networks.critic.q1[0].bias.abs().max() == 0
    torch.testing.assert_close(weight.T @ weight, 2.0 * torch.eye(4), atol=1e-5, rtol=0)  # orthogonal, gain √2
    # the sweep's offline SAC of a named config is this one
    assert _agent("sac", "fast").config == offrl.CQL("fast").config.sac_config()
    # online SAC keeps the paper's defaults: raw observations, PyTorch's init
    assert not offrl.SAC().config.normalize_observations and not offrl.SAC().config.orthogonal_init


def test_training_in_bf16_on_a_cpu_without_bf16_instructions_warns_and_fp32_does_not(monkeypatch):
    import warnings

    import offrl.algos.cql as cql
    from offrl.algos.cql import CQLConfig, autocast_for

    monkeypatch.setattr(cql, "native_cpu_bf16", lambda: False)
    with pytest.warns(UserWarning, match="bf16 on a CPU without AVX512-BF16 or AMX"):
        autocast_for(CQLConfig(precision="bf16"), "cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        autocast_for(CQLConfig(precision="fp32"), "cpu")  # fp32: nothing to say
        offrl.agents.CQL("fast-bf16")  # building (or restoring) an agent is not training: no warning
        monkeypatch.setattr(cql, "native_cpu_bf16", lambda: True)
        autocast_for(CQLConfig(precision="bf16"), "cpu")  # AVX512-BF16/AMX: bf16 is the fast path
