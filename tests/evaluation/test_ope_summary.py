"""The DOPE-style OPE summary on hand-made rows with known metrics."""

import pandas as pd
import pytest

from offrl.cli import main
from offrl.evaluation.ope_summary import ope_metrics, read_ope_results
from offrl.train.ope import OPE_COLUMNS


def _rows(method, estimates, truths=(0.0, 50.0, 100.0), dataset="hopper/medium-v1"):
    return [{**dict.fromkeys(OPE_COLUMNS), "policy": f"p{i}", "dataset_id": dataset, "method": method, "seed": 0,
             "gamma": 0.99, "updates": 100, "deterministic": False,
             "estimate": e, "true_value": t} for i, (e, t) in enumerate(zip(estimates, truths, strict=True))]


def test_metrics_on_known_rows(tmp_path):
    rows = _rows("fqe", (10.0, 40.0, 120.0)) + _rows("cql-v", (-10.0, 60.0, 30.0))
    path = tmp_path / "ope.csv"
    pd.DataFrame(rows, columns=list(OPE_COLUMNS)).to_csv(path, index=False)
    metrics = ope_metrics(read_ope_results(path)).set_index("method")
    fqe, cql = metrics.loc["fqe"], metrics.loc["cql-v"]
    assert fqe["value_range"] == 100.0
    assert fqe["abs_error_normalized"] == pytest.approx((10 + 10 + 20) / 3 / 100)
    assert fqe["rank_correlation"] == pytest.approx(1.0) and fqe["regret_at_1"] == 0.0
    assert fqe["lower_bound_rate"] == pytest.approx(1 / 3)  # only 40 <= 50
    assert pd.isna(fqe["truth_ci_halfwidth_max"])  # these rows have no CI
    assert cql["rank_correlation"] == pytest.approx(0.5)  # ranks (1, 3, 2) against (1, 2, 3)
    assert cql["regret_at_1"] == pytest.approx(0.5)  # picks p1 (truth 50) instead of p2 (100)
    assert cql["lower_bound_rate"] == pytest.approx(2 / 3)


def test_policies_of_one_true_value_have_no_range_to_normalise_by(tmp_path):
    path = tmp_path / "ope.csv"
    pd.DataFrame(_rows("fqe", (1.0, 2.0), truths=(5.0, 5.0)), columns=list(OPE_COLUMNS)).to_csv(path, index=False)
    metrics = ope_metrics(read_ope_results(path))
    assert metrics[["value_range", "abs_error_normalized", "regret_at_1"]].isna().all().all()
    assert metrics["lower_bound_rate"].item() == 1.0


def test_settings_are_not_pooled_and_the_range_is_shared_by_methods(tmp_path):
    rows = (_rows("cql-v", (10.0, 40.0, 120.0)) + [{**r, "alpha": 5.0} for r in _rows("cql-v", (0.0, 0.0, 0.0))]
            + _rows("fqe", (1.0, 2.0), truths=(0.0, 50.0), dataset="hopper/medium-replay-v1"))
    path = tmp_path / "ope.csv"
    pd.DataFrame(rows, columns=list(OPE_COLUMNS)).to_csv(path, index=False)
    metrics = ope_metrics(read_ope_results(path))
    assert len(metrics) == 3  # α unset, α = 5 and fqe: three settings
    # fqe saw only p0 and p1 (range 50), yet its errors are divided by the env's range, as every method's are
    assert set(metrics["value_range"]) == {100.0}
    from offrl.evaluation.ope_summary import _scatter_labels, _with_group_keys, plot_ope_scatter

    # the scatter names the two cql-v settings apart, and fqe by its method alone
    labels = _scatter_labels(_with_group_keys(read_ope_results(path)))
    assert sorted(labels.values()) == ["cql-v (α -, μ -)", "cql-v (α 5, μ -)", "fqe"]
    assert plot_ope_scatter(read_ope_results(path), tmp_path)[0].read_bytes()[:4] == b"\x89PNG"


def test_cli_writes_the_summary_and_refuses_another_file(tmp_path, capsys):
    path = tmp_path / "ope.csv"
    pd.DataFrame(_rows("fqe", (10.0, 40.0, 120.0)), columns=list(OPE_COLUMNS)).to_csv(path, index=False)
    assert main(["ope-summary", str(path)]) == 0
    assert (tmp_path / "ope_summary.md").read_text().count("| hopper | fqe |") == 1
    assert (tmp_path / "ope_hopper.png").read_bytes()[:4] == b"\x89PNG"
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    assert main(["ope-summary", str(other)]) == 2
    assert "not an offrl OPE results file" in capsys.readouterr().err


