"""The leaderboard: one CSV row per finished run or evaluation, appended under a file lock; aggregation
over seeds (mean ± std, IQM with a stratified-bootstrap 95% CI); markdown and PNG renderings. The evidence
grid's aggregation across datasets (rliable's metrics, performance profiles) is in `aggregate.py`."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from filelock import FileLock

from offrl.errors import OfflineRLError
from offrl.faults import fault_point
from offrl.fileio import atomic_write_bytes, remove_orphan_temps

__all__ = ["COLUMNS", "append_row", "check_appendable", "has_row", "read_leaderboard", "iqm", "bootstrap_ci",
           "stratified_bootstrap_ci", "aggregate", "write_summary", "plot_leaderboard", "plot_finetuning", "read_curve",
           "finished_curve", "gather_curves", "read_kept_curves"]

COLUMNS = [
    "run_id", "phase", "online_steps", "dataset_id", "dataset_version", "dataset_sha256", "algorithm", "config_name",
    "config_hash", "seed", "steps", "final_normalized_return", "best_normalized_return", "mean_return",
    "reference", "q_bias_mean", "q_bias_normalized_mean", "q_bias_normalized_std", "wall_time_s", "updates_per_s",
    "device", "offrl_version", "git_commit", "date", "run_dir",
    "before_normalized_return", "before_q_bias_normalized_mean", "unlearning_dip", "online_auc",  # phase=online only
    "sweep_id",  # the `offrl sweep` that produced the row (empty for a run started by hand)
]
# The header before `sweep_id` existed: still read, and upgraded (an empty sweep_id per row) on the next append.
LEGACY_COLUMNS = COLUMNS[:-1]
GROUP = ["dataset_id", "algorithm", "config_name", "phase"]
ONLINE_COLUMNS = ("before_normalized_return", "before_q_bias_normalized_mean", "unlearning_dip", "online_auc")


NUMERIC_COLUMNS = ("online_steps", "dataset_version", "seed", "steps", "final_normalized_return",
                   "best_normalized_return", "mean_return", "q_bias_mean", "q_bias_normalized_mean",
                   "q_bias_normalized_std", "wall_time_s", "updates_per_s", *ONLINE_COLUMNS)
REQUIRED_COLUMNS = ("run_id", "phase", "dataset_id", "steps")  # what aggregation groups and counts by


def _check_lines(path: Path, text: str) -> None:
    """Refuse a leaderboard we cannot append to or aggregate safely, naming the first bad line: the header,
    the field count, and numbers where numbers belong (an empty cell is a missing value)."""
    numeric = [COLUMNS.index(name) for name in NUMERIC_COLUMNS]
    required = [COLUMNS.index(name) for name in REQUIRED_COLUMNS]
    try:
        reader = csv.reader(io.StringIO(text))
        header = next(reader, None)
        if header is None:
            return
        if header not in (COLUMNS, LEGACY_COLUMNS):
            raise OfflineRLError(f"{path}: line 1 is not the leaderboard header (expected {len(COLUMNS)} columns "
                                 f"starting {', '.join(COLUMNS[:3])}); refusing to use it")
        for number, fields in enumerate(reader, start=2):
            if len(fields) != len(header):
                raise OfflineRLError(f"{path}: line {number} has {len(fields)} fields, expected {len(header)}; "
                                     "refusing to use it until it is fixed")
            for index in required:
                if not fields[index].strip():
                    raise OfflineRLError(f"{path}: line {number}: {COLUMNS[index]} is empty; refusing to use it "
                                         "until it is fixed")
            for index in numeric:
                if fields[index].strip() and not _is_number(fields[index]):
                    raise OfflineRLError(f"{path}: line {number}: {COLUMNS[index]} is {fields[index][:40]!r}, not a "
                                         "number; refusing to use it until it is fixed")
    except csv.Error as exc:
        raise OfflineRLError(f"{path}: not a CSV file ({exc})") from None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _leaderboard_text(path: Path) -> str:
    """The leaderboard file's text; one error naming it if it is not readable UTF-8 text."""
    try:
        return Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise OfflineRLError(f"{path}: not a text CSV file (byte {exc.start} is not UTF-8); is it the "
                             "leaderboard?") from None
    except OSError as exc:
        raise OfflineRLError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def _upgraded(text: str) -> str:
    """A leaderboard with the legacy header rewritten with today's columns (new columns empty)."""
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or rows[0] != LEGACY_COLUMNS:
        return text
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(row + [""] * (len(COLUMNS) - len(row)) for row in rows[1:])
    return out.getvalue()


