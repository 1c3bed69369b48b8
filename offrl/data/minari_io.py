"""Minari datasets in and out, through Minari's own API (`minari.load_dataset`, `create_dataset_from_buffers`).

Minari stores episodes (N + 1 observations, N actions) with actions in the env's own bounds; offrl stores
flat transitions with actions in [-1, 1]. Both directions convert episode by episode, so every episode
stays aligned, not only the first.
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np

from offrl.data.d4rl import D4RL_REFERENCE_SCORES
from offrl.data.hdf5 import episode_ends, read_transitions
from offrl.data.registry import (
    card_path,
    data_path,
    env_short_name,
    parse_dataset_id,
    register_dataset,
    verify_dataset,
)
from offrl.envs import versions
from offrl.errors import OfflineRLError

__all__ = ["episodes_to_transitions", "import_minari", "import_minari_if_local", "export_minari", "minari_root",
           "minari_reference_scores"]


def minari_root() -> Path:
    return Path(os.environ.get("MINARI_DATASETS_PATH") or Path.home() / ".minari" / "datasets")


def _box(space: gym.Space, what: str, source: str) -> gym.spaces.Box:
    if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
        raise OfflineRLError(f"Minari dataset {source}: offrl needs a 1-D Box {what} space, found {space!r}")
    return space


def _to_unit(actions: np.ndarray, space: gym.spaces.Box) -> np.ndarray:
    low, high = space.low.astype(np.float64), space.high.astype(np.float64)
    return ((2.0 * (actions - low) / (high - low)) - 1.0).astype(np.float32)


def _from_unit(actions: np.ndarray, space: gym.spaces.Box) -> np.ndarray:
    low, high = space.low.astype(np.float64), space.high.astype(np.float64)
    return (low + (actions.astype(np.float64) + 1.0) * (high - low) / 2.0).astype(space.dtype)


def episodes_to_transitions(episodes, action_space: gym.spaces.Box) -> dict[str, np.ndarray]:
    """Minari episodes → offrl rows: in each episode i, obs[t] and obs[t + 1] form row t's pair."""
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("observations", "actions", "rewards", "next_observations",
                                                           "terminals", "timeouts")}
    for episode in episodes:
        obs = np.asarray(episode.observations, dtype=np.float32)
        n = len(episode.actions)
        if len(obs) != n + 1:
            raise OfflineRLError(f"Minari episode {episode.id}: {len(obs)} observations for {n} actions "
                                 "(expected one more observation than actions)")
        terminals = np.asarray(episode.terminations, dtype=bool)
        timeouts = np.asarray(episode.truncations, dtype=bool) & ~terminals
        if n and not (terminals[-1] or timeouts[-1]):
            timeouts[-1] = True  # the recording stopped mid-episode
        parts["observations"].append(obs[:-1])
        parts["next_observations"].append(obs[1:])
        parts["actions"].append(_to_unit(np.asarray(episode.actions, dtype=np.float64), action_space))
        parts["rewards"].append(np.asarray(episode.rewards, dtype=np.float32))
        parts["terminals"].append(terminals)
        parts["timeouts"].append(timeouts)
    if not parts["rewards"]:
        raise OfflineRLError("Minari dataset has no episodes")
    return {k: np.concatenate(v) for k, v in parts.items()}


def _load(minari_id: str, download: bool):
    import minari

    if not download and not minari_root().is_dir():  # asked first: Minari would create an empty store folder
        raise OfflineRLError(f"Minari dataset {minari_id!r} is not in the local Minari store ({minari_root()} does "
                             "not exist); pass --download to fetch it (needs network) or set MINARI_DATASETS_PATH")
    try:
        return minari.load_dataset(minari_id, download=download)
    except FileNotFoundError:
        raise OfflineRLError(f"Minari dataset {minari_id!r} is not in the local Minari store ({minari_root()}); "
                             "pass --download to fetch it (needs network) or set MINARI_DATASETS_PATH") from None
    except Exception as exc:  # noqa: BLE001 - minari raises many types for bad ids and damaged stores
        raise OfflineRLError(f"Minari dataset {minari_id!r} cannot be loaded: {type(exc).__name__}: {exc}") from None