def test_curves_measure_the_last_quarters_drift_and_outlive_their_run_folders(tmp_path):
    rows = _rows("fqe", (10.0, 40.0, 120.0))
    for i, row in enumerate(rows):  # p0 still moves by 8 over its last quarter; p1 and p2 have stopped
        run_dir = tmp_path / "runs" / f"p{i}"
        run_dir.mkdir(parents=True)
        row["run_dir"] = str(run_dir)
        at_75 = 2.0 if i == 0 else row["estimate"]
        pd.DataFrame({"step": [25, 50, 75, 100, 100],
                      "estimate": [0.0, 1.0, at_75, row["estimate"], row["estimate"]]}).to_csv(
            run_dir / "estimates.csv", index=False)  # the final step written twice, as a resumed run does
    path = tmp_path / "ope.csv"
    pd.DataFrame(rows, columns=list(OPE_COLUMNS)).to_csv(path, index=False)
    assert main(["ope-summary", str(path)]) == 0
    curves = pd.read_csv(tmp_path / "ope_curves.csv")
    assert len(curves) == 3 * 4 and set(curves["policy"]) == {"p0", "p1", "p2"}
    summary = pd.read_csv(tmp_path / "ope_summary.csv")
    assert summary["late_drift_max"].item() == pytest.approx(8.0 / 100)
    assert (tmp_path / "ope_curves_hopper.png").read_bytes()[:4] == b"\x89PNG"
    # a fresh clone has the committed ope_curves.csv but not the run folders: the curves are kept from it
    for i in range(3):
        for file in (tmp_path / "runs" / f"p{i}").iterdir():
            file.unlink()
    (tmp_path / "ope_curves_hopper.png").unlink()
    assert main(["ope-summary", str(path)]) == 0
    assert pd.read_csv(tmp_path / "ope_curves.csv").equals(curves)
    assert pd.read_csv(tmp_path / "ope_summary.csv")["late_drift_max"].item() == pytest.approx(0.08)
    assert (tmp_path / "ope_curves_hopper.png").is_file()


def test_every_estimate_is_listed_with_its_error_bound_and_drift(tmp_path):
    from offrl.evaluation.ope_summary import ope_estimates, read_ope_curves

    rows = _rows("fqe", (10.0, 40.0, 120.0)) + _rows("cql-v", (-10.0, 60.0, float("nan")))
    for row in rows:
        row.update(true_ci_low=row["true_value"] - 1, true_ci_high=row["true_value"] + 1)
    run_dir = tmp_path / "runs" / "p0-fqe"  # one curve: fqe of p0 moved from 4 to 10 over its last quarter
    run_dir.mkdir(parents=True)
    rows[0]["run_dir"] = str(run_dir)
    pd.DataFrame({"step": [50, 75, 100], "estimate": [0.0, 4.0, 10.0]}).to_csv(run_dir / "estimates.csv", index=False)
    path = tmp_path / "ope.csv"
    pd.DataFrame(rows, columns=list(OPE_COLUMNS)).to_csv(path, index=False)
    assert main(["ope-summary", str(path)]) == 0
    table = ope_estimates(read_ope_results(path), read_ope_curves(tmp_path / "ope_curves.csv"))
    assert pd.read_csv(tmp_path / "ope_summary.csv")["truth_ci_halfwidth_max"].tolist() == [0.01, 0.01]
    assert list(zip(table["policy"], table["method"], strict=True)) == [
        ("p2", "cql-v"), ("p2", "fqe"), ("p1", "cql-v"), ("p1", "fqe"), ("p0", "cql-v"), ("p0", "fqe")]
    by_key = table.set_index(["policy", "method"])
    assert by_key.loc[("p2", "fqe"), "error_normalized"] == pytest.approx(0.2)
    assert by_key.loc[("p1", "cql-v"), "error_normalized"] == pytest.approx(0.1)
    assert by_key.loc[("p1", "cql-v"), "is_lower_bound"] == 0.0 and by_key.loc[("p0", "cql-v"), "is_lower_bound"] == 1.0
    assert pd.isna(by_key.loc[("p2", "cql-v"), "is_lower_bound"])  # a diverged estimate is neither
    assert by_key.loc[("p0", "fqe"), "late_drift"] == pytest.approx(0.06)
    assert by_key["late_drift"].isna().sum() == 5  # the others have no curve
    summary = (tmp_path / "ope_summary.md").read_text()
    assert "| hopper/medium-v1 | p0 | 0.0 [-1.0, 1.0] | fqe | - | - | 100 | 10.0 | +0.100 | no | 0.060 |" in summary
    assert "| p2 | 100.0 [99.0, 101.0] | cql-v | - | - | 100 | non-finite | – | – | – |" in summary


