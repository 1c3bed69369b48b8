import dataclasses
import math
import shutil

import pytest
import torch

from offrl.algos.cql import CQLAgent, CQLConfig, autocast_for, cql_critic_loss, cql_update, sample_cql_actions
from offrl.algos.sac import polyak_update
from offrl.data.buffer import Batch


def _config(**kwargs):
    defaults = {"actor_hidden": (8,), "critic_hidden": (8,), "n_actions": 3, "batch_size": 4}
    return CQLConfig(**{**defaults, **kwargs})


def _batch(n=4, obs_dim=3, act_dim=2, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Batch(observations=torch.randn(n, obs_dim, generator=g, dtype=dtype),
                 actions=torch.rand(n, act_dim, generator=g, dtype=dtype) * 2 - 1,
                 rewards=torch.randn(n, generator=g, dtype=dtype),
                 next_observations=torch.randn(n, obs_dim, generator=g, dtype=dtype),
                 terminals=torch.zeros(n, dtype=dtype), timeouts=torch.zeros(n, dtype=dtype))


def _reference_loss(agent, batch, config, target, actions, log_density):
    """CQL(H) written the slow way: loops over critics, states and sampled actions."""
    bellman, gaps = 0.0, []
    for head in (agent.critic.q1, agent.critic.q2):
        q = lambda s, a, head=head: head(torch.cat([s, a])).squeeze()  # noqa: E731
        squared = [(q(batch.observations[b], batch.actions[b]) - target[b]) ** 2 for b in range(len(target))]
        bellman = bellman + sum(squared) / len(target)
        per_state = []
        for b in range(len(target)):
            terms = [(q(batch.observations[b], actions[j, b]) - log_density[j, b]) / config.temperature
                     for j in range(actions.shape[0])]
            largest = max(t.item() for t in terms)
            logsumexp = largest + torch.log(sum(torch.exp(t - largest) for t in terms))
            per_state.append(config.temperature * logsumexp - q(batch.observations[b], batch.actions[b]))
        gaps.append(sum(per_state) / len(per_state))
    return bellman, torch.stack(gaps)


def test_cql_loss_and_gradients_match_a_loop_reference_in_float64():
    torch.manual_seed(0)
    config = _config(temperature=0.7)
    agent = CQLAgent(3, 2, config).double()
    batch = _batch()
    actions, log_density = sample_cql_actions(agent, batch, config.n_actions)
    target = torch.randn(4, dtype=torch.float64)
    bellman, gap, _ = cql_critic_loss(agent, batch, config, target, actions, log_density)
    ref_bellman, ref_gap = _reference_loss(agent, batch, config, target, actions, log_density)
    torch.testing.assert_close(bellman, ref_bellman)
    torch.testing.assert_close(gap, ref_gap)
    params = list(agent.critic.parameters())
    fast = torch.autograd.grad(bellman + config.cql_alpha * gap.sum(), params)
    slow = torch.autograd.grad(ref_bellman + config.cql_alpha * ref_gap.sum(), params)
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a, b)


