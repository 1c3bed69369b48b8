"""Checkpoint files: where a run keeps its checkpoint, reading one back safely, and the RNG state inside it."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from offrl.errors import OfflineRLError
from offrl.fileio import safe_torch_load

__all__ = ["CHECKPOINT_FORMAT", "load_checkpoint", "load_weights", "rng_state", "set_rng_state"]

CHECKPOINT_FORMAT = "offrl-checkpoint"


def load_checkpoint(path: Path, kind: str) -> dict:
    """Load an offrl checkpoint of the given kind, or raise one clear error naming the file."""
    state = safe_torch_load(path, "checkpoint")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise OfflineRLError(f"checkpoint {path}: not an offrl checkpoint")
    if state.get("kind") != kind:
        raise OfflineRLError(f"checkpoint {path}: is a {state.get('kind')!r} checkpoint, expected {kind!r}")
    return state


def load_weights(module: torch.nn.Module, state: object, source: str) -> None:
    """`module.load_state_dict(state)`, or one OfflineRLError saying that the weights in `source` (a checkpoint or
    agent file) do not fit the networks its record describes: wrong tensor shapes, missing or extra keys."""
    try:
        module.load_state_dict(state)
    except (KeyError, RuntimeError, TypeError, ValueError, AttributeError) as exc:
        reason = " ".join(str(exc).split())
        reason = reason.removeprefix(f"Error(s) in loading state_dict for {type(module).__name__}: ")
        raise OfflineRLError(f"{source}: its weights do not fit the networks its record describes ({reason[:300]})") \
            from None


def rng_state() -> dict:
    """The global RNGs as tensors and plain Python values (what a weights_only load accepts)."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
            "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32),
                         numpy_state["position"], numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    random.setstate(state["python"])
