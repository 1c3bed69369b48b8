import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from offrl.algos.cql import CQLAgent, CQLConfig, cql_update
from offrl.algos.sac import SACAgent, SACConfig, sac_update
from offrl.data.buffer import ReplayBuffer
from offrl.flops import cql_update_flops, sac_update_flops


def _fused_linear_flops(x_shape, weight_shape, *_, **__) -> int:
    return 2 * math.prod(x_shape) * weight_shape[0]


def _counter() -> FlopCounterMode:
    """torch's FLOP counter, taught the fused CPU Linear + ReLU (the same GEMM as the plain linear)."""
    return FlopCounterMode(display=False,
                           custom_mapping={torch.ops.mkldnn._linear_pointwise: _fused_linear_flops})


def _random_buffer(rows: int, obs_dim: int = 17, act_dim: int = 6) -> ReplayBuffer:
    g = torch.Generator().manual_seed(0)
    buffer = ReplayBuffer(obs_dim, act_dim, rows)
    buffer.add_batch({"observations": torch.randn(rows, obs_dim, generator=g),
                      "actions": torch.rand(rows, act_dim, generator=g) * 2 - 1,
                      "rewards": torch.randn(rows, generator=g),
                      "next_observations": torch.randn(rows, obs_dim, generator=g),
                      "terminals": torch.zeros(rows), "timeouts": torch.zeros(rows)})
    return buffer


@pytest.mark.parametrize("hidden", [(32, 16), (8, 8, 8)])
def test_analytic_update_flops_are_what_torch_counts(hidden):
    batch = _random_buffer(rows=64).sample(16)  # HalfCheetah's sizes, the functions' defaults
    cql_config = CQLConfig(actor_hidden=hidden, critic_hidden=hidden, n_actions=3)
    with _counter() as counter:
        cql_update(CQLAgent(17, 6, cql_config), batch, cql_config, step=0)  # bc_steps=0: the actor uses the critics
    assert counter.get_total_flops() == cql_update_flops(16, hidden, hidden, 3)
    sac_config = SACConfig(hidden=hidden)
    with _counter() as counter:
        sac_update(SACAgent(17, 6, sac_config), batch, sac_config)
    assert counter.get_total_flops() == sac_update_flops(16, hidden)


def test_analytic_update_flops_take_other_input_sizes():
    batch = _random_buffer(rows=64, obs_dim=3, act_dim=1).sample(16)
    config = SACConfig(hidden=(8, 8))
    with _counter() as counter:
        sac_update(SACAgent(3, 1, config), batch, config)
    assert counter.get_total_flops() == sac_update_flops(16, (8, 8), obs_dim=3, act_dim=1)
