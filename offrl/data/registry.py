"""Dataset ids, versions, cards and checksums.

An id is Minari's `[namespace/]env/tier-vN`. Version N of an id is written once: its HDF5 file lives at
`<root>/<id>.hdf5` (git-ignored) and its card at `<root>/<id>.json` (tracked). The card is written last,
so a dataset exists exactly when its card does; the card's sha256 pins the file's bytes.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from offrl import __version__
from offrl.data.hdf5 import FORMAT_VERSION, episode_ends, read_transitions, write_transitions
from offrl.errors import OfflineRLError
from offrl.fileio import atomic_write_bytes, git_commit, sha256_file
from offrl.shipped import default_dataset_store, shipped_root

__all__ = ["DatasetId", "dataset_root", "parse_dataset_id", "card_path", "data_path", "read_card", "list_cards",
           "register_dataset", "verify_dataset", "episode_returns", "return_stats", "env_short_name", "shipped_card",
           "shipped_cards"]

_ID_PATTERN = re.compile(
    r"^(?:(?P<namespace>[a-z0-9_.-]+)/)?(?P<env>[a-z0-9_.-]+)/(?P<tier>[a-z0-9_.-]+)-v(?P<version>\d+)$")


@dataclass(frozen=True)
class DatasetId:
    namespace: str | None
    env: str
    tier: str
    version: int

    def __str__(self) -> str:
        prefix = f"{self.namespace}/" if self.namespace else ""
        return f"{prefix}{self.env}/{self.tier}-v{self.version}"

    @property
    def name(self) -> str:
        """The id without its version: every version of one dataset shares it."""
        return str(self).rsplit("-v", 1)[0]


def parse_dataset_id(text: str) -> DatasetId:
    match = _ID_PATTERN.match(text)
    if not match:
        raise OfflineRLError(f"dataset id {text!r} is not of the form [namespace/]env/tier-vN, "
                             "e.g. halfcheetah/medium-v0 (lower case, version a number)")
    return DatasetId(match["namespace"], match["env"], match["tier"], int(match["version"]))


def env_short_name(env_id: str) -> str:
    """`HalfCheetah-v5` → `halfcheetah`: the env part of a dataset id (Minari's convention)."""
    return env_id.split("/")[-1].rsplit("-v", 1)[0].lower()


def dataset_root() -> Path:
    """The dataset store: `OFFRL_DATASETS_PATH`, else `~/.offrl/datasets` (see offrl.shipped)."""
    return default_dataset_store()


def shipped_card(dataset_id: str | DatasetId) -> dict | None:
    """The card offrl ships for one of its own dataset ids (the file is collected from it), or None."""
    path = shipped_root() / f"{dataset_id}.json"  # the cards of offrl's own ids
    if "policies" in Path(str(dataset_id)).parts or not path.is_file():
        return None
    try:
        card = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return card if isinstance(card, dict) and card.get("card_type") == "offrl-dataset" else None


def shipped_cards() -> list[dict]:
    return list_cards(shipped_root())


def card_path(dataset_id: str | DatasetId, root: Path | None = None) -> Path:
    return (root or dataset_root()) / f"{dataset_id}.json"


def data_path(dataset_id: str | DatasetId, root: Path | None = None) -> Path:
    return (root or dataset_root()) / f"{dataset_id}.hdf5"


def read_card(dataset_id: str, root: Path | None = None) -> dict:
    parsed = parse_dataset_id(dataset_id)
    path = card_path(parsed, root)
    if not path.is_file():
        if root is None and shipped_card(parsed) is not None:
            raise OfflineRLError(f"dataset {dataset_id} is one of offrl's shipped ids but is not collected in "
                                 f"{dataset_root()}; collect it with `offrl collect` (or --collect-missing / "
                                 "load_dataset(..., collect_missing=True))")
        known = [c["id"] for c in list_cards(root) if c["id"].rsplit("-v", 1)[0] == parsed.name]
        hint = f"; versions present: {', '.join(known)}" if known else \
            f"; `offrl datasets list` shows what is in {root or dataset_root()}"
        raise OfflineRLError(f"unknown dataset {dataset_id!r}: no card at {path}{hint}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise OfflineRLError(f"dataset card {path}: not valid JSON ({exc})") from None


def list_cards(root: Path | None = None) -> list[dict]:
    root = root or dataset_root()
    cards = []
    for path in sorted(root.rglob("*.json")) if root.is_dir() else []:
        if "policies" in path.relative_to(root).parts:
            continue
        try:
            card = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue
        if isinstance(card, dict) and card.get("card_type") == "offrl-dataset":
            cards.append(card)
    return cards


def episode_returns(rewards: np.ndarray, terminals: np.ndarray, timeouts: np.ndarray) -> np.ndarray:
    ends = episode_ends(terminals, timeouts)
    if len(ends) == 0:
        return np.zeros(0)
    return np.add.reduceat(rewards.astype(np.float64), np.concatenate([[0], ends[:-1] + 1]))


def return_stats(returns: np.ndarray) -> dict:
    if len(returns) == 0:
        return {"mean": None, "std": None, "min": None, "max": None}
    return {"mean": float(returns.mean()), "std": float(returns.std()), "min": float(returns.min()),
            "max": float(returns.max())}


def register_dataset(dataset_id: str, arrays: dict[str, np.ndarray], card_fields: dict,
                     root: Path | None = None) -> dict:
    """Write a new, immutable dataset version and its card; refuses an id that already exists."""
    parsed = parse_dataset_id(dataset_id)
    card_file, data_file = card_path(parsed, root), data_path(parsed, root)
    if card_file.exists():
        raise OfflineRLError(f"dataset {dataset_id} already exists ({card_file}); versions are immutable, "
                             f"pass a new version (e.g. --version {parsed.version + 1})")
    returns = episode_returns(arrays["rewards"], arrays["terminals"], arrays["timeouts"])
    write_transitions(data_file, arrays, {"dataset_id": str(parsed), "env_id": card_fields.get("env_id", "")})
    card = {
        "card_type": "offrl-dataset", "id": str(parsed), "name": parsed.name, "version": parsed.version,
        "namespace": parsed.namespace, **card_fields,
        "transitions": int(len(arrays["rewards"])), "episodes": int(len(returns)),
        "episode_return": return_stats(returns),
        "obs_dim": int(arrays["observations"].shape[1]), "act_dim": int(arrays["actions"].shape[1]),
        "format_version": FORMAT_VERSION, "offrl_version": __version__, "git_commit": git_commit(),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "file": data_file.name, "sha256": sha256_file(data_file),
    }
    atomic_write_bytes(card_file, (json.dumps(card, indent=2) + "\n").encode())
    return card


def verify_dataset(dataset_id: str, root: Path | None = None, structural: bool = True) -> dict:
    """Check the file's sha256 against its card and (optionally) its structure. Returns the card."""
    card = read_card(dataset_id, root)
    path = data_path(dataset_id, root)
    if not path.is_file():
        raise OfflineRLError(f"dataset {dataset_id}: card present but data file {path} is missing; "
                             f"recreate it with the card's command: {card.get('command', 'unknown')}")
    actual = sha256_file(path)
    if actual != card["sha256"]:
        raise OfflineRLError(f"dataset {dataset_id}: sha256 mismatch for {path}\n  card says: {card['sha256']}\n"
                             f"  file has:  {actual}\nthe file was changed or damaged; refusing to use it")
    if structural:
        arrays, _ = read_transitions(path)
        if len(arrays["rewards"]) != card["transitions"]:
            raise OfflineRLError(f"dataset {dataset_id}: {len(arrays['rewards'])} transitions, card says "
                                 f"{card['transitions']}")
    return card
