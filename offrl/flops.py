"""Analytic matmul FLOPs of one SAC or CQL-SAC update, as `sac_update` and `cql_update` compute it.

A Linear layer over `rows` inputs costs 2·rows·d_in·d_out FLOPs forward; its backward costs the same again
for the weight gradient and, where the input needs a gradient, for the input gradient. Elementwise work
(activations, losses, optimiser steps) is not counted. The benchmarks (benchmarks/bench.py) divide these
counts by the measured update time for GFLOP/s and the fraction of the machine's matmul peak;
tests/test_flops.py checks them against torch's own FLOP counter.
"""

from __future__ import annotations

__all__ = ["sac_update_flops", "cql_update_flops"]

# Default input sizes: HalfCheetah's observation and action dimensions, the benchmarks' environment.
_OBS_DIM, _ACT_DIM = 17, 6


def _linear_flops(rows: int, d_in: int, d_out: int) -> float:
    return 2.0 * rows * d_in * d_out


def _forward_flops(rows: int, dims: list[int]) -> float:
    return sum(_linear_flops(rows, a, b) for a, b in zip(dims[:-1], dims[1:], strict=False))


def _critic_forward_flops(rows: int, obs_dim: int, act_dim: int, hidden: tuple[int, ...]) -> float:
    return _forward_flops(rows, [obs_dim + act_dim, *hidden, 1])


def _critic_to_action_gradient_flops(rows: int, obs_dim: int, act_dim: int, hidden: tuple[int, ...]) -> float:
    """Backward through one Q-network to its (observation, action) input only (the actor's loss; weights frozen)."""
    return _forward_flops(rows, [*hidden, 1]) + _linear_flops(rows, hidden[0], obs_dim + act_dim)


def _trained_forward_backward_flops(rows: int, dims: list[int]) -> float:
    """Forward, weight gradients, and input gradients past the first layer (its input needs none)."""
    return 2 * _forward_flops(rows, dims) + _forward_flops(rows, dims[1:])


def sac_update_flops(batch: int, hidden: tuple[int, ...], obs_dim: int = _OBS_DIM, act_dim: int = _ACT_DIM) -> float:
    """Matmul FLOPs of one `sac_update` with `hidden` actor and critics (tests/test_flops.py checks them
    against torch's counter)."""
    actor = [obs_dim, *hidden, 2 * act_dim]
    critic = _critic_forward_flops(batch, obs_dim, act_dim, hidden)
    target = _forward_flops(batch, actor) + 2 * critic  # π(s′), both target critics, no grad
    critic_step = 2 * (2 * critic + _forward_flops(batch, [*hidden, 1]))
    actor_step = (_trained_forward_backward_flops(batch, actor)
                  + 2 * (critic + _critic_to_action_gradient_flops(batch, obs_dim, act_dim, hidden)))
    return target + critic_step + actor_step


def cql_update_flops(batch: int, critic_hidden: tuple[int, ...], actor_hidden: tuple[int, ...], n_actions: int,
                     obs_dim: int = _OBS_DIM, act_dim: int = _ACT_DIM) -> float:
    """Matmul FLOPs of one `cql_update` with `n_actions` sampled actions per state (tests/test_flops.py
    checks them against torch's counter)."""
    grid_rows = (3 * n_actions + 1) * batch
    actor = [obs_dim, *actor_hidden, 2 * act_dim]
    per_state = _critic_forward_flops(batch, obs_dim, act_dim, critic_hidden)
    return (_trained_forward_backward_flops(batch, actor) + _forward_flops(batch, actor)  # π(·|s), π(·|s′)
            + 2 * per_state  # target critics
            + 2 * (per_state + _critic_to_action_gradient_flops(batch, obs_dim, act_dim, critic_hidden))  # actor
            + 2 * _trained_forward_backward_flops(grid_rows, [obs_dim + act_dim, *critic_hidden, 1]))  # the grid
