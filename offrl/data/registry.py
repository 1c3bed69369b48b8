"""Dataset ids, versions, cards and checksums.

An id is Minari's `[namespace/]env/tier-vN`. Version N of an id is written once: its HDF5 file lives at
`<root>/<id>.hdf5` (git-ignored) and its card at `<root>/<id>.json` (tracked). The card is written last,
so a dataset exists exactly when its card does; the card's sha256 pins the file's bytes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout

from offrl import __version__
from offrl.data.hdf5 import FORMAT_VERSION, episode_ends, read_transitions, write_transitions
from offrl.errors import OfflineRLError
from offrl.faults import fault_point
from offrl.fileio import atomic_write_bytes, git_commit, remove_orphan_temps, sha256_file
from offrl.shipped import default_dataset_store, shipped_root

__all__ = ["DatasetId", "dataset_root", "parse_dataset_id", "card_path", "data_path", "read_card", "list_cards",
           "dataset_writer", "register_dataset", "verify_dataset", "episode_returns", "return_stats", "env_short_name",
           "shipped_card", "shipped_cards", "card_problem", "StoreEntry", "store_entries",
           "check_writable_store"]

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


_SHA256 = re.compile(r"^[0-9a-f]{64}$")
CARD_INT_FIELDS = ("version", "transitions", "episodes")  # what readers of a card rely on, beside id and sha256


def card_problem(card: object, dataset_id: str | DatasetId) -> str | None:
    """Why a parsed card cannot be used for `dataset_id` (its fields that offrl relies on), or None."""
    if not isinstance(card, dict):
        return f"expected a JSON object, found {type(card).__name__}"
    if card.get("card_type") != "offrl-dataset":
        return f"card_type is {card.get('card_type')!r}, expected 'offrl-dataset'"
    missing = [k for k in ("id", "sha256", *CARD_INT_FIELDS) if k not in card]
    if missing:
        return f"missing field(s) {', '.join(missing)}"
    if card["id"] != str(dataset_id):
        return f"id {card['id']!r} does not match its file name ({dataset_id})"
    if not isinstance(card["sha256"], str) or not _SHA256.match(card["sha256"]):
        return f"sha256 must be 64 lower-case hex digits, found {card['sha256']!r}"
    for key in CARD_INT_FIELDS:
        if isinstance(card[key], bool) or not isinstance(card[key], int) or card[key] < 0:
            return f"{key} must be an integer >= 0, found {card[key]!r}"
    return None


def _parse_card(path: Path, dataset_id: str | DatasetId) -> tuple[dict | None, str | None]:
    """(card, None) for a usable card file, else (None, what is wrong with it)."""
    try:
        card = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return None, f"not valid JSON ({exc})"
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror or exc})"
    problem = card_problem(card, dataset_id)
    return (None, problem) if problem else (card, None)


def _load_card(path: Path, dataset_id: str | DatasetId) -> dict:
    """A card file parsed and checked; one OfflineRLError naming the file otherwise."""
    card, problem = _parse_card(path, dataset_id)
    if problem:
        raise OfflineRLError(f"dataset card {path}: {problem}; the card is corrupt (restore it from where it came "
                             "from, e.g. git)")
    return card


def _store_name(root: Path) -> str:
    from_env = os.environ.get("OFFRL_DATASETS_PATH")
    return f"dataset store {root}" + (" (OFFRL_DATASETS_PATH)" if from_env and Path(from_env) == root else "")


def _check_store(root: Path) -> None:
    """A store that exists must be a folder (an unset store is simply empty)."""
    for folder in (root, *root.parents):
        if folder.exists():
            if not folder.is_dir():
                where = "is a file" if folder == root else f"is inside {folder}, which is a file"
                raise OfflineRLError(f"{_store_name(root)}: {where}, not a directory")
            return


def check_writable_store(root: Path | None = None) -> Path:
    """Refuse, before a dataset is collected or imported, a store it could not be written into; creates nothing."""
    root = root or dataset_root()
    _check_store(root)
    existing = next(folder for folder in (root, *root.parents) if folder.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OfflineRLError(f"{_store_name(root)}: {existing} is not writable")
    return root


def card_or_shipped(dataset_id: str) -> dict | None:
    """The store's card of `dataset_id`, else the card offrl ships for it (what `--collect-missing` would collect),
    else None."""
    parsed = parse_dataset_id(dataset_id)
    return read_card(dataset_id) if card_path(parsed).exists() else shipped_card(parsed)


def read_card(dataset_id: str, root: Path | None = None) -> dict:
    parsed = parse_dataset_id(dataset_id)
    path = card_path(parsed, root)
    _check_store(root or dataset_root())
    if not path.is_file():
        if root is None and shipped_card(parsed) is not None:
            raise OfflineRLError(f"dataset {dataset_id} is one of offrl's shipped ids but is not collected in "
                                 f"{dataset_root()}; collect it with `offrl collect` (or --collect-missing / "
                                 "load_dataset(..., collect_missing=True))")
        known = [c["id"] for c in list_cards(root) if c["id"].rsplit("-v", 1)[0] == parsed.name]
        hint = f"; versions present: {', '.join(known)}" if known else \
            f"; `offrl datasets list` shows what is in {root or dataset_root()}"
        raise OfflineRLError(f"unknown dataset {dataset_id!r}: no card at {path}{hint}")
    return _load_card(path, parsed)


@dataclass(frozen=True)
class StoreEntry:
    """One card file in a store: its card, or why the card cannot be used (`problem`)."""

    dataset_id: str
    path: Path
    card: dict | None
    problem: str | None


def store_entries(root: Path | None = None) -> list[StoreEntry]:
    """Every dataset card in the store, usable or not: a corrupt card is reported, never skipped silently.

    A card is a `<id>.json` file whose path is a dataset id (files under `policies/` or hidden folders are not)."""
    root = root or dataset_root()
    _check_store(root)
    entries = []
    for path in sorted(root.rglob("*.json")) if root.is_dir() else []:
        relative = path.relative_to(root)
        if "policies" in relative.parts or any(part.startswith(".") for part in relative.parts):
            continue
        try:
            parsed = parse_dataset_id(relative.with_suffix("").as_posix())
        except OfflineRLError:
            continue
        entries.append(StoreEntry(str(parsed), path, *_parse_card(path, parsed)))
    return entries


def list_cards(root: Path | None = None) -> list[dict]:
    """The usable cards in the store (see `store_entries` for the corrupt ones too)."""
    return [entry.card for entry in store_entries(root) if entry.card is not None]


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


_held_ids: dict[str, int] = {}  # ids this process holds the lock of (dataset_writer nests)


@contextlib.contextmanager
def dataset_writer(dataset_id: str | DatasetId, root: Path | None = None) -> Iterator[None]:
    """Hold a dataset id's write lock: one writer per id at a time, across processes (so two `collect`s of one
    id cannot both claim it); the loser gets one error at once. Under the lock, temp files that a killed
    writer of this id left are removed. Nested use in one process is allowed."""
    parsed = parse_dataset_id(str(dataset_id))
    key = str(parsed)
    if _held_ids.get(key):
        _held_ids[key] += 1
        try:
            yield
        finally:
            _held_ids[key] -= 1
        return
    store = root or dataset_root()
    lock_file = store / ".locks" / f"{key.replace('/', '--')}.lock"
    try:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(lock_file), timeout=0)
        lock.acquire()
    except Timeout:
        raise OfflineRLError(f"dataset {key}: another offrl process is writing it (lock {lock_file}); versions "
                             "are immutable, so wait for it and use what it wrote") from None
    except OSError as exc:
        raise OfflineRLError(f"dataset store {store}: cannot be written ({exc.strerror or exc})") from None
    _held_ids[key] = 1
    try:
        fault_point("dataset-locked")
        for path in (data_path(parsed, root), card_path(parsed, root)):
            if path.parent.is_dir():
                remove_orphan_temps(path.parent, path.name)
        yield
    finally:
        _held_ids.pop(key, None)
        lock.release()


def register_dataset(dataset_id: str, arrays: dict[str, np.ndarray], card_fields: dict,
                     root: Path | None = None) -> dict:
    """Write a new, immutable dataset version and its card; refuses an id that already exists."""
    with dataset_writer(dataset_id, root):
        return _register(dataset_id, arrays, card_fields, root)


def _register(dataset_id: str, arrays: dict[str, np.ndarray], card_fields: dict, root: Path | None) -> dict:
    parsed = parse_dataset_id(dataset_id)
    card_file, data_file = card_path(parsed, root), data_path(parsed, root)
    if card_file.exists():
        raise OfflineRLError(f"dataset {dataset_id} already exists ({card_file}); versions are immutable, "
                             f"register it under a new version, e.g. {parsed.name}-v{parsed.version + 1}")
    returns = episode_returns(arrays["rewards"], arrays["terminals"], arrays["timeouts"])
    write_transitions(data_file, arrays, {"dataset_id": str(parsed), "env_id": card_fields.get("env_id", "")})
    fault_point("dataset-file-written")  # a file without its card: not a dataset; the next writer replaces it
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
        raise OfflineRLError(f"dataset {dataset_id}: sha256 mismatch for {path} (card says: {card['sha256']}, "
                             f"file has: {actual}); the file was changed or damaged, refusing to use it")
    if structural:
        arrays, _ = read_transitions(path)
        if len(arrays["rewards"]) != card["transitions"]:
            raise OfflineRLError(f"dataset {dataset_id}: {len(arrays['rewards'])} transitions, card says "
                                 f"{card['transitions']}")
    return card
