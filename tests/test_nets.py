import math

import numpy as np
import torch

from offrl.nets import TanhGaussianActor, TwinCritic, tanh_gaussian_log_prob


def test_tanh_gaussian_log_prob_matches_change_of_variables_in_float64():
    torch.manual_seed(0)
    mean = torch.randn(64, 3, dtype=torch.float64)
    log_std = torch.randn(64, 3, dtype=torch.float64).clamp(-2, 1)
    pre_tanh = mean + log_std.exp() * torch.randn(64, 3, dtype=torch.float64)
    # Independent route: Normal density of u, divided by |d tanh/du| = 1 - tanh(u)^2 computed directly.
    normal = torch.distributions.Normal(mean, log_std.exp())
    reference = (normal.log_prob(pre_tanh) - torch.log(1 - torch.tanh(pre_tanh) ** 2)).sum(-1)
    torch.testing.assert_close(tanh_gaussian_log_prob(pre_tanh, mean, log_std), reference)


def test_tanh_gaussian_log_prob_stays_finite_where_tanh_saturates():
    pre_tanh = torch.tensor([[30.0, -30.0]])
    value = tanh_gaussian_log_prob(pre_tanh, torch.zeros(1, 2), torch.zeros(1, 2))
    assert torch.isfinite(value).all()


def test_tanh_gaussian_density_agrees_with_monte_carlo_histogram():
    torch.manual_seed(1)
    mean, log_std = torch.tensor([[0.3]]), torch.tensor([[-0.2]])
    samples = torch.tanh(mean + log_std.exp() * torch.randn(400_000, 1)).squeeze(-1).numpy()
    counts, edges = np.histogram(samples, bins=40, range=(-0.95, 0.95))
    empirical = counts / (len(samples) * (edges[1] - edges[0]))
    centres = torch.tensor((edges[:-1] + edges[1:]) / 2, dtype=torch.float32).unsqueeze(-1)
    pre_tanh = torch.atanh(centres)
    analytic = tanh_gaussian_log_prob(pre_tanh, mean.expand_as(pre_tanh), log_std.expand_as(pre_tanh)).exp().numpy()
    np.testing.assert_allclose(empirical, analytic, rtol=0.05, atol=0.01)


def test_actor_samples_are_reparameterised_and_bounded():
    actor = TanhGaussianActor(4, 2, (32, 32))
    obs = torch.randn(16, 4)
    action, log_prob = actor(obs)
    assert action.shape == (16, 2) and log_prob.shape == (16,)
    assert action.abs().max() <= 1.0
    action.sum().backward()  # gradients flow through the sample into the actor's weights
    assert actor.net[0].weight.grad is not None and actor.net[0].weight.grad.abs().sum() > 0
    mean, _ = actor.distribution_params(obs)
    torch.testing.assert_close(actor.act(obs, deterministic=True), torch.tanh(mean))


def test_actor_sample_n_log_probs_match_single_samples():
    torch.manual_seed(0)
    actor = TanhGaussianActor(4, 2, (16,))
    obs = torch.randn(5, 4)
    actions, log_probs = actor.sample_n(obs, 7)
    assert actions.shape == (7, 5, 2) and log_probs.shape == (7, 5)
    mean, log_std = actor.distribution_params(obs)
    again = tanh_gaussian_log_prob(torch.atanh(actions.double().clamp(-1 + 1e-12, 1 - 1e-12)).float(), mean, log_std)
    torch.testing.assert_close(again, log_probs, rtol=1e-3, atol=1e-3)


def test_twin_critic_evaluates_both_heads_in_one_call_over_leading_dims():
    critic = TwinCritic(3, 2, (8,))
    obs, act = torch.randn(4, 5, 3), torch.randn(4, 5, 2)
    q = critic(obs, act)
    assert q.shape == (2, 4, 5)
    flat = torch.cat([obs, act], -1)
    torch.testing.assert_close(q[1], critic.q2(flat).squeeze(-1))
    assert not math.isclose(q[0].sum().item(), q[1].sum().item())


def test_twin_critic_broadcasts_states_over_an_action_grid_like_repeating_them():
    critic = TwinCritic(3, 2, (8, 8)).double()
    obs, grid = torch.randn(5, 3, dtype=torch.float64), torch.randn(4, 5, 2, dtype=torch.float64)
    broadcast = critic(obs, grid)
    repeated = torch.stack([head(torch.cat([obs.expand(4, 5, 3), grid], -1)).squeeze(-1)
                            for head in (critic.q1, critic.q2)])
    torch.testing.assert_close(broadcast, repeated)
    weights = [critic.q1[0].weight, critic.q2[0].weight]
    torch.testing.assert_close(torch.autograd.grad(broadcast.sum(), weights),
                               torch.autograd.grad(repeated.sum(), weights))


