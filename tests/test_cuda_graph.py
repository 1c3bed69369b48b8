"""The whole-update CUDA graph (offrl.cuda_graph): refusals everywhere; on a GPU, replays equal eager updates.

The GPU half runs where CUDA is (a lent device machine runs it first in evaluation/scripts/bench_gpu.sh); CI
has no GPU and skips it.
"""

import copy

import numpy as np
import pytest
import torch

import offrl
from offrl.algos.cql import CQLAgent, CQLConfig, cql_update
from offrl.algos.sac import SACAgent, SACConfig, sac_update
from offrl.cuda_graph import CUDAGraphUpdate
from offrl.data.buffer import Batch
from offrl.errors import OfflineRLError

OBS, ACT, ROWS = 5, 2, 64
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _batches(n: int, device: str, mc_returns: bool = False) -> list[Batch]:
    g = torch.Generator().manual_seed(1)
    return [Batch(observations=torch.randn(ROWS, OBS, generator=g).to(device),
                  actions=(torch.rand(ROWS, ACT, generator=g) * 2 - 1).to(device),
                  rewards=torch.randn(ROWS, generator=g).to(device),
                  next_observations=torch.randn(ROWS, OBS, generator=g).to(device),
                  terminals=(torch.rand(ROWS, generator=g) < 0.1).float().to(device),
                  timeouts=torch.zeros(ROWS, device=device),
                  mc_returns=torch.randn(ROWS, generator=g).to(device) if mc_returns else None)
            for _ in range(n)]


def test_a_cpu_batch_is_refused():
    agent = SACAgent(OBS, ACT, SACConfig(hidden=(8, 8)))
    graph = CUDAGraphUpdate(lambda batch, step: sac_update(agent, batch, SACConfig(hidden=(8, 8))),
                            agent.optimizers().values())
    with pytest.raises(OfflineRLError, match="needs a CUDA device"):
        graph(_batches(1, "cpu")[0], 0)


def test_warmup_must_be_positive():
    with pytest.raises(OfflineRLError, match="warmup must be >= 1"):
        CUDAGraphUpdate(lambda batch, step: {}, [], warmup=0)


def test_checkpointed_optimizer_state_keeps_capturable_off_and_loading_resets_the_graphs():
    agent = SACAgent(OBS, ACT, SACConfig(hidden=(8, 8)))
    graph = CUDAGraphUpdate(lambda batch, step: {}, agent.optimizers().values())
    for group in agent.critic_optimizer.param_groups:
        group["capturable"] = True  # as a capture leaves it
    saved = agent.critic_optimizer.state_dict()
    assert not any(group["capturable"] for group in saved["param_groups"])
    graph.graphs[None], graph.eager_calls[None] = "captured", 3
    agent.critic_optimizer.load_state_dict(saved)
    assert graph.graphs == {} and graph.eager_calls == {}


def test_sac_compile_on_cpu_is_refused():
    with pytest.raises(OfflineRLError, match="needs device='cuda'"):
        offrl.SAC(device="cpu", compile=True)


