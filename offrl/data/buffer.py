"""Replay storage on the device. It knows transitions, not algorithms."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Batch", "ReplayBuffer"]



@dataclass(frozen=True)
class Batch:
    """A mini-batch of transitions; `terminals` is float (1.0 = true environment termination)."""

    observations: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_observations: torch.Tensor
    terminals: torch.Tensor
    timeouts: torch.Tensor
    mc_returns: torch.Tensor | None = None  # Monte-Carlo return-to-go of s (Cal-QL), when the buffer keeps it



class ReplayBuffer:
    """Preallocated device tensors, FIFO once full, uniform sampling by torch on the device.

    `size` and the write position live on the host as Python ints, so neither insertion nor
    sampling needs a device→host sync.
    """

    def __init__(self, obs_dim: int, act_dim: int, capacity: int, device: torch.device | str = "cpu",
                 with_mc_returns: bool = False):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, found {capacity}")
        self.obs_dim, self.act_dim, self.capacity = obs_dim, act_dim, capacity
        self.device = torch.device(device)
        shapes = {"observations": (obs_dim,), "actions": (act_dim,), "rewards": (), "next_observations": (obs_dim,),
                  "terminals": (), "timeouts": ()}
        if with_mc_returns:
            shapes["mc_returns"] = ()
        self.storage = {k: torch.zeros((capacity, *shape), dtype=torch.float32, device=self.device)
                        for k, shape in shapes.items()}
        self.size = 0
        self.position = 0
        self.total_added = 0

    def __len__(self) -> int:
        return self.size

    def add(self, observation, action, reward: float, next_observation, terminal: bool, timeout: bool) -> None:
        """Insert one transition (host values); overwrites the oldest once full. Buffers that keep
        Monte-Carlo returns take whole episodes through `add_batch` instead."""
        i = self.position
        s = self.storage
        s["observations"][i] = torch.as_tensor(observation, dtype=torch.float32)
        s["actions"][i] = torch.as_tensor(action, dtype=torch.float32)
        s["rewards"][i] = float(reward)
        s["next_observations"][i] = torch.as_tensor(next_observation, dtype=torch.float32)
        s["terminals"][i] = float(terminal)
        s["timeouts"][i] = float(timeout)
        self.position = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)
        self.total_added += 1

    def add_batch(self, transitions: dict[str, torch.Tensor | np.ndarray]) -> None:
        """Insert many transitions at once, FIFO, wrapping around the end of storage."""
        n = len(transitions["rewards"])
        if n == 0:
            return
        if n > self.capacity:  # only the newest `capacity` rows can survive
            transitions = {k: v[-self.capacity:] for k, v in transitions.items()}
            self.total_added += n - self.capacity
            n = self.capacity
        idx = (self.position + torch.arange(n, device=self.device)) % self.capacity
        for key in self.storage:
            value = transitions.get(key)
            if value is None:
                if key != "timeouts":
                    raise KeyError(f"transitions lack {key!r}")
                self.storage[key][idx] = 0.0
                continue
            self.storage[key][idx] = torch.as_tensor(value, dtype=torch.float32, device=self.device)
        self.position = (self.position + n) % self.capacity
        self.size = min(self.size + n, self.capacity)
        self.total_added += n

    def sample_indices(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.size == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        return torch.randint(0, self.size, (batch_size,), device=self.device, generator=generator)

    def gather(self, indices: torch.Tensor) -> Batch:
        return Batch(**{k: v[indices] for k, v in self.storage.items()})

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Batch:
        return self.gather(self.sample_indices(batch_size, generator))

    def transitions(self) -> dict[str, torch.Tensor]:
        """All stored transitions in insertion order (oldest first)."""
        if self.size < self.capacity:
            return {k: v[: self.size] for k, v in self.storage.items()}
        order = (self.position + torch.arange(self.capacity, device=self.device)) % self.capacity
        return {k: v[order] for k, v in self.storage.items()}

    def state_dict(self) -> dict:
        # clone: a slice of the preallocated storage would serialise the whole capacity
        return {"transitions": {k: v.cpu().clone() for k, v in self.transitions().items()}, "capacity": self.capacity,
                "total_added": self.total_added}

    def load_state_dict(self, state: dict) -> None:
        # Another capacity behaves the same only while neither buffer has had to evict anything.
        if state["capacity"] != self.capacity and state["total_added"] > min(state["capacity"], self.capacity):
            raise ValueError(f"buffer capacity {state['capacity']} in checkpoint, {self.capacity} configured")
        self.size = self.position = 0
        self.add_batch(state["transitions"])
        self.total_added = state["total_added"]
