"""Checkpoint files: where a run keeps its checkpoint, reading one back safely, and the RNG state inside it."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from offrl.errors import OfflineRLError

__all__ = ["CHECKPOINT_FORMAT", "load_checkpoint", "rng_state", "set_rng_state", "run_checkpoint_path"]

CHECKPOINT_FORMAT = "offrl-checkpoint"


def run_checkpoint_path(out_dir: Path, checkpoint_name: str, resume: bool) -> Path:
    """Where a run keeps its checkpoint; refuses to start over an existing run, or to resume a missing one."""
    out_dir = Path(out_dir)
    checkpoint_path = out_dir / checkpoint_name
    if not resume and (checkpoint_path.exists() or (out_dir.is_dir() and any(out_dir.iterdir()))):
        raise OfflineRLError(f"{out_dir} already holds a run; pass --resume to continue it or choose another --out")
    if resume and not checkpoint_path.exists():
        raise OfflineRLError(f"--resume: no checkpoint at {checkpoint_path}")
    return checkpoint_path


def load_checkpoint(path: Path, kind: str) -> dict:
    """Load an offrl checkpoint of the given kind, or raise one clear error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise OfflineRLError(f"checkpoint {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a damaged file
        raise OfflineRLError(f"checkpoint {path}: cannot be read ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise OfflineRLError(f"checkpoint {path}: not an offrl checkpoint")
    if state.get("kind") != kind:
        raise OfflineRLError(f"checkpoint {path}: is a {state.get('kind')!r} checkpoint, expected {kind!r}")
    return state


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
