"""D4RL's HDF5 files read directly with h5py (the `d4rl` package needs mujoco_py and no longer installs).

Transitions, compared with D4RL's `qlearning_dataset` (which always takes s' = observations[i + 1], drops every
time-limit row and the file's last row, and keeps terminal rows):
- a file without `next_observations`: exactly `qlearning_dataset`'s rows, s' = observations[i + 1], quirks
  included: a row that is both terminal and a time-limit row is dropped, and in a v0 file (no `timeouts`, the
  limit found by counting steps) the count restarts at 1, not 0, after a terminal row, so the episode that follows
  one is cut a step before its limit;
- a file with `next_observations` (D4RL v2 and later): s' is the recorded `next_observations[i]`, so the rows
  `qlearning_dataset` drops because it cannot know their successor (each episode's time-limit row, and the
  file's last row) are kept, flagged as timeouts (bootstrapped, not terminal). The card counts them
  (`source.rows_kept_beyond_qlearning_dataset`); a row both terminal and timed out is kept as terminal.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from offrl.data.hdf5 import validate_transitions
from offrl.data.registry import card_path, check_writable_store, env_short_name, parse_dataset_id, register_dataset
from offrl.envs import env_spec, make_env, versions
from offrl.errors import OfflineRLError
from offrl.fileio import sha256_file

__all__ = ["D4RL_REFERENCE_SCORES", "D4RL_ENVS", "check_raw_arrays", "read_d4rl_file", "qlearning_transitions",
           "import_d4rl"]

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


D4RL_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations")
FLAG_KEYS = ("terminals", "timeouts")
MATRIX_KEYS = ("observations", "actions", "next_observations")


def check_raw_arrays(arrays: dict[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    """Check D4RL-style rows (the input of `qlearning_transitions`) before anything is derived from them;
    returns them with rewards and flags as 1-D arrays (flags as bool). Every refusal names `source`."""
    checked = {}
    for key, value in arrays.items():
        value = np.asarray(value)
        if value.ndim == 0:
            raise OfflineRLError(f"{source}: {key} must be an array with one row per step, found a scalar")
        if key in MATRIX_KEYS and value.ndim != 2:
            raise OfflineRLError(f"{source}: {key} must be 2-D (rows, features), found shape {value.shape}")
        if key not in MATRIX_KEYS:
            if value.ndim == 2 and value.shape[1] == 1:
                value = value[:, 0]
            if value.ndim != 1:
                raise OfflineRLError(f"{source}: {key} must hold one value per row, shape (N,) or (N, 1), found "
                                     f"shape {value.shape}")
        if key in FLAG_KEYS:
            if value.dtype != np.bool_:
                if not np.issubdtype(value.dtype, np.number):
                    raise OfflineRLError(f"{source}: {key} must be 0/1 or booleans, found dtype {value.dtype}")
                bad = np.flatnonzero(~np.isin(value, (0, 1)))
                if len(bad):
                    raise OfflineRLError(f"{source}: {key} must be 0/1 or booleans, found {value[bad[0]].item()!r} "
                                         f"at row {bad[0]} ({len(bad)} such rows)")
            value = value.astype(bool)
        else:
            if not np.issubdtype(value.dtype, np.number) or np.issubdtype(value.dtype, np.complexfloating):
                raise OfflineRLError(f"{source}: {key} must be numeric, found dtype {value.dtype}")
            finite = np.isfinite(value).all(axis=tuple(range(1, value.ndim)))
            if not finite.all():
                raise OfflineRLError(f"{source}: {key} holds NaN or inf (first at row {np.flatnonzero(~finite)[0]})")
        checked[key] = value
    lengths = {key: len(value) for key, value in checked.items()}
    n = lengths.get("rewards", next(iter(lengths.values()), 0))
    for key, length in lengths.items():
        if length != n:
            raise OfflineRLError(f"{source}: {key} has {length} rows, rewards has {n}; arrays must be equal length")
    if n == 0:
        raise OfflineRLError(f"{source}: holds no transitions (0 rows)")
    if "next_observations" in checked and checked["next_observations"].shape[1] != checked["observations"].shape[1]:
        raise OfflineRLError(f"{source}: next_observations have {checked['next_observations'].shape[1]} columns, "
                             f"observations {checked['observations'].shape[1]}")
    return checked


def read_d4rl_file(path: Path) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise OfflineRLError(f"{path}: no such file")
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("observations", "actions", "rewards", "terminals") if k not in f]
            if missing:
                raise OfflineRLError(f"{path}: not a D4RL file, missing key(s) {', '.join(missing)}")
            groups = [k for k in D4RL_KEYS if k in f and not isinstance(f[k], h5py.Dataset)]
            if groups:
                raise OfflineRLError(f"{path}: {', '.join(groups)} must be an array (an HDF5 dataset), found an "
                                     "HDF5 group")
            arrays = {k: f[k][()] for k in D4RL_KEYS if k in f}
    except OSError as exc:
        raise OfflineRLError(f"{path}: not a readable HDF5 file (truncated or corrupt?): {exc}") from None
    return check_raw_arrays(arrays, str(path))


def qlearning_transitions(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """D4RL rows → offrl transitions (see the module docstring); every episode's last row gets a flag."""
    n = len(arrays["rewards"])
    observations = arrays["observations"]
    terminals = arrays["terminals"].astype(bool).reshape(n)
    if "timeouts" in arrays:
        limit_rows = arrays["timeouts"].astype(bool).reshape(n)
    else:  # D4RL v0: no timeouts key; qlearning_dataset counts steps to the time limit
        limit_rows = np.zeros(n, dtype=bool)
        step = 0
        for i in range(n):
            if step == D4RL_MAX_EPISODE_STEPS - 1:
                limit_rows[i], step = True, 0
            else:  # qlearning_dataset zeroes its count at a terminal row, then counts that row: 1, not 0
                step = (0 if terminals[i] else step) + 1
    timeouts = limit_rows & ~terminals  # a kept row both terminal and cut by the limit is terminal
    if "next_observations" in arrays:
        next_observations = arrays["next_observations"]
        next_known = np.ones(n, dtype=bool)
    else:
        next_observations = np.concatenate([observations[1:], observations[-1:]])
        next_known = ~limit_rows  # obs[i + 1] after a time-limit row starts the next episode (terminal or not)
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


