"""Loading a registered dataset onto a device, mixed offline/online sampling, observation statistics."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from offrl.data.buffer import Batch, ReplayBuffer
from offrl.data.hdf5 import episode_ends, read_transitions, validate_transitions
from offrl.data.registry import card_path, check_writable_store, data_path, parse_dataset_id, verify_dataset
from offrl.errors import OfflineRLError
from offrl.runtime import resolve_device

__all__ = ["OfflineDataset", "load_dataset", "dataset_from_arrays", "buffer_from_dataset", "MixedSampler",
           "ObservationNormalizer", "returns_to_go"]


@dataclass
class OfflineDataset:
    """A verified dataset: its card and its transitions as tensors on one device."""

    dataset_id: str
    card: dict
    tensors: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return len(self.tensors["rewards"])

    @property
    def obs_dim(self) -> int:
        return int(self.tensors["observations"].shape[1])

    @property
    def act_dim(self) -> int:
        return int(self.tensors["actions"].shape[1])


    @property
    def env_id(self) -> str | None:
        """The env the data came from, or None for data without one (env-free diagnostics only)."""
        return self.card.get("env_id") or None


def load_dataset(dataset_id: str, device: torch.device | str = "cpu", root: Path | None = None,
                 collect_missing: bool = False, show_progress: bool = True) -> OfflineDataset:
    """A registered dataset on `device`, its file's sha256 checked against its card (refused on mismatch).

    An id that is not in the store is imported from the local Minari store when Minari has it (checksummed and
    carded on first use); with `collect_missing`, one of offrl's ids whose file is absent is collected from its
    shipped policy and card (the store's card, or the one offrl ships), with a progress bar unless
    `show_progress` is false."""
    if not isinstance(dataset_id, str):
        raise OfflineRLError(f"dataset_id: expected a dataset id string, found {type(dataset_id).__name__}")
    device = resolve_device(device)
    parse_dataset_id(dataset_id)
    if root is None and not data_path(dataset_id).exists():
        from offrl.data.minari_io import import_minari_if_local

        imported = not card_path(dataset_id).exists() and import_minari_if_local(dataset_id) is not None
        if not imported and collect_missing:
            from offrl.data.collect import collect_shipped

            check_writable_store()  # before collecting, not after

            # also rebuilds a file whose card is in the store (a source checkout)
            collect_shipped(dataset_id, show_progress)
    card = verify_dataset(dataset_id, root, structural=False)
    arrays, _ = read_transitions(data_path(dataset_id, root))
    if len(arrays["rewards"]) != card["transitions"]:
        raise OfflineRLError(f"dataset {dataset_id}: file has {len(arrays['rewards'])} transitions, card says "
                             f"{card['transitions']}")
    tensors = {k: torch.from_numpy(np.ascontiguousarray(arrays[k], dtype=np.float32)).to(device)
               for k in arrays if not k.startswith("infos/")}
    return OfflineDataset(dataset_id=dataset_id, card=card, tensors=tensors)


def dataset_from_arrays(observations: np.ndarray, actions: np.ndarray, rewards: np.ndarray, terminals: np.ndarray,
                        timeouts: np.ndarray, next_observations: np.ndarray | None = None, env_id: str | None = None,
                        reference_scores: tuple[float, float] | None = None, name: str = "arrays",
                        device: torch.device | str = "cpu") -> OfflineDataset:
    """Your own transitions as a dataset (nothing is written). Rows are consecutive within an episode; an
    episode ends at a terminal or a timeout. Without `next_observations`, row t's next observation is row t + 1's
    observation (an episode's last row then needs `next_observations`, so it is dropped, as D4RL's
    `qlearning_dataset` drops it). Actions must lie in [-1, 1] (offrl's policy space). `env_id` enables
    evaluation in that env; `reference_scores` (random, expert) turn returns into normalized scores."""
    from offrl.data.d4rl import check_raw_arrays, qlearning_transitions

    device = resolve_device(device)
    arrays = {"observations": observations, "actions": actions, "rewards": rewards, "terminals": terminals,
              "timeouts": timeouts}
    if next_observations is not None:
        arrays["next_observations"] = next_observations
    for key, value in arrays.items():
        if value is None:
            raise OfflineRLError(f"dataset_from_arrays: {key} is required")
    try:
        arrays = {k: np.asarray(v) for k, v in arrays.items()}
    except ValueError as exc:  # ragged nested lists
        raise OfflineRLError(f"dataset_from_arrays: every argument must be an array ({exc})") from None
    arrays = check_raw_arrays(arrays, "dataset_from_arrays")  # flags 0/1 before anything is derived from them
    if next_observations is None:
        arrays = qlearning_transitions(arrays)
        if len(arrays["rewards"]) == 0:
            raise OfflineRLError("dataset_from_arrays: no row has a known next observation (pass next_observations "
                                 "or more than one row per episode)")
    arrays = {k: (v.astype(bool) if k in ("terminals", "timeouts") and v.dtype != np.bool_ and
                  np.isin(v, (0, 1)).all() else v) for k, v in arrays.items()}
    arrays = {k: (v.astype(np.float32) if np.issubdtype(v.dtype, np.integer) else v) for k, v in arrays.items()}
    validate_transitions(arrays, "dataset_from_arrays")
    if np.abs(arrays["actions"]).max(initial=0.0) > 1.0 + 1e-6:
        raise OfflineRLError("dataset_from_arrays: actions must lie in [-1, 1] (offrl's policy space); rescale them "
                             "from your env's bounds first")
    card: dict = {"id": name, "env_id": env_id, "transitions": len(arrays["rewards"]),
                  "sha256": _arrays_sha256(arrays), "source": {"kind": "numpy arrays"}}
    if env_id is not None:
        from offrl.envs import env_spec, make_env

        spec = env_spec(make_env(env_id))
        width = {"observations": spec.obs_dim, "actions": spec.act_dim}
        for key, expected in width.items():
            if arrays[key].shape[1] != expected:
                raise OfflineRLError(f"dataset_from_arrays: {key} have {arrays[key].shape[1]} columns, env {env_id} "
                                     f"has {expected}")
    if reference_scores is not None:
        try:
            low, high = (float(x) for x in reference_scores)
        except (TypeError, ValueError):
            raise OfflineRLError(f"dataset_from_arrays: reference_scores must be two numbers (random, expert), "
                                 f"found {reference_scores!r}") from None
        if not (np.isfinite(low) and np.isfinite(high)) or low == high:
            raise OfflineRLError(f"dataset_from_arrays: reference_scores must be two different finite numbers "
                                 f"(random, expert), found {reference_scores!r}")
        card["reference_scores"] = {"random": {"return_mean": low, "source": "given to dataset_from_arrays"},
                                    "expert": {"return_mean": high, "source": "given to dataset_from_arrays"}}
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)).to(device) for k, v in arrays.items()}
    return OfflineDataset(dataset_id=name, card=card, tensors=tensors)


def _arrays_sha256(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for key in sorted(arrays):
        digest.update(key.encode())
        digest.update(np.ascontiguousarray(arrays[key]).tobytes())
    return digest.hexdigest()


def buffer_from_dataset(dataset: OfflineDataset, normalizer: ObservationNormalizer | None = None,
                        reward_scale: float = 1.0, mc_returns_gamma: float | None = None) -> ReplayBuffer:
    """A replay buffer holding the dataset, observations through `normalizer` and rewards times `reward_scale`
    as a run trains on them; with `mc_returns_gamma`, each row also carries its discounted return-to-go of the
    scaled rewards (Cal-QL's V_ref)."""
    t = dataset.tensors
    device = t["rewards"].device
    buffer = ReplayBuffer(dataset.obs_dim, dataset.act_dim, len(dataset), device,
                          with_mc_returns=mc_returns_gamma is not None)
    normalize = normalizer if normalizer is not None else (lambda obs: obs)
    transitions = {"observations": normalize(t["observations"]), "actions": t["actions"],
                   "rewards": t["rewards"] * reward_scale, "next_observations": normalize(t["next_observations"]),
                   "terminals": t["terminals"], "timeouts": t["timeouts"]}
    if mc_returns_gamma is not None:
        transitions["mc_returns"] = torch.as_tensor(
            returns_to_go(t["rewards"].cpu().numpy() * reward_scale, t["terminals"].cpu().numpy() > 0,
                          t["timeouts"].cpu().numpy() > 0, mc_returns_gamma), dtype=torch.float32, device=device)
    buffer.add_batch(transitions)
    return buffer


class MixedSampler:
    """Draws `offline_ratio` of every batch from the offline buffer and the rest from the online one.

    `offline_ratio=0.5` is RLPD's symmetric sampling; `"proportional"` samples uniformly over the union.
    With a fixed ratio, the online share is drawn with replacement, so it is exact even while the online
    buffer holds fewer transitions than its share; while it is empty the whole batch is offline.
    """

    def __init__(self, offline: ReplayBuffer, online: ReplayBuffer, offline_ratio: float | str = 0.5):
        if offline_ratio != "proportional" and not (isinstance(offline_ratio, float | int) and
                                                    0.0 <= float(offline_ratio) <= 1.0):
            raise OfflineRLError(f"offline_ratio must be in [0, 1] or 'proportional', found {offline_ratio!r}")
        self.offline, self.online, self.offline_ratio = offline, online, offline_ratio

    def split(self, batch_size: int) -> tuple[int, int]:
        """How many rows come from (offline, online) in a fixed-ratio batch."""
        if len(self.online) == 0:
            return batch_size, 0
        if len(self.offline) == 0:
            return 0, batch_size
        n_offline = round(float(self.offline_ratio) * batch_size)
        return n_offline, batch_size - n_offline

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Batch:
        if self.offline_ratio == "proportional":
            return self._sample_union(batch_size, generator)
        n_offline, n_online = self.split(batch_size)
        parts = []
        if n_offline:
            parts.append(self.offline.sample(n_offline, generator))
        if n_online:
            parts.append(self.online.sample(n_online, generator))
        if len(parts) == 1:
            return parts[0]
        return Batch(**{k: _cat([getattr(p, k) for p in parts]) for k in parts[0].__dataclass_fields__})

    def _sample_union(self, batch_size: int, generator: torch.Generator | None) -> Batch:
        n_offline, n_online = len(self.offline), len(self.online)
        index = torch.randint(0, n_offline + n_online, (batch_size,), device=self.offline.device, generator=generator)
        from_online = index >= n_offline
        # Gather from both at clamped indices and select: no data-dependent shapes, so no host sync.
        offline_rows = self.offline.gather(index.clamp(max=max(n_offline - 1, 0)))
        if n_online == 0:
            return offline_rows
        online_rows = self.online.gather((index - n_offline).clamp(min=0))
        return Batch(**{k: _select(from_online, getattr(online_rows, k), getattr(offline_rows, k))
                        for k in offline_rows.__dataclass_fields__})


def _both_or_neither(parts: list[torch.Tensor | None]) -> bool:
    """True when every part is a tensor, False when none is (a field neither buffer keeps)."""
    present = [p is not None for p in parts]
    if any(present) and not all(present):
        raise ValueError("one buffer keeps mc_returns and the other does not; build both alike")
    return all(present)


def _cat(parts: list[torch.Tensor | None]) -> torch.Tensor | None:
    return torch.cat(parts) if _both_or_neither(parts) else None


def _select(mask: torch.Tensor, when_true: torch.Tensor | None, when_false: torch.Tensor | None):
    if not _both_or_neither([when_true, when_false]):
        return None
    return torch.where(mask.view(-1, *([1] * (when_false.dim() - 1))), when_true, when_false)


@dataclass
class ObservationNormalizer:
    """(obs − mean) / std with statistics from a dataset; saved as JSON with every run that uses it."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def from_observations(cls, observations: torch.Tensor, eps: float = 1e-3) -> ObservationNormalizer:
        # eps keeps constant features (std 0) finite, as CORL's normalize_states does
        return cls(mean=observations.mean(0), std=observations.std(0) + eps)

    @classmethod
    def identity(cls, obs_dim: int, device: torch.device | str = "cpu") -> ObservationNormalizer:
        return cls(mean=torch.zeros(obs_dim, device=device), std=torch.ones(obs_dim, device=device))

    def __call__(self, observations: torch.Tensor) -> torch.Tensor:
        return (observations - self.mean) / self.std

    def to_dict(self) -> dict:
        return {"mean": self.mean.cpu().tolist(), "std": self.std.cpu().tolist()}

    @classmethod
    def from_dict(cls, state: dict, device: torch.device | str = "cpu") -> ObservationNormalizer:
        return cls(mean=torch.tensor(state["mean"], device=device), std=torch.tensor(state["std"], device=device))

    def save(self, path: Path) -> None:
        from offrl.fileio import atomic_write_bytes

        atomic_write_bytes(Path(path), json.dumps(self.to_dict(), indent=2).encode())

    @classmethod
    def load(cls, path: Path, device: torch.device | str = "cpu", obs_dim: int | None = None
             ) -> ObservationNormalizer:
        """Read a normalizer file; with `obs_dim`, its statistics must have that width. One error naming the file."""
        path = Path(path)
        if not path.is_file():
            raise OfflineRLError(f"{path}: no such file (the run's observation statistics)")
        try:
            normalizer = cls.from_dict(json.loads(path.read_text()), device)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise OfflineRLError(f"{path}: not a valid normalizer file ({type(exc).__name__}: "
                                 f"{' '.join(str(exc).split())[:120]})") from None
        widths = {tuple(normalizer.mean.shape), tuple(normalizer.std.shape)}
        if obs_dim is not None and widths != {(obs_dim,)}:
            raise OfflineRLError(f"{path}: mean and std must hold {obs_dim} numbers each (the run's observation "
                                 f"width), found shapes {sorted(widths)}")
        return normalizer


def returns_to_go(rewards: np.ndarray, terminals: np.ndarray, timeouts: np.ndarray, gamma: float) -> np.ndarray:
    """Discounted Monte-Carlo return-to-go of every row, within its own episode (no bootstrapping past
    a termination or a cut, as Cal-QL computes V_ref for locomotion)."""
    is_end = np.zeros(len(rewards), dtype=bool)
    is_end[episode_ends(terminals, timeouts)] = True
    out = np.zeros(len(rewards), dtype=np.float64)
    running = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        running = float(rewards[t]) + (0.0 if is_end[t] else gamma * running)
        out[t] = running
    return out