def _target(path: Path) -> Path:
    """The file a leaderboard path stands for: a symlink is followed, so rows reach the shared file (the
    rename in `append_row` would otherwise replace the link by a private copy)."""
    return Path(os.path.realpath(Path(path).expanduser()))


def check_appendable(path: Path) -> None:
    """Refuse, before any training, a leaderboard that a finished run could not append to: not a file, not a
    leaderboard CSV, or not writable (the file or the folder the atomic rename writes into)."""
    path = Path(path)
    target = _target(path)
    if target.exists():
        if not target.is_file():
            raise OfflineRLError(f"leaderboard {path}: is not a file")
        _check_lines(path, _leaderboard_text(target))
        if not os.access(target, os.W_OK):
            raise OfflineRLError(f"leaderboard {path}: is not writable")
    folder = target.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise OfflineRLError(f"leaderboard {path}: its folder {folder} is not a writable directory")


def has_row(path: Path, run_id: str, phase: str) -> bool:
    """Whether the leaderboard already holds this run's row for `phase` (a resumed run appends only once)."""
    target = _target(path)
    if not target.is_file():
        return False
    with target.open(newline="") as f:
        return any(r.get("run_id") == run_id and r.get("phase") == phase for r in csv.DictReader(f))


def append_row(path: Path, row: dict, once: bool = False) -> bool:
    """Append one row atomically: lock, check the existing file, write file + row to a temp file, rename.

    `once`: skip the row if one with the same run_id and phase is there (a resumed run that was killed after its
    append). Returns whether a row was written."""
    shown = Path(path)
    path = _target(shown)
    unknown = set(row) - set(COLUMNS)
    if unknown:
        raise ValueError(f"unknown leaderboard column(s): {sorted(unknown)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        remove_orphan_temps(path.parent, path.name)  # a killed append's temp file; we hold the lock
        existing = _upgraded(_leaderboard_text(path)) if path.exists() else ""
        _check_lines(shown, existing)
        if once and any(r.get("run_id") == str(row.get("run_id")) and r.get("phase") == str(row.get("phase"))
                        for r in csv.DictReader(io.StringIO(existing))):
            return False
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
        if not existing:
            writer.writeheader()
        elif not existing.endswith("\n"):
            existing += "\n"
        writer.writerow({k: _cell(row.get(k)) for k in COLUMNS})
        fault_point("leaderboard-append")
        atomic_write_bytes(path, (existing + out.getvalue()).encode())
    return True


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if np.isnan(value) else f"{value:.6g}"
    return str(value)


def read_leaderboard(path: Path) -> pd.DataFrame:
    path = Path(path)
    if path.exists() and not path.is_file():
        raise OfflineRLError(f"{path}: is not a file; --leaderboard (or OFFRL_LEADERBOARD) names the leaderboard CSV")
    if not path.is_file():
        raise OfflineRLError(f"{path}: no leaderboard yet; finished runs append to it")
    text = _leaderboard_text(path)
    if not text.strip():
        raise OfflineRLError(f"{path}: is empty (no header, no rows); finished runs append to it")
    _check_lines(path, text)
    return pd.read_csv(io.StringIO(_upgraded(text)))


def iqm(values: np.ndarray) -> float:
    """Interquartile mean: the mean of the middle 50% (Agarwal et al. 2021, rliable; scipy trim_mean 0.25); NaN
    if any value is NaN (as the mean beside it is), rather than a NaN silently trimmed away.

    Kept in numpy rather than calling `rliable.metrics.aggregate_iqm` (the same trim_mean, checked equal in
    tests/evaluation/test_aggregate.py) so `offrl leaderboard` needs no optional package."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    if np.isnan(x).any():
        return float("nan")
    cut = int(0.25 * len(x))
    return float(x[cut: len(x) - cut].mean())


def stratified_bootstrap_ci(scores: np.ndarray, statistic_of_each: Callable[[np.ndarray], np.ndarray],
                            resamples: int = 50_000, seed: int = 0,
                            size: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """rliable's stratified bootstrap CI (`StratifiedBootstrap`, no task resampling, percentile method; 50,000
    resamples is `get_interval_estimates`' default): each task's runs are resampled with replacement, independently
    per task, and the interval is the (1 - size)/2 and (1 + size)/2 percentiles of the statistic over resamples.

    `scores` is (runs, tasks); `statistic_of_each` maps the stack of resampled matrices (resamples, runs, tasks) to
    one value (or one row) per resample. Returns (low, high) with the statistic's shape.

    Why not `rliable.library.get_interval_estimates` itself: rliable 1.2.0 pins arch < 8, whose import calls a
    pandas helper pandas 3 removed, and arch 8 refuses the `random_state` argument rliable passes; rliable also
    draws from numpy's global RNG. This is the same definition with a seeded generator, checked against rliable
    in tests/evaluation/test_aggregate.py wherever rliable.library runs."""
    scores = np.asarray(scores, dtype=np.float64)
    runs, tasks = scores.shape
    picks = np.random.default_rng(seed).integers(0, runs, size=(resamples, runs, tasks))
    stack = scores[picks, np.arange(tasks)]
    tail = 100.0 * (1.0 - size) / 2.0
    low, high = np.percentile(statistic_of_each(stack), [tail, 100.0 - tail], axis=0)
    return low, high


# With two seeds the percentile bootstrap can only return the [min, max] of the two, an interval that covers the
# statistic about half the time: a CI is reported from three seeds on (NaN, shown blank, below).
MIN_SEEDS_FOR_CI = 3


def bootstrap_ci(values: np.ndarray, statistic=iqm, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap 95% CI of `statistic` over seeds: the one-task case of `stratified_bootstrap_ci`;
    NaN below MIN_SEEDS_FOR_CI seeds."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) < MIN_SEEDS_FOR_CI:
        return float("nan"), float("nan")
    low, high = stratified_bootstrap_ci(x[:, None], lambda stack: np.array([statistic(m[:, 0]) for m in stack]),
                                        resamples, seed)
    return float(low), float(high)


def aggregate(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, algorithm, config, phase, training budget) over seeds, of the runs with a score (an
    env to evaluate in). A run's latest row counts (a
    fine-tuning run: its longest), and of several runs of one seed at one budget the last appended (a re-run
    replaces its seed instead of counting twice). Budgets are never pooled: offline `steps`, and for fine-tuning
    also `online_steps`."""
    frame = frame.dropna(subset=["final_normalized_return"])  # a run without an env to score it in
    frame = frame.drop_duplicates(subset=["run_id", "phase", "online_steps"], keep="last")
    frame = frame.sort_values("online_steps", kind="stable").drop_duplicates(subset=["run_id", "phase"], keep="last")
    frame = frame.assign(online_steps=frame["online_steps"].fillna(0).astype(int))
    frame = frame.sort_index().drop_duplicates(subset=[*GROUP, "steps", "online_steps", "seed"], keep="last")
    rows = []
    for key, group in frame.groupby([*GROUP, "steps", "online_steps"], dropna=False, sort=True):
        final = group["final_normalized_return"].to_numpy(dtype=float)
        low, high = bootstrap_ci(final)
        rows.append({**dict(zip(GROUP, key, strict=False)), "seeds": len(group),
                     "steps": int(key[len(GROUP)]), "online_steps": int(key[len(GROUP) + 1]),
                     "final_mean": final.mean(), "final_iqm": iqm(final),
                     # the sample std over seeds (ddof 1), as rliable and the papers report; none for one seed
                     "final_std": final.std(ddof=1) if len(final) > 1 else float("nan"),
                     "iqm_ci_low": low, "iqm_ci_high": high,
                     "best_mean": group["best_normalized_return"].to_numpy(dtype=float).mean(),
                     "q_bias_normalized_mean": group["q_bias_normalized_mean"].to_numpy(dtype=float).mean(),
                     "updates_per_s": group["updates_per_s"].to_numpy(dtype=float).mean(),
                     **{f"{name}_mean": group[name].to_numpy(dtype=float).mean() for name in ONLINE_COLUMNS}})
    return pd.DataFrame(rows)


def write_summary(summary: pd.DataFrame, csv_path: Path, markdown_path: Path) -> str:
    atomic_write_bytes(Path(csv_path), summary.to_csv(index=False, float_format="%.4g").encode())
    lines = ["| dataset | algorithm | config | phase | seeds | steps | final (mean ± sample std) | IQM [95% CI] | "
             "best | Q bias (norm.) | before fine-tuning | dip (first 10%) | online AUC |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary.itertuples():
        ci = "" if np.isnan(r.iqm_ci_low) else f" [{r.iqm_ci_low:.1f}, {r.iqm_ci_high:.1f}]"
        online = ("| | | |" if r.phase != "online" else
                  f"| {r.before_normalized_return_mean:.1f} | {r.unlearning_dip_mean:+.1f} | {r.online_auc_mean:.1f} |")
        steps = f"{r.steps} + {r.online_steps} online" if r.phase == "online" else f"{r.steps}"
        spread = f" ± {r.final_std:.1f}" if np.isfinite(r.final_std) else ""  # one seed: no spread
        bias = f"{r.q_bias_normalized_mean:.3f}" if np.isfinite(r.q_bias_normalized_mean) else "–"  # BC: no critic
        lines.append(f"| {r.dataset_id} | {r.algorithm} | {r.config_name} | {r.phase} | {r.seeds} | {steps} | "
                     f"{r.final_mean:.1f}{spread} | {r.final_iqm:.1f}{ci} | {r.best_mean:.1f} | {bias} {online}")
    text = "\n".join(lines) + "\n"
    atomic_write_bytes(Path(markdown_path), text.encode())
    return text


def _bootstrap_band(table: pd.DataFrame, resamples: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per row (an evaluation step), the 95% percentile-bootstrap interval of the mean over the columns (seeds)."""
    values = table.to_numpy(dtype=float)
    rng = np.random.default_rng(seed)
    low, high = np.full(len(values), np.nan), np.full(len(values), np.nan)
    for index, row in enumerate(values):
        row = row[np.isfinite(row)]
        if len(row) < 2:
            continue
        means = row[rng.integers(0, len(row), (resamples, len(row)))].mean(axis=1)
        low[index], high[index] = np.percentile(means, [2.5, 97.5])
    return low, high


def plot_leaderboard(frame: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Per dataset, offline runs: the learning curves of normalized return and of the normalized Q bias
    (mean Q̂ − G over |mean G|, measured at every evaluation) against updates, one line per algorithm and config:
    the mean over seeds with a 95% bootstrap band (seeds resampled). Read from each run's evaluations.csv; runs
    whose folders are not on this machine are skipped, and a dataset with none keeps its existing plot."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    written = []
    offline = frame[frame["phase"] == "offline"].drop_duplicates("run_dir", keep="last")
    for dataset_id, group in offline.groupby("dataset_id"):
        fig, (curve_ax, bias_ax) = plt.subplots(1, 2, figsize=(11, 4))
        for (algorithm, config), runs in group.groupby(["algorithm", "config_name"]):
            evaluations = _run_evaluations(runs["run_dir"])
            for ax, column in ((curve_ax, "normalized_return"), (bias_ax, "q_bias_normalized_mean")):
                _plot_over_seeds(ax, evaluations, column, f"{algorithm} {config}")
        if not curve_ax.lines:
            plt.close(fig)  # the runs' directories are not on this machine: keep any plot already made
            continue
        curve_ax.set(title=f"{dataset_id}: normalized return", xlabel="offline updates", ylabel="normalized return")
        bias_ax.axhline(0.0, color="grey", lw=0.8)
        bias_ax.set(title=f"{dataset_id}: Q bias (0 = unbiased; > 0 overestimates)", xlabel="offline updates",
                    ylabel="(mean Q̂ − G) / |mean G|")
        for ax in (curve_ax, bias_ax):
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        written.append(_save_figure(fig, out_dir / f"leaderboard_{str(dataset_id).replace('/', '_')}.png"))
    return written


def _run_evaluations(run_dirs) -> list[pd.DataFrame]:
    """Each run's evaluations.csv, for the runs whose folders are on this machine. One row per step, the last: a
    run evaluated at its final step writes that step twice (the loop's evaluation, then the final one the
    leaderboard reports), and a resumed run may repeat one."""
    files = [Path(str(d)) / "evaluations.csv" for d in run_dirs]
    return [read_curve(f) for f in files if f.is_file()]


def read_curve(path: Path) -> pd.DataFrame:
    """A run's curve file (a `step` column and values), one row per step, the last written (a run evaluated at its
    final step writes that step twice, and a resumed run may repeat one), in step order."""
    return pd.read_csv(path).drop_duplicates("step", keep="last").sort_values("step")


def finished_curve(path: Path, last_step: int) -> pd.DataFrame | None:
    """`read_curve` up to `last_step`, or None when the file is not here or the curve does not reach `last_step`
    (still training, or resumed past it by a longer run: not the curve of a result at `last_step`)."""
    path = Path(path)
    if not path.is_file():
        return None
    curve = read_curve(path)
    curve = curve[curve["step"] <= last_step]
    if curve.empty or int(curve["step"].iloc[-1]) != int(last_step):
        return None
    return curve


def gather_curves(rows, previous: pd.DataFrame | None, columns: tuple[str, ...],
                  fresh_curve: Callable[[Any], pd.DataFrame | None], identity: tuple[str, ...] = ()) -> pd.DataFrame:
    """A summary's curves table: per row (with a `run_dir`), `fresh_curve(row)` (read from its folder) when there
    is one, else the row's curve kept in `previous` (an earlier table) if it agrees with the row on `identity`
    (another run once kept in the same folder does not), else nothing; curves in `previous` of run folders no row
    names are kept as they were, so summarising a subset into the same folder loses nothing."""
    kept = dict(tuple(previous.groupby("run_dir"))) if previous is not None and not previous.empty else {}
    pieces = []
    for row in rows:
        if not isinstance(row.run_dir, str):
            continue
        curve = fresh_curve(row)
        if curve is not None:
            pieces.append(curve)
            kept.pop(row.run_dir, None)
        elif row.run_dir in kept and all(str(kept[row.run_dir][name].iloc[0]) == str(getattr(row, name))
                                         for name in identity):
            pieces.append(kept.pop(row.run_dir))
    pieces = [piece for piece in [*pieces, *kept.values()] if not piece.empty]
    if not pieces:
        return pd.DataFrame(columns=list(columns))
    return pd.concat(pieces, ignore_index=True)[list(columns)]


def read_kept_curves(path: Path, columns: tuple[str, ...], what: str,
                     text_columns: tuple[str, ...] = ()) -> pd.DataFrame | None:
    """A curves table a summary keeps beside itself (its run folders are not committed), or None when there is
    none yet; a file with other columns is one OfflineRLError naming it. `text_columns` stay strings (a hash of
    digits is not a number)."""
    path = Path(path)
    if not path.is_file():
        return None
    curves = pd.read_csv(path, dtype=dict.fromkeys(text_columns, str))
    if tuple(curves.columns) != tuple(columns):
        raise OfflineRLError(f"{what} {path}: not an offrl {what} file (its header differs)")
    return curves


def _plot_over_seeds(ax, evaluations: list[pd.DataFrame], column: str, label: str, color=None) -> bool:
    """One line of `column` against update step: the mean over runs (seeds) with a 95% bootstrap band (`color`:
    the line's, else the axes' next). False, drawing nothing, when no run has the column's values (e.g. BC has no
    critic, so no Q bias)."""
    columns = [e.set_index("step")[column] for e in evaluations if column in e]
    table = pd.concat(columns, axis=1) if columns else pd.DataFrame()
    if table.empty or table.isna().all().all():
        return False
    table = table.sort_index()
    low, high = _bootstrap_band(table)
    line, = ax.plot(table.index, table.mean(axis=1), marker=".", label=f"{label} ({table.shape[1]} seeds)",
                    color=color)
    ax.fill_between(table.index, low, high, color=line.get_color(), alpha=0.2)
    return True


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig, path: Path, rect: tuple[float, float, float, float] | None = None) -> Path:
    """PNG through memory and an atomic rename: a reader never sees half a plot. `rect`: the part of the figure
    the axes are laid out in (room left for a figure legend)."""
    fig.tight_layout(rect=rect)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    _pyplot().close(fig)
    atomic_write_bytes(Path(path), buffer.getvalue())
    return path


def _finetune_curves(run_dir: Path) -> tuple[pd.Series, pd.Series, int] | None:
    """One fine-tuning run's normalized return from its offline start through the online phase (x: offline
    updates, then offline updates + online steps) and its Q bias (mean Q̂ − G) over online steps."""
    record, evaluations = run_dir / "finetune.json", run_dir / "evaluations.csv"
    if not (record.is_file() and evaluations.is_file()):
        return None
    online = pd.read_csv(evaluations)
    switch = int(online["offline_steps"].iloc[0])
    offline_evaluations = Path(json.loads(record.read_text())["from_run"]) / "evaluations.csv"
    offline = pd.read_csv(offline_evaluations) if offline_evaluations.is_file() else pd.DataFrame({"step": []})
    offline = offline[offline["step"] < switch]  # the fine-tune's own step-0 evaluation marks the switch
    steps = np.concatenate([offline["step"].to_numpy(), online["step"].to_numpy() + switch])
    scores = np.concatenate([offline.get("normalized_return", pd.Series(dtype=float)).to_numpy(),
                             online["normalized_return"].to_numpy()])
    return (pd.Series(scores, index=steps), pd.Series(online["q_bias_mean"].to_numpy(),
                                                      index=online["step"].to_numpy()), switch)


def plot_finetuning(frame: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Per dataset with phase=online rows: normalized return across the offline → online switch and the
    Q bias during fine-tuning (unnormalized: on a tier whose returns are near 0, dividing by |mean G| blows up),
    per algorithm the mean over seeds with a min-max band. Needs the
    run directories (offline and fine-tune); datasets without them on this machine keep their plot."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    written = []
    online = frame[frame["phase"] == "online"].drop_duplicates("run_dir", keep="last")
    for dataset_id, group in online.groupby("dataset_id"):
        fig, (return_ax, bias_ax) = plt.subplots(1, 2, figsize=(11, 4))
        switches = set()
        for algorithm, runs in group.groupby("algorithm"):
            found = [c for c in (_finetune_curves(Path(str(d))) for d in runs["run_dir"]) if c is not None]
            if not found:
                continue
            switches |= {switch for _, _, switch in found}
            for ax, index in ((return_ax, 0), (bias_ax, 1)):
                table = pd.concat([curves[index] for curves in found], axis=1).sort_index()
                line, = ax.plot(table.index, table.mean(axis=1), marker=".", label=f"{algorithm} ({len(found)} seeds)")
                ax.fill_between(table.index, table.min(axis=1), table.max(axis=1), color=line.get_color(), alpha=0.2)
        if not return_ax.lines:
            plt.close(fig)
            continue
        for switch in switches:
            return_ax.axvline(switch, color="grey", ls="--", lw=0.8)
        bias_ax.axhline(0.0, color="grey", lw=0.8)
        return_ax.set(title=f"{dataset_id}: offline → online (dashed: switch)", ylabel="normalized return",
                      xlabel="offline updates, then + online env steps (UTD 1)")
        bias_ax.set(title=f"{dataset_id}: Q bias while fine-tuning", xlabel="online env steps",
                    ylabel="Q bias: mean Q̂ − G (discounted return)")
        for ax in (return_ax, bias_ax):
            ax.legend(fontsize=8)
        written.append(_save_figure(fig, out_dir / f"finetune_{str(dataset_id).replace('/', '_')}.png"))
    return written
