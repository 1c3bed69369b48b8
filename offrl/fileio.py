"""Files written safely (temp file + rename), content hashes and the code's git commit."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["temp_beside", "remove_orphan_temps", "atomic_write_bytes", "safe_torch_load", "atomic_torch_save",
           "sha256_file", "git_commit"]


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def temp_beside(path: Path) -> str:
    """A temp file in the destination's folder (so the final rename is atomic), with normal permissions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, _umask_mode())
    return tmp


def remove_orphan_temps(folder: Path, name: str | None = None) -> list[Path]:
    """Delete the temp files a killed writer left in `folder` (all, or only those for file `name`).

    Call it only while holding the lock that excludes every other writer of those files."""
    pattern = f".*{name}.*.tmp" if name is not None else ".*.tmp"  # also a temp of a temp (".NAME.x.tmp.y.tmp")
    removed = []
    for orphan in Path(folder).glob(pattern):
        if orphan.is_file():
            orphan.unlink(missing_ok=True)
            removed.append(orphan)
    return removed


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    tmp = temp_beside(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save through memory: a file-backed save names its zip archive after the (temporary) file,
    so the same tensors would not give the same bytes, and shipped weights carry a sha256."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(Path(path), buffer.getvalue())


def safe_torch_load(path: Path, what: str) -> Any:
    """torch.load with weights_only=True (tensors and plain values: a file from elsewhere cannot run code); a
    missing, damaged or tampered file is one OfflineRLError naming `what` and the path."""
    from offrl.errors import OfflineRLError, first_line

    path = Path(path)
    if not path.is_file():
        raise OfflineRLError(f"{what} {path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a damaged or unsafe file
        raise OfflineRLError(f"{what} {path}: cannot be read safely ({type(exc).__name__}: {first_line(exc)})") \
            from None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        commit = out.stdout.strip() if out.returncode == 0 else "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5, cwd=Path(__file__).resolve().parent).stdout.strip()
        return commit + ("-dirty" if dirty and commit != "unknown" else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
