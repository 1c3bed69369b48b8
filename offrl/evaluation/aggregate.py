"""The evidence grid (issue 15) aggregated honestly: per dataset and across datasets with rliable's definitions
(Agarwal et al. 2021: IQM, mean, median and optimality gap, stratified-bootstrap 95% CIs, performance profiles),
learning curves of normalized return and Q bias, and CORL's published D4RL scores beside ours with the caveats
that make them not like for like.

rliable (pip install 'offrl[eval]') is imported inside the functions that use it, so `import offrl` stays light.
"""

from __future__ import annotations

import importlib
import json
import math
import re
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from offrl.errors import OfflineRLError
from offrl.evaluation.leaderboard import (
    MIN_SEEDS_FOR_CI,
    _plot_over_seeds,
    _pyplot,
    _save_figure,
    finished_curve,
    gather_curves,
    read_curve,
    read_kept_curves,
    stratified_bootstrap_ci,
)
from offrl.fileio import atomic_write_bytes

__all__ = ["CORL_PUBLISHED", "CORL_SOURCE", "evidence_rows", "per_dataset", "differences", "across_datasets",
           "performance_profile_plot", "bias_axis_scale", "collect_evidence_curves", "read_evidence_curves",
           "learning_curve_plots", "corl_caveat", "collect_runs_without_score",
           "corl_comparison_table", "write_evidence"]

CONFIDENCE = 0.95
CI_RESAMPLES = 50_000  # rliable.library.get_interval_estimates' default
PROFILE_RESAMPLES = 2_000  # rliable.library.create_performance_profile's default
PROFILE_THRESHOLDS = 101
# rliable's optimality gap clips scores at γ; its default γ = 1 is for scores in [0, 1], ours are 0-100 (100 = the
# dataset card's expert reference), so the gap is "how far below expert", in normalized-return points.
EXPERT_SCORE = 100.0
# The Q-bias panel switches to a symlog axis (linear within ±1, i.e. within |mean G|) once some curve leaves ±10: an
# unconstrained critic's normalized bias grows to hundreds while a conservative one's stays near -1, and on a linear
# axis the latter is a flat line at zero.
SYMLOG_ABOVE = 10.0

# CORL's published D4RL scores, read (not recalled) from tinkoff-ai/CORL README.md at commit
# 6afec90484bbf47dee05fdf525e26a3ebe028e9b (also 022e449b559c8d9fb0847dc987582068d25b258e), section "D4RL Benchmarks" >
# "Offline" > "Last Scores" > "Gym-MuJoCo", columns BC and CQL; corl-team/CORL (its maintained fork) README.md at
# eeeeef2671235fcce3a3eb255576a207d78840e6 has the same numbers in those columns. What they are, from the same
# repositories: the final evaluation (10 episodes) after max_timesteps: 1000000 (configs/offline/{cql,bc}/*/
# medium*_v2.yaml; BC with frac: 1.0, the whole dataset), mean ± numpy's population std (np.std, ddof 0;
# results/get_offline_tables_and_plots.py) over 4 seeds (4 runs per cell in results/runs_tables/offline_urls.csv),
# on D4RL's -v2 datasets with D4RL's reference scores.
CORL_SOURCE = ("tinkoff-ai/CORL README.md (6afec904; the same in corl-team/CORL), \"D4RL Benchmarks > Offline > "
               "Last Scores > Gym-MuJoCo\"")
CORL_SEEDS = 4
CORL_UPDATES = 1_000_000
CORL_PUBLISHED: dict[str, dict[str, tuple[float, float]]] = {
    "CQL": {
        "halfcheetah-medium-v2": (47.04, 0.22),
        "halfcheetah-medium-replay-v2": (45.04, 0.27),
        "hopper-medium-v2": (59.08, 3.77),
        "hopper-medium-replay-v2": (95.11, 5.27),
        "walker2d-medium-v2": (80.75, 3.28),
        "walker2d-medium-replay-v2": (73.09, 13.22),
    },
    "BC": {
        "halfcheetah-medium-v2": (42.40, 0.19),
        "halfcheetah-medium-replay-v2": (35.66, 2.33),
        "hopper-medium-v2": (53.51, 1.76),
        "hopper-medium-replay-v2": (29.81, 2.07),
        "walker2d-medium-v2": (63.23, 16.24),
        "walker2d-medium-replay-v2": (21.80, 10.15),
    },
}
# offrl's algorithm names -> CORL's column for the same method (SAC-offline and offline Cal-QL have no CORL column).
CORL_ALGORITHM = {"CQL-SAC": "CQL", "BC": "BC"}

SEED_KEY = ["dataset_id", "algorithm", "config_name", "steps", "phase", "seed"]
CELL = ["dataset_id", "algorithm", "config_name", "steps"]


def _rliable(module: str):
    """rliable's `metrics` or `plot_utils` (its `library` needs arch; see `stratified_bootstrap_ci`)."""
    try:
        return importlib.import_module(f"rliable.{module}")
    except ImportError:
        raise OfflineRLError("aggregating the evidence grid needs rliable: pip install 'offrl[eval]'") from None


# rliable's aggregate functions take one (runs, tasks) matrix; over 50,000 bootstrap resamples a Python loop costs
# seconds per cell, so each is also written for the whole stack (resamples, runs, tasks) at once. The tests check
# every one against rliable's function resample by resample.
def _iqm_of_each(stack: np.ndarray) -> np.ndarray:
    from scipy.stats import trim_mean

    return trim_mean(stack.reshape(len(stack), -1), 0.25, axis=1)


def _mean_of_each(stack: np.ndarray) -> np.ndarray:
    return _rliable("metrics").aggregate_mean(np.moveaxis(stack, 0, -1))  # it reduces the run and task axes only


def _median_of_each(stack: np.ndarray) -> np.ndarray:
    return _rliable("metrics").aggregate_median(np.moveaxis(stack, 0, -1))


def _optimality_gap_of_each(stack: np.ndarray) -> np.ndarray:
    return EXPERT_SCORE - np.minimum(stack, EXPERT_SCORE).mean(axis=(1, 2))