def import_minari(minari_id: str, dataset_id: str | None = None, download: bool = False,
                  env_id: str | None = None) -> dict:
    """Register a Minari dataset as an offrl dataset (same id unless `dataset_id` says otherwise)."""
    dataset = _load(minari_id, download)
    env_override = env_id
    dataset_id = dataset_id or _default_id(minari_id)
    parse_dataset_id(dataset_id)
    _box(dataset.observation_space, "observation", minari_id)
    action_space = _box(dataset.action_space, "action", minari_id)
    transitions = episodes_to_transitions(dataset.iterate_episodes(), action_space)
    metadata = dataset.storage.metadata
    spec = dataset.spec.env_spec
    env_id = env_id or (spec.id if spec is not None else None)
    if env_id is None:
        raise OfflineRLError(f"Minari dataset {minari_id!r} records no environment; pass --env")
    reference = minari_reference_scores(minari_id, metadata, env_id)
    fields = {
        "env_id": env_id, **versions(), "tier": parse_dataset_id(dataset_id).tier, "seed": None,
        "policy": {"kind": "Minari dataset", "algorithm": metadata.get("algorithm_name")},
        "source": {"kind": "minari", "minari_id": minari_id, "minari_version": metadata.get("minari_version"),
                   "episodes": int(dataset.total_episodes), "steps": int(dataset.total_steps),
                   "actions": "rescaled from the env's bounds to [-1, 1]"},
        "reference_scores": reference,
        "command": _import_command(minari_id, dataset_id, download, env_override),
    }
    return register_dataset(dataset_id, transitions, fields)


def _import_command(minari_id: str, dataset_id: str, download: bool, env_id: str | None) -> str:
    """The `offrl datasets import-minari` line that reproduces an import: flags only where defaults differ."""
    words = ["offrl", "datasets", "import-minari", minari_id]
    if dataset_id != _default_id(minari_id):
        words += ["--id", dataset_id]
    if env_id is not None:
        words += ["--env", env_id]
    if download:
        words.append("--download")
    return shlex.join(words)


def minari_reference_scores(minari_id: str, metadata: dict, env_id: str) -> dict:
    """A card's `reference_scores` for a Minari dataset, always saying where the numbers come from.

    Minari's own metadata (ref_min_score/ref_max_score) wins. Minari's MuJoCo datasets carry none, so when the
    env belongs to a D4RL env family (`HalfCheetah-v5` -> halfcheetah) D4RL's table is used, labelled as such.
    Otherwise the card gets a `note` and no scores.
    """
    low, high = metadata.get("ref_min_score"), metadata.get("ref_max_score")
    if low is not None and high is not None:
        return {"basis": "minari-metadata",
                "random": {"return_mean": float(low), "source": f"Minari metadata ref_min_score of {minari_id}"},
                "expert": {"return_mean": float(high), "source": f"Minari metadata ref_max_score of {minari_id}"}}
    family = env_short_name(env_id)
    if family in D4RL_REFERENCE_SCORES:
        d4rl_low, d4rl_high = D4RL_REFERENCE_SCORES[family]
        why = (f"for the {family} env family, applied because this dataset's env {env_id} is in that family "
               f"(Minari's metadata for {minari_id} has no ref_min_score/ref_max_score); not Minari's own score")
        return {"basis": "d4rl-env-family",
                "random": {"return_mean": float(d4rl_low), "source": f"D4RL REF_MIN_SCORE (d4rl/infos.py) {why}"},
                "expert": {"return_mean": float(d4rl_high), "source": f"D4RL REF_MAX_SCORE (d4rl/infos.py) {why}"}}
    return {"note": f"Minari dataset {minari_id} has no ref_min_score/ref_max_score in its metadata, and its env "
                    f"{env_id} is in no D4RL env family ({', '.join(D4RL_REFERENCE_SCORES)}), so normalized scores "
                    "are unavailable"}


def _local_minari_ids() -> list[str]:
    """Ids of the datasets in the local Minari store (directories holding a `data` folder); never downloads."""
    root = minari_root()
    found = []
    if not root.is_dir():
        return found
    for here, dirs, _ in os.walk(root):
        if "data" in dirs and Path(here) != root:
            found.append(Path(here).relative_to(root).as_posix())
            dirs.clear()
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # skip scratch stores and hidden folders
    return found


def import_minari_if_local(dataset_id: str) -> dict | None:
    """Import the local Minari dataset behind an offrl id on first use; None when there is nothing to do.

    Returns None if the offrl store already has a card for `dataset_id` (nothing is touched) or if the local
    Minari store (never the network) has no dataset whose id is `dataset_id` or maps to it by the default
    Minari-to-offrl id rule. Otherwise imports it with `import_minari` and returns the new card.
    """
    parse_dataset_id(dataset_id)
    if card_path(dataset_id).exists():
        return None
    local = _local_minari_ids()
    if dataset_id in local:
        minari_id = dataset_id
    else:
        matches = [m for m in local if _default_id(m) == dataset_id]
        if not matches:
            return None
        if len(matches) > 1:
            raise OfflineRLError(f"dataset {dataset_id}: several local Minari datasets map to it "
                                 f"({', '.join(matches)}); import one with `offrl datasets import-minari ID --id "
                                 f"{dataset_id}`")
        minari_id = matches[0]
    try:
        return import_minari(minari_id, dataset_id)
    except Exception as exc:  # noqa: BLE001 - one line naming the Minari id, whatever went wrong
        problem = " ".join(str(exc).split()) or type(exc).__name__
        if not isinstance(exc, OfflineRLError):
            problem = f"{type(exc).__name__}: {problem}"
        raise OfflineRLError(f"cannot import Minari dataset {minari_id} (from {minari_root()}) as offrl dataset "
                             f"{dataset_id}: {problem}") from exc