def test_plot_labels_shorten_snapshot_paths_and_keep_shipped_names():
    from offrl.evaluation.ope_summary import short_policy_name

    assert short_policy_name("/w/runs/hc-cql-seed0/snapshots/actor_100000.pt") == "hc-cql-seed0@100000"
    assert short_policy_name("runs/bc/export/policy.pt") == "export/policy.pt"
    assert short_policy_name("runs/evidence/hc-cql-seed0") == "evidence/hc-cql-seed0"  # a relative run folder
    for shipped in ("HalfCheetah-v5/expert", "HalfCheetah-v5/replay/15000", "random"):
        assert short_policy_name(shipped) == shipped


def test_a_subset_or_an_unfinished_folder_never_replaces_kept_curves(tmp_path):
    def estimate_row(name, updates, steps, values):
        run_dir = tmp_path / "runs" / name
        run_dir.mkdir(parents=True)
        pd.DataFrame({"step": steps, "estimate": values}).to_csv(run_dir / "estimates.csv", index=False)
        return {**_rows("fqe", (values[-1],), truths=(len(name),))[0], "policy": name, "run_dir": str(run_dir),
                "updates": updates}

    done = estimate_row("done", 100, [50, 100], [1.0, 2.0])
    longer = estimate_row("longer", 100, [50, 100, 150], [1.0, 3.0, 9.0])  # a later, longer run resumed the folder
    everything, subset = tmp_path / "ope.csv", tmp_path / "subset.csv"
    pd.DataFrame([done, longer], columns=list(OPE_COLUMNS)).to_csv(everything, index=False)
    assert main(["ope-summary", str(everything)]) == 0
    curves = pd.read_csv(tmp_path / "ope_curves.csv")
    assert curves.groupby("policy")["step"].max().to_dict() == {"done": 100, "longer": 100}  # cut at the row's updates
    # the done run is being re-estimated: its folder holds a curve that has not reached the row's updates yet
    pd.DataFrame({"step": [50], "estimate": [7.0]}).to_csv(tmp_path / "runs" / "done" / "estimates.csv", index=False)
    pd.DataFrame([longer], columns=list(OPE_COLUMNS)).to_csv(subset, index=False)
    assert main(["ope-summary", str(subset)]) == 0  # a subset, summarised into the same folder
    kept = pd.read_csv(tmp_path / "ope_curves.csv")
    pd.testing.assert_frame_equal(kept.sort_values(["policy", "step"]).reset_index(drop=True),
                                  curves.sort_values(["policy", "step"]).reset_index(drop=True))
    assert main(["ope-summary", str(everything)]) == 0  # the unfinished folder does not replace the kept curve
    assert pd.read_csv(tmp_path / "ope_curves.csv").query("policy == 'done'")["estimate"].tolist() == [1.0, 2.0]


def test_estimator_configs_are_not_pooled_and_a_policy_estimated_twice_in_one_setting_is_refused(tmp_path, capsys):
    """Rows that differ only in the estimator config's hash (sample counts, rates) are separate settings; the same
    setting holding one policy twice (an example command appended to the benchmark's file) is refused, unless
    --sweep takes one sweep's rows."""
    benchmark = [{**r, "config_hash": "aaa", "sweep_id": "sweep-1"} for r in _rows("fqe", (10.0, 40.0, 120.0))]
    other_config = [{**r, "config_hash": "bbb", "sweep_id": "sweep-1"} for r in _rows("fqe", (0.0, 0.0, 0.0))]
    path = tmp_path / "ope.csv"
    pd.DataFrame(benchmark + other_config, columns=list(OPE_COLUMNS)).to_csv(path, index=False)
    metrics = ope_metrics(read_ope_results(path)).set_index("config_hash")
    assert metrics.loc["aaa", "rank_correlation"] == pytest.approx(1.0)  # not mixed with bbb's flat estimates
    assert metrics.loc["bbb", "estimates"] == 3
    repeat = {**benchmark[0], "estimate": 99.0, "sweep_id": None}
    pd.DataFrame(benchmark + [repeat], columns=list(OPE_COLUMNS)).to_csv(path, index=False)
    assert main(["ope-summary", str(path)]) == 2
    assert "2 rows estimate one policy twice under one setting (e.g. p0 on hopper/medium-v1, fqe" in \
        capsys.readouterr().err
    assert main(["ope-summary", str(path), "--sweep", "sweep-1"]) == 0
    assert len(read_ope_results(path, "sweep-1")) == 3
    assert main(["ope-summary", str(path), "--sweep", "sweep-9"]) == 2
    assert "no row of sweep sweep-9" in capsys.readouterr().err


