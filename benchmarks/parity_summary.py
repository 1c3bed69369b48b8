"""`python -m benchmarks.parity_summary RUNS`: offrl's CQL against d3rlpy 2.8.1's at equal hyper-parameters, from
the folders `evaluation/scripts/parity_results.sh` leaves (the other half of issue 15's parity check).

RUNS holds `offrl/` (the run folders of one `offrl sweep --algorithms cql --configs d3rlpy`) and `d3rlpy-seed*/`
(`benchmarks/d3rlpy_parity.py`). Both sides evaluate the deterministic policy with the same episodes, env seeds
and reference scores, so their normalized returns compare directly. Writes into `--out` (default evaluation/):
- `parity.csv`: one row per implementation, seed and evaluation step (the learning curves);
- `parity_summary.md`: per implementation the late normalized return (each seed's mean over its last
  LATE_EVALUATIONS evaluations: one 10-episode evaluation is noisy), the final and best ones and the late
  normalized Q bias (mean, sample std, each seed); then the difference of the late means with Welch's 95% CI and
  an equivalence test (TOST, scipy) against a margin of ±EQUIVALENCE_MARGIN normalized points, declared before
  the runs. With 3 seeds a side, a test that does not reject says nothing either way: the CI is the result.
  Updates/s stay in the CSV only: these runs share the machine with other work, so speed is compared by
  `make bench-d3rlpy`, not here;
- `parity_<dataset>.png`: normalized return and Q bias learning curves, mean over seeds with a 95% bootstrap band.

Both sides must be finished runs of the same dataset bytes, seeds, updates and evaluation episodes, and offrl's
runs of one commit; otherwise it refuses (an unfinished run is named, not silently left out). `--partial`
summarises the runs that finished so far and lists the others by name and step (no comparison until both sides
ran the same seeds). `--earlier-curves` takes the curves of runs whose folders are gone (a machine that did not
come back) from `--out`'s earlier `parity.csv`, which is why it is written and committed as runs finish.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from offrl.errors import OfflineRLError
from offrl.evaluation.leaderboard import _plot_over_seeds, _pyplot, _save_figure, read_curve
from offrl.fileio import atomic_write_bytes

__all__ = ["read_parity_runs", "parity_table", "equivalence", "write_parity_summary", "main"]

COLUMNS = ["impl", "dataset_id", "dataset_sha256", "seed", "step", "eval_episodes", "normalized_return",
           "return_mean", "q_bias_normalized_mean", "updates_per_s", "git_commit"]
LATE_EVALUATIONS = 3  # 80k, 90k and 100k updates at the parity runs' budget
EQUIVALENCE_MARGIN = 5.0  # normalized points: a gap under this is below what seeds already spread a config by


def _unfinished(run_dir: Path) -> OfflineRLError:
    return OfflineRLError(f"parity run {run_dir}: not finished (no final.json); resume it with "
                          "evaluation/scripts/parity_results.sh, or move it out of the folder")


def _last_step(run_dir: Path) -> int | None:
    """The last step an unfinished run logged (training metrics, else evaluations), for the list of unfinished runs."""
    for name in ("metrics.csv", "train_metrics.csv", "evaluations.csv"):
        path = run_dir / name
        if path.is_file():
            try:
                steps = pd.read_csv(path, usecols=["step"])["step"]
            except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
                continue
            if len(steps):
                return int(steps.max())
    return None


def _side(impl: str) -> str:
    """"offrl" or "d3rlpy": an implementation's side, whatever its version string."""
    return str(impl).split()[0]


def _offrl_runs(folder: Path, unfinished: list[tuple[str, int | None, str]] | None = None) -> list[pd.DataFrame]:
    frames = []
    for run_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        if not (run_dir / "final.json").is_file():
            if unfinished is None:
                raise _unfinished(run_dir)
            try:
                seed = int(json.loads((run_dir / "run.json").read_text())["seed"])
            except (OSError, ValueError, KeyError, TypeError):
                seed = None
            unfinished.append(("offrl", seed, f"offrl {run_dir.name} (step {_last_step(run_dir)})"))
            continue
        record = json.loads((run_dir / "run.json").read_text())
        final = json.loads((run_dir / "final.json").read_text())
        curve = read_curve(run_dir / "evaluations.csv")
        frames.append(curve.assign(impl="offrl", dataset_id=record["dataset_id"],
                                   dataset_sha256=record["dataset_sha256"], seed=record["seed"],
                                   eval_episodes=record["eval_episodes"], updates_per_s=final.get("updates_per_s"),
                                   git_commit=record.get("git_commit")))
    return frames