def test_importance_weights_are_the_sampling_densities():
    torch.manual_seed(1)
    config = _config()
    agent = CQLAgent(3, 2, config).double()
    batch = _batch()
    actions, log_density = sample_cql_actions(agent, batch, config.n_actions)
    n = config.n_actions
    assert actions.shape == (3 * n, 4, 2) and log_density.shape == (3 * n, 4)
    torch.testing.assert_close(log_density[:n], torch.full((n, 4), 2 * math.log(0.5), dtype=torch.float64))
    assert actions[:n].abs().max() <= 1
    torch.testing.assert_close(log_density[n:2 * n], agent.actor.log_prob(batch.observations, actions[n:2 * n]),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(log_density[2 * n:],
                               agent.actor.log_prob(batch.next_observations, actions[2 * n:]), rtol=1e-5, atol=1e-5)


def test_without_importance_sampling_the_densities_are_ignored():
    torch.manual_seed(2)
    config = _config(importance_sample=False)
    agent = CQLAgent(3, 2, config).double()
    batch = _batch()
    actions, log_density = sample_cql_actions(agent, batch, config.n_actions)
    target = torch.zeros(4, dtype=torch.float64)
    _, gap, _ = cql_critic_loss(agent, batch, config, target, actions, log_density)
    _, gap_zero, _ = cql_critic_loss(agent, batch, config, target, actions, torch.zeros_like(log_density))
    torch.testing.assert_close(gap, gap_zero)


def _alpha_prime_after(target_action_gap):
    torch.manual_seed(3)
    config = _config(lagrange=True, target_action_gap=target_action_gap, alpha_prime_lr=0.05)
    agent = CQLAgent(3, 2, config)
    start = agent.log_alpha_prime.item()
    for step in range(5):
        cql_update(agent, _batch(dtype=torch.float32, seed=step), config, step)
    return agent.log_alpha_prime.item() - start


def test_lagrange_alpha_prime_rises_above_the_target_gap_and_falls_below_it():
    assert _alpha_prime_after(-1000.0) > 0  # gap far above its target: penalise more
    assert _alpha_prime_after(1000.0) < 0  # gap far below its target: penalise less


def test_tiny_cql_run_lowers_q_on_random_actions_relative_to_dataset_actions():
    torch.manual_seed(4)
    config = _config(actor_hidden=(32, 32), critic_hidden=(32, 32), n_actions=5, batch_size=64, cql_alpha=5.0)
    agent = CQLAgent(3, 2, config)
    obs = torch.randn(512, 3)
    data_actions = torch.full((512, 2), 0.5) + 0.05 * torch.randn(512, 2)
    batch_of = lambda idx: Batch(observations=obs[idx], actions=data_actions[idx], rewards=torch.zeros(len(idx)),  # noqa: E731
                                 next_observations=obs[idx], terminals=torch.zeros(len(idx)),
                                 timeouts=torch.zeros(len(idx)))

    def gap():
        with torch.no_grad():
            random_actions = torch.rand(512, 2) * 2 - 1
            return (agent.critic(obs, data_actions) - agent.critic(obs, random_actions)).mean().item()

    before = gap()
    for step in range(300):
        cql_update(agent, batch_of(torch.randint(0, 512, (64,))), config, step)
    assert gap() > before + 1.0


def test_behaviour_cloning_warm_start_pulls_the_policy_to_the_data():
    torch.manual_seed(5)
    config = _config(actor_hidden=(32,), bc_steps=10_000, actor_lr=3e-3, batch_size=64)
    agent = CQLAgent(3, 2, config)
    obs = torch.randn(64, 3)
    actions = torch.full((64, 2), -0.6)
    batch = Batch(observations=obs, actions=actions, rewards=torch.zeros(64), next_observations=obs,
                  terminals=torch.zeros(64), timeouts=torch.zeros(64))
    for step in range(300):
        cql_update(agent, batch, config, step)
    torch.testing.assert_close(agent.actor.act(obs, deterministic=True), actions, atol=0.1, rtol=0)


def test_update_metrics_are_the_corl_diagnostics():
    agent = CQLAgent(3, 2, _config())
    metrics = cql_update(agent, _batch(dtype=torch.float32), _config(), 0)
    for key in ("q_data", "q_random", "q_pi_s", "q_pi_next_s", "cql_gap", "alpha", "alpha_prime", "entropy"):
        assert key in metrics and torch.isfinite(metrics[key])


@pytest.mark.filterwarnings("ignore:precision bf16 on a CPU without")  # numerics, not speed: any CPU will do
def test_bf16_autocast_agrees_with_fp32_within_bf16_tolerance():
    torch.manual_seed(6)
    config = _config(actor_hidden=(64, 64), critic_hidden=(64, 64), n_actions=4, precision="bf16")
    agent = CQLAgent(3, 2, config)
    batch = _batch(n=64, dtype=torch.float32)
    actions, log_density = sample_cql_actions(agent, batch, config.n_actions)
    target = torch.randn(64)
    bellman, gap, _ = cql_critic_loss(agent, batch, config, target, actions, log_density)
    with autocast_for(config, "cpu"):
        bellman_bf16, gap_bf16, diag = cql_critic_loss(agent, batch, config, target, actions, log_density)
    assert diag["q_data"].dtype == torch.float32 and gap_bf16.dtype == torch.float32  # output layers stay fp32
    torch.testing.assert_close(bellman_bf16, bellman, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(gap_bf16, gap, rtol=2e-2, atol=2e-2)


def _update_with_one_backward_per_loss(agent, batch, config, step):
    """The update written with each loss backpropagated on its own, restricted to its own parameters."""
    from offrl.algos.cql import cql_target
    from offrl.algos.sac import temperature_loss
    from offrl.nets import action_log_prob, sample_tanh_gaussian

    alpha = agent.log_alpha.exp().detach()
    policy_s = agent.actor.distribution_params(batch.observations)
    with torch.no_grad():
        policy_next = agent.actor.distribution_params(batch.next_observations)
    action, log_prob = sample_tanh_gaussian(*policy_s)
    if step < config.bc_steps:
        policy_loss = (alpha * log_prob - action_log_prob(batch.actions, *policy_s)).mean()
    else:
        policy_loss = (alpha * log_prob - agent.critic(batch.observations, action).min(dim=0).values).mean()
    target = cql_target(agent, batch, config, alpha, policy_next)
    actions, log_density = sample_cql_actions(agent, batch, config.n_actions, policy_s, policy_next)
    bellman, gap, _ = cql_critic_loss(agent, batch, config, target, actions, log_density)
    alpha_prime = agent.log_alpha_prime.exp()
    losses = [(policy_loss, list(agent.actor.parameters())),
              (bellman + (alpha_prime.detach() * config.cql_alpha * (gap - config.target_action_gap)).sum(),
               list(agent.critic.parameters())),
              (temperature_loss(agent, log_prob), [agent.log_alpha]),
              (-(alpha_prime * config.cql_alpha * (gap.detach() - config.target_action_gap)).mean(),
               [agent.log_alpha_prime])]
    grads = [torch.autograd.grad(loss, params, retain_graph=True) for loss, params in losses]
    optimizers = [agent.actor_optimizer, agent.critic_optimizer, agent.alpha_optimizer, agent.alpha_prime_optimizer]
    for optimizer, (_, params), group_grads in zip(optimizers, losses, grads, strict=True):
        for param, grad in zip(params, group_grads, strict=True):
            param.grad = grad
        optimizer.step()
    polyak_update(agent.critic_target, agent.critic, config.tau)


def test_one_backward_over_the_summed_losses_trains_each_group_on_its_own_loss_only():
    import copy

    config = _config(lagrange=True, bc_steps=1)
    torch.manual_seed(6)
    agent = CQLAgent(3, 2, config).double()
    reference = copy.deepcopy(agent)
    for step in range(3):  # step 0 clones behaviour, later steps use the critics
        batch = _batch(seed=step)
        torch.manual_seed(100 + step)
        cql_update(agent, batch, config, step)
        torch.manual_seed(100 + step)
        _update_with_one_backward_per_loss(reference, batch, config, step)
    for (name, fast), slow in zip(agent.state_dict().items(), reference.state_dict().values(), strict=True):
        torch.testing.assert_close(fast, slow, msg=name)


@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("clang++")), reason="inductor on CPU needs a C++ compiler")
def test_compiled_losses_match_eager_ones():
    import torch._inductor.config

    from offrl.algos.cql import compiled_cql_losses, cql_losses

    # Inductor draws its own random numbers unless told to call eager's RNG, which makes both comparable.
    with torch._inductor.config.patch(fallback_random=True):
        _compare_compiled_with_eager(compiled_cql_losses, cql_losses)


