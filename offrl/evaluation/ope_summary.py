"""The off-policy evaluation benchmark's summary, DOPE-style (Fu et al. 2021, "Benchmarks for Deep Off-Policy
Evaluation", section 5): per env and method, over a set of target policies evaluated on one or more datasets,
- absolute error: mean |V̂ − V^π|, divided by the range of the policies' true values in that env (the same
  range for every method: it is computed over all rows of the env, γ and policy kind);
- rank correlation: Spearman's ρ between estimates and true values across the policies (scipy), per dataset and
  seed, then averaged;
- regret@1: the best policy's true value minus the true value of the policy with the highest estimate, divided
  by the same range, per dataset and seed, then averaged;
- lower-bound rate: the share of (policy, dataset, seed) estimates at or below the truth;
- drift over the last quarter: the largest |V̂(end) − V̂(¾ of the updates)| over the setting's estimates, divided
  by the same range: whether the budget let the estimates stop moving (their curves are `ope_curves.csv` and
  one plot per env);
- the truth's precision: the widest half-width of the true values' 95% CIs, over the same range, to set beside
  the errors (a truth no sharper than the estimators' errors could not tell them apart).
Rows come from `evaluation/ope.csv` (offrl.train.ope.OPE_COLUMNS), optionally only those of one sweep. A row
repeated for one run folder at one number of updates counts once; estimates are pooled only when everything that
defines an estimator matches (method, α, μ, γ, updates, whether the policies are deterministic, and the hash of
the whole estimator config: sample counts, rates and the rest), each such setting a row of the summary. Two
estimates of one policy on one dataset and seed within a setting (the same command appended twice to the file,
say) are refused, not pooled: each would count twice in the ranking.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from offrl.errors import OfflineRLError
from offrl.evaluation.leaderboard import finished_curve, gather_curves, read_kept_curves
from offrl.fileio import atomic_write_bytes

__all__ = ["read_ope_results", "ope_metrics", "ope_estimates", "collect_ope_curves", "read_ope_curves",
           "write_ope_summary", "plot_ope_scatter", "plot_ope_curves", "short_policy_name", "CURVE_COLUMNS"]


def read_ope_results(path: Path, sweep_id: str | None = None) -> pd.DataFrame:
    """The rows of an OPE results CSV that have a true value (those of `sweep_id` only, if given)."""
    from offrl.train.ope import OPE_COLUMNS

    path = Path(path)
    if not path.is_file():
        raise OfflineRLError(f"OPE results {path}: no such file")
    frame = pd.read_csv(path, dtype={"config_hash": str})  # a hash of digits is not a number
    if tuple(frame.columns) != OPE_COLUMNS:
        raise OfflineRLError(f"OPE results {path}: not an offrl OPE results file (its header differs)")
    if sweep_id is not None:
        frame = frame[frame["sweep_id"] == sweep_id]
        if frame.empty:
            raise OfflineRLError(f"OPE results {path}: no row of sweep {sweep_id}")
    frame = frame[frame["true_value"].notna()].copy()
    frame = frame[~(frame["run_dir"].notna() & frame.duplicated(["run_dir", "updates"], keep="last"))]
    if frame.empty:
        raise OfflineRLError(f"OPE results {path}: no row has a true value to compare with")
    frame["env"] = frame["dataset_id"].str.split("/").str[0]
    repeated = _with_group_keys(frame).duplicated([*SETTING, "policy", "dataset_id", "seed"], keep=False)
    if repeated.any():
        first = frame[repeated].iloc[0]
        raise OfflineRLError(f"OPE results {path}: {int(repeated.sum())} rows estimate one policy twice under one "
                             f"setting (e.g. {first['policy']} on {first['dataset_id']}, {first['method']}, seed "
                             f"{first['seed']}); pass --sweep to take one sweep's rows, or remove the repeats")
    return frame


SETTING = ["env", "method", "alpha", "mu", "gamma", "updates", "deterministic", "config_hash"]


def _with_group_keys(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    for column in SETTING[2:]:  # fqe has no α or μ: a group key may not be NaN
        frame[column] = frame[column].astype(object).where(frame[column].notna(), "-")
    return frame


def _value_ranges(frame: pd.DataFrame) -> dict[tuple, float]:
    """The range of the true values of one env's policies (per γ and policy kind), the same whichever method
    estimates them."""
    per_policy = frame.groupby(["env", "gamma", "deterministic", "policy"])["true_value"].mean()
    ranges = {key: float(truths.max() - truths.min()) for key, truths in per_policy.groupby(level=[0, 1, 2])}
    return {key: value if value > 0 else float("nan") for key, value in ranges.items()}  # one value: no range


# --- the estimates' curves: kept in ope_curves.csv beside the summary, since run folders are not committed ------

CURVE_COLUMNS = ("run_dir", "env", "dataset_id", "policy", "method", "alpha", "mu", "gamma", "deterministic",
                 "config_hash", "seed", "updates", "step", "estimate")


def collect_ope_curves(frame: pd.DataFrame, previous: pd.DataFrame | None = None) -> pd.DataFrame:
    """V̂ along training for every row of `frame` that has a run folder, up to the row's updates: read from the
    folder's `estimates.csv` when it reaches them, else kept from `previous` (an earlier `ope_curves.csv`), else
    left out (a folder still training, or resumed past the row by a longer run, is not the row's curve). Curves in
    `previous` of run folders that `frame` does not name are kept as they were, so summarising a subset of the
    results into the same folder loses nothing."""
    def fresh_curve(row) -> pd.DataFrame | None:
        curve = finished_curve(Path(row.run_dir) / "estimates.csv", int(row.updates))
        if curve is None:
            return None
        return pd.DataFrame({"run_dir": row.run_dir, "env": row.env, "dataset_id": row.dataset_id,
                             "policy": row.policy, "method": row.method, "alpha": row.alpha, "mu": row.mu,
                             "gamma": row.gamma, "deterministic": row.deterministic,
                             "config_hash": row.config_hash, "seed": row.seed,
                             "updates": row.updates, "step": curve["step"].to_numpy(),
                             "estimate": curve["estimate"].to_numpy()})

    return gather_curves(frame.itertuples(index=False), previous, CURVE_COLUMNS, fresh_curve,
                         identity=("policy", "updates", "config_hash"))


def _late_drift(curves: pd.DataFrame) -> pd.Series:
    """Per estimate (run folder and its updates: a folder resumed to a longer budget holds two curves): |V̂ at the
    end − V̂ at the last point at or before ¾ of the updates| (NaN without one)."""
    def drift(curve: pd.DataFrame) -> float:
        curve = curve.sort_values("step")
        earlier = curve[curve["step"] <= 0.75 * float(curve["updates"].iloc[0])]
        if earlier.empty:
            return float("nan")
        return abs(float(curve["estimate"].iloc[-1]) - float(earlier["estimate"].iloc[-1]))

    if curves.empty:
        return pd.Series(dtype=float)
    keyed = curves.assign(_updates=curves["updates"].astype(int))
    return keyed.groupby(["run_dir", "_updates"]).apply(drift, include_groups=False)


def ope_metrics(frame: pd.DataFrame, curves: pd.DataFrame | None = None, by_dataset: bool = False) -> pd.DataFrame:
    """One row per estimator setting (SETTING), the DOPE metrics over every policy, dataset tier and seed of its
    env (`dataset_id` "all"); with `by_dataset`, one row per setting and tier, as DOPE reports them. Given the
    estimates' curves, also how far they still moved over the last quarter of the updates.

    Spearman ρ and regret@1 are computed per (tier, seed) over the policies and then averaged. An estimator whose
    estimates are all equal ranks nothing: its ρ counts as 0 (Spearman's is undefined there), and its regret@1 is
    the expected regret of a uniformly random pick among the tied best (as for any tie at the top). A non-finite
    estimate (a critic that diverged) is counted in `non_finite` and left out of every metric."""
    from scipy.stats import spearmanr

    frame = _with_group_keys(frame)
    ranges = _value_ranges(frame)
    drifts = _late_drift(curves) if curves is not None else pd.Series(dtype=float)
    keys = [*SETTING, "dataset_id"] if by_dataset else SETTING
    rows = []
    for key, group in frame.groupby(keys, sort=True):
        env, method, alpha, mu, gamma, updates, deterministic, config = key[:len(SETTING)]
        value_range = ranges[(env, gamma, deterministic)]
        finite = group[np.isfinite(group["estimate"].to_numpy(dtype=float))]
        correlations, regrets = [], []
        for _, ranked in finite.groupby(["dataset_id", "seed"]):
            if ranked["policy"].nunique() < 2:
                continue
            if ranked["true_value"].nunique() > 1:
                correlations.append(0.0 if ranked["estimate"].nunique() == 1
                                    else float(spearmanr(ranked["estimate"], ranked["true_value"]).statistic))
            chosen = ranked.loc[ranked["estimate"] == ranked["estimate"].max(), "true_value"].mean()
            regrets.append(float(ranked["true_value"].max() - chosen) / value_range)
        rows.append({"env": env, "dataset_id": key[-1] if by_dataset else "all", "method": method, "alpha": alpha,
                     "mu": mu, "gamma": gamma, "updates": updates,
                     "deterministic": deterministic, "config_hash": config,
                     "policies": int(group["policy"].nunique()),
                     "datasets": int(group["dataset_id"].nunique()), "estimates": len(group),
                     "non_finite": len(group) - len(finite), "value_range": value_range,
                     "abs_error_normalized": float((finite["estimate"] - finite["true_value"]).abs().mean()
                                                   / value_range) if len(finite) else float("nan"),
                     "rank_correlation": float(np.mean(correlations)) if correlations else float("nan"),
                     "regret_at_1": float(np.mean(regrets)) if regrets else float("nan"),
                     "lower_bound_rate": float((finite["estimate"] <= finite["true_value"]).mean())
                     if len(finite) else float("nan"),
                     "late_drift_max": _max_drift(drifts, group[["run_dir", "updates"]]) / value_range,
                     "truth_ci_halfwidth_max": float(((group["true_ci_high"] - group["true_ci_low"]) / 2).max())
                     / value_range})
    return pd.DataFrame(rows)


def ope_estimates(frame: pd.DataFrame, curves: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per estimate, what the summary's means are made of: the policy's true value with its CI, the
    estimate, its error over the env's value range, whether it is at or below the truth, and how far it still
    moved over the last quarter of its updates (over the same range; NaN without its curve). Sorted by env, tier,
    true value (highest first) and method, so a policy's estimates sit together."""
    frame = _with_group_keys(frame)
    ranges = _value_ranges(frame)
    drifts = _late_drift(curves) if curves is not None else pd.Series(dtype=float)
    value_range = np.array([ranges[(r.env, r.gamma, r.deterministic)] for r in frame.itertuples()], dtype=float)
    drift = _drift_of_each(drifts, frame)
    estimate = frame["estimate"].to_numpy(dtype=float)
    table = pd.DataFrame({
        "env": frame["env"], "dataset_id": frame["dataset_id"], "policy": frame["policy"],
        "true_value": frame["true_value"], "true_ci_low": frame["true_ci_low"], "true_ci_high": frame["true_ci_high"],
        "method": frame["method"], "alpha": frame["alpha"], "mu": frame["mu"], "updates": frame["updates"],
        "config_hash": frame["config_hash"], "seed": frame["seed"], "estimate": estimate,
        "error_normalized": (estimate - frame["true_value"].to_numpy(dtype=float)) / value_range,
        "is_lower_bound": np.where(np.isfinite(estimate), estimate <= frame["true_value"].to_numpy(dtype=float),
                                   np.nan),
        "late_drift": drift / value_range})
    return table.sort_values(["env", "dataset_id", "true_value", "policy", "method", "seed"],
                             ascending=[True, True, False, True, True, True], kind="stable").reset_index(drop=True)


def _drift_of_each(drifts: pd.Series, estimates: pd.DataFrame) -> np.ndarray:
    """Each estimate's late drift (by its run folder and updates), NaN where its curve is not known."""
    if drifts.empty:
        return np.full(len(estimates), np.nan)
    keys = pd.MultiIndex.from_arrays([estimates["run_dir"], estimates["updates"].astype(int)])
    return drifts.reindex(keys).to_numpy(dtype=float)


def _max_drift(drifts: pd.Series, estimates: pd.DataFrame) -> float:
    known = _drift_of_each(drifts, estimates)
    return float(np.nanmax(known)) if np.isfinite(known).any() else float("nan")


def read_ope_curves(path: Path) -> pd.DataFrame | None:
    return read_kept_curves(path, CURVE_COLUMNS, "OPE curves", text_columns=("config_hash",))


def write_ope_summary(frame: pd.DataFrame, out_dir: Path) -> list[Path]:
    """ope_summary.csv (per env and setting), ope_summary_by_dataset.csv (per tier too), ope_summary.md (both,
    and every estimate), ope_curves.csv (the estimates' curves, updated from the run folders that exist), one
    scatter plot per env (estimate vs truth) and one plot of the curves per env into `out_dir`."""
    out_dir = Path(out_dir)
    curves_path = out_dir / "ope_curves.csv"
    curves = collect_ope_curves(frame, read_ope_curves(curves_path))
    metrics = ope_metrics(frame, curves)
    per_tier = ope_metrics(frame, curves, by_dataset=True)
    lines = ["Over each env's policies, dataset tiers and seeds (ρ and regret@1: per tier and seed, then averaged):",
             "", "| env | method | α | μ | updates | config | policies | datasets | estimates | abs. error / range | "
             "Spearman ρ | regret@1 | lower-bound rate | last-quarter drift / range | truth CI ½-width / range |",
             "|" + "---|" * 15]
    for r in metrics.itertuples():
        lines.append(f"| {r.env} | {r.method} | {r.alpha} | {r.mu} | {r.updates} | {r.config_hash} | {r.policies} | "
                     f"{r.datasets} | {_estimates_cell(r)} | {r.abs_error_normalized:.3f} | {r.rank_correlation:.2f} | "
                     f"{r.regret_at_1:.3f} | {r.lower_bound_rate:.2f} | {r.late_drift_max:.3f} | "
                     f"{r.truth_ci_halfwidth_max:.3f} |")
    lines += ["", "Per dataset tier (DOPE's unit):", "",
              "| env | dataset | method | α | μ | updates | config | policies | estimates | abs. error / range | "
              "Spearman ρ | regret@1 | lower-bound rate | last-quarter drift / range | truth CI ½-width / range |",
              "|" + "---|" * 15]
    for r in per_tier.itertuples():
        lines.append(f"| {r.env} | {r.dataset_id} | {r.method} | {r.alpha} | {r.mu} | {r.updates} | {r.config_hash} | "
                     f"{r.policies} | {_estimates_cell(r)} | {r.abs_error_normalized:.3f} | "
                     f"{r.rank_correlation:.2f} | {r.regret_at_1:.3f} | {r.lower_bound_rate:.2f} | "
                     f"{r.late_drift_max:.3f} | {r.truth_ci_halfwidth_max:.3f} |")
    lines += ["", "Every estimate (error and drift over the env's value range; a policy's true value is the discounted "
              "Monte-Carlo return from the env's resets, with its 95% CI):", "",
              "| env | dataset | policy | true value [95% CI] | method | α | μ | updates | estimate | error / range | "
              "≤ truth | last-quarter drift / range |", "|" + "---|" * 12]
    for r in ope_estimates(frame, curves).itertuples():
        finite = bool(np.isfinite(r.estimate))
        estimate = f"{r.estimate:.1f} | {r.error_normalized:+.3f} | {'yes' if r.is_lower_bound else 'no'}" if finite \
            else "non-finite | – | –"
        lines.append(f"| {r.env} | {r.dataset_id} | {short_policy_name(r.policy)} | {r.true_value:.1f} "
                     f"[{r.true_ci_low:.1f}, {r.true_ci_high:.1f}] | {r.method} | {r.alpha} | {r.mu} | {r.updates} | "
                     f"{estimate} | {'–' if not np.isfinite(r.late_drift) else f'{r.late_drift:.3f}'} |")
    csv_path, md_path = out_dir / "ope_summary.csv", out_dir / "ope_summary.md"
    tier_path = out_dir / "ope_summary_by_dataset.csv"
    atomic_write_bytes(csv_path, metrics.to_csv(index=False).encode())
    atomic_write_bytes(tier_path, per_tier.to_csv(index=False).encode())
    atomic_write_bytes(md_path, ("\n".join(lines) + "\n").encode())
    written = [csv_path, tier_path, md_path]
    if not curves.empty:
        atomic_write_bytes(curves_path, curves.to_csv(index=False).encode())
        written += [curves_path, *plot_ope_curves(curves, _value_ranges(_with_group_keys(frame)), out_dir)]
    return [*written, *plot_ope_scatter(frame, out_dir)]


def _estimates_cell(r) -> str:
    return f"{r.estimates}" + (f" ({r.non_finite} non-finite, left out)" if r.non_finite else "")


def plot_ope_scatter(frame: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Per env: each estimate against its policy's true value, one colour per estimator setting (named by its method
    alone where the method has one), the diagonal drawn (points below it are lower bounds). Non-finite estimates
    are left out (the summary counts them)."""
    from offrl.evaluation.leaderboard import _pyplot, _save_figure

    plt = _pyplot()
    written = []
    finite = _with_group_keys(frame[np.isfinite(frame["estimate"].to_numpy(dtype=float))])
    for env, group in finite.groupby("env", sort=True):
        fig, ax = plt.subplots(figsize=(5.5, 5))
        labels = _scatter_labels(group)
        for key, rows in group.groupby(SETTING[1:], sort=True):
            ax.scatter(rows["true_value"], rows["estimate"], label=labels[key], alpha=0.7, s=18)
        low = float(min(group["true_value"].min(), group["estimate"].min()))
        high = float(max(group["true_value"].max(), group["estimate"].max()))
        ax.plot([low, high], [low, high], color="grey", linewidth=1, linestyle="--", label="estimate = truth")
        ax.set_xlabel("true value (Monte Carlo, discounted)")
        ax.set_ylabel("estimated value V̂(s0)")
        ax.set_title(f"{env}: off-policy estimates vs truth")
        ax.legend(fontsize=8)
        written.append(_save_figure(fig, Path(out_dir) / f"ope_{env}.png"))
    return written


def _scatter_labels(group: pd.DataFrame) -> dict[tuple, str]:
    """A legend label per estimator setting of one env: its method where the method has one setting, else the
    method with the fields that tell its settings apart (α and μ, γ, updates, deterministic π, config hash)."""
    keys = [key for key, _ in group.groupby(SETTING[1:], sort=True)]
    names = {1: "α", 2: "μ", 3: "γ", 4: "updates", 5: "deterministic", 6: "config"}
    labels = {}
    for key in keys:
        siblings = [k for k in keys if k[0] == key[0]]
        differing = [i for i in names if len({k[i] for k in siblings}) > 1]
        if {1, 2} & set(differing):  # α and μ are named together
            differing = sorted({*differing, 1, 2})
        parts = [f"{names[i]} {key[i]:g}" if isinstance(key[i], float) else f"{names[i]} {key[i]}"
                 for i in differing]
        labels[key] = f"{key[0]} ({', '.join(parts)})" if parts else key[0]
    return labels


_SHIPPED_POLICY = re.compile(r"random|[^/]+/[^/]+|[^/]+/replay/\d+")


def short_policy_name(policy: str) -> str:
    """A plot label for a policy SPEC: a shipped name (`random`, `ENV/TIER`, `ENV/replay/STEP`) as it is, a run's
    snapshot `.../RUN/snapshots/actor_STEP.pt` as `RUN@STEP`, any other path as its last two parts."""
    if _SHIPPED_POLICY.fullmatch(policy) and not policy.endswith(".pt") and not policy.startswith((".", "/")):
        return policy
    from offrl.train.run_folder import snapshot_of

    snapshot = snapshot_of(policy)
    if snapshot is not None:
        return f"{snapshot[0].name}@{snapshot[1]}"
    return "/".join(Path(policy).parts[-2:])


def plot_ope_curves(curves: pd.DataFrame, ranges: dict[tuple, float], out_dir: Path) -> list[Path]:
    """Per env, one panel per estimator setting: V̂ along training minus its final value, over the env's value
    range, one line per estimate (colour: policy, line style: dataset). Lines flat at 0 towards the right edge
    mean the budget sufficed."""
    from offrl.evaluation.leaderboard import _pyplot, _save_figure

    plt = _pyplot()
    written = []
    curves = _with_group_keys(curves)
    for env, group in curves.groupby("env", sort=True):
        env_ranges = [r for (e, *_), r in ranges.items() if e == env and np.isfinite(r) and r > 0]
        value_range = max(env_ranges) if env_ranges else 1.0
        settings = list(group.groupby(SETTING[1:], sort=True))
        policies = sorted(group["policy"].unique())
        colours = {policy: plt.cm.tab10(i % 10) for i, policy in enumerate(policies)}
        datasets = sorted(group["dataset_id"].unique())
        styles = {dataset_id: ("-", "--", ":", "-.")[i % 4] for i, dataset_id in enumerate(datasets)}
        # each panel its own y scale: an estimator that never settles would flatten the others' curves
        fig, axes = plt.subplots(1, len(settings), figsize=(4.2 * len(settings), 4.4), squeeze=False)
        for ax, ((method, alpha, mu, gamma, updates, deterministic, config), rows) in zip(axes[0], settings,
                                                                                       strict=True):
            for _, curve in rows.groupby("run_dir", sort=True):  # one line per estimate
                curve = curve.sort_values("step")
                relative = (curve["estimate"] - curve["estimate"].iloc[-1]) / value_range
                ax.plot(curve["step"], relative, linewidth=1, color=colours[curve["policy"].iloc[0]],
                        linestyle=styles[curve["dataset_id"].iloc[0]])
            ax.axhline(0.0, color="grey", linewidth=0.8)
            title = method if alpha == "-" else f"{method} (α {alpha:g}, μ {mu})"
            ax.set_title(f"{title}{', deterministic π' if deterministic is True else ''}\nγ {gamma:g}, {updates} upd., "
                         f"config {config}", fontsize=9)
            ax.set_xlabel("critic updates")
        axes[0][0].set_ylabel("(V̂ − final V̂) / value range")
        handles = [plt.Line2D([], [], color=colours[p], label=short_policy_name(p)) for p in policies]
        handles += [plt.Line2D([], [], color="black", linestyle=styles[d], label=d) for d in datasets]
        fig.legend(handles=handles, fontsize=7, loc="lower center", ncol=min(len(handles), 5),
                   bbox_to_anchor=(0.5, 0.0))
        fig.suptitle(f"{env}: off-policy estimates along training", fontsize=10)
        written.append(_save_figure(fig, Path(out_dir) / f"ope_curves_{env}.png", rect=(0, 0.2, 1, 1)))
    return written
