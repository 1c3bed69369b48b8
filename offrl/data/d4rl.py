"""D4RL's HDF5 files read directly with h5py (the `d4rl` package needs mujoco_py and no longer installs).

Transitions follow D4RL's `qlearning_dataset`: the next observation is `next_observations[i]` when the
file has it, else `observations[i + 1]`; a row whose next observation is unknown (a timeout without
`next_observations`, or the file's last row) is dropped; terminal rows are kept.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from offrl.data.registry import env_short_name, parse_dataset_id, register_dataset
from offrl.envs import env_spec, make_env, versions
from offrl.errors import OfflineRLError
from offrl.fileio import sha256_file

__all__ = ["D4RL_REFERENCE_SCORES", "D4RL_ENVS", "read_d4rl_file", "qlearning_transitions", "import_d4rl"]

# D4RL's d4rl/infos.py REF_MIN_SCORE / REF_MAX_SCORE (identical across its v0-v2 locomotion datasets).
D4RL_REFERENCE_SCORES = {
    "halfcheetah": (-280.178953, 12135.0),
    "hopper": (-20.272305, 3234.3),
    "walker2d": (1.629008, 4592.3),
    "ant": (-325.6, 3879.7),
}
# Gymnasium counterparts of the envs D4RL collected on (gym v2/v3 with mujoco_py): same observation layout.
D4RL_ENVS = {"halfcheetah": "HalfCheetah-v5", "hopper": "Hopper-v5", "walker2d": "Walker2d-v5", "ant": "Ant-v5"}
D4RL_MAX_EPISODE_STEPS = 1000


def read_d4rl_file(path: Path) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise OfflineRLError(f"{path}: no such file")
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("observations", "actions", "rewards", "terminals") if k not in f]
            if missing:
                raise OfflineRLError(f"{path}: not a D4RL file, missing key(s) {', '.join(missing)}")
            arrays = {k: f[k][()] for k in ("observations", "actions", "rewards", "terminals", "timeouts",
                                             "next_observations") if k in f}
    except OSError as exc:
        raise OfflineRLError(f"{path}: not a readable HDF5 file (truncated or corrupt?): {exc}") from None
    n = len(arrays["rewards"])
    for key, value in arrays.items():
        if len(value) != n:
            raise OfflineRLError(f"{path}: {key} has {len(value)} rows, rewards has {n}; arrays must be equal length")
        if key in ("observations", "actions", "next_observations") and value.ndim != 2:
            raise OfflineRLError(f"{path}: {key} must be 2-D, found shape {value.shape}")
        if key not in ("terminals", "timeouts") and not np.issubdtype(value.dtype, np.number):
            raise OfflineRLError(f"{path}: {key} must be numeric, found dtype {value.dtype}")
    arrays["rewards"] = arrays["rewards"].reshape(n)
    return arrays


def qlearning_transitions(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """D4RL rows → offrl transitions (see the module docstring); every episode's last row gets a flag."""
    n = len(arrays["rewards"])
    observations = arrays["observations"]
    terminals = arrays["terminals"].astype(bool).reshape(n)
    if "timeouts" in arrays:
        timeouts = arrays["timeouts"].astype(bool).reshape(n)
    else:  # D4RL v0: no timeouts key; qlearning_dataset counts steps to the time limit
        timeouts = np.zeros(n, dtype=bool)
        step = 0
        for i in range(n):
            if step == D4RL_MAX_EPISODE_STEPS - 1:
                timeouts[i] = True
            step = 0 if terminals[i] or timeouts[i] else step + 1
    timeouts &= ~terminals
    if "next_observations" in arrays:
        next_observations = arrays["next_observations"]
        next_known = np.ones(n, dtype=bool)
    else:
        next_observations = np.concatenate([observations[1:], observations[-1:]])
        next_known = ~timeouts  # obs[i + 1] after a timeout starts the next episode
        next_known[-1] = False  # the file's last row has no successor
    keep = next_known
    # A kept row ends its episode if it is terminal or a timeout, or if the row after it was dropped.
    ends = terminals | timeouts
    dropped_next = np.zeros(n, dtype=bool)
    dropped_next[:-1] = ~keep[1:]
    dropped_next[-1] = True
    out_timeouts = (timeouts | (dropped_next & ~ends & keep)) & ~terminals
    index = np.flatnonzero(keep)
    return {"observations": observations[index].astype(np.float32),
            "actions": arrays["actions"][index].astype(np.float32),
            "rewards": arrays["rewards"][index].astype(np.float32),
            "next_observations": next_observations[index].astype(np.float32),
            "terminals": terminals[index], "timeouts": out_timeouts[index]}


def import_d4rl(path: Path, dataset_id: str, env_id: str | None = None) -> dict:
    """Register a D4RL file as an offrl dataset with D4RL's reference scores; returns the card."""
    path = Path(path)
    parsed = parse_dataset_id(dataset_id)
    env_id = env_id or D4RL_ENVS.get(parsed.env)
    if env_id is None:
        raise OfflineRLError(f"dataset id {dataset_id!r}: env {parsed.env!r} is not one of D4RL's "
                             f"({', '.join(D4RL_ENVS)}); pass --env with a Gymnasium env id")
    raw = read_d4rl_file(path)
    transitions = qlearning_transitions(raw)
    spec = env_spec(make_env(env_id))
    if (transitions["observations"].shape[1], transitions["actions"].shape[1]) != (spec.obs_dim, spec.act_dim):
        raise OfflineRLError(f"{path}: obs/act dims {transitions['observations'].shape[1]}/"
                             f"{transitions['actions'].shape[1]} do not match env {env_id} ({spec.obs_dim}/"
                             f"{spec.act_dim})")
    scores = D4RL_REFERENCE_SCORES.get(env_short_name(env_id))
    reference = {"note": f"D4RL has no reference scores for {env_id}"} if scores is None else {
        "random": {"return_mean": scores[0], "source": "D4RL d4rl/infos.py REF_MIN_SCORE"},
        "expert": {"return_mean": scores[1], "source": "D4RL d4rl/infos.py REF_MAX_SCORE"},
    }
    fields = {
        "env_id": env_id, **versions(), "tier": parsed.tier, "seed": None,
        "policy": {"kind": "D4RL behaviour data"},
        "source": {"kind": "d4rl", "file": path.name, "sha256": sha256_file(path), "rows": len(raw["rewards"]),
                   "has_next_observations": "next_observations" in raw, "has_timeouts": "timeouts" in raw,
                   "semantics": "D4RL qlearning_dataset: rows with unknown next observation dropped",
                   "collected_on": "gym MuJoCo v2/v3 envs with mujoco_py; evaluated here on the Gymnasium v5 env"},
        "reference_scores": reference,
        "command": f"offrl datasets import-d4rl {path} --id {dataset_id}",
    }
    return register_dataset(dataset_id, transitions, fields)
