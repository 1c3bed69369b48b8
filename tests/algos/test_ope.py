"""Conservative policy evaluation, exactly: a small tabular MDP in float64 with a closed-form Q^π.

Two kinds of checks:
- the paper's statements (Kumar et al. 2020, Theorems 3.1 and 3.2) on the closed-form fixed points of the three
  estimators, on the true model and on an empirical one built from a finite dataset;
- that offrl's estimator losses (`offrl.algos.ope.ope_losses`, the code the deep estimators train with) have
  exactly these fixed points: the tabular MDP is embedded in offrl's continuous interface (one-hot observations,
  the action interval [-1, 1] cut into |A| bins) and the loss's gradient vanishes at the closed-form Q̂ and not at
  Q^π.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from offrl.algos.ope import OPEConfig, OPECritic, ope_losses, ope_update
from offrl.data.buffer import Batch

S, A, GAMMA = 4, 3, 0.8


def _random_mdp(seed: int = 0):
    rng = np.random.default_rng(seed)
    transitions = rng.dirichlet(np.ones(S), size=(S, A))  # P[s, a, s']
    rewards = rng.uniform(-1.0, 1.0, size=(S, A))
    pi = rng.dirichlet(np.ones(A) * 0.7, size=S)
    behaviour = rng.dirichlet(np.ones(A) * 2.0, size=S)
    return transitions, rewards, pi, behaviour


def _q_fixed_point(transitions, rewards, pi, shift):
    """The Q solving Q = R − shift + γ P Π Q: (I − γ P Π)⁻¹ (R − shift), as an (S, A) table."""
    p_pi = np.einsum("sat,tb->satb", transitions, pi).reshape(S * A, S * A)
    return np.linalg.solve(np.eye(S * A) - GAMMA * p_pi, (rewards - shift).reshape(-1)).reshape(S, A)


def _values(q, pi):
    return (q * pi).sum(axis=1)


def _empirical(transitions, rewards, behaviour, rows: int, seed: int = 1, reward_noise: float = 0.5,
               terminal_rate: float = 0.0):
    """A dataset of `rows` transitions (s uniform, a ~ β, s' ~ P, noisy r, a share of them terminal) and its
    empirical model; a terminal row's successor counts for nothing (P̂'s rows then sum to less than 1)."""
    rng = np.random.default_rng(seed)
    s = rng.integers(S, size=rows)
    a = np.array([rng.choice(A, p=behaviour[i]) for i in s])
    s_next = np.array([rng.choice(S, p=transitions[i, j]) for i, j in zip(s, a, strict=True)])
    r = rewards[s, a] + reward_noise * rng.standard_normal(rows)
    terminal = rng.random(rows) < terminal_rate
    counts = np.zeros((S, A))
    np.add.at(counts, (s, a), 1)
    assert counts.min() > 0, "every (s, a) must be in the data for the empirical model"
    p_hat = np.zeros((S, A, S))
    np.add.at(p_hat, (s[~terminal], a[~terminal], s_next[~terminal]), 1)
    p_hat /= counts[..., None]
    r_hat = np.zeros((S, A))
    np.add.at(r_hat, (s, a), r)
    r_hat /= counts
    behaviour_hat = counts / counts.sum(axis=1, keepdims=True)
    return (s, a, r, s_next, terminal), p_hat, r_hat, behaviour_hat


# --- the theorems, on closed forms ------------------------------------------------------------------------------

def test_fqe_recovers_q_pi_on_the_true_model_and_the_penalties_move_it_by_their_closed_form():
    transitions, rewards, pi, behaviour = _random_mdp()
    q_pi = _q_fixed_point(transitions, rewards, pi, 0.0)
    # Q^π by its definition: the Bellman equation holds
    np.testing.assert_allclose(q_pi, rewards + GAMMA * transitions @ _values(q_pi, pi), atol=1e-12)
    alpha, mu = 0.3, np.full((S, A), 1.0 / A)
    cql_q = _q_fixed_point(transitions, rewards, pi, alpha * mu / behaviour)
    cql_v = _q_fixed_point(transitions, rewards, pi, alpha * (pi / behaviour - 1.0))
    assert (cql_q < q_pi).all()  # Theorem 3.1 without sampling error: any α > 0 lower-bounds every (s, a)
    assert (_values(cql_v, pi) <= _values(q_pi, pi) + 1e-12).all()  # Theorem 3.2: the value under π
    # eq. 2 is the tighter bound on V: with the same μ = π, eq. 1's V̂ sits lower by exactly α / (1 − γ)
    cql_q_pi = _q_fixed_point(transitions, rewards, pi, alpha * pi / behaviour)
    np.testing.assert_allclose(_values(cql_v, pi) - _values(cql_q_pi, pi), alpha / (1 - GAMMA), atol=1e-10)


def test_with_sampling_error_cql_q_lower_bounds_q_pi_once_alpha_exceeds_the_papers_bound():
    """Theorem 3.1 with an empirical model: Q̂ − Q^π = (I − γ P̂ Π)⁻¹ [e − α μ / π̂_β], with e = B̂^π Q^π − Q^π the
    one-step sampling error at Q^π. The inverse is a non-negative operator, so α ≥ max e / (μ / π̂_β) is the
    paper's condition (there with a concentration bound on |e|, here with e itself)."""
    transitions, rewards, pi, behaviour = _random_mdp()
    q_pi = _q_fixed_point(transitions, rewards, pi, 0.0)
    _, p_hat, r_hat, behaviour_hat = _empirical(transitions, rewards, behaviour, rows=600)
    error = r_hat + GAMMA * p_hat @ _values(q_pi, pi) - q_pi
    fqe = _q_fixed_point(p_hat, r_hat, pi, 0.0)
    assert (fqe > q_pi).any(), "with finite data FQE overestimates somewhere (the test needs sampling error)"
    for mu in (np.full((S, A), 1.0 / A), pi):
        ratio = mu / behaviour_hat
        alpha_bound = max(float((error / ratio).max()), 0.0)
        for alpha in (alpha_bound, 1.5 * alpha_bound, 10 * alpha_bound):
            assert (_q_fixed_point(p_hat, r_hat, pi, alpha * ratio) <= q_pi + 1e-10).all()
        # below the bound the lower bound can fail: at α = 0 (FQE) it does, somewhere
        assert (_q_fixed_point(p_hat, r_hat, pi, 0.0 * ratio) > q_pi).any()


