"""The off-policy evaluation benchmark's summary, DOPE-style (Fu et al. 2021, "Benchmarks for Deep Off-Policy
Evaluation", section 5): per env and method, over a set of target policies evaluated on one or more datasets,
- absolute error: mean |V̂ − V^π|, divided by the range of the policies' true values in that env (the same
  range for every method: it is computed over all rows of the env, γ and policy kind);
- rank correlation: Spearman's ρ between estimates and true values across the policies (scipy), per dataset and
  seed, then averaged;
- regret@1: the best policy's true value minus the true value of the policy with the highest estimate, divided
  by the same range, per dataset and seed, then averaged;
- lower-bound rate: the share of (policy, dataset, seed) estimates at or below the truth.
Rows come from `evaluation/ope.csv` (offrl.train.ope.OPE_COLUMNS). A row repeated for one run folder counts
once; estimates are pooled only when everything that defines an estimator matches (method, α, μ, γ, updates and
whether the policies are deterministic), each such setting a row of the summary.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from offrl.errors import OfflineRLError
from offrl.fileio import atomic_write_bytes

__all__ = ["read_ope_results", "ope_metrics", "write_ope_summary", "plot_ope_scatter"]


def read_ope_results(path: Path) -> pd.DataFrame:
    from offrl.train.ope import OPE_COLUMNS

    path = Path(path)
    if not path.is_file():
        raise OfflineRLError(f"OPE results {path}: no such file")
    frame = pd.read_csv(path)
    if tuple(frame.columns) != OPE_COLUMNS:
        raise OfflineRLError(f"OPE results {path}: not an offrl OPE results file (its header differs)")
    frame = frame[frame["true_value"].notna()].copy()
    frame = frame[~(frame["run_dir"].notna() & frame.duplicated("run_dir", keep="last"))]
    if frame.empty:
        raise OfflineRLError(f"OPE results {path}: no row has a true value to compare with")
    frame["env"] = frame["dataset_id"].str.split("/").str[0]
    return frame


SETTING = ["env", "method", "alpha", "mu", "gamma", "updates", "deterministic"]


def ope_metrics(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per estimator setting (SETTING): the DOPE metrics over every policy, dataset and seed of its env."""
    from scipy.stats import spearmanr

    frame = frame.copy()
    for column in SETTING[2:]:  # fqe has no α or μ: a group key may not be NaN
        frame[column] = frame[column].astype(object).where(frame[column].notna(), "-")
    # the value range of the policies of one env (γ, policy kind), the same whichever method estimates them
    per_policy = frame.groupby(["env", "gamma", "deterministic", "policy"])["true_value"].mean()
    ranges = {key: float(truths.max() - truths.min()) if len(truths) > 1 else float("nan")
              for key, truths in per_policy.groupby(level=[0, 1, 2])}
    rows = []
    for setting, group in frame.groupby(SETTING, sort=True):
        env, method, alpha, mu, gamma, updates, deterministic = setting
        value_range = ranges[(env, gamma, deterministic)]
        correlations, regrets = [], []
        for _, ranked in group.groupby(["dataset_id", "seed"]):
            if ranked["policy"].nunique() < 2:
                continue
            if ranked["estimate"].nunique() > 1 and ranked["true_value"].nunique() > 1:
                correlations.append(float(spearmanr(ranked["estimate"], ranked["true_value"]).statistic))
            chosen = ranked.loc[ranked["estimate"].idxmax(), "true_value"]
            regrets.append(float(ranked["true_value"].max() - chosen) / value_range)
        rows.append({"env": env, "method": method, "alpha": alpha, "mu": mu, "gamma": gamma, "updates": updates,
                     "deterministic": deterministic, "policies": int(group["policy"].nunique()),
                     "datasets": int(group["dataset_id"].nunique()), "estimates": len(group),
                     "value_range": value_range,
                     "abs_error_normalized": float((group["estimate"] - group["true_value"]).abs().mean()
                                                   / value_range),
                     "rank_correlation": float(np.mean(correlations)) if correlations else float("nan"),
                     "regret_at_1": float(np.mean(regrets)) if regrets else float("nan"),
                     "lower_bound_rate": float((group["estimate"] <= group["true_value"]).mean())})
    return pd.DataFrame(rows)


def write_ope_summary(frame: pd.DataFrame, out_dir: Path) -> list[Path]:
    """ope_summary.csv, ope_summary.md and one scatter plot per env (estimate vs truth) into `out_dir`."""
    out_dir = Path(out_dir)
    metrics = ope_metrics(frame)
    lines = ["| env | method | α | μ | updates | policies | datasets | estimates | abs. error / range | Spearman ρ | "
             "regret@1 | lower-bound rate |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in metrics.itertuples():
        lines.append(f"| {r.env} | {r.method} | {r.alpha} | {r.mu} | {r.updates} | {r.policies} | {r.datasets} | "
                     f"{r.estimates} | "
                     f"{r.abs_error_normalized:.3f} | {r.rank_correlation:.2f} | {r.regret_at_1:.3f} | "
                     f"{r.lower_bound_rate:.2f} |")
    csv_path, md_path = out_dir / "ope_summary.csv", out_dir / "ope_summary.md"
    atomic_write_bytes(csv_path, metrics.to_csv(index=False).encode())
    atomic_write_bytes(md_path, ("\n".join(lines) + "\n").encode())
    return [csv_path, md_path, *plot_ope_scatter(frame, out_dir)]


def plot_ope_scatter(frame: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Per env: each estimate against its policy's true value, one colour per method, the diagonal drawn (points
    below it are lower bounds)."""
    from offrl.evaluation.leaderboard import _pyplot, _save_figure

    plt = _pyplot()
    written = []
    for env, group in frame.groupby("env", sort=True):
        fig, ax = plt.subplots(figsize=(5.5, 5))
        for method, rows in group.groupby("method", sort=True):
            ax.scatter(rows["true_value"], rows["estimate"], label=method, alpha=0.7, s=18)
        low = float(min(group["true_value"].min(), group["estimate"].min()))
        high = float(max(group["true_value"].max(), group["estimate"].max()))
        ax.plot([low, high], [low, high], color="grey", linewidth=1, linestyle="--", label="estimate = truth")
        ax.set_xlabel("true value (Monte Carlo, discounted)")
        ax.set_ylabel("estimated value V̂(s0)")
        ax.set_title(f"{env}: off-policy estimates vs truth")
        ax.legend(fontsize=8)
        written.append(_save_figure(fig, Path(out_dir) / f"ope_{env}.png"))
    return written