def test_a_frozen_critic_call_equals_the_plain_one_and_reaches_only_the_actions():
    """frozen=True: the same Q in float64, the same gradient in the actions, no gradient in any critic weight
    (bf16 autocast included: the output layer stays fp32 either way)."""
    torch.manual_seed(0)
    critic = TwinCritic(3, 2, (8, 8)).double()
    obs = torch.randn(5, 3, dtype=torch.float64)
    actions = torch.rand(4, 5, 2, dtype=torch.float64, requires_grad=True)
    plain = critic(obs, actions)
    (plain_grad,) = torch.autograd.grad(plain.sum(), actions)
    frozen = critic(obs, actions, frozen=True)
    assert torch.equal(frozen, plain)
    (frozen_grad,) = torch.autograd.grad(frozen.sum(), actions)
    torch.testing.assert_close(frozen_grad, plain_grad)
    critic.zero_grad(set_to_none=True)
    critic(obs, actions, frozen=True).sum().backward()
    assert all(p.grad is None for p in critic.parameters())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = TwinCritic(3, 2, (8, 8))(obs.float(), actions.detach().float(), frozen=True)
    assert low.dtype == torch.float32


def test_the_original_actor_keeps_its_state_dict_and_clamp():
    actor = TanhGaussianActor(4, 2, (16,))
    assert sorted(actor.state_dict()) == ["net.0.bias", "net.0.weight", "net.2.bias", "net.2.weight"]
    with torch.no_grad():
        actor.net[-1].bias.fill_(50.0)  # raw log σ far above the bound
        _, log_std = actor.distribution_params(torch.zeros(3, 4))
    assert torch.equal(log_std, torch.full((3, 2), 2.0))


def test_corl_parameterization_scales_and_shifts_the_raw_log_std_with_learnable_scalars():
    from offrl.nets import ActorParameterization

    torch.manual_seed(0)
    actor = TanhGaussianActor(4, 2, (16,), ActorParameterization(-20.0, 2.0, 1.0, -1.0, "xavier"))
    obs = torch.randn(8, 4)
    raw = actor.net(obs).chunk(2, dim=-1)[1]
    _, log_std = actor.distribution_params(obs)
    torch.testing.assert_close(log_std, (raw - 1.0).clamp(-20.0, 2.0))
    with torch.no_grad():
        actor.log_std_multiplier.fill_(2.0)
        actor.log_std_offset.fill_(0.5)
    _, log_std = actor.distribution_params(obs)
    torch.testing.assert_close(log_std, (2.0 * raw + 0.5).clamp(-20.0, 2.0))
    actions, log_probs = actor(obs)
    log_probs.sum().backward()
    assert actor.log_std_multiplier.grad is not None and actor.log_std_offset.grad is not None
    output = actor.net[-1]
    bound = 1e-2 * math.sqrt(6.0 / (16 + 4))  # xavier-uniform with gain 1e-2
    assert output.weight.abs().max() <= bound and torch.equal(output.bias, torch.zeros(4))


def test_orthogonal_output_init_and_the_entropy_at_init_of_each_parameterization():
    from offrl.nets import ActorParameterization

    torch.manual_seed(0)
    orthogonal = TanhGaussianActor(17, 6, (256, 256), ActorParameterization(-20.0, 2.0, 1.0, -1.0, "orthogonal"))
    weight = orthogonal.net[-1].weight
    torch.testing.assert_close(weight @ weight.T, 1e-4 * torch.eye(12), atol=1e-7, rtol=0)
    corl = TanhGaussianActor(17, 6, (256, 256), ActorParameterization(-20.0, 2.0, 1.0, -1.0, "xavier"))
    original = TanhGaussianActor(17, 6, (256, 256))
    obs = torch.randn(2048, 17)
    with torch.no_grad():
        entropies = [-actor(obs)[1].mean().item() for actor in (corl, original)]
    # log σ ≈ -1 and means ≈ 0 under CORL's set-up: a far narrower policy at init than offrl's original actor
    assert entropies[0] < entropies[1] - 2.0