def _statistics() -> dict[str, tuple[Callable[[np.ndarray], float], Callable[[np.ndarray], np.ndarray]]]:
    """Name -> (rliable's function on one score matrix, the same statistic of every resample in a stack)."""
    metrics = _rliable("metrics")
    return {"iqm": (metrics.aggregate_iqm, _iqm_of_each),
            "mean": (metrics.aggregate_mean, _mean_of_each),
            "median": (metrics.aggregate_median, _median_of_each),
            "optimality_gap": (partial(metrics.aggregate_optimality_gap, gamma=EXPERT_SCORE), _optimality_gap_of_each)}


def _latest_row_per_seed(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, algorithm, config, budget, phase, seed): the latest appended, so a re-run seed replaces
    its earlier row instead of counting twice. Rows without a final score (no env to evaluate in) are left out."""
    frame = frame.dropna(subset=["final_normalized_return"])
    return frame.drop_duplicates(subset=SEED_KEY, keep="last")


def evidence_rows(frame: pd.DataFrame, steps: int, sweep_ids: Sequence[str] | None = None) -> pd.DataFrame:
    """The offline rows trained for exactly `steps` updates (of the given sweeps, if any): one budget, so scores
    from shorter or longer runs never mix into the grid."""
    rows = frame[(frame["phase"] == "offline") & (frame["steps"] == steps)]
    if sweep_ids is not None:
        tagged = rows["sweep_id"].notna() if "sweep_id" in rows else pd.Series(False, index=rows.index)
        rows = rows[tagged & rows.get("sweep_id", pd.Series(index=rows.index, dtype=object)).astype(str).isin(
            [str(s) for s in sweep_ids])]
    if rows.empty:
        budgets = sorted(int(s) for s in frame.loc[frame["phase"] == "offline", "steps"].dropna().unique())
        which = f" of sweep(s) {', '.join(map(str, sweep_ids))}" if sweep_ids is not None else ""
        raise OfflineRLError(f"steps {steps}: no offline leaderboard rows{which} with that many updates (offline "
                             f"rows have steps {', '.join(map(str, budgets)) or 'none'})")
    return rows


def per_dataset(frame: pd.DataFrame, phase: str = "offline", min_steps: int | None = None) -> pd.DataFrame:
    """One row per (dataset, algorithm, config, steps) over seeds: final normalized return as mean ± sample std
    (ddof 1) and IQM with its 95% stratified-bootstrap CI (one task, the seeds as runs; from MIN_SEEDS_FOR_CI
    seeds on), the mean best score, the mean normalized Q bias, and how many git commits the rows come from (more
    than one: code changed between seeds). Budgets are kept apart; `min_steps` leaves out shorter runs."""
    rows = frame[frame["phase"] == phase]
    if min_steps is not None:
        rows = rows[rows["steps"] >= min_steps]
    rows = _latest_row_per_seed(rows)
    iqm_of_one, iqm_of_each = _statistics()["iqm"]
    table = []
    for key, group in rows.groupby(CELL, sort=True):
        final = group["final_normalized_return"].to_numpy(dtype=float)
        low, high = (stratified_bootstrap_ci(final[:, None], iqm_of_each, CI_RESAMPLES)
                     if len(final) >= MIN_SEEDS_FOR_CI else (math.nan, math.nan))
        table.append({**dict(zip(CELL, key, strict=True)), "seeds": len(final),
                      "commits": int(group["git_commit"].nunique()) if "git_commit" in group else 0,
                      "final_mean": final.mean(), "final_std": final.std(ddof=1) if len(final) > 1 else math.nan,
                      "final_iqm": float(iqm_of_one(final[:, None])), "iqm_ci_low": float(low),
                      "iqm_ci_high": float(high),
                      "best_mean": group["best_normalized_return"].to_numpy(dtype=float).mean(),
                      "q_bias_normalized_mean": _mean_or_nan(group["q_bias_normalized_mean"])})
    return pd.DataFrame(table, columns=[*CELL, "seeds", "commits", "final_mean", "final_std", "final_iqm",
                                        "iqm_ci_low", "iqm_ci_high", "best_mean", "q_bias_normalized_mean"])


# The order "A − B" is read in: the method the grid tests first, its baselines after (then any other, by name).
DIFFERENCE_ORDER = ("CQL-SAC", "Cal-QL", "BC", "SAC-offline")


def differences(frame: pd.DataFrame, phase: str = "offline") -> pd.DataFrame:
    """Per dataset and budget, every pair of cells (algorithm and config) with at least two seeds each: the
    difference of their final normalized returns' means, A − B, with Welch's 95% CI and two-sided p (scipy; no
    equal variances assumed), and what the CI says: "A above B", "A below B" or "not separated". A is the cell
    earlier in DIFFERENCE_ORDER (then by name and config). With 3 seeds a side the CI is wide: "not separated"
    is not "equal". This is what README's "where CQL does not beat BC" is read from."""
    from scipy.stats import ttest_ind

    rows = _latest_row_per_seed(frame[frame["phase"] == phase])
    rank = {name: i for i, name in enumerate(DIFFERENCE_ORDER)}
    table = []
    for (dataset_id, steps), group in rows.groupby(["dataset_id", "steps"], sort=True):
        cells = sorted((((algorithm, config), g["final_normalized_return"].to_numpy(dtype=float))
                        for (algorithm, config), g in group.groupby(["algorithm", "config_name"])),
                       key=lambda cell: (rank.get(cell[0][0], len(rank)), cell[0]))
        for i, ((alg_a, cfg_a), a) in enumerate(cells):
            for (alg_b, cfg_b), b in cells[i + 1:]:
                if len(a) < 2 or len(b) < 2:
                    continue
                if np.ptp(a) == 0 and np.ptp(b) == 0:  # no spread on either side: Welch has no interval to give
                    low = high = p = math.nan
                else:
                    test = ttest_ind(a, b, equal_var=False)
                    ci = test.confidence_interval(0.95)
                    low, high, p = float(ci.low), float(ci.high), float(test.pvalue)
                verdict = ("A above B" if low > 0 else "A below B" if high < 0 else "not separated")
                table.append({"dataset_id": dataset_id, "steps": steps, "a": alg_a, "a_config": cfg_a,
                              "b": alg_b, "b_config": cfg_b, "a_seeds": len(a), "b_seeds": len(b),
                              "difference": float(a.mean() - b.mean()), "ci_low": low, "ci_high": high, "p": p,
                              "verdict": verdict})
    return pd.DataFrame(table, columns=["dataset_id", "steps", "a", "a_config", "b", "b_config", "a_seeds",
                                        "b_seeds", "difference", "ci_low", "ci_high", "p", "verdict"])


