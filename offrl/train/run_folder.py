"""A run folder opened by one writer: the lock, the start-or-resume decision and leftover temp files.

Every training entry point (offline `fit`, `pretrain`, `finetune`) opens its folder through `RunFolder`, so
they share one set of guarantees (tested by tests/test_faults.py):
- one process at a time writes a folder: a second gets one line naming the lock, not interleaved logs;
- a folder is either new (nothing in it), or a run that `resume=True` continues. A run killed before its
  first checkpoint (`run.json` written, no `checkpoint.pt`) resumes from the start, since nothing else
  happened in it; a finished run (`final.json` at the asked step count) is reported as finished, not redone;
- temp files that a killed writer left (`.NAME.XXXX.tmp`, see offrl.fileio) are removed under the lock.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout

from offrl.errors import OfflineRLError
from offrl.faults import fault_point
from offrl.fileio import atomic_torch_save, remove_orphan_temps
from offrl.train.checkpoints import load_checkpoint

__all__ = ["LOCK_NAME", "SNAPSHOT_FOLDER", "STOPPED_FILE", "TRIAL_ERROR_FILE", "RunFolder", "finished_report",
           "snapshot_path", "save_policy_snapshot", "snapshot_steps", "drop_snapshots_after", "snapshot_of"]

LOCK_NAME = ".offrl.lock"
RUN_RECORD = "run.json"
FINAL_REPORT = "final.json"
# The policy at every evaluation, like d3rlpy's model_{epoch}.d3 files: the actor's weights only (the run's
# config, normaliser and record rebuild the rest), so a run keeps its learning curve's policies (e.g. as
# target policies of `offrl ope`) at a few hundred kB each.
SNAPSHOT_FOLDER = "snapshots"
# Why a folder has no final report: a run stopped for divergence (the step, the metrics, the error; written by the
# training loop) and a sweep trial's error (Ray Tune's name; written by `offrl sweep`, possibly before the run
# record exists, so it is not part of "a run" when a new attempt starts in the folder).
STOPPED_FILE = "stopped.json"
TRIAL_ERROR_FILE = "error.txt"
NOT_A_RUN = (LOCK_NAME, TRIAL_ERROR_FILE)  # a folder holding only these holds no run yet


def snapshot_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / SNAPSHOT_FOLDER / f"actor_{step}.pt"


def snapshot_of(path: str | Path) -> tuple[Path, int] | None:
    """(run folder, step) when `path` names a policy snapshot (`RUN/snapshots/actor_STEP.pt`), else None. Reads
    the name only: whether the files exist is the caller's question."""
    path = Path(path)
    step = path.stem.removeprefix("actor_")
    if path.parent.name != SNAPSHOT_FOLDER or path.suffix != ".pt" or not path.stem.startswith("actor_") \
            or not step.isdigit() or len(path.parts) < 3:
        return None
    return path.parent.parent, int(step)


def save_policy_snapshot(run_dir: Path, step: int, actor: torch.nn.Module) -> Path:
    """The actor's weights at `step` (written through a temp file; a resumed run that reaches the step again
    overwrites it, as it rewrites that step's evaluation row)."""
    path = snapshot_path(run_dir, step)
    path.parent.mkdir(exist_ok=True)
    atomic_torch_save({k: v.detach().cpu() for k, v in actor.state_dict().items()}, path)
    return path


def drop_snapshots_after(run_dir: Path, step: int) -> None:
    """Remove the snapshots of steps after `step` (a resumed run continues from there and writes them again)."""
    for later in (s for s in snapshot_steps(run_dir) if s > step):
        snapshot_path(run_dir, later).unlink(missing_ok=True)


def snapshot_steps(run_dir: Path) -> list[int]:
    """The steps a run folder holds policy snapshots of, ascending."""
    folder = Path(run_dir) / SNAPSHOT_FOLDER
    steps = [int(p.stem.removeprefix("actor_")) for p in folder.glob("actor_*.pt") if p.stem[6:].isdigit()]
    return sorted(steps)


class RunFolder:
    """`with RunFolder(out_dir, resume, kind) as folder:` holds the folder's lock for the whole run."""

    def __init__(self, out_dir: Path, resume: bool, kind: str, checkpoint_name: str = "checkpoint.pt"):
        self.path = Path(out_dir)
        self.resume, self.kind = resume, kind
        self.checkpoint_path = self.path / checkpoint_name
        self._lock: FileLock | None = None
        self._created = False

    def __enter__(self) -> RunFolder:
        self._created = not self.path.exists()
        if self.path.exists() and not self.path.is_dir():
            raise OfflineRLError(f"run folder {self.path}: exists and is not a directory")
        if self.resume and not self.path.is_dir():
            raise OfflineRLError(f"--resume: {self.path} holds no run (no such folder)")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock = FileLock(str(self.path / LOCK_NAME), timeout=0)
            self._lock.acquire()
        except Timeout:
            raise OfflineRLError(f"run folder {self.path}: another offrl process is writing it (lock "
                                 f"{self.path / LOCK_NAME}); wait for it or choose another --out") from None
        except OSError as exc:
            raise OfflineRLError(f"run folder {self.path}: cannot be written ({exc.strerror or exc})") from None
        try:
            fault_point("run-folder-locked")
            remove_orphan_temps(self.path)
            remove_orphan_temps(self.path / SNAPSHOT_FOLDER)  # a snapshot a killed writer left half-written
            if self.resume and not (self.path / RUN_RECORD).is_file():
                # Only a folder that a killed start left empty (the lock, temp files) resumes as a new run, so
                # re-running the same command with --resume is always right; a wrong --out is still refused.
                if any(p.name not in NOT_A_RUN for p in self.path.iterdir()):
                    raise OfflineRLError(f"--resume: {self.path} holds no run ({RUN_RECORD} is missing)")
                self.resume = False
            if not self.resume and any(p.name not in NOT_A_RUN for p in self.path.iterdir()):
                raise OfflineRLError(f"{self.path} already holds a run; pass --resume to continue it or choose "
                                     "another --out")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, exc_type: Any, *exc_info: Any) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None
            # Bad input found after the folder was made leaves no trace of it: the folder goes if nothing else
            # was written into it.
            if exc_type is not None and self._created and {p.name for p in self.path.iterdir()} <= {LOCK_NAME}:
                (self.path / LOCK_NAME).unlink(missing_ok=True)
                self.path.rmdir()

    def resume_state(self) -> dict | None:
        """The checkpoint to continue from; None for a new run or one killed before its first checkpoint."""
        if not self.resume or not self.checkpoint_path.exists():
            return None
        return load_checkpoint(self.checkpoint_path, self.kind)

    def finished_report(self, steps: int) -> dict | None:
        """final.json of a run that already finished `steps` steps, if there is one (only when resuming)."""
        return finished_report(self.path, self.kind, steps) if self.resume else None


def finished_report(run_dir: Path, kind: str, steps: int) -> dict | None:
    """A run folder's final.json if the run finished `steps` steps (updates; env steps for fine-tuning)."""
    path = Path(run_dir) / FINAL_REPORT
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise OfflineRLError(f"{path}: not valid JSON ({exc})") from None
    done = report.get("online_steps") if kind == "finetune" else report.get("updates")
    return report if done == steps else None
