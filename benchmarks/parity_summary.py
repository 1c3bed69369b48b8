"""`python -m benchmarks.parity_summary RUNS`: offrl's CQL against d3rlpy 2.8.1's at equal hyper-parameters, from
the folders `evaluation/scripts/parity_results.sh` leaves (the other half of issue 15's parity check).

RUNS holds `offrl/` (the run folders of one `offrl sweep --algorithms cql --configs d3rlpy`) and `d3rlpy-seed*/`
(`benchmarks/d3rlpy_parity.py`). Both sides evaluate the deterministic policy with the same episodes, env seeds
and reference scores, so their normalized returns compare directly. Writes into `--out` (default evaluation/):
- `parity.csv`: one row per implementation, seed and evaluation step (the learning curves);
- `parity_summary.md`: per implementation the final and best normalized return (mean, sample std, each seed), and
  the difference of the final means with Welch's 95% CI (scipy). Updates/s stay in the CSV only: these runs share
  the machine with other work, so speed is compared by `make bench-d3rlpy`, not here;
- `parity_<dataset>.png`: both learning curves, mean over seeds with a 95% bootstrap band.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from offrl.errors import OfflineRLError
from offrl.evaluation.leaderboard import _plot_over_seeds, _pyplot, _save_figure
from offrl.fileio import atomic_write_bytes

__all__ = ["read_parity_runs", "parity_table", "write_parity_summary", "main"]

COLUMNS = ["impl", "dataset_id", "seed", "step", "normalized_return", "return_mean", "updates_per_s", "git_commit"]


def _offrl_runs(folder: Path) -> list[pd.DataFrame]:
    frames = []
    for run_dir in sorted(p for p in folder.iterdir() if (p / "final.json").is_file()):
        record = json.loads((run_dir / "run.json").read_text())
        final = json.loads((run_dir / "final.json").read_text())
        curve = pd.read_csv(run_dir / "evaluations.csv").drop_duplicates("step", keep="last")
        frames.append(curve.assign(impl="offrl", dataset_id=record["dataset_id"], seed=record["seed"],
                                   updates_per_s=final.get("updates_per_s"), git_commit=record.get("git_commit")))
    return frames


def _d3rlpy_runs(folders: list[Path]) -> list[pd.DataFrame]:
    frames = []
    for run_dir in folders:
        final = json.loads((run_dir / "final.json").read_text())
        curve = pd.read_csv(run_dir / "evaluations.csv")
        frames.append(curve.assign(impl=final["impl"], dataset_id=final["dataset_id"], seed=final["seed"],
                                   updates_per_s=final["updates_per_s"], git_commit=final.get("git_commit")))
    return frames


def read_parity_runs(runs: Path) -> pd.DataFrame:
    """Every finished run under RUNS (offrl/ and d3rlpy-seed*/) as rows of COLUMNS; unfinished runs are left out."""
    runs = Path(runs)
    offrl_dir = runs / "offrl"
    d3rlpy_dirs = sorted(p for p in runs.glob("d3rlpy-seed*") if (p / "final.json").is_file())
    frames = (_offrl_runs(offrl_dir) if offrl_dir.is_dir() else []) + _d3rlpy_runs(d3rlpy_dirs)
    if not frames:
        raise OfflineRLError(f"parity runs {runs}: no finished offrl/ or d3rlpy-seed*/ run in it")
    table = pd.concat(frames, ignore_index=True)[COLUMNS]
    if table["dataset_id"].nunique() != 1:
        names = ", ".join(table["dataset_id"].unique())
        raise OfflineRLError(f"parity runs {runs}: runs on several datasets ({names})")
    return table


def parity_table(table: pd.DataFrame) -> pd.DataFrame:
    """Per implementation: final (the last step's) and best normalized return over seeds, and updates/s."""
    rows = []
    for impl, runs in table.groupby("impl", sort=True):
        per_seed = runs.sort_values("step").groupby("seed")
        final = per_seed["normalized_return"].last()
        best = per_seed["normalized_return"].max()
        rows.append({"impl": impl, "seeds": len(final), "updates": int(runs["step"].max()),
                     "final_mean": final.mean(), "final_std": final.std(ddof=1) if len(final) > 1 else np.nan,
                     "final_per_seed": " ".join(f"{v:.1f}" for v in final), "best_mean": best.mean(),
                     "updates_per_s": runs.groupby("seed")["updates_per_s"].first().mean()})
    return pd.DataFrame(rows)


def write_parity_summary(table: pd.DataFrame, out: Path) -> list[Path]:
    from scipy.stats import ttest_ind

    out = Path(out)
    summary = parity_table(table)
    dataset_id = table["dataset_id"].iloc[0]
    lines = [f"Parity on {dataset_id}: normalized return of the deterministic policy (sample std over seeds).", "",
             "| implementation | seeds | updates | final (mean ± std) | final per seed | best (mean) |",
             "|---|---|---|---|---|---|"]
    for r in summary.itertuples():
        lines.append(f"| {r.impl} | {r.seeds} | {r.updates} | {r.final_mean:.1f} ± {r.final_std:.1f} | "
                     f"{r.final_per_seed} | {r.best_mean:.1f} |")
    finals = {impl: runs.sort_values("step").groupby("seed")["normalized_return"].last().to_numpy()
              for impl, runs in table.groupby("impl")}
    if len(finals) == 2 and all(len(v) >= 2 for v in finals.values()):
        (name_a, a), (name_b, b) = sorted(finals.items())
        test = ttest_ind(a, b, equal_var=False)
        ci = test.confidence_interval(0.95)
        lines += ["", f"Final mean of {name_a} minus {name_b}: {a.mean() - b.mean():.1f}, Welch 95% CI "
                      f"[{ci.low:.1f}, {ci.high:.1f}], p = {test.pvalue:.2f}."]
    csv_path, md_path = out / "parity.csv", out / "parity_summary.md"
    atomic_write_bytes(csv_path, table.to_csv(index=False).encode())
    atomic_write_bytes(md_path, ("\n".join(lines) + "\n").encode())
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for impl, runs in table.groupby("impl", sort=True):
        _plot_over_seeds(ax, [g[["step", "normalized_return"]] for _, g in runs.groupby("seed")],
                         "normalized_return", impl)
    ax.set(title=f"{dataset_id}: CQL at d3rlpy's defaults", xlabel="updates", ylabel="normalized return")
    ax.legend(fontsize=8)
    plot = _save_figure(fig, out / f"parity_{dataset_id.replace('/', '_')}.png")
    return [csv_path, md_path, plot]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.parity_summary", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, help="the parity runs' folder (offrl/ and d3rlpy-seed*/ inside)")
    parser.add_argument("--out", type=Path, default=Path("evaluation"), help="folder for the summary and plot")
    args = parser.parse_args(argv)
    try:
        for path in write_parity_summary(read_parity_runs(args.runs), args.out):
            print(f"wrote {path}")
    except OfflineRLError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print((args.out / "parity_summary.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