def _compare_compiled_with_eager(compiled_cql_losses, cql_losses):
    config = _config()
    torch.manual_seed(7)
    agent = CQLAgent(3, 2, config)
    batch = _batch(dtype=torch.float32)
    compiled = compiled_cql_losses("cpu")
    trained = [p for p in agent.parameters() if p.requires_grad]
    for behaviour_cloning in (True, False):
        torch.manual_seed(8)
        eager_total, eager_metrics = cql_losses(agent, batch, config, behaviour_cloning)
        eager_grads = torch.autograd.grad(eager_total, trained, allow_unused=True)
        torch.manual_seed(8)
        total, metrics = compiled(agent, batch, config, behaviour_cloning)
        grads = torch.autograd.grad(total, trained, allow_unused=True)
        torch.testing.assert_close(total, eager_total)
        torch.testing.assert_close(metrics, eager_metrics)
        for fast, slow in zip(grads, eager_grads, strict=True):
            torch.testing.assert_close(fast, slow)


def test_corl_configs_carry_corls_actor_and_sac_keeps_the_original_one():
    """CQLConfig's defaults and every shipped CQL config give CORL's actor; SACConfig (the behaviour policies)
    keeps offrl's original one, so the shipped policies load and sample as they were trained."""
    from offrl.algos.sac import SACConfig
    from offrl.config import load_config
    from offrl.errors import OfflineRLError
    from offrl.nets import ActorParameterization

    corl = ActorParameterization(-20.0, 2.0, 1.0, -1.0, "xavier")
    assert CQLConfig().sac_config().actor_parameterization() == corl
    for name in ("corl", "fast", "fast-bf16", "halfcheetah-medium", "hopper-medium", "walker2d-medium"):
        config, _ = load_config(CQLConfig, "cql", name)
        assert config.sac_config().actor_parameterization() == corl, name
    assert SACConfig().actor_parameterization() == ActorParameterization()
    d3rlpy, _ = load_config(CQLConfig, "cql", "d3rlpy")  # d3rlpy 2.8.1's squashed Gaussian and CQL defaults
    assert d3rlpy.sac_config().actor_parameterization() == ActorParameterization(-20.0, 2.0, None, 0.0, "default")
    assert (d3rlpy.cql_alpha, d3rlpy.lagrange, d3rlpy.target_action_gap, d3rlpy.actor_hidden) == (5.0, True, 10.0,
                                                                                                   (256, 256))
    assert (d3rlpy.target_action, d3rlpy.alpha_loss, d3rlpy.backup_entropy) == ("mean", "alpha", False)
    for name in ("corl", "fast"):  # CORL samples a′ and steps log α
        config, _ = load_config(CQLConfig, "cql", name)
        assert (config.target_action, config.alpha_loss) == ("sample", "log_alpha"), name
    with pytest.raises(OfflineRLError, match="actor_output_init 'glorot' is not one of default, xavier, orthogonal"):
        CQLConfig(actor_output_init="glorot").validate()
    with pytest.raises(OfflineRLError, match="log_std_min .* must be below log_std_max"):
        CQLConfig(log_std_min=3.0).validate()