def test_with_sampling_error_cql_v_lower_bounds_v_pi_once_alpha_exceeds_its_bound():
    transitions, rewards, pi, behaviour = _random_mdp()
    q_pi = _q_fixed_point(transitions, rewards, pi, 0.0)
    # a dataset on which FQE overestimates V^π (on some others it happens to sit below it, and the bound would
    # hold at α = 0 too, showing nothing)
    _, p_hat, r_hat, behaviour_hat = _empirical(transitions, rewards, behaviour, rows=600, seed=6)
    assert (_values(_q_fixed_point(p_hat, r_hat, pi, 0.0), pi) > _values(q_pi, pi)).any()
    error = r_hat + GAMMA * p_hat @ _values(q_pi, pi) - q_pi
    excess = pi / behaviour_hat - 1.0
    # V̂ − V^π = (I − γ Π P̂)⁻¹ Π [e − α (π/π̂_β − 1)]; Π(π/π̂_β − 1) = Σ_a π²/π̂_β − 1 > 0 where π ≠ π̂_β
    assert ((pi * excess).sum(axis=1) > 0).all()
    alpha_bound = max(float(((pi * error).sum(axis=1) / (pi * excess).sum(axis=1)).max()), 0.0)
    assert alpha_bound > 0
    for alpha in (alpha_bound, 3 * alpha_bound):
        q_hat = _q_fixed_point(p_hat, r_hat, pi, alpha * excess)
        assert (_values(q_hat, pi) <= _values(q_pi, pi) + 1e-10).all()
    # below the bound it can fail: at α = 0 (FQE) it does
    assert (_values(_q_fixed_point(p_hat, r_hat, pi, 0.0 * excess), pi) > _values(q_pi, pi)).any()


def test_fqe_on_an_empirical_model_approaches_q_pi_as_the_data_grows():
    """FQE's fixed point on the data's empirical model is unbiased only in the limit: its error shrinks with the
    number of transitions (about as 1/√n), while the conservative estimates keep their α-sized push."""
    transitions, rewards, pi, behaviour = _random_mdp()
    q_pi = _q_fixed_point(transitions, rewards, pi, 0.0)
    errors = []  # the largest |Q̂ − Q^π|, averaged over five datasets of each size
    for rows in (300, 3_000, 30_000):
        errors.append(np.mean([np.abs(_q_fixed_point(*_empirical(transitions, rewards, behaviour, rows, seed)[1:3], pi,
                                                     0.0) - q_pi).max() for seed in range(1, 6)]))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.25 * errors[0]


