"""Metric logs of a run: a CSV file, and optionally TensorBoard event files beside it.

On resume the CSV is cut back to the checkpoint's step, and the TensorBoard events are written anew from
the cut CSV, so after any number of resumes no step appears twice in either.
"""

from __future__ import annotations

import csv
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

from offrl.errors import OfflineRLError
from offrl.fileio import atomic_write_bytes

__all__ = ["MetricsLog"]


class MetricsLog:
    """Append-only rows keyed by `step`, in memory always, on disk when `path` is given.

    `tensorboard_dir`: also write every numeric column as a TensorBoard scalar (`tag_prefix/column`)."""

    def __init__(self, path: Path | None, resume_step: int | None = None, tensorboard_dir: Path | None = None,
                 tag_prefix: str = "train"):
        self.path = Path(path) if path is not None else None
        self.fieldnames: list[str] | None = None
        self.rows: list[dict[str, Any]] = []
        self.tag_prefix = tag_prefix
        if self.path is not None:
            if resume_step is None:
                self.path.unlink(missing_ok=True)
            elif self.path.exists():
                with self.path.open(newline="") as f:
                    reader = csv.DictReader(f)
                    self.fieldnames = reader.fieldnames
                    self.rows = [row for row in reader if int(float(row["step"])) <= resume_step]
                self._rewrite(self.rows)
        self._writer = None
        if tensorboard_dir is not None:
            self._writer = _tensorboard_writer(Path(tensorboard_dir) / tag_prefix)
            for row in self.rows:
                self._scalars(row)

    def _rewrite(self, rows: list[dict]) -> None:
        with tempfile.SpooledTemporaryFile(mode="w+", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.fieldnames or [])
            writer.writeheader()
            writer.writerows(rows)
            f.seek(0)
            text = f.read()
        atomic_write_bytes(self.path, text.encode())

    def _scalars(self, row: dict[str, Any]) -> None:
        step = int(float(row["step"]))
        for key, value in row.items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                continue
            if key != "step" and math.isfinite(number):
                self._writer.add_scalar(f"{self.tag_prefix}/{key}", number, step)

    def write(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if self._writer is not None:
            self._scalars(row)
            self._writer.flush()
        if self.path is None:
            return
        if self.fieldnames is None:
            self.fieldnames = list(row)
        new_file = not self.path.exists()
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.fieldnames, extrasaction="ignore")
            if new_file:
                writer.writeheader()
            writer.writerow(row)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _tensorboard_writer(directory: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise OfflineRLError("tensorboard logging needs the tensorboard package: pip install 'offrl[tensorboard]'") \
            from None
    shutil.rmtree(directory, ignore_errors=True)  # rebuilt from the CSV rows kept at resume
    return SummaryWriter(log_dir=str(directory))