class _FixedCritic(torch.nn.Module):
    """A twin critic with known values: Q1 = Σa + 1, Q2 = Σa (so the clipped minimum is Q2)."""

    def forward(self, obs, act):
        q2 = act.sum(-1)
        return torch.stack([q2 + 1.0, q2])


def test_cql_target_stops_at_terminals_bootstraps_through_timeouts_and_takes_the_clipped_minimum():
    from offrl.algos.cql import cql_target
    from offrl.nets import sample_tanh_gaussian

    torch.manual_seed(0)
    config = _config(gamma=0.9)
    agent = CQLAgent(3, 2, config).double()
    agent.critic_target = _FixedCritic()
    batch = dataclasses.replace(_batch(), terminals=torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64),
                                timeouts=torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=torch.float64))  # timeouts bootstrap
    torch.manual_seed(1)
    target = cql_target(agent, batch, config, alpha=torch.tensor(0.5, dtype=torch.float64))
    torch.manual_seed(1)
    next_actions, _ = sample_tanh_gaussian(*agent.actor.distribution_params(batch.next_observations))
    q_min = next_actions.detach().sum(-1)  # min(Q1, Q2) = Q2
    expected = batch.rewards + 0.9 * (1 - batch.terminals) * q_min
    torch.testing.assert_close(target, expected)
    assert torch.equal(target[[0, 3]], batch.rewards[[0, 3]])


def test_max_backup_takes_the_best_of_n_and_entropy_backup_subtracts_alpha_log_pi_of_that_action():
    from offrl.algos.cql import cql_target
    from offrl.nets import sample_tanh_gaussian

    torch.manual_seed(0)
    config = _config(gamma=0.9, max_target_backup=True, backup_entropy=True, n_actions=5)
    agent = CQLAgent(3, 2, config).double()
    agent.critic_target = _FixedCritic()
    batch = _batch()
    alpha = torch.tensor(0.3, dtype=torch.float64)
    torch.manual_seed(2)
    target = cql_target(agent, batch, config, alpha)
    torch.manual_seed(2)
    actions, log_pi = sample_tanh_gaussian(*agent.actor.distribution_params(batch.next_observations), 5)
    q = actions.detach().sum(-1)  # (5, B), the clipped minimum
    best = q.argmax(dim=0)
    columns = torch.arange(q.shape[1])
    expected = batch.rewards + 0.9 * (q[best, columns] - alpha * log_pi.detach()[best, columns])
    torch.testing.assert_close(target, expected)