def _d3rlpy_runs(folders: list[Path], unfinished: list[tuple[str, int | None, str]] | None = None
                 ) -> list[pd.DataFrame]:
    frames = []
    for run_dir in folders:
        if not (run_dir / "final.json").is_file():
            if unfinished is None:
                raise _unfinished(run_dir)
            match = re.fullmatch(r"d3rlpy-seed(\d+)", run_dir.name)
            unfinished.append(("d3rlpy", int(match[1]) if match else None,
                               f"d3rlpy {run_dir.name} (step {_last_step(run_dir)})"))
            continue
        final = json.loads((run_dir / "final.json").read_text())
        curve = pd.read_csv(run_dir / "evaluations.csv")
        frames.append(curve.assign(impl=final["impl"], dataset_id=final["dataset_id"],
                                   dataset_sha256=final["dataset_sha256"], seed=final["seed"],
                                   eval_episodes=final["eval_episodes"], updates_per_s=final["updates_per_s"],
                                   git_commit=final.get("git_commit")))
    return frames


def read_parity_runs(runs: Path, kept: pd.DataFrame | None = None, partial: bool = False) -> pd.DataFrame:
    """Every run under RUNS (offrl/ and d3rlpy-seed*/) as rows of COLUMNS, after checking that both sides ran the
    same dataset bytes, seeds, updates and evaluation episodes, and that every run finished. `kept`: an earlier
    parity.csv, whose curves stand in for runs (side, seed) with no folder under RUNS; they are named in
    `table.attrs["kept"]`. `partial`: unfinished runs are left out and named in `table.attrs["unfinished"]`, and
    the sides may have finished different seeds so far."""
    runs = Path(runs)
    offrl_dir = runs / "offrl"
    unfinished: list[tuple[str, int | None, str]] | None = [] if partial else None
    frames = ((_offrl_runs(offrl_dir, unfinished) if offrl_dir.is_dir() else [])
              + _d3rlpy_runs(sorted(runs.glob("d3rlpy-seed*")), unfinished))
    kept_names: list[str] = []
    if kept is not None and not kept.empty:
        # a folder, finished or not, is the run of its side and seed: an earlier curve only stands in for none
        here = {(_side(f["impl"].iloc[0]), int(f["seed"].iloc[0])) for f in frames if not f.empty}
        here |= {(side, seed) for side, seed, _ in unfinished or []}
        kept = kept.assign(seed=kept["seed"].astype(int))
        missing = kept[[(_side(impl), seed) not in here
                        for impl, seed in zip(kept["impl"], kept["seed"], strict=True)]]
        for (impl, seed), group in missing.groupby(["impl", "seed"]):
            frames.append(group)
            kept_names.append(f"{impl} seed {seed}")
    if not frames:
        raise OfflineRLError(f"parity runs {runs}: no offrl/ or d3rlpy-seed*/ run in it")
    table = pd.concat(frames, ignore_index=True).reindex(columns=COLUMNS)
    commits = table.loc[table["impl"] == "offrl", "git_commit"].dropna().unique()
    if len(commits) > 1:
        raise OfflineRLError(f"parity runs {runs}: offrl's runs come from several commits "
                             f"({', '.join(map(str, commits))}); a result set is one command at one commit")
    for column, what in (("dataset_id", "datasets"), ("dataset_sha256", "dataset files (sha256)"),
                         ("eval_episodes", "numbers of evaluation episodes")):
        if table[column].nunique() != 1:
            raise OfflineRLError(f"parity runs {runs}: runs on several {what} "
                                 f"({', '.join(map(str, table[column].unique()))})")
    per_impl = table.groupby("impl")
    seeds = {impl: sorted(runs_.seed.unique().tolist()) for impl, runs_ in per_impl}
    if len({tuple(v) for v in seeds.values()}) != 1 and not partial:
        raise OfflineRLError(f"parity runs {runs}: the sides ran different seeds ({seeds})")
    updates = table.groupby(["impl", "seed"])["step"].max()
    if updates.nunique() != 1:
        raise OfflineRLError(f"parity runs {runs}: the runs end at different updates "
                             f"({', '.join(f'{i} seed {s}: {u}' for (i, s), u in updates.items())})")
    grids = table.groupby(["impl", "seed"])["step"].apply(lambda steps: tuple(sorted(steps.unique())))
    if grids.nunique() != 1:  # the late mean averages the last evaluations: they must be the same steps
        (impl, seed), grid = next(((key, g) for key, g in grids.items() if g != grids.iloc[0]))
        raise OfflineRLError(f"parity runs {runs}: the runs evaluate at different steps ({impl} seed {seed}: "
                             f"{', '.join(map(str, grid))}; {grids.index[0][0]} seed {grids.index[0][1]}: "
                             f"{', '.join(map(str, grids.iloc[0]))})")
    table.attrs["unfinished"] = [text for _, _, text in unfinished or []]
    table.attrs["kept"] = kept_names
    return table