def _default_id(minari_id: str) -> str:
    parts = minari_id.split("/")
    if len(parts) > 3:  # offrl ids have one namespace level: fold deeper ones into it
        parts = ["-".join(parts[:-2]), *parts[-2:]]
    return "/".join(parts).lower()


def export_minari(dataset_id: str, minari_id: str | None = None) -> str:
    """Write an offrl dataset as a Minari dataset in the local Minari store; returns the Minari id."""
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    card = verify_dataset(dataset_id, structural=False)
    arrays, _ = read_transitions(data_path(dataset_id))
    parsed = parse_dataset_id(dataset_id)
    minari_id = minari_id or f"offrl/{parsed.env}/{parsed.tier}-v{parsed.version}"
    from minari.dataset.minari_dataset import parse_dataset_id as parse_minari_id

    try:
        parse_minari_id(minari_id)
    except ValueError:
        raise OfflineRLError(f"--minari-id {minari_id!r}: not a Minari id; expected [namespace/]name-vN, "
                             "e.g. offrl/halfcheetah/medium-v0") from None
    final_dir = minari_root() / minari_id
    if final_dir.exists():
        raise OfflineRLError(f"Minari dataset {minari_id} already exists at {final_dir}; pass another --minari-id")
    env = gym.make(card["env_id"])
    action_space = _box(env.action_space, "action", card["env_id"])
    ends = episode_ends(arrays["terminals"], arrays["timeouts"])
    starts = np.concatenate([[0], ends[:-1] + 1])
    episodes = []
    for number, (start, end) in enumerate(zip(starts, ends + 1, strict=True)):
        obs, next_obs = arrays["observations"][start:end], arrays["next_observations"][start:end]
        if not np.array_equal(obs[1:], next_obs[:-1]):
            raise OfflineRLError(f"dataset {dataset_id}: episode {number} (rows {start}-{end - 1}) is not contiguous "
                                 "(next_observations[t] != observations[t + 1]); Minari stores whole episodes")
        episodes.append(EpisodeBuffer(
            id=number, observations=np.concatenate([obs, next_obs[-1:]]),
            actions=_from_unit(arrays["actions"][start:end], action_space),
            rewards=arrays["rewards"][start:end].astype(np.float64),
            terminations=arrays["terminals"][start:end].astype(bool),
            truncations=arrays["timeouts"][start:end].astype(bool), infos={}))
    reference = card.get("reference_scores") or {}
    low = (reference.get("random") or {}).get("return_mean")
    high = (reference.get("expert") or {}).get("return_mean")
    # Built in a scratch store beside the real one, then moved in whole: never a half-written dataset.
    root = minari_root()
    root.mkdir(parents=True, exist_ok=True)
    previous = os.environ.get("MINARI_DATASETS_PATH")
    with tempfile.TemporaryDirectory(dir=root, prefix=".offrl-export-") as scratch:
        os.environ["MINARI_DATASETS_PATH"] = scratch
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # Minari nags about unset e-mail and permalink
                minari.create_dataset_from_buffers(
                    minari_id, episodes, env=card["env_id"], algorithm_name=f"offrl {card.get('tier')}",
                    author="offrl", ref_min_score=low, ref_max_score=high,
                    description=f"offrl dataset {dataset_id} (sha256 {card['sha256']}), exported by offrl",
                    requirements=[f"gymnasium=={versions()['gymnasium']}", f"mujoco=={versions()['mujoco']}"])
        finally:
            if previous is None:
                os.environ.pop("MINARI_DATASETS_PATH", None)
            else:
                os.environ["MINARI_DATASETS_PATH"] = previous
        final_dir.parent.mkdir(parents=True, exist_ok=True)
        for depth in range(1, len(Path(minari_id).parts)):  # namespace metadata files Minari expects
            meta = Path(scratch, *Path(minari_id).parts[:depth], "namespace_metadata.json")
            target = root.joinpath(*Path(minari_id).parts[:depth], "namespace_metadata.json")
            if meta.exists() and not target.exists():
                shutil.copy(meta, target)
        os.replace(Path(scratch) / minari_id, final_dir)
    return minari_id
