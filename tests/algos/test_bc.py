import numpy as np
import pandas as pd
import pytest
import torch

import offrl
from offrl.algos.bc import BCConfig, BCNetworks, bc_loss, bc_update
from offrl.data.buffer import Batch
from offrl.data.collect import rollout_transitions
from offrl.errors import OfflineRLError
from offrl.nets import action_log_prob


def _batch(actions):
    n = len(actions)
    g = torch.Generator().manual_seed(0)
    return Batch(observations=torch.randn(n, 3, generator=g), actions=actions, rewards=torch.zeros(n),
                 next_observations=torch.zeros(n, 3), terminals=torch.zeros(n), timeouts=torch.zeros(n))


def test_the_loss_is_the_negative_log_likelihood_of_the_data_actions():
    torch.manual_seed(0)
    networks = BCNetworks(3, 2, BCConfig(actor_hidden=(8,)))
    batch = _batch(torch.rand(16, 2) * 2 - 1)
    loss, metrics = bc_loss(networks, batch)
    expected = -action_log_prob(batch.actions, *networks.actor.distribution_params(batch.observations)).mean()
    torch.testing.assert_close(loss, expected)
    assert metrics["actor_loss"] == loss.detach()


def test_bc_recovers_a_state_dependent_action_rule():
    """Data where a = tanh(0.8·s₀): the cloned policy's deterministic action follows it."""
    torch.manual_seed(0)
    networks = BCNetworks(3, 1, BCConfig(actor_hidden=(32, 32), actor_lr=3e-3))
    g = torch.Generator().manual_seed(1)
    obs = torch.randn(512, 3, generator=g)
    batch = Batch(observations=obs, actions=torch.tanh(0.8 * obs[:, :1]), rewards=torch.zeros(512),
                  next_observations=obs, terminals=torch.zeros(512), timeouts=torch.zeros(512))
    first = bc_update(networks, batch)["actor_loss"].item()
    for _ in range(400):
        last = bc_update(networks, batch)["actor_loss"].item()
    assert last < first - 1.0
    with torch.no_grad():
        acted = networks.actor.act(obs, deterministic=True)
    assert (acted - batch.actions).abs().mean() < 0.1


def test_the_bc_agent_trains_reports_no_q_bias_and_is_on_the_leaderboard(tmp_path):
    arrays, _ = rollout_transitions("Pendulum-v1", None, 600, seed=0, num_envs=2)
    keys = ("observations", "actions", "rewards", "terminals", "timeouts")
    dataset = offrl.dataset_from_arrays(*(arrays[k] for k in keys), next_observations=arrays["next_observations"],
                                        env_id="Pendulum-v1", reference_scores=(-1200.0, -150.0))
    agent = offrl.BC("fast", actor_hidden=(16,))
    assert agent.config.actor_lr == 1e-4 and agent.config.log_std_multiplier == 1.0  # fast's actor
    report = agent.fit(dataset, 20, final_eval_episodes=1, eval_episodes=1, run_dir=tmp_path / "run",
                       leaderboard=tmp_path / "lb.csv", show_progress=False)
    assert report.algorithm == "BC" and np.isfinite(report.final_normalized_return)
    assert report.q_bias_mean is None and report.average_value_estimate is None
    row = pd.read_csv(tmp_path / "lb.csv").iloc[0]
    assert row["algorithm"] == "BC" and row["config_name"] == "fast"
    assert offrl.restore_run(tmp_path / "run").agent.predict(arrays["observations"][:3]).shape == (3, 1)
    with pytest.raises(OfflineRLError, match="BC has no critic"):
        agent.predict_value(arrays["observations"][:3], arrays["actions"][:3])
    restored = offrl.load_agent(agent.save(tmp_path / "bc.pt"))
    obs = arrays["observations"][:5]
    np.testing.assert_array_equal(restored.predict(obs), agent.predict(obs))