def test_the_bound_tightens_as_alpha_shrinks_and_as_the_data_covers_pi():
    transitions, rewards, pi, _ = _random_mdp()
    v_pi = _values(_q_fixed_point(transitions, rewards, pi, 0.0), pi)
    uniform = np.full((S, A), 1.0 / A)
    for method in ("cql-q", "cql-v"):
        def gap(alpha, behaviour, method=method):
            shift = alpha * (pi / behaviour if method == "cql-q" else pi / behaviour - 1.0)
            return v_pi - _values(_q_fixed_point(transitions, rewards, pi, shift), pi)

        behaviour = 0.5 * uniform + 0.5 * pi
        gaps = [gap(alpha, behaviour) for alpha in (2.0, 1.0, 0.5, 0.1, 0.0)]
        for wider, narrower in zip(gaps, gaps[1:], strict=False):
            assert (narrower < wider + 1e-12).all() and (narrower <= wider).any()
        np.testing.assert_allclose(gaps[-1], 0.0, atol=1e-12)
        coverage = [gap(1.0, (1 - share) * uniform + share * pi) for share in (0.0, 0.3, 0.6, 0.9, 1.0)]
        for worse, better in zip(coverage, coverage[1:], strict=False):
            assert (better <= worse + 1e-12).all() and (better < worse).any()
        if method == "cql-v":  # data from π itself: eq. 2's penalty vanishes in expectation, V̂ = V^π
            np.testing.assert_allclose(coverage[-1], 0.0, atol=1e-10)
        else:  # eq. 1 with μ = π still pushes down by α / (1 − γ) when the data is π's
            np.testing.assert_allclose(coverage[-1], 1.0 / (1 - GAMMA), atol=1e-10)


# --- offrl's losses have these fixed points -----------------------------------------------------------------