def test_mean_target_action_backs_up_tanh_of_the_policy_mean_and_refuses_a_sampled_backup_beside_it():
    """d3rlpy's CQL without soft_q_backup: Q_target(s′, tanh(mean)) with no randomness, clipped minimum."""
    from offrl.algos.cql import cql_target
    from offrl.errors import OfflineRLError

    config = _config(gamma=0.9, target_action="mean")
    agent = CQLAgent(3, 2, config).double()
    agent.critic_target = _FixedCritic()
    batch = dataclasses.replace(_batch(), terminals=torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=torch.float64))
    alpha = torch.tensor(0.5, dtype=torch.float64)
    torch.manual_seed(1)
    target = cql_target(agent, batch, config, alpha)
    torch.manual_seed(2)
    assert torch.equal(cql_target(agent, batch, config, alpha), target)  # deterministic
    mean_next, _ = agent.actor.distribution_params(batch.next_observations)
    expected = batch.rewards + 0.9 * (1 - batch.terminals) * torch.tanh(mean_next).detach().sum(-1)
    torch.testing.assert_close(target, expected)
    for bad in ({"max_target_backup": True}, {"backup_entropy": True}):
        with pytest.raises(OfflineRLError, match="target_action mean backs up one deterministic action"):
            CQLConfig(target_action="mean", **bad).validate()
    with pytest.raises(OfflineRLError, match="target_action must be sample or mean, found 'max'"):
        CQLConfig(target_action="max").validate()
    with pytest.raises(OfflineRLError, match="alpha_loss must be log_alpha or alpha, found 'exp'"):
        CQLConfig(alpha_loss="exp").validate()


def test_alpha_scaled_temperature_loss_is_d3rlpys_and_reaches_the_update():
    """alpha_loss "alpha": −α·(log π + H̄), whose gradient in log α is α times the log form's."""
    from offrl.algos.cql import cql_losses
    from offrl.algos.sac import temperature_loss

    agent = CQLAgent(3, 2, _config(init_alpha=0.25)).double()
    log_prob = torch.tensor([1.0, -3.0, 0.5], dtype=torch.float64)
    (log_form,) = torch.autograd.grad(temperature_loss(agent, log_prob), agent.log_alpha)
    (alpha_form,) = torch.autograd.grad(temperature_loss(agent, log_prob, scale_by_alpha=True), agent.log_alpha)
    expected = -(log_prob.mean() + agent.target_entropy)
    torch.testing.assert_close(log_form, expected)
    torch.testing.assert_close(alpha_form, 0.25 * expected)
    grads = {}
    for form in ("log_alpha", "alpha"):
        config = _config(init_alpha=0.25, alpha_loss=form)
        torch.manual_seed(0)
        agent = CQLAgent(3, 2, config).double()
        torch.manual_seed(1)
        total, _ = cql_losses(agent, _batch(), config, behaviour_cloning=False)
        (grads[form],) = torch.autograd.grad(total, agent.log_alpha)
    torch.testing.assert_close(grads["alpha"], 0.25 * grads["log_alpha"])


def test_alpha_prime_is_clamped_and_each_loss_reaches_only_its_own_parameters():
    """One backward pass over the summed losses trains each group by its own loss only: the actor by the SAC
    policy loss (through critics whose weights it cannot move), α′ only under Lagrange, targets never."""
    from offrl.algos.cql import cql_losses
    from offrl.algos.sac import frozen_critic_q
    from offrl.nets import sample_tanh_gaussian

    for lagrange, calibrated in ((False, False), (False, True), (True, False), (True, True)):
        torch.manual_seed(0)
        config = _config(lagrange=lagrange, calibrated=calibrated, target_action_gap=0.5)
        agent = CQLAgent(3, 2, config).double()
        with torch.no_grad():
            agent.log_alpha_prime.fill_(20.0)  # e^20 ≈ 4.9e8: clamped to 1e6 under Lagrange
        batch = dataclasses.replace(_batch(), mc_returns=torch.randn(4, dtype=torch.float64))
        torch.manual_seed(3)
        total, metrics = cql_losses(agent, batch, config, behaviour_cloning=False)
        assert metrics["alpha_prime"].item() == (1e6 if lagrange else pytest.approx(math.exp(20.0)))
        actor_params = list(agent.actor.parameters())
        from_total = torch.autograd.grad(total, actor_params, retain_graph=True)
        # The actor's own loss, rebuilt from the same random draw (its sample is the first one cql_losses takes).
        torch.manual_seed(3)
        policy_s = agent.actor.distribution_params(batch.observations)
        action, log_prob = sample_tanh_gaussian(*policy_s)
        q_pi = frozen_critic_q(agent.critic, batch.observations, action).min(dim=0).values
        own = (agent.log_alpha.exp().detach() * log_prob - q_pi).mean()
        for a, b in zip(from_total, torch.autograd.grad(own, actor_params, retain_graph=True), strict=True):
            torch.testing.assert_close(a, b)
        critic_from_actor_loss = torch.autograd.grad(own, list(agent.critic.parameters()), allow_unused=True)
        assert all(g is None or not g.any() for g in critic_from_actor_loss)
        total.backward()
        assert (agent.log_alpha_prime.grad is not None) == lagrange  # no loss reaches α′ without Lagrange
        assert all(p.grad is None for p in agent.critic_target.parameters())


