"""One training update replayed as one CUDA graph.

At offrl's batch sizes a GPU update is bound by the host, not the GPU: eager PyTorch launches a few hundred
small kernels per update (SAC ~250, CQL ~370) and the GPU idles between them (evaluation/bench.csv, the GPU
rows: eager against "(CUDA graph)"). Capturing the whole update once (losses, backward, every optimiser step,
Polyak) and replaying it launches all of them at once. This is what d3rlpy's `compile_graph` and
`torch.compile(mode="reduce-overhead")` do; reduce-overhead covers only the compiled losses, which leaves
backward's and the optimisers' launches eager, so the whole-update capture is the faster of the two.

What a replay assumes, as every CUDA graph does: the update reads its batch only from the tensors it is given
(copied here into static ones), has no host syncs and no data-dependent Python control flow, and depends on the
step only through `phase(step)` (one graph per phase; CQL's behaviour-cloning warm-up is a second phase).
Random numbers drawn inside the update advance the CUDA generator on every replay as they do in eager mode.
The metrics a replay returns are the same tensors every time, overwritten by the next replay: read them
before the next update (the training loop does, at its log steps).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Hashable, Iterable

import torch

from offrl.data.buffer import Batch
from offrl.errors import OfflineRLError

__all__ = ["CUDAGraphUpdate"]

Update = Callable[[Batch, int], dict[str, torch.Tensor]]


class CUDAGraphUpdate:
    """`update(batch, step)` run eagerly for its first `warmup` calls per phase (on a side stream, as CUDA graph
    capture requires), then captured and replayed. Each call is one real update: the call that captures
    replays the new graph on its own batch."""

    def __init__(self, update: Update, optimizers: Iterable[torch.optim.Optimizer],
                 phase: Callable[[int], Hashable] = lambda step: None, warmup: int = 3):
        if warmup < 1:
            raise OfflineRLError(f"CUDAGraphUpdate: warmup must be >= 1 (capture needs a warmed-up update), "
                                 f"found {warmup!r}")
        self.update, self.phase, self.warmup = update, phase, warmup
        self.optimizers = list(optimizers)
        self.graphs: dict[Hashable, tuple[torch.cuda.CUDAGraph, dict[str, torch.Tensor]]] = {}
        self.eager_calls: dict[Hashable, int] = {}
        self.static_batch: Batch | None = None
        # Graphs of all phases share one memory pool. That is safe here because nothing that must outlive a replay
        # lives in it: parameters and optimiser state are allocated before any capture (the eager warm-up makes
        # Adam's), and a replay's metrics are read before the next update.
        self.pool = None
        for optimizer in self.optimizers:
            # A graph updates the optimiser state tensors it captured: state loaded later replaces them, so the
            # graphs are dropped then and captured again. Checkpoints keep `capturable` off, so an eager resume
            # of a graphed run sees the optimiser it would have had.
            optimizer.register_load_state_dict_post_hook(lambda optimizer: self.reset())
            optimizer.register_state_dict_post_hook(_without_capturable)

    def reset(self) -> None:
        """Forget every graph (the next calls warm up and capture again)."""
        self.graphs.clear()
        self.eager_calls.clear()
        self.static_batch, self.pool = None, None

    def __call__(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        if batch.observations.device.type != "cuda":
            raise OfflineRLError(f"CUDA graph update: the batch is on {batch.observations.device}, a CUDA graph "
                                 f"needs a CUDA device (use device='cuda', or leave compile off)")
        with torch.cuda.device(batch.observations.device):  # streams, syncs and capture on the batch's GPU
            return self._call(batch, step)

    def _call(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        key = self.phase(step)
        if key not in self.graphs:
            done = self.eager_calls.get(key, 0)
            if done < self.warmup:
                self.eager_calls[key] = done + 1
                return self._eager(batch, step)
            self._capture(key, batch, step)
        graph, metrics = self.graphs[key]
        self._copy_in(batch)
        graph.replay()
        return metrics

    def _eager(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), warnings.catch_warnings():
            # a later phase warms up after an earlier phase's capture made the optimisers capturable; that is
            # intended, and Adam's warning about eager steps of a capturable optimiser is noise here
            warnings.filterwarnings("ignore", message=".*capturable=True.*")
            metrics = self.update(batch, step)
        torch.cuda.current_stream().wait_stream(side)
        return metrics

    def _copy_in(self, batch: Batch) -> None:
        assert self.static_batch is not None
        for field in dataclasses.fields(Batch):
            static, given = getattr(self.static_batch, field.name), getattr(batch, field.name)
            if (static is None) != (given is None) or (static is not None and static.shape != given.shape):
                raise OfflineRLError(f"CUDA graph update: batch field {field.name} changed shape or presence "
                                     f"after capture ({None if static is None else tuple(static.shape)} -> "
                                     f"{None if given is None else tuple(given.shape)}); a graph replays fixed shapes")
            if static is not None:
                static.copy_(given, non_blocking=True)

    def _capture(self, key: Hashable, batch: Batch, step: int) -> None:
        if self.static_batch is None:
            fields = {f.name: getattr(batch, f.name) for f in dataclasses.fields(Batch)}
            self.static_batch = Batch(**{k: None if v is None else v.clone() for k, v in fields.items()})
        self._copy_in(batch)
        for optimizer in self.optimizers:  # Adam keeps its step count on the device, so a replay advances it
            optimizer.defaults["capturable"] = True
            for group in optimizer.param_groups:
                group["capturable"] = True
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            metrics = self.update(self.static_batch, step)
        self.pool = graph.pool()
        self.graphs[key] = (graph, metrics)


def _without_capturable(optimizer: torch.optim.Optimizer, state: dict) -> dict:
    state["param_groups"] = [{**group, "capturable": False} for group in state["param_groups"]]
    return state