class _TableCritic(torch.nn.Module):
    """Twin tables Q_i[s, a] behind offrl's critic interface: one-hot observations, actions in [-1, 1]
    cut into A equal bins."""

    def __init__(self, table: np.ndarray):
        super().__init__()
        self.table = torch.nn.Parameter(torch.as_tensor(np.stack([table, table]), dtype=torch.float64))

    def forward(self, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        state = observations.argmax(dim=-1).expand(actions.shape[:-1])
        action = ((actions[..., 0] + 1) / 2 * A).floor().long().clamp(0, A - 1)
        return self.table[:, state, action]


class _BinPolicy:
    """π(k|s) over the bins, as a density on [-1, 1]^act_dim: pick a bin of the first action coordinate by π, then
    a point uniformly inside it; further coordinates are uniform on [-1, 1] (the critic ignores them), so every
    density carries their factor 1/2 each, as the uniform proposal's does."""

    deterministic = False
    obs_dim = S

    def __init__(self, pi: np.ndarray, act_dim: int = 1):
        self.pi = torch.as_tensor(pi, dtype=torch.float64)
        self.act_dim = act_dim

    def sample(self, observations: torch.Tensor, n: int):
        probs = self.pi[observations.argmax(dim=-1)]  # (B, A)
        bins = torch.multinomial(probs, n, replacement=True).T  # (n, B)
        first = -1 + (bins + torch.rand(bins.shape, dtype=torch.float64)) * (2.0 / A)
        rest = torch.rand((*bins.shape, self.act_dim - 1), dtype=torch.float64) * 2 - 1
        log_density = probs.gather(1, bins.T).T.log() + math.log(A / 2.0) + (self.act_dim - 1) * math.log(0.5)
        return torch.cat([first.unsqueeze(-1), rest], dim=-1), log_density


def _mean_gradient(table, batch, policy, config, draws: int = 16) -> np.ndarray:
    """E[∂ loss / ∂ Q_1] at Q = `table` (the target critic equal to the critic, as at a fixed point), averaged over
    the losses' own sampling (backup actions, penalty actions)."""
    model = OPECritic(S, 1, config)
    model.critic, model.critic_target = _TableCritic(table), _TableCritic(table)
    total = np.zeros((S, A))
    for _ in range(draws):
        model.critic.table.grad = None
        loss, _ = ope_losses(model, policy, batch, config, lambda observations: observations)
        loss.backward()
        total += model.critic.table.grad[0].numpy()
    return total / draws


def _batch(data, act_dim: int = 1) -> Batch:
    s, a, r, s_next, terminal = data
    eye = torch.eye(S, dtype=torch.float64)
    first = torch.as_tensor(-1 + (a + 0.5) * (2.0 / A)).unsqueeze(-1)
    rest = torch.rand((len(s), act_dim - 1), dtype=torch.float64) * 2 - 1
    return Batch(observations=eye[s], actions=torch.cat([first, rest], dim=-1), rewards=torch.as_tensor(r),
                 next_observations=eye[s_next], terminals=torch.as_tensor(terminal, dtype=torch.float64),
                 timeouts=torch.zeros(len(s), dtype=torch.float64))


def _closed_form(method, mu, alpha, temperature, pi, p_hat, r_hat, behaviour_hat):
    """The fixed point of each estimator on the empirical model."""
    if method == "fqe":
        return _q_fixed_point(p_hat, r_hat, pi, 0.0)
    if method == "cql-v":
        return _q_fixed_point(p_hat, r_hat, pi, alpha * (pi / behaviour_hat - 1.0))
    if mu == "uniform":
        return _q_fixed_point(p_hat, r_hat, pi, alpha * (1.0 / A) / behaviour_hat)
    if mu == "policy":
        return _q_fixed_point(p_hat, r_hat, pi, alpha * pi / behaviour_hat)
    # softmax: μ ∝ exp(Q/τ) depends on the fixed point itself; solve Q = B̂^π Q − α softmax(Q/τ) / π̂_β by a damped
    # iteration (the undamped one oscillates once α / π̂_β outgrows 1 − γ)
    q = _q_fixed_point(p_hat, r_hat, pi, 0.0)
    for _ in range(5000):
        softmax = np.exp((q - q.max(axis=1, keepdims=True)) / temperature)
        softmax /= softmax.sum(axis=1, keepdims=True)
        q = 0.9 * q + 0.1 * (r_hat - alpha * softmax / behaviour_hat + GAMMA * p_hat @ _values(q, pi))
    np.testing.assert_allclose(r_hat - alpha * softmax / behaviour_hat + GAMMA * p_hat @ _values(q, pi), q,
                               atol=1e-9)
    return q


@pytest.mark.parametrize("method, mu, act_dim, temperature", [
    ("fqe", "uniform", 1, 1.0), ("cql-q", "uniform", 2, 1.0), ("cql-q", "policy", 1, 1.0), ("cql-v", "policy", 2, 1.0),
    ("cql-q", "softmax", 1, 1.0), ("cql-q", "softmax", 2, 0.5)])
def test_offrl_losses_are_stationary_at_the_closed_form_fixed_point(method, mu, act_dim, temperature):
    """Also with a second action coordinate (the uniform density's |A| factor), τ ≠ 1 and terminal rows."""
    torch.manual_seed(0)
    transitions, rewards, pi, behaviour = _random_mdp()
    data, p_hat, r_hat, behaviour_hat = _empirical(transitions, rewards, behaviour, rows=3000, terminal_rate=0.1)
    batch = _batch(data, act_dim)
    alpha = 0.4
    config = OPEConfig(method=method, alpha=alpha, mu=mu, n_actions=128, backup_samples=128, gamma=GAMMA,
                       critic_hidden=(2,), temperature=temperature)
    fixed_point = _closed_form(method, mu, alpha, temperature, pi, p_hat, r_hat, behaviour_hat)
    q_pi = _q_fixed_point(transitions, rewards, pi, 0.0)
    at_fixed_point = _mean_gradient(fixed_point, batch, _BinPolicy(pi, act_dim), config)
    at_q_pi = _mean_gradient(q_pi, batch, _BinPolicy(pi, act_dim), config)
    assert np.abs(at_fixed_point).max() < 0.03 * np.abs(at_q_pi).max(), (at_fixed_point, at_q_pi)


@pytest.mark.parametrize("method, mu", [("fqe", "uniform"), ("cql-q", "uniform"), ("cql-v", "policy")])
def test_ope_update_converges_to_the_closed_form(method, mu):
    """The whole update (Adam, the Polyak target, the ensemble's mean target) trained to convergence."""
    torch.manual_seed(1)
    transitions, rewards, pi, behaviour = _random_mdp()
    data, p_hat, r_hat, behaviour_hat = _empirical(transitions, rewards, behaviour, rows=1000, terminal_rate=0.1)
    batch = _batch(data)
    config = OPEConfig(method=method, alpha=0.4, mu=mu, n_actions=16, backup_samples=16, gamma=GAMMA,
                       critic_hidden=(2,), critic_lr=1e-2, tau=0.1)
    model = OPECritic(S, 1, config)
    start = np.zeros((S, A))
    model.critic, model.critic_target = _TableCritic(start), _TableCritic(start)
    model.critic.table.data[1] += 0.5  # the two critics start apart: the target is their mean, not one of them
    model.critic_optimizer = torch.optim.Adam(model.critic.parameters(), lr=config.critic_lr)
    policy = _BinPolicy(pi)
    for _ in range(1500):
        ope_update(model, policy, batch, config, lambda observations: observations)
    expected = _closed_form(method, mu, 0.4, 1.0, pi, p_hat, r_hat, behaviour_hat)
    learned = model.critic.table.detach().mean(dim=0).numpy()
    assert np.abs(learned - expected).max() < 0.05 * np.abs(expected).max(), (learned, expected)


@pytest.mark.parametrize("method, mu", [("fqe", "uniform"), ("cql-q", "uniform"), ("cql-q", "softmax"),
                                        ("cql-v", "policy")])
def test_a_penalty_has_no_fixed_point_where_pi_takes_an_action_the_data_never_shows(method, mu):
    """π̂_β(a|s) = 0 where π(a|s) > 0: the closed forms' α μ/π̂_β is infinite there. What the update does: no
    Bellman error ever reaches Q̂(s, a), only the penalty's constant push, so it falls without bound (Adam: about
    lr per update; under μ softmax the push is its softmax weight, which shrinks as the entry falls, so more
    slowly, but it never stops) and drags V̂ down with it: the "bound" holds, vacuously, and more budget only
    loosens it; at the unseen entry the loss's gradient still pushes down from a value far below anything the
    data supports. FQE
    leaves Q̂(s, a) where it started (the data says nothing there). The deep estimators show the same for the
    uniform random policy on SAC-collected data (evaluation/ope_curves_halfcheetah.png)."""
    torch.manual_seed(2)
    transitions, rewards, pi, behaviour = _random_mdp()
    data, *_ = _empirical(transitions, rewards, behaviour, rows=1000)
    s, a = data[0], data[1]
    unseen = (0, int(np.argmax(pi[0])))  # an action π favours in state 0, removed from the data
    keep = ~((s == unseen[0]) & (a == unseen[1]))
    batch = _batch(tuple(column[keep] for column in data))
    config = OPEConfig(method=method, alpha=0.4, mu=mu, n_actions=16, backup_samples=16, gamma=GAMMA,
                       critic_hidden=(2,), critic_lr=1e-2, tau=0.1)
    model = OPECritic(S, 1, config)
    model.critic, model.critic_target = _TableCritic(np.zeros((S, A))), _TableCritic(np.zeros((S, A)))
    model.critic_optimizer = torch.optim.Adam(model.critic.parameters(), lr=config.critic_lr)
    policy = _BinPolicy(pi)
    unseen_q, values = [], []
    for _ in range(3):
        for _ in range(400):
            ope_update(model, policy, batch, config, lambda observations: observations)
        table = model.critic.table.detach().mean(dim=0).numpy()
        unseen_q.append(table[unseen])
        values.append(_values(table, pi)[0])
    if method == "fqe":
        assert unseen_q == [0.0, 0.0, 0.0]  # no gradient ever reaches it
        return
    steps = np.diff(unseen_q)
    if mu != "softmax":
        assert (steps < -0.8 * 400 * config.critic_lr).all(), unseen_q  # about lr per update, every 400
    assert (steps < 0).all(), unseen_q
    assert values[2] < values[1] < values[0]  # V̂ keeps falling with it
    far_below = table.copy()
    far_below[unseen] = table.min() - 20.0  # (under softmax the push shrinks as exp(Q): it falls ever slower)
    assert _mean_gradient(far_below, batch, policy, config)[unseen] > 0  # descent still lowers it: no fixed point


# --- the estimator's interface ---------------------------------------------------------------------------------

def test_config_refuses_bad_values():
    from offrl.errors import OfflineRLError

    for bad in ({"method": "mc"}, {"mu": "beta"}, {"alpha": -1.0}, {"alpha": float("nan")}, {"alpha": True},
                {"gamma": 1.0},
                {"n_actions": 0}, {"critic_hidden": ()}):
        with pytest.raises(OfflineRLError, match=next(iter(bad))):
            OPEConfig(**bad).validate()