def _parameters(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _eager_against_graphed(make_agent, update, batches, phase=lambda step: None):
    """The same agent trained on the same batches from the same CUDA RNG state, eagerly and through the graph
    (warm-up, capture, replays, and a phase switch where `phase` changes)."""
    first = make_agent().cuda()
    second = copy.deepcopy(first)
    torch.cuda.manual_seed(7)
    for step, batch in enumerate(batches):
        eager_metrics = update(first, batch, step)
    torch.cuda.manual_seed(7)
    graph = CUDAGraphUpdate(lambda batch, step: update(second, batch, step), second.optimizers().values(), phase,
                            warmup=2)
    for step, batch in enumerate(batches):
        graph_metrics = graph(batch, step)
    torch.cuda.synchronize()
    return first, second, eager_metrics, graph_metrics, graph


def _assert_same(first, second, eager_metrics, graph_metrics, start):
    for name, value in _parameters(first).items():
        other = _parameters(second)[name]
        assert torch.allclose(value, other, rtol=1e-4, atol=1e-5), \
            f"{name}: max |eager - graph| {float((value - other).abs().max()):.3g}"
    moved = max(float((value - start[name]).abs().max()) for name, value in _parameters(second).items())
    assert moved > 1e-4  # the replays did update the networks
    for name, value in eager_metrics.items():
        assert torch.allclose(value.float(), graph_metrics[name].float(), rtol=1e-4, atol=1e-5), name


@needs_cuda
@pytest.mark.parametrize("hidden", [(32, 32), (32, 32, 32)])
def test_sac_replays_equal_eager_updates(hidden):
    config = SACConfig(hidden=hidden)
    torch.manual_seed(0)
    start = _parameters(SACAgent(OBS, ACT, config))
    torch.manual_seed(0)
    first, second, eager, graphed, graph = _eager_against_graphed(
        lambda: SACAgent(OBS, ACT, config), lambda agent, batch, step: sac_update(agent, batch, config),
        _batches(8, "cuda"))
    assert list(graph.graphs) == [None]
    _assert_same(first, second, eager, graphed, {k: v.cuda() for k, v in start.items()})


@needs_cuda
@pytest.mark.parametrize("calibrated", [False, True])
def test_cql_replays_equal_eager_updates_across_the_behaviour_cloning_switch(calibrated):
    config = CQLConfig(actor_hidden=(32, 32), critic_hidden=(32, 32), bc_steps=4, n_actions=4,
                       calibrated=calibrated)
    torch.manual_seed(0)
    start = _parameters(CQLAgent(OBS, ACT, config))
    torch.manual_seed(0)
    first, second, eager, graphed, graph = _eager_against_graphed(
        lambda: CQLAgent(OBS, ACT, config), lambda agent, batch, step: cql_update(agent, batch, config, step),
        _batches(10, "cuda", mc_returns=calibrated), phase=lambda step: step < config.bc_steps)
    assert set(graph.graphs) == {True, False}  # one graph per phase
    _assert_same(first, second, eager, graphed, {k: v.cuda() for k, v in start.items()})


def _captured_sac_graph(updates: int) -> tuple[SACAgent, CUDAGraphUpdate]:
    """A small SAC agent's update, warmed up once and captured, after `updates` calls."""
    config = SACConfig(hidden=(8, 8))
    agent = SACAgent(OBS, ACT, config).cuda()
    graph = CUDAGraphUpdate(lambda batch, step: sac_update(agent, batch, config), agent.optimizers().values(),
                            warmup=1)
    for step, batch in enumerate(_batches(updates, "cuda")):
        graph(batch, step)
    return agent, graph


@needs_cuda
def test_a_batch_of_another_shape_is_refused_after_capture():
    _, graph = _captured_sac_graph(2)
    smaller = Batch(**{k: v[:10] for k, v in vars(_batches(1, "cuda")[0]).items() if v is not None})
    with pytest.raises(OfflineRLError, match="changed shape"):
        graph(smaller, 2)


@needs_cuda
@pytest.mark.parametrize("algorithm", ["CQL", "SAC"])
def test_agents_fit_with_compile_on_cuda_and_resume(algorithm, tmp_path):
    rng = np.random.default_rng(0)
    n = 400
    dataset = offrl.dataset_from_arrays(rng.normal(size=(n, OBS)).astype(np.float32),
                                        rng.uniform(-1, 1, size=(n, ACT)).astype(np.float32),
                                        rng.normal(size=n).astype(np.float32), np.zeros(n), np.arange(n) % 100 == 99,
                                        device="cuda")
    small = dict(actor_hidden=(16, 16), critic_hidden=(16, 16), batch_size=32, bc_steps=10) if algorithm == "CQL" \
        else dict(hidden=(16, 16), batch_size=32)
    make = (lambda: offrl.CQL("fast", device="cuda", compile=True, **small)) if algorithm == "CQL" else \
        (lambda: offrl.SAC(device="cuda", compile=True, **small))
    agent = make()
    report = agent.fit(dataset, 30, eval_env=False, log_every=10, checkpoint_every=20, run_dir=tmp_path / "run",
                       show_progress=False)
    assert report.updates == 30
    graph = agent._graph
    assert graph.optimizers == list(agent.networks.optimizers().values())  # captured for these networks
    assert set(graph.graphs) == ({True, False} if algorithm == "CQL" else {None})  # CQL: the BC warm-up's graph too
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert not any(group["capturable"] for state in checkpoint["optimizers"].values()
                   for group in state["param_groups"])  # an eager resume gets the optimiser it would have had
    resumed = make().fit(dataset, 40, eval_env=False, log_every=10, checkpoint_every=20, run_dir=tmp_path / "run",
                         resume=True, show_progress=False)
    assert resumed.updates == 40


@needs_cuda
def test_optimizer_state_loaded_after_capture_drops_the_graphs():
    agent, graph = _captured_sac_graph(3)
    assert set(graph.graphs) == {None}
    agent.critic_optimizer.load_state_dict(agent.critic_optimizer.state_dict())  # new state tensors
    assert graph.graphs == {} and graph.static_batch is None  # warmed up and captured again on the next calls