def _late(runs: pd.DataFrame, column: str) -> pd.Series:
    """Per seed, the mean of `column` over its last LATE_EVALUATIONS evaluations."""
    return runs.sort_values("step").groupby("seed")[column].apply(lambda v: v.tail(LATE_EVALUATIONS).mean())


def parity_table(table: pd.DataFrame) -> pd.DataFrame:
    """Per implementation: late, final (the last step's) and best normalized return over seeds, the late
    normalized Q bias, and updates/s."""
    rows = []
    for impl, runs in table.groupby("impl", sort=True):
        per_seed = runs.sort_values("step").groupby("seed")
        late, final, best = _late(runs, "normalized_return"), per_seed["normalized_return"].last(), \
            per_seed["normalized_return"].max()
        bias = _late(runs, "q_bias_normalized_mean")
        rows.append({"impl": impl, "seeds": len(final), "updates": int(runs["step"].max()),
                     "late_mean": late.mean(), "late_std": late.std(ddof=1) if len(late) > 1 else np.nan,
                     "late_per_seed": " ".join(f"{v:.1f}" for v in late),
                     "final_mean": final.mean(), "final_std": final.std(ddof=1) if len(final) > 1 else np.nan,
                     "best_mean": best.mean(), "late_q_bias": bias.mean(),
                     "updates_per_s": runs.groupby("seed")["updates_per_s"].first().mean()})
    return pd.DataFrame(rows)


def equivalence(a: np.ndarray, b: np.ndarray, margin: float) -> dict[str, float]:
    """Welch's comparison of two seed samples: the difference of means, its 95% CI, the two-sided p, and TOST's p
    for |difference| < margin (the larger of the two one-sided Welch tests' p; equivalent at 5% when it is below
    0.05, which is the 90% CI lying inside ±margin)."""
    from scipy.stats import ttest_ind

    test = ttest_ind(a, b, equal_var=False)
    ci = test.confidence_interval(0.95)
    lower = ttest_ind(a + margin, b, equal_var=False, alternative="greater").pvalue  # H0: diff <= -margin
    upper = ttest_ind(a - margin, b, equal_var=False, alternative="less").pvalue  # H0: diff >= +margin
    return {"difference": float(a.mean() - b.mean()), "ci_low": float(ci.low), "ci_high": float(ci.high),
            "p": float(test.pvalue), "tost_p": float(max(lower, upper))}


