"""Where offrl finds what it ships and where it keeps what a user makes.

Shipped files: the YAML configs live in the package (`offrl/configs`); the behaviour policies and the cards of
offrl's own dataset ids live in the repository's `datasets/` and are copied into the wheel as `offrl/_shipped`
when it is built (setup.py), so a source checkout and an installed wheel read the same files from one copy.

User files: the dataset store defaults to `~/.offrl/datasets` (as Minari keeps `~/.minari/datasets`) and the
leaderboard to `~/.offrl/leaderboard.csv`; `OFFRL_DATASETS_PATH` and `OFFRL_LEADERBOARD` override them. The
repository's Makefile points both at the repository (`datasets/`, `evaluation/leaderboard.csv`).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["PACKAGE_DIR", "shipped_root", "shipped_policies_root", "default_dataset_store",
           "default_leaderboard", "user_home"]

PACKAGE_DIR = Path(__file__).resolve().parent


def shipped_root() -> Path:
    """`offrl/_shipped` in an installed wheel; the repository's `datasets/` in a source checkout."""
    packaged = PACKAGE_DIR / "_shipped"
    return packaged if packaged.is_dir() else PACKAGE_DIR.parent / "datasets"


def shipped_policies_root() -> Path:
    return shipped_root() / "policies"


def user_home() -> Path:
    return Path(os.environ.get("OFFRL_HOME") or Path.home() / ".offrl")


def default_dataset_store() -> Path:
    return Path(os.environ.get("OFFRL_DATASETS_PATH") or user_home() / "datasets")


def default_leaderboard() -> Path:
    return Path(os.environ.get("OFFRL_LEADERBOARD") or user_home() / "leaderboard.csv")
