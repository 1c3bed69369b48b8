import torch

from offrl.algos.sac import SACAgent, SACConfig, polyak_update, sac_target, sac_update, temperature_loss
from offrl.data.buffer import Batch


def _batch(n=8, obs_dim=3, act_dim=2, terminals=None, timeouts=None):
    g = torch.Generator().manual_seed(0)
    return Batch(observations=torch.randn(n, obs_dim, generator=g), actions=torch.rand(n, act_dim, generator=g) * 2 - 1,
                 rewards=torch.randn(n, generator=g), next_observations=torch.randn(n, obs_dim, generator=g),
                 terminals=torch.zeros(n) if terminals is None else terminals,
                 timeouts=torch.zeros(n) if timeouts is None else timeouts)


def _agent(**kwargs):
    torch.manual_seed(0)
    return SACAgent(3, 2, SACConfig(hidden=(16, 16), **kwargs))


def test_target_bootstraps_through_truncation_but_not_through_termination():
    agent = _agent()
    flags = torch.tensor([1.0, 0.0, 0.0, 0.0])
    base = _batch(4)
    terminal = Batch(**{**base.__dict__, "terminals": flags})
    truncated = Batch(**{**base.__dict__, "timeouts": flags})
    alpha = torch.tensor(0.2)
    torch.manual_seed(1)
    y_terminal = sac_target(agent, terminal, 0.99, alpha)
    torch.manual_seed(1)
    y_truncated = sac_target(agent, truncated, 0.99, alpha)
    torch.manual_seed(1)
    a_next, logp_next = agent.actor(base.next_observations)
    q_next = agent.critic_target(base.next_observations, a_next).min(0).values
    expected = base.rewards + 0.99 * (q_next - 0.2 * logp_next)
    assert torch.equal(y_terminal[0], base.rewards[0])  # termination: reward only
    torch.testing.assert_close(y_truncated, expected)  # a time-limit cut bootstraps like any step
    torch.testing.assert_close(y_terminal[1:], expected[1:])


def test_target_uses_minimum_of_the_two_target_critics():
    agent = _agent()
    with torch.no_grad():
        agent.critic_target.q1[-1].bias.add_(100.0)  # q1' now far above q2'
    batch = _batch()
    torch.manual_seed(2)
    y = sac_target(agent, batch, 0.9, torch.tensor(0.0))
    torch.manual_seed(2)
    a_next, _ = agent.actor(batch.next_observations)
    q2 = agent.critic_target.q2(torch.cat([batch.next_observations, a_next], -1)).squeeze(-1)
    torch.testing.assert_close(y, batch.rewards + 0.9 * q2)


def test_polyak_update_moves_targets_tau_of_the_way():
    source, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.clone() for p in target.parameters()]
    polyak_update(target, source, 0.005)
    for old, new, src in zip(before, target.parameters(), source.parameters(), strict=True):
        torch.testing.assert_close(new, 0.995 * old + 0.005 * src)


def test_temperature_rises_when_entropy_is_below_target_and_falls_above_it():
    agent = _agent(alpha_lr=0.1)
    start = agent.log_alpha.item()
    low_entropy_log_prob = torch.full((32,), 5.0)  # entropy -5 < target -2
    for _ in range(5):
        agent.alpha_optimizer.zero_grad()
        temperature_loss(agent, low_entropy_log_prob).backward()
        agent.alpha_optimizer.step()
    assert agent.log_alpha.item() > start
    high_entropy_log_prob = torch.full((32,), -5.0)  # entropy 5 > target
    mid = agent.log_alpha.item()
    for _ in range(5):
        agent.alpha_optimizer.zero_grad()
        temperature_loss(agent, high_entropy_log_prob).backward()
        agent.alpha_optimizer.step()
    assert agent.log_alpha.item() < mid


def test_update_changes_actor_critic_and_targets_only_slightly():
    agent = _agent()
    config = SACConfig(hidden=(16, 16))
    actor_before = agent.actor.net[0].weight.clone()
    target_before = agent.critic_target.q1[0].weight.clone()
    critic_before = agent.critic.q1[0].weight.clone()
    metrics = sac_update(agent, _batch(32), config)
    assert set(metrics) == {"critic_loss", "actor_loss", "q_data", "alpha", "entropy"}
    assert not torch.equal(agent.actor.net[0].weight, actor_before)
    assert not torch.equal(agent.critic.q1[0].weight, critic_before)
    target_step = (agent.critic_target.q1[0].weight - target_before).abs().max()
    critic_step = (agent.critic.q1[0].weight - critic_before).abs().max()
    assert 0 < target_step < critic_step  # targets trail by Polyak averaging
