"""offrl's on-disk transition format (documented in docs/dataset-format.md; keep the two in step).

One HDF5 file per dataset version, D4RL's flat layout plus a format attribute. Writers go through a
temp file and rename, so a crash never leaves a file under the final name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import h5py
import numpy as np

from offrl.errors import OfflineRLError
from offrl.fileio import temp_beside

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "REQUIRED_KEYS", "OPTIONAL_KEYS", "write_transitions", "read_transitions",
           "validate_transitions", "episode_ends", "write_replay_prefix"]

FORMAT_NAME = "offrl-transitions"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")
OPTIONAL_KEYS = ("infos/action_log_probs", "infos/qpos", "infos/qvel")
FLAG_KEYS = ("terminals", "timeouts")
CHUNK_ROWS = 65_536


def episode_ends(terminals: np.ndarray, timeouts: np.ndarray) -> np.ndarray:
    """Indices of the last row of every episode."""
    return np.flatnonzero(np.logical_or(terminals, timeouts))


def validate_transitions(arrays: Mapping[str, np.ndarray], source: str) -> int:
    """Check offrl's structural rules; returns the number of transitions or raises naming `source`."""
    missing = [k for k in REQUIRED_KEYS if k not in arrays]
    if missing:
        raise OfflineRLError(f"{source}: missing required key(s) {', '.join(missing)}")
    n = len(arrays["rewards"])
    for key, value in arrays.items():
        if len(value) != n:
            raise OfflineRLError(f"{source}: {key} has {len(value)} rows, rewards has {n}; arrays must be equal length")
    expected_ndim = {"observations": 2, "actions": 2, "next_observations": 2, "rewards": 1, "terminals": 1,
                     "timeouts": 1}
    for key, ndim in expected_ndim.items():
        if arrays[key].ndim != ndim:
            raise OfflineRLError(f"{source}: {key} must be {ndim}-D, found shape {arrays[key].shape}")
    if arrays["observations"].shape[1:] != arrays["next_observations"].shape[1:]:
        raise OfflineRLError(f"{source}: observations {arrays['observations'].shape} and next_observations "
                             f"{arrays['next_observations'].shape} differ in width")
    for key, value in arrays.items():
        if key in FLAG_KEYS:
            if value.dtype != np.bool_ and not np.isin(value, (0, 1)).all():
                raise OfflineRLError(f"{source}: {key} must hold booleans (0/1), found other values")
            continue
        if not np.issubdtype(value.dtype, np.floating):
            raise OfflineRLError(f"{source}: {key} must be floating point, found dtype {value.dtype}")
        if not np.isfinite(value).all():
            bad = int(np.flatnonzero(~np.isfinite(value).reshape(n, -1).all(axis=1))[0]) if n else 0
            raise OfflineRLError(f"{source}: {key} holds NaN or inf (first at row {bad})")
    terminals, timeouts = arrays["terminals"].astype(bool), arrays["timeouts"].astype(bool)
    both = np.flatnonzero(terminals & timeouts)
    if len(both):
        raise OfflineRLError(f"{source}: row {both[0]} is marked both terminal and timeout; an episode ends one way")
    if n and not (terminals[-1] or timeouts[-1]):
        raise OfflineRLError(f"{source}: the last row ends no episode (neither terminal nor timeout is set)")
    return n


def write_transitions(path: Path, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, object] | None = None) -> None:
    """Validate, then write atomically: chunked, gzip-compressed, no timestamps (same data, same bytes)."""
    path = Path(path)
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    for key in arrays:
        if key not in REQUIRED_KEYS and key not in OPTIONAL_KEYS:
            raise OfflineRLError(f"{path}: unknown key {key!r}; allowed: {', '.join(REQUIRED_KEYS + OPTIONAL_KEYS)}")
    validate_transitions(arrays, str(path))
    tmp = temp_beside(path)
    try:
        with h5py.File(tmp, "w", track_order=True) as f:
            f.attrs["format"] = FORMAT_NAME
            f.attrs["format_version"] = FORMAT_VERSION
            for key, value in (attrs or {}).items():
                f.attrs[key] = value
            for key, value in arrays.items():
                data = value.astype(bool) if key in FLAG_KEYS else value.astype(np.float32)
                chunks = (min(CHUNK_ROWS, max(len(data), 1)), *data.shape[1:])
                f.create_dataset(key, data=data, chunks=chunks, compression="gzip", compression_opts=4,
                                 shuffle=True, track_times=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_transitions(path: Path, validate: bool = True) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    """Read an offrl file (all keys present) into NumPy arrays plus the file's attributes."""
    path = Path(path)
    if not path.is_file():
        raise OfflineRLError(f"{path}: no such file")
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
            arrays: dict[str, np.ndarray] = {}
            for key in REQUIRED_KEYS + OPTIONAL_KEYS:
                if key in f:
                    arrays[key] = f[key][()]
    except OSError as exc:
        raise OfflineRLError(f"{path}: not a readable HDF5 file (truncated or corrupt?): {exc}") from None
    if attrs.get("format") != FORMAT_NAME:
        raise OfflineRLError(f"{path}: not an offrl dataset (format attribute {attrs.get('format')!r}); "
                             "D4RL files are read with `offrl datasets import-d4rl`")
    if int(attrs.get("format_version", -1)) > FORMAT_VERSION:
        raise OfflineRLError(f"{path}: format version {attrs['format_version']} is newer than this offrl reads "
                             f"({FORMAT_VERSION}); upgrade offrl")
    if validate:
        validate_transitions(arrays, str(path))
    return arrays, attrs


def write_replay_prefix(transitions: Mapping[str, object], count: int, path: Path, env_id: str) -> None:
    """The first `count` transitions of a replay buffer; the last row is marked as the end of collection."""
    arrays = {k: np.asarray(v[:count]) for k, v in transitions.items()}
    arrays["terminals"] = arrays["terminals"].astype(bool)
    arrays["timeouts"] = arrays["timeouts"].astype(bool)
    if count and not arrays["terminals"][-1]:
        arrays["timeouts"][-1] = True
    write_transitions(path, arrays, {"env_id": env_id, "source": "SAC replay buffer", "transitions": count})
