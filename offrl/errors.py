"""One exception type for every user-facing error; the CLI turns it into one line and exit code 2."""

from __future__ import annotations

__all__ = ["OfflineRLError"]


class OfflineRLError(Exception):
    """Bad input: a file, argument or dataset that cannot be used. The message names it and the problem."""