def write_parity_summary(table: pd.DataFrame, out: Path) -> list[Path]:
    out = Path(out)
    summary = parity_table(table)
    dataset_id = table["dataset_id"].iloc[0]
    lines = [f"Parity on {dataset_id}: normalized return of the deterministic policy and normalized Q bias; "
             f"late = each seed's mean over its last {LATE_EVALUATIONS} evaluations; sample std over seeds.", "",
             "| implementation | seeds | updates | late return (mean ± std) | late per seed | final (mean ± std) | "
             "best (mean) | late Q bias |",
             "|---|---|---|---|---|---|---|---|"]
    for r in summary.itertuples():
        lines.append(f"| {r.impl} | {r.seeds} | {r.updates} | {r.late_mean:.1f} ± {r.late_std:.1f} | "
                     f"{r.late_per_seed} | {r.final_mean:.1f} ± {r.final_std:.1f} | {r.best_mean:.1f} | "
                     f"{r.late_q_bias:.3f} |")
    if table.attrs.get("kept"):
        lines += ["", "Curves taken from the earlier parity.csv (their run folders are gone): "
                      f"{'; '.join(table.attrs['kept'])}."]
    unfinished = table.attrs.get("unfinished", [])
    if unfinished:
        lines += ["", f"Not finished yet, so not in the table: {'; '.join(unfinished)}."]
    seeds = {impl: tuple(sorted(runs["seed"].unique())) for impl, runs in table.groupby("impl")}
    late = {impl: _late(runs, "normalized_return").to_numpy() for impl, runs in table.groupby("impl")}
    if len(late) == 2 and len(set(seeds.values())) > 1:
        lines += ["", "No comparison yet: the sides have finished different seeds "
                      f"({'; '.join(f'{impl} {list(map(int, s))}' for impl, s in sorted(seeds.items()))})."]
    elif len(late) == 2 and all(len(v) >= 2 for v in late.values()):
        (name_a, a), (name_b, b) = sorted(late.items())
        result = equivalence(a, b, EQUIVALENCE_MARGIN)
        verdict = ("equivalent within" if result["tost_p"] < 0.05 else "not shown equivalent within")
        lines += ["", f"Late mean of {name_a} minus {name_b}: {result['difference']:.1f}, Welch 95% CI "
                      f"[{result['ci_low']:.1f}, {result['ci_high']:.1f}], p = {result['p']:.2f}; TOST p = "
                      f"{result['tost_p']:.2f}: {verdict} ±{EQUIVALENCE_MARGIN:g} normalized points."]
    csv_path, md_path = out / "parity.csv", out / "parity_summary.md"
    atomic_write_bytes(csv_path, table.to_csv(index=False).encode())
    atomic_write_bytes(md_path, ("\n".join(lines) + "\n").encode())
    plt = _pyplot()
    fig, (return_ax, bias_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for impl, runs in table.groupby("impl", sort=True):
        seeds = [g[["step", "normalized_return", "q_bias_normalized_mean"]] for _, g in runs.groupby("seed")]
        _plot_over_seeds(return_ax, seeds, "normalized_return", impl)
        _plot_over_seeds(bias_ax, seeds, "q_bias_normalized_mean", impl)
    return_ax.set(title=f"{dataset_id}: CQL at d3rlpy's defaults", xlabel="updates", ylabel="normalized return")
    bias_ax.axhline(0.0, color="grey", lw=0.8)
    bias_ax.set(title="Q bias (0 = unbiased)", xlabel="updates", ylabel="(mean Q̂ − G) / |mean G|")
    for ax in (return_ax, bias_ax):
        ax.legend(fontsize=8)
    plot = _save_figure(fig, out / f"parity_{dataset_id.replace('/', '_')}.png")
    return [csv_path, md_path, plot]


def _read_kept(path: Path) -> pd.DataFrame | None:
    """An earlier parity.csv (the curves of runs whose folders may be gone), or None when there is none."""
    if not path.is_file():
        return None
    kept = pd.read_csv(path, dtype={"impl": str, "dataset_id": str, "dataset_sha256": str, "git_commit": str})
    missing = sorted(set(COLUMNS) - set(kept.columns))
    if missing:
        raise OfflineRLError(f"{path}: not a parity.csv (no column(s) {', '.join(missing)})")
    return kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.parity_summary", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, help="the parity runs' folder (offrl/ and d3rlpy-seed*/ inside)")
    parser.add_argument("--out", type=Path, default=Path("evaluation"), help="folder for the summary and plot")
    parser.add_argument("--partial", action="store_true",
                        help="summarise the runs finished so far and name the others (default: refuse unfinished)")
    parser.add_argument("--earlier-curves", action="store_true",
                        help="take, from OUT/parity.csv, the curves of runs with no folder under RUNS (their machine "
                             "is gone); the summary names them (default: only the folders)")
    args = parser.parse_args(argv)
    try:
        kept = _read_kept(args.out / "parity.csv") if args.earlier_curves else None
        for path in write_parity_summary(read_parity_runs(args.runs, kept, args.partial), args.out):
            print(f"wrote {path}")
    except OfflineRLError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print((args.out / "parity_summary.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