@pytest.mark.parametrize("version, safe", [("2.4.1+cpu", False), ("2.10.0+cu128", False), ("2.11.0+cu130", True),
                                           ("2.13.0+cpu", True)])
def test_autocast_weight_cache_is_used_only_where_torch_fixed_its_no_grad_bug(version, safe):
    from offrl.algos.cql import autocast_cache_is_safe

    assert autocast_cache_is_safe(version) is safe


def test_bf16_weights_get_gradients_after_a_no_grad_pass_in_the_same_autocast_region():
    # what every update does: targets and sampled actions under no_grad first, then the losses
    import warnings

    config = CQLConfig(actor_hidden=(16, 16), critic_hidden=(16, 16), precision="bf16")
    agent = CQLAgent(5, 2, config)
    observations = torch.randn(8, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bf16 emulated on a CPU without native bf16
        with autocast_for(config, "cpu"):
            with torch.no_grad():
                agent.actor(observations)
            mean, log_std = agent.actor(observations)
            (mean.float().square().sum() + log_std.float().sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in agent.actor.parameters())


@pytest.mark.parametrize("hidden", [(256, 256), (256, 256, 256)], ids=["2x256", "3x256"])
def test_a_whole_cql_update_through_the_cpu_fast_path_gives_the_plain_operators_gradients(hidden, monkeypatch):
    """The losses and every parameter's gradient of one CQL update (both critic sizes, 10 action samples, batch 64:
    the 31 × 64-row critic grid takes the fused layers), with the CPU fast path and without it, in fp32."""
    import copy

    from offrl import cpu_kernels
    from offrl.algos.cql import cql_losses

    fused_calls = []
    original = cpu_kernels._LinearReLU.apply
    monkeypatch.setattr(cpu_kernels._LinearReLU, "apply", lambda *args: fused_calls.append(1) or original(*args))
    config = CQLConfig(actor_hidden=hidden, critic_hidden=hidden, n_actions=10, batch_size=64, bc_steps=0)
    torch.manual_seed(0)
    agent = CQLAgent(17, 6, config)
    plain_agent = copy.deepcopy(agent)
    batch = _batch(n=64, obs_dim=17, act_dim=6, dtype=torch.float32)

    def losses_and_gradients(which):
        torch.manual_seed(1)  # the same sampled actions on both paths
        total, metrics = cql_losses(which, batch, config, False)
        total.backward()
        return metrics, {name: p.grad for name, p in which.named_parameters() if p.grad is not None}

    fused_metrics, fused_grads = losses_and_gradients(agent)
    assert fused_calls, "the fast path did not run"
    fused_calls.clear()
    with cpu_kernels.fused_cpu_kernels(False):
        plain_metrics, plain_grads = losses_and_gradients(plain_agent)
    assert not fused_calls and fused_grads.keys() == plain_grads.keys() and len(fused_grads) > 10
    for name in fused_metrics:
        torch.testing.assert_close(fused_metrics[name], plain_metrics[name], rtol=1e-4, atol=1e-5)
    for name, grad in fused_grads.items():
        scale = plain_grads[name].abs().max()
        assert (grad - plain_grads[name]).abs().max() <= 1e-4 * scale + 1e-7, name