def _differences_markdown(table: pd.DataFrame) -> str:
    if table.empty:
        return "(no dataset has two algorithms or configs with two seeds each yet)\n"
    lines = ["| dataset | A | B | seeds (A, B) | A − B, final normalized return [Welch 95% CI] | p | |",
             "|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        words = {"A above B": f"{r.a} above", "A below B": f"{r.a} below", "not separated": "not separated"}
        lines.append(f"| {r.dataset_id} | {r.a} ({r.a_config}) | {r.b} ({r.b_config}) | {r.a_seeds}, {r.b_seeds} | "
                     f"{_with_ci(r.difference, r.ci_low, r.ci_high)} | {'–' if r.p != r.p else f'{r.p:.2g}'} | "
                     f"{words[r.verdict]} |")
    return "\n".join(lines) + "\n"


def _mean_or_nan(values: pd.Series) -> float:
    values = values.to_numpy(dtype=float)
    values = values[np.isfinite(values)]  # BC has no critic, so no Q bias
    return float(values.mean()) if len(values) else math.nan


def _score_matrices(frame: pd.DataFrame, datasets: Sequence[str] | None,
                    algorithms: Sequence[str] | None) -> tuple[list[str], list[dict]]:
    """The datasets, and per (algorithm, config): the final-score matrix (common seeds × datasets) rliable needs.

    rliable's matrix is rectangular, so only the seeds present on every dataset are used; what was left out is
    counted, and a dataset with no run at all leaves the algorithm without a matrix (seeds 0)."""
    rows = _latest_row_per_seed(frame[frame["phase"] == "offline"])
    budgets = sorted(int(s) for s in rows["steps"].unique())
    if len(budgets) > 1:
        raise OfflineRLError(f"the rows hold several training budgets (steps {', '.join(map(str, budgets))}); "
                             "aggregate one at a time, e.g. evidence_rows(frame, steps)")
    datasets = list(datasets) if datasets is not None else sorted(rows["dataset_id"].unique())
    algorithms = list(algorithms) if algorithms is not None else sorted(rows["algorithm"].unique())
    entries = []
    for algorithm in algorithms:
        mine = rows[(rows["algorithm"] == algorithm) & rows["dataset_id"].isin(datasets)]
        for config in sorted(mine["config_name"].unique()) or [""]:
            runs = mine[mine["config_name"] == config]
            seeds_per_dataset = {d: set(runs.loc[runs["dataset_id"] == d, "seed"]) for d in datasets}
            common = sorted(set.intersection(*seeds_per_dataset.values())) if datasets else []
            scores = runs.set_index(["seed", "dataset_id"])["final_normalized_return"]
            matrix = np.array([[scores[(seed, d)] for d in datasets] for seed in common], dtype=float)
            entries.append({"algorithm": algorithm, "config_name": config, "steps": budgets[0] if budgets else 0,
                            "matrix": matrix.reshape(len(common), len(datasets)), "seeds": common,
                            "runs_left_out": len(runs) - len(common) * len(datasets),
                            "missing_datasets": [d for d in datasets if not seeds_per_dataset[d]]})
    return datasets, entries


def across_datasets(frame: pd.DataFrame, datasets: Sequence[str] | None = None,
                    algorithms: Sequence[str] | None = None) -> pd.DataFrame:
    """Per algorithm (and config), rliable's aggregates over all datasets of the seeds × datasets matrix of final
    normalized returns: IQM, mean, median and optimality gap (below the expert's 100), each with its 95%
    stratified-bootstrap CI (from MIN_SEEDS_FOR_CI common seeds on); `seeds` is how many seeds every dataset has
    (the ones used), `runs_left_out` the runs of other seeds. `frame` must hold one training budget (see
    `evidence_rows`)."""
    datasets, entries = _score_matrices(frame, datasets, algorithms)
    statistics = _statistics()
    table = []
    for entry in entries:
        matrix = entry["matrix"]
        row = {"algorithm": entry["algorithm"], "config_name": entry["config_name"], "steps": entry["steps"],
               "datasets": len(datasets), "seeds": len(entry["seeds"]),
               "seeds_used": ",".join(str(int(s)) for s in entry["seeds"]), "runs_left_out": entry["runs_left_out"],
               "missing_datasets": ",".join(entry["missing_datasets"])}
        for name, (of_one, of_each) in statistics.items():
            if len(matrix) == 0:
                row.update({name: math.nan, f"{name}_ci_low": math.nan, f"{name}_ci_high": math.nan})
                continue
            low, high = (stratified_bootstrap_ci(matrix, of_each, CI_RESAMPLES) if len(matrix) >= MIN_SEEDS_FOR_CI
                         else (math.nan, math.nan))
            row.update({name: float(of_one(matrix)), f"{name}_ci_low": float(low), f"{name}_ci_high": float(high)})
        table.append(row)
    return pd.DataFrame(table)


def performance_profile_plot(frame: pd.DataFrame, datasets: Sequence[str] | None, algorithms: Sequence[str] | None,
                             path: Path) -> Path | None:
    """rliable's performance profile (score distribution: the fraction of runs, over all datasets, whose final
    normalized return exceeds τ, for τ from 0 or the lowest score up to the highest) with its 95% stratified-
    bootstrap band, one line per algorithm over its common seeds, drawn with rliable's `plot_performance_profiles`.
    None, writing nothing, when no algorithm has a run on every dataset."""
    datasets, entries = _score_matrices(frame, datasets, algorithms)
    entries = [e for e in entries if len(e["matrix"])]
    if not entries:
        return None
    everything = np.concatenate([e["matrix"].ravel() for e in entries])
    lowest, highest = min(0.0, float(everything.min())), float(everything.max())
    thresholds = np.linspace(lowest, max(highest, lowest + 1.0), PROFILE_THRESHOLDS)

    def fraction_above_each(stack: np.ndarray) -> np.ndarray:
        # rliable.library.score_distributions, for every resample: mean over runs and tasks of (score > τ)
        return (stack[..., None] > thresholds).mean(axis=(1, 2))

    profiles, bands = {}, {}
    for e in entries:
        label = f"{e['algorithm']} {e['config_name']} ({len(e['seeds'])} seeds)"
        profiles[label] = fraction_above_each(e["matrix"][None])[0]
        bands[label] = np.stack(stratified_bootstrap_ci(e["matrix"], fraction_above_each, PROFILE_RESAMPLES))
    plt = _pyplot()  # before rliable's plot_utils imports pyplot: the Agg backend, no display needed
    fig, ax = plt.subplots(figsize=(7, 4.5))
    _rliable("plot_utils").plot_performance_profiles(profiles, thresholds, performance_profile_cis=bands, ax=ax,
                                         xlabel="final normalized return τ (100 = expert reference)",
                                         ylabel="fraction of runs with score > τ", labelsize="medium",
                                         ticklabelsize="medium")
    ax.set_title(f"performance profile over {len(datasets)} datasets, {entries[0]['steps']} updates "
                 "(band: 95% stratified bootstrap)", fontsize="medium")
    ax.legend(fontsize=8)
    return _save_figure(fig, Path(path))


def bias_axis_scale(curves: Sequence[np.ndarray]) -> str:
    """'symlog' when some normalized Q-bias curve leaves ±SYMLOG_ABOVE (values spanning orders of magnitude),
    else 'linear'."""
    values = np.concatenate([np.asarray(c, dtype=float).ravel() for c in curves]) if curves else np.array([])
    values = values[np.isfinite(values)]
    return "symlog" if len(values) and np.abs(values).max() > SYMLOG_ABOVE else "linear"


# --- the runs' curves: kept in evidence_curves.csv beside the summary, since run folders are not committed -------

EVIDENCE_CURVE_COLUMNS = ("run_dir", "run_id", "dataset_id", "algorithm", "config_name", "seed", "steps", "step",
                          "normalized_return", "return_mean", "return_std", "q_bias_mean", "q_bias_normalized_mean")
_CURVE_VALUES = EVIDENCE_CURVE_COLUMNS[EVIDENCE_CURVE_COLUMNS.index("step"):]


def collect_evidence_curves(frame: pd.DataFrame, previous: pd.DataFrame | None = None) -> pd.DataFrame:
    """Normalized return and Q bias along training for every run of `frame` (the latest row per seed), read from its
    folder's evaluations.csv when that is on this machine and reaches the row's budget (cut there), else kept from
    `previous` (an earlier evidence_curves.csv), else left out. Curves in `previous` of run folders that `frame`
    does not name are kept as they were, so summarising a subset of the results into the same folder loses
    nothing."""
    identity = EVIDENCE_CURVE_COLUMNS[:EVIDENCE_CURVE_COLUMNS.index("step")]

    def fresh_curve(row) -> pd.DataFrame | None:
        curve = finished_curve(Path(row.run_dir) / "evaluations.csv", int(row.steps))
        if curve is None:
            return None
        curve = curve.reindex(columns=list(_CURVE_VALUES))  # BC has no critic: its Q-bias columns are empty
        return curve.assign(**{name: getattr(row, name) for name in identity})

    return gather_curves(_latest_row_per_seed(frame).itertuples(index=False), previous, EVIDENCE_CURVE_COLUMNS,
                         fresh_curve, identity=("run_id", "steps"))


SOFT_BACKUP_COLUMNS = ("run_dir", "run_id", "dataset_id", "algorithm", "config_name", "seed", "steps", "gamma",
                       "alpha", "entropy", "return_scale", "soft_offset_normalized", "q_bias_normalized",
                       "reward_only_q_bias_normalized")
SOFT_BACKUP_WINDOW = 0.1  # α and the policy's entropy: means over the last 10% of the updates


def _backs_up_soft_value(record: dict) -> bool:
    """Whether a run's critic regresses onto the soft value r + γ(Q′ − α log π′): CQL's `backup_entropy`, and
    always for SAC (offline SAC, `SAC.fit`, keeps SAC's backup)."""
    config = record.get("config") or {}
    return bool(config["backup_entropy"]) if "backup_entropy" in config else record.get("agent_class") == "SAC"


def collect_soft_backup_offsets(frame: pd.DataFrame, previous: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per run whose critic backs up the soft value, how far that value sits from a reward-only one, to set beside
    its measured Q bias (which compares Q̂ with reward-only discounted returns).

    The soft Q adds the discounted entropy bonuses of the steps after (s, a): α·H·γ/(1 − γ) without termination,
    with H = −E[log π] the policy's entropy (negative for a narrow tanh-Gaussian) and α its temperature, both
    averaged over the last SOFT_BACKUP_WINDOW of the updates (metrics.csv). Over |mean G| (the Q-bias normaliser,
    q_bias_mean / q_bias_normalized_mean of the final evaluation) it is `soft_offset_normalized`, and
    `reward_only_q_bias_normalized` = measured − offset (the bonus is counted in training units, so divided by the
    run's reward scale). Approximate: H is the entropy at dataset states, not along the evaluation rollouts; where
    episodes terminate (Hopper, Walker2d) the sum stops earlier, so the offset there is about an upper bound on
    its size; and G comes from the evaluation's mean-action rollouts while Q̂ values the stochastic policy, a gap
    this leaves in the reward-only bias. Read from run folders when they are here (and reach the row's budget),
    else kept from `previous`, like the curves."""
    from offrl.runs import read_run_record

    identity = SOFT_BACKUP_COLUMNS[:SOFT_BACKUP_COLUMNS.index("gamma")]

    def fresh(row) -> pd.DataFrame | None:
        folder = Path(row.run_dir)
        evaluations = finished_curve(folder / "evaluations.csv", int(row.steps))
        metrics = finished_curve(folder / "metrics.csv", int(row.steps)) if (folder / "run.json").is_file() else None
        if evaluations is None or metrics is None or not {"alpha", "entropy"} <= set(metrics.columns):
            return None
        record = read_run_record(folder)
        if not _backs_up_soft_value(record):
            return None
        gamma = float(record["config"]["gamma"])
        late = metrics[metrics["step"] > (1.0 - SOFT_BACKUP_WINDOW) * int(row.steps)]
        alpha, entropy = float(late["alpha"].mean()), float(late["entropy"].mean())
        final = evaluations.iloc[-1]
        measured = float(final["q_bias_normalized_mean"])
        scale = float(final["q_bias_mean"]) / measured if measured else math.nan
        # the bonus enters the target in training units (rewards × reward_scale); Q̂ is measured in env units
        offset = alpha * entropy * gamma / (1.0 - gamma) / float(record.get("reward_scale") or 1.0) / scale
        values = {"gamma": gamma, "alpha": alpha, "entropy": entropy, "return_scale": scale,
                  "soft_offset_normalized": offset, "q_bias_normalized": measured,
                  "reward_only_q_bias_normalized": measured - offset}
        return pd.DataFrame([{**{name: getattr(row, name) for name in identity}, **values}])

    return gather_curves(_latest_row_per_seed(frame).itertuples(index=False), previous, SOFT_BACKUP_COLUMNS, fresh,
                         identity=("run_id", "steps"))


def _soft_backup_markdown(offsets: pd.DataFrame) -> str:
    lines = ["| dataset | algorithm | seed | α | entropy (nats) | offset α·H·γ/(1−γ), normalized | measured Q bias | "
             "reward-only Q bias |", "|---|---|---|---|---|---|---|---|"]
    for r in offsets.sort_values(["dataset_id", "algorithm", "seed"]).itertuples():
        lines.append(f"| {r.dataset_id} | {r.algorithm} | {r.seed} | {r.alpha:.3g} | {r.entropy:.2f} | "
                     f"{r.soft_offset_normalized:+.2f} | {r.q_bias_normalized:+.2f} | "
                     f"{r.reward_only_q_bias_normalized:+.2f} |")
    return "\n".join(lines) + "\n"


UNSCORED_COLUMNS = ("run_dir", "run_id", "dataset_id", "algorithm", "config_name", "seed", "steps", "git_commit",
                    "status", "stopped_step", "last_logged_step", "last_eval_step", "last_eval_normalized_return",
                    "last_eval_q_bias_normalized", "detail")


def collect_runs_without_score(frame: pd.DataFrame, previous: pd.DataFrame | None = None,
                               scored_dirs: Sequence[str] = ()) -> pd.DataFrame:
    """The runs of `frame`'s result set that have no row: folders beside its rows' run folders (the sweep's --out)
    whose run.json is an offline run at the same commit and budget, or which hold only a sweep trial's error
    (it failed before its run record), and which no leaderboard row names (`frame`'s, or `scored_dirs`: the
    run folders of every row, other sweeps' included). Without this a run that stopped (a critic that overflowed
    to inf, SAC-offline's likely end) would just be missing from every table. Per run: `status` "diverged" (its
    stopped.json, with the step), "failed" (a sweep trial's error.txt), "finished" (a final report but no row),
    else "no score yet" (training, or interrupted), with its last logged step and last evaluation. Kept like the
    curves: runs in `previous` whose folders are not here stay, unless a row now scores them. Folders are
    compared as resolved paths, so `./runs/x` and `runs/x` are one run."""
    from offrl.runs import read_run_record
    from offrl.train.run_folder import TRIAL_ERROR_FILE

    with_dirs = frame[frame["run_dir"].notna()]
    named = {_folder_key(d) for d in [*with_dirs["run_dir"].astype(str), *scored_dirs]}
    commits = set(with_dirs["git_commit"].dropna().astype(str))
    budgets = set(with_dirs["steps"].astype(int))
    found = []
    for root in sorted({Path(_folder_key(d)).parent for d in with_dirs["run_dir"].astype(str)}):
        if not root.is_dir():
            continue
        for folder in sorted(root.iterdir()):
            if _folder_key(folder) in named or not folder.is_dir():
                continue
            if not (folder / "run.json").is_file():
                if (folder / TRIAL_ERROR_FILE).is_file():  # failed before its run record was written
                    found.append(_unscored_run(folder, {"run_id": folder.name}))
                continue
            try:
                record = read_run_record(folder)
            except OfflineRLError:
                continue  # another kind of run, or a damaged record: not this result set's
            if str(record.get("git_commit")) not in commits or int(record.get("updates", -1)) not in budgets:
                continue
            found.append(_unscored_run(folder, record))
    seen = named | {_folder_key(row["run_dir"]) for row in found}
    kept = [] if previous is None else [row for row in previous.to_dict("records")
                                         if _folder_key(row["run_dir"]) not in seen]
    table = pd.DataFrame([*found, *kept], columns=list(UNSCORED_COLUMNS))
    return table.sort_values(["dataset_id", "algorithm", "config_name", "seed", "run_id"], kind="stable",
                             na_position="last").reset_index(drop=True)


def _folder_key(path) -> str:
    return str(Path(path).resolve())


def _unscored_run(folder: Path, record: dict) -> dict:
    from offrl.train.run_folder import STOPPED_FILE, TRIAL_ERROR_FILE

    updates = record.get("updates")
    row = {"run_dir": str(folder), "run_id": record.get("run_id"), "dataset_id": record.get("dataset_id"),
           "algorithm": record.get("algorithm"), "config_name": record.get("config_name"),
           "seed": record.get("seed"), "steps": int(updates) if updates is not None else math.nan,
           "git_commit": record.get("git_commit"), "status": "no score yet", "stopped_step": math.nan,
           "last_logged_step": math.nan, "last_eval_step": math.nan, "last_eval_normalized_return": math.nan,
           "last_eval_q_bias_normalized": math.nan,
           "detail": "training, interrupted, or stopped by an error its folder does not record"}
    if (folder / "metrics.csv").is_file():
        metrics = read_curve(folder / "metrics.csv")
        row["last_logged_step"] = int(metrics["step"].iloc[-1]) if not metrics.empty else math.nan
    if (folder / "evaluations.csv").is_file():
        evaluations = read_curve(folder / "evaluations.csv")
        if not evaluations.empty:
            last = evaluations.iloc[-1]
            row.update(last_eval_step=int(last["step"]),
                       last_eval_normalized_return=float(last.get("normalized_return", math.nan)),
                       last_eval_q_bias_normalized=float(last.get("q_bias_normalized_mean", math.nan)))
    error = folder / TRIAL_ERROR_FILE
    if error.is_file():  # before final.json: a finished trial whose row was refused failed too
        lines = error.read_text(errors="replace").strip().splitlines()
        row.update(status="failed", detail=lines[0] if lines else "(no message)")
    elif (folder / "final.json").is_file():
        row.update(status="finished", detail="its final report exists, but no leaderboard row of it is here")
    elif (folder / STOPPED_FILE).is_file():
        try:
            stopped = json.loads((folder / STOPPED_FILE).read_text())
        except (OSError, ValueError):
            stopped = None
        if not isinstance(stopped, dict):
            stopped = {"error": f"{STOPPED_FILE} unreadable"}
        step = stopped.get("step")
        row.update(status=str(stopped.get("reason", "stopped")),
                   stopped_step=float(step) if isinstance(step, int | float) else math.nan,
                   detail=", ".join(stopped.get("metrics") or []) or str(stopped.get("error", "")))
    return row


def _unscored_markdown(table: pd.DataFrame) -> str:
    lines = ["| dataset | algorithm | config | seed | status | at update | last evaluation: update, normalized return, "
             "Q bias (norm.) | detail |", "|---|---|---|---|---|---|---|---|"]

    def cell(value) -> str:  # a column with a missing value is float: its seeds print as 3, not 3.0
        if value is None or (isinstance(value, float) and not np.isfinite(value)):
            return "–"
        return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)

    for r in table.itertuples():
        at = r.stopped_step if np.isfinite(r.stopped_step) else r.last_logged_step
        evaluation = ("–" if not np.isfinite(r.last_eval_step) else
                      f"{int(r.last_eval_step):,}: {r.last_eval_normalized_return:.1f}, "
                      + (f"{r.last_eval_q_bias_normalized:+.2f}" if np.isfinite(r.last_eval_q_bias_normalized)
                         else "–"))
        budget = f"{int(r.steps):,}" if np.isfinite(r.steps) else "?"
        dataset = cell(r.dataset_id) if isinstance(r.dataset_id, str) else f"(folder {r.run_id})"
        lines.append(f"| {dataset} | {cell(r.algorithm)} | {cell(r.config_name)} | {cell(r.seed)} | {r.status} | "
                     f"{f'{int(at):,}' if np.isfinite(at) else '–'} of {budget} | {evaluation} | "
                     f"{r.detail if isinstance(r.detail, str) else ''} |")
    return "\n".join(lines) + "\n"


def read_evidence_curves(path: Path) -> pd.DataFrame | None:
    """An earlier evidence_curves.csv, or None when there is none."""
    return read_kept_curves(path, EVIDENCE_CURVE_COLUMNS, "evidence curves", text_columns=("run_id",))


def learning_curve_plots(frame: pd.DataFrame, out_dir: Path, curves: pd.DataFrame | None = None) -> list[Path]:
    """Per dataset, `evidence_curves_<dataset>.png`: normalized return and normalized Q bias ((mean Q̂ − G) / |mean G|)
    against updates, one line per algorithm (and config), the mean over seeds with a 95% bootstrap band. The runs are
    `frame`'s (latest row per seed); their curves come from `curves` (`collect_evidence_curves`' table) or, without
    it, from the run folders on this machine. A dataset with no curve gets no figure. The Q-bias axis is symlog when
    curves span orders of magnitude, so an unconstrained critic's growth and a conservative one's small bias are
    both readable."""
    plt = _pyplot()
    written = []
    offline = _latest_row_per_seed(frame[frame["phase"] == "offline"])
    curves = collect_evidence_curves(offline) if curves is None else curves
    # a run is its folder and run_id: a folder started again holds another run, whose kept curve is not this one
    by_run = {key: curve for key, curve in curves.groupby(["run_dir", "run_id"])} if not curves.empty else {}
    for dataset_id, group in offline.groupby("dataset_id", sort=True):
        fig, (return_ax, bias_ax) = plt.subplots(1, 2, figsize=(11, 4))
        for i, ((algorithm, config), runs) in enumerate(group.groupby(["algorithm", "config_name"], sort=True)):
            keys = zip(runs["run_dir"], runs["run_id"], strict=True)
            evaluations = [by_run[key] for key in keys if key in by_run]
            label = f"{algorithm} {config}"
            colour = plt.cm.tab10(i % 10)  # the same in both panels (BC draws no Q-bias line)
            _plot_over_seeds(return_ax, evaluations, "normalized_return", label, colour)
            _plot_over_seeds(bias_ax, evaluations, "q_bias_normalized_mean", label, colour)
        if not return_ax.lines:
            plt.close(fig)
            continue
        scale = bias_axis_scale([line.get_ydata() for line in bias_ax.lines])
        if scale == "symlog":
            bias_ax.set_yscale("symlog", linthresh=1.0)
        bias_ax.axhline(0.0, color="grey", lw=0.8)
        return_ax.set(title=f"{dataset_id}: normalized return", xlabel="offline updates",
                      ylabel="normalized return (100 = expert)")
        bias_ax.set(title=f"{dataset_id}: Q bias (> 0 overestimates)", xlabel="offline updates",
                    ylabel="(mean Q̂ − G) / |mean G|" + (" (symlog, linear within ±1)" if scale == "symlog" else ""))
        for ax in (return_ax, bias_ax):
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        written.append(_save_figure(fig, Path(out_dir) / f"evidence_curves_{str(dataset_id).replace('/', '_')}.png"))
    return written


def _corl_task(dataset_id: str) -> str | None:
    """offrl's 'hopper/medium-replay-v1' -> D4RL's 'hopper-medium-replay-v2' (the task CORL reports)."""
    match = re.fullmatch(r"([a-z0-9]+)/([a-z-]+)-v\d+", str(dataset_id))
    return f"{match[1]}-{match[2]}-v2" if match else None


def _with_ci(point: float, low: float, high: float) -> str:
    if not np.isfinite(point):
        return "–"
    return f"{point:.1f}" + (f" [{low:.1f}, {high:.1f}]" if np.isfinite(low) else "")


def _mean_std(mean: float, std: float) -> str:
    return f"{mean:.1f} ± {std:.1f}" if np.isfinite(std) else f"{mean:.1f}"


def corl_caveat(budgets: Sequence[int]) -> str:
    """Why our scores and CORL's are not like for like, once, for the table's training budget(s)."""
    updates = ", ".join(f"{b:,}" for b in sorted(budgets))
    share = ", ".join(f"{100.0 * b / CORL_UPDATES:.3g}%" for b in sorted(budgets))
    return (f"Not like for like: offrl runs Gymnasium MuJoCo v5 environments on offrl's own datasets, normalized by "
            f"their cards' reference returns (not D4RL's v2 datasets or D4RL's reference scores), for {updates} "
            f"updates ({share} of CORL's {CORL_UPDATES:,}), with different seeds and offrl's configs (the config "
            "column; CORL tunes its own per dataset). The datasets are smaller than D4RL's (its medium tiers hold 1M "
            "transitions, ours 200,000; the medium-replay tiers differ too: each card's `transitions` gives the "
            "count) and come from other behaviour policies, so even the behaviour level differs. CORL: "
            f"{CORL_SOURCE}; last score, mean ± population std (ddof 0) over {CORL_SEEDS} seeds; ours: sample std "
            "(ddof 1).")


def corl_comparison_table(per_dataset_frame: pd.DataFrame) -> str:
    """Markdown: our IQM [95% CI] and mean ± sample std per (dataset, algorithm) beside CORL's published final score
    for the same method on the D4RL task of the same name, the caveats stated once above the table."""
    lines = ["| dataset (offrl) | CORL's D4RL task | algorithm | config | seeds | updates | IQM [95% CI] | "
             "final (mean ± sample std) | CORL (mean ± std, 4 seeds, 1M updates) |",
             "|---|---|---|---|---|---|---|---|---|"]
    budgets = set()
    for r in per_dataset_frame.itertuples():
        corl_algorithm, task = CORL_ALGORITHM.get(r.algorithm), _corl_task(r.dataset_id)
        published = CORL_PUBLISHED.get(corl_algorithm or "", {}).get(task or "")
        if published is None:
            continue
        budgets.add(int(r.steps))
        lines.append(f"| {r.dataset_id} | {task} | {r.algorithm} | {r.config_name} | {r.seeds} | {r.steps} | "
                     f"{_with_ci(r.final_iqm, r.iqm_ci_low, r.iqm_ci_high)} | {_mean_std(r.final_mean, r.final_std)} | "
                     f"{corl_algorithm}: {published[0]:.2f} ± {published[1]:.2f} |")
    if not budgets:
        return ("No dataset and algorithm here has a CORL score (CORL: CQL and BC on the medium and medium-replay "
                "tiers).\n")
    return corl_caveat(sorted(budgets)) + "\n\n" + "\n".join(lines) + "\n"


def _per_dataset_markdown(table: pd.DataFrame) -> str:
    lines = ["| dataset | algorithm | config | seeds | commits | final (mean ± sample std) | IQM [95% CI] | "
             "best (mean) | Q bias (norm.) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        bias = f"{r.q_bias_normalized_mean:.3f}" if np.isfinite(r.q_bias_normalized_mean) else "–"
        lines.append(f"| {r.dataset_id} | {r.algorithm} | {r.config_name} | {r.seeds} | {r.commits} | "
                     f"{_mean_std(r.final_mean, r.final_std)} | {_with_ci(r.final_iqm, r.iqm_ci_low, r.iqm_ci_high)} | "
                     f"{r.best_mean:.1f} | {bias} |")
    return "\n".join(lines) + "\n"


def _across_markdown(table: pd.DataFrame) -> str:
    lines = ["| algorithm | config | datasets | seeds used | runs left out | IQM [95% CI] | mean [95% CI] | "
             "median [95% CI] | optimality gap [95% CI] |", "|---|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        seeds = f"{r.seeds} ({r.seeds_used})" if r.seeds else "0" + (
            f" (no run on {r.missing_datasets})" if r.missing_datasets else "")
        cells = [_with_ci(getattr(r, name), getattr(r, f"{name}_ci_low"), getattr(r, f"{name}_ci_high"))
                 for name in ("iqm", "mean", "median", "optimality_gap")]
        lines.append(f"| {r.algorithm} | {r.config_name} | {r.datasets} | {seeds} | {r.runs_left_out} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _commit_warning(commits: Sequence[str]) -> list[str]:
    """A line for the summary when a commit does not name the code exactly (a result set must)."""
    unclear = [c for c in commits if c == "unknown" or c.endswith("-dirty")]
    if not unclear:
        return []
    return ["", f"**Not one clean commit:** {', '.join(unclear)}: these rows come from code that no commit holds "
                "exactly (a working tree with changes, or no git), so they cannot be reproduced from this "
                "repository's history."]


def write_evidence(frame: pd.DataFrame, out_dir: Path, steps: int, datasets: Sequence[str] | None = None,
                   algorithms: Sequence[str] | None = None, sweep_ids: Sequence[str] | None = None) -> list[Path]:
    """The evidence grid at one budget, written atomically into `out_dir`: evidence_summary.csv (per dataset),
    evidence_across_datasets.csv, evidence_summary.md (both tables and the comparison with CORL), the performance
    profile, the learning curves' plots and their data, evidence_curves.csv (updated from the run folders that
    exist, so the plots can be redrawn without them). `sweep_ids`: only the rows of these sweeps (a result set is
    one sweep; other runs at the same budget, e.g. a parity check's, stay out). A budget with no rows is one
    OfflineRLError, and nothing is written."""
    rows = evidence_rows(frame, steps, sweep_ids)
    if datasets is not None:
        rows = rows[rows["dataset_id"].isin(list(datasets))]
    if algorithms is not None:
        rows = rows[rows["algorithm"].isin(list(algorithms))]
    if rows.empty:
        raise OfflineRLError(f"steps {steps}: none of the offline rows with that many updates is of the datasets "
                             f"{list(datasets) if datasets is not None else 'any'} and algorithms "
                             f"{list(algorithms) if algorithms is not None else 'any'} asked for")
    out_dir = Path(out_dir)
    per = per_dataset(rows)
    pairs = differences(rows)
    across = across_datasets(rows, datasets, algorithms)
    runs = _latest_row_per_seed(rows)
    curves_path = out_dir / "evidence_curves.csv"
    curves = collect_evidence_curves(rows, read_evidence_curves(curves_path))
    offsets_path = out_dir / "evidence_soft_backup.csv"
    offsets = collect_soft_backup_offsets(rows, read_kept_curves(offsets_path, SOFT_BACKUP_COLUMNS, "soft-backup "
                                                                 "offsets", text_columns=("run_id",)))
    unscored_path = out_dir / "evidence_unscored.csv"
    unscored = collect_runs_without_score(rows, read_kept_curves(unscored_path, UNSCORED_COLUMNS, "unscored runs",
                                                                 text_columns=("run_id", "git_commit")),
                                          scored_dirs=frame["run_dir"].dropna().astype(str).tolist())
    failed_early = unscored["git_commit"].isna()  # a trial that failed before its run record: no commit, no budget
    ours = (unscored["steps"].isin(rows["steps"].astype(int))
            & unscored["git_commit"].astype(str).isin(rows["git_commit"].dropna().astype(str)))
    shown = unscored[(failed_early | ours)
                     & (unscored["dataset_id"].isin(list(datasets)) if datasets is not None else True)
                     & (unscored["algorithm"].isin(list(algorithms)) if algorithms is not None else True)]
    known = set(zip(curves["run_dir"], curves["run_id"], strict=True))
    curves_found = sum(key in known for key in zip(runs["run_dir"], runs["run_id"], strict=True))
    written = []
    profile = performance_profile_plot(rows, datasets, algorithms, out_dir / "evidence_performance_profile.png")
    written += [profile] if profile is not None else []
    curve_plots = learning_curve_plots(rows, out_dir, curves)
    written += curve_plots
    commits = sorted(str(c) for c in runs["git_commit"].dropna().unique()) if "git_commit" in runs else []
    sweeps = sorted(str(s) for s in runs["sweep_id"].dropna().unique()) if "sweep_id" in runs else []
    figures = ([f"- performance profile: {profile.name}"] if profile is not None else
               ["- no performance profile: no algorithm has a run on every dataset"])
    figures.append(f"- learning curves ({curves_found} of {len(runs)} runs' curves, kept in {curves_path.name}): "
                   + (", ".join(p.name for p in curve_plots) or "none"))
    markdown = "\n".join([
        f"# Evidence grid: {steps:,} offline updates", "",
        f"{len(runs)} runs (the latest row of each seed): leaderboard rows with phase offline and steps {steps}; "
        f"sweep(s) {', '.join(sweeps) or 'none recorded'}; git commit(s) {', '.join(commits) or 'none recorded'}. "
        "Scores are final normalized returns (100 = the dataset card's expert reference, 0 = its random one). "
        "Statistics are rliable's (Agarwal et al. 2021): IQM = 25% trimmed mean; 95% CIs are percentile stratified "
        f"bootstraps over seeds ({CI_RESAMPLES:,} resamples), given from {MIN_SEEDS_FOR_CI} seeds on (with 2 a "
        "percentile bootstrap returns only their min and max); with 3 seeds the IQM is the mean and a CI is coarse. "
        "Best: each seed's highest evaluation along training (the final one included), averaged over seeds, as "
        "CORL's best score. Seed s is evaluated from the env resets of seeds EVAL_SEED + s + i (i < episodes), so "
        "all algorithms at one seed face the same starts and neighbouring seeds share most of theirs: the seed "
        "spread, and so every std and CI here, is slightly understated.",
        *_commit_warning(commits),
        *(["", f"{len(shown)} more run(s) of this result set have no score (yet): see \"Runs without a score\"."]
          if not shown.empty else []),
        "", "## Per dataset", "", _per_dataset_markdown(per),
        "## Differences, per dataset", "",
        "Every pair of algorithms (and configs) with two or more seeds each on a dataset: the difference of their "
        "final normalized returns' means with Welch's 95% CI (scipy; seeds as samples, no equal variances "
        "assumed). \"Not separated\" means the CI spans 0: with 3 seeds a side that is not evidence of equality. "
        "Kept in evidence_differences.csv.", "", _differences_markdown(pairs),
        "## Across datasets", "",
        "One seeds × datasets matrix per algorithm; rliable needs it rectangular, so only the seeds present on every "
        f"dataset are used (runs of other seeds are counted as left out). Optimality gap: mean shortfall below "
        f"{EXPERT_SCORE:.0f}.", "", _across_markdown(across),
        "## Beside CORL's published D4RL scores", "", corl_comparison_table(per),
        *(["## Runs that back up the soft value", "",
           "Their Q̂ includes the discounted entropy bonuses (SAC's backup), while the Q bias above compares Q̂ with "
           "reward-only returns: the measured bias is off by α·H·γ/(1−γ) (α, H: means over the last "
           f"{SOFT_BACKUP_WINDOW:.0%} of the updates, at dataset states; about an upper bound on the size where "
           "episodes terminate). "
           f"Kept in {offsets_path.name}.", "", _soft_backup_markdown(offsets)] if not offsets.empty else []),
        *(["## Runs without a score", "",
           "Runs of this result set (the folders beside its runs', at the same commit and budget) that have no "
           "leaderboard row, so no table above counts them: a diverged run stopped where its stopped.json says; "
           f"\"no score yet\" is still training or was interrupted. Kept in {unscored_path.name}.", "",
           _unscored_markdown(shown)] if not shown.empty else []),
        "## Figures", "", *figures, ""])
    tables = [("evidence_curves.csv", curves.to_csv(index=False))] if not curves.empty else []
    tables += [(unscored_path.name, unscored.to_csv(index=False))] if not unscored.empty else []
    if unscored.empty:
        unscored_path.unlink(missing_ok=True)  # every run listed before has its row now
    tables += [(offsets_path.name, offsets.to_csv(index=False))] if not offsets.empty else []
    for name, data in (*tables, ("evidence_summary.csv", per.to_csv(index=False, float_format="%.4g")),
                       ("evidence_differences.csv", pairs.to_csv(index=False, float_format="%.4g")),
                       ("evidence_across_datasets.csv", across.to_csv(index=False, float_format="%.4g")),
                       ("evidence_summary.md", markdown)):
        atomic_write_bytes(out_dir / name, data.encode())
        written.append(out_dir / name)
    return written