def test_a_run_folder_counts_once_per_number_of_updates(tmp_path):
    rows = _rows("fqe", (10.0, 40.0, 120.0))
    rows[0]["run_dir"] = "runs/a"
    again = {**rows[0], "estimate": 12.0}  # the same run folder and updates appended twice: the last counts
    path = tmp_path / "ope.csv"
    pd.DataFrame(rows + [again], columns=list(OPE_COLUMNS)).to_csv(path, index=False)
    frame = read_ope_results(path)
    assert len(frame) == 3 and frame.loc[frame["policy"] == "p0", "estimate"].item() == 12.0


def test_non_finite_estimates_ties_and_constant_estimators(tmp_path):
    """A diverged (NaN) estimate is counted and left out of every metric; a tie at the top costs the expected
    regret of a random pick among the tied; an estimator with one value for every policy ranks nothing (ρ 0)."""
    rows = (_rows("fqe", (10.0, float("nan"), 120.0)) + _rows("cql-v", (5.0, 5.0, 5.0))
            + _rows("cql-q", (0.0, 60.0, 60.0)))
    path = tmp_path / "ope.csv"
    pd.DataFrame(rows, columns=list(OPE_COLUMNS)).to_csv(path, index=False)
    metrics = ope_metrics(read_ope_results(path)).set_index("method")
    fqe, flat, tied = metrics.loc["fqe"], metrics.loc["cql-v"], metrics.loc["cql-q"]
    assert fqe["non_finite"] == 1 and fqe["estimates"] == 3
    assert fqe["abs_error_normalized"] == pytest.approx((10 + 20) / 2 / 100)  # p1 left out, not counted as exact
    assert fqe["lower_bound_rate"] == 0.0 and fqe["rank_correlation"] == pytest.approx(1.0)
    assert flat["rank_correlation"] == 0.0
    assert flat["regret_at_1"] == pytest.approx((100 - 50) / 100)  # a random pick of three: expected truth 50
    assert tied["regret_at_1"] == pytest.approx((100 - 75) / 100)  # p1 or p2: expected truth 75
    assert main(["ope-summary", str(path)]) == 0
    assert "3 (1 non-finite, left out)" in (tmp_path / "ope_summary.md").read_text()


def test_per_tier_rows_and_a_resumed_folders_two_budgets_kept_apart(tmp_path):
    rows = _rows("fqe", (10.0, 40.0, 120.0)) + _rows("fqe", (0.0, 50.0, 90.0), dataset="hopper/medium-replay-v1")
    path = tmp_path / "ope.csv"
    pd.DataFrame(rows, columns=list(OPE_COLUMNS)).to_csv(path, index=False)
    per_tier = ope_metrics(read_ope_results(path), by_dataset=True).set_index("dataset_id")
    assert per_tier.loc["hopper/medium-v1", "abs_error_normalized"] == pytest.approx(40 / 3 / 100)
    assert per_tier.loc["hopper/medium-replay-v1", "lower_bound_rate"] == pytest.approx(1.0)
    pooled = ope_metrics(read_ope_results(path)).iloc[0]
    assert pooled["dataset_id"] == "all" and pooled["estimates"] == 6
    # one folder, a 100-update estimate then the same folder resumed to 200: each budget's drift is its own curve
    curves = pd.DataFrame({"run_dir": "r", "env": "hopper", "updates": [100] * 4 + [200] * 8,
                           "step": [25, 50, 75, 100] + [25, 50, 75, 100, 125, 150, 175, 200],
                           "estimate": [0.0, 0.0, 0.0, 1.0] + [0.0] * 5 + [10.0, 30.0, 30.0]})
    from offrl.evaluation.ope_summary import _late_drift

    drift = _late_drift(curves)
    assert drift[("r", 100)] == pytest.approx(1.0) and drift[("r", 200)] == pytest.approx(30.0 - 10.0)