def _qlearning_rows(raw: dict[str, np.ndarray]) -> int:
    """How many rows D4RL's qlearning_dataset keeps from this file (its loop stops before the last row and skips
    every row whose time limit is reached)."""
    without_next = {k: v for k, v in raw.items() if k != "next_observations"}
    return len(qlearning_transitions(without_next)["rewards"])


def import_d4rl(path: Path, dataset_id: str, env_id: str | None = None) -> dict:
    """Register a D4RL file as an offrl dataset with D4RL's reference scores; returns the card."""
    path = Path(path)
    parsed = parse_dataset_id(dataset_id)
    env_id = env_id or D4RL_ENVS.get(parsed.env)
    if env_id is None:
        raise OfflineRLError(f"dataset id {dataset_id!r}: env {parsed.env!r} is not one of D4RL's "
                             f"({', '.join(D4RL_ENVS)}); pass --env with a Gymnasium env id")
    existing = card_path(parsed)
    if existing.exists():
        raise OfflineRLError(f"dataset {dataset_id} already exists ({existing}); versions are immutable, so import "
                             f"the file under another id (--id), e.g. {parsed.name}-v{parsed.version + 1}")
    check_writable_store()
    raw = read_d4rl_file(path)
    transitions = qlearning_transitions(raw)
    if len(transitions["rewards"]) == 0:
        raise OfflineRLError(f"{path}: no transition has a known next observation ({len(raw['rewards'])} row(s), "
                             "no next_observations key), so nothing can be imported")
    validate_transitions(transitions, str(path))  # refusals name the user's file, not the store's
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
                   "semantics": (
                       "next_observations from the file; the time-limit rows and the last row that D4RL's "
                       "qlearning_dataset drops are kept as timeouts" if "next_observations" in raw else
                       "D4RL qlearning_dataset: s' = observations[i + 1]; time-limit rows and the last row dropped"),
                   "rows_kept_beyond_qlearning_dataset": int(len(transitions["rewards"]) - _qlearning_rows(raw)),
                   "collected_on": "gym MuJoCo v2/v3 envs with mujoco_py; evaluated here on the Gymnasium v5 env"},
        "reference_scores": reference,
        "command": f"offrl datasets import-d4rl {path} --id {dataset_id}",
    }
    return register_dataset(dataset_id, transitions, fields)
