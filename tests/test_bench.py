import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from offrl.algos.cql import CQLAgent, CQLConfig, cql_update
from offrl.algos.sac import SACAgent, SACConfig, sac_update
from offrl.bench import _filled_buffer, cql_update_flops, sac_update_flops


def _fused_linear_flops(x_shape, weight_shape, *_, **__) -> int:
    return 2 * math.prod(x_shape) * weight_shape[0]


def _counter() -> FlopCounterMode:
    """torch's FLOP counter, taught the fused CPU Linear + ReLU (the same GEMM as the plain linear)."""
    return FlopCounterMode(display=False,
                           custom_mapping={torch.ops.mkldnn._linear_pointwise: _fused_linear_flops})


@pytest.mark.parametrize("hidden", [(32, 16), (8, 8, 8)])
def test_analytic_update_flops_are_what_torch_counts(hidden):
    buffer = _filled_buffer(rows=64)
    batch = buffer.sample(16)
    cql_config = CQLConfig(actor_hidden=hidden, critic_hidden=hidden, n_actions=3)
    with _counter() as counter:
        cql_update(CQLAgent(17, 6, cql_config), batch, cql_config, step=0)  # bc_steps=0: the actor uses the critics
    assert counter.get_total_flops() == cql_update_flops(16, hidden, hidden, 3)
    sac_config = SACConfig(hidden=hidden)
    with _counter() as counter:
        sac_update(SACAgent(17, 6, sac_config), batch, sac_config)
    assert counter.get_total_flops() == sac_update_flops(16, hidden)


def test_bench_rows_carry_rates_and_the_fraction_of_peak(tmp_path):
    from offrl.bench import run_bench

    frame = run_bench(tmp_path / "bench.csv", seconds=0.05, include=("updates",), sizes={"tiny 2x8": (8, 8)})
    cql = frame[frame["benchmark"] == "CQL update tiny 2x8"]
    assert set(cql["precision"]) == {"fp32", "bf16"}
    assert (cql["value"] > 0).all()
    assert (cql["gflops"] / cql["value"]).tolist() == pytest.approx(cql["gflop_per_update"].tolist())
    assert (tmp_path / "bench.csv").is_file()
