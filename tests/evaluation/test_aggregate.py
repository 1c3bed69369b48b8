import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import trim_mean

from offrl.cli import main
from offrl.errors import OfflineRLError, first_line
from offrl.evaluation.aggregate import (
    CORL_PUBLISHED,
    _statistics,
    across_datasets,
    bias_axis_scale,
    collect_evidence_curves,
    corl_comparison_table,
    differences,
    evidence_rows,
    learning_curve_plots,
    per_dataset,
    performance_profile_plot,
    read_evidence_curves,
    write_evidence,
)
from offrl.evaluation.leaderboard import append_row, iqm, read_leaderboard, stratified_bootstrap_ci

PNG_HEADER = b"\x89PNG\r\n\x1a\n"
DATASETS = ["halfcheetah/medium-v1", "hopper/medium-replay-v1", "walker2d/medium-v1"]
BASE_SCORE = {"CQL-SAC": 50.0, "SAC-offline": 5.0, "BC": 40.0}
STEPS = 30_000


def _final(algorithm: str, dataset: str, seed: int) -> float:
    return BASE_SCORE[algorithm] + 10.0 * DATASETS.index(dataset) + 2.0 * seed


def _grid(tmp_path, seeds=(0, 1, 2), skip=()):
    """A leaderboard of 3 datasets x 3 algorithms x seeds at STEPS updates, each run with an evaluations.csv of
    3 evaluation steps (the last written twice, as the loop's and the final evaluation)."""
    path = tmp_path / "evaluation" / "leaderboard.csv"
    bias_curves = {"CQL-SAC": [-0.5, -0.8, -0.9, -0.9], "SAC-offline": [5.0, 80.0, 700.0, 900.0],
                   "BC": [math.nan] * 4}
    for dataset in DATASETS:
        for algorithm in BASE_SCORE:
            for seed in seeds:
                if (algorithm, dataset, seed) in skip:
                    continue
                final = _final(algorithm, dataset, seed)
                run_dir = tmp_path / "runs" / f"{dataset.replace('/', '-')}-{algorithm}-s{seed}"
                run_dir.mkdir(parents=True)
                pd.DataFrame({"step": [10_000, 20_000, STEPS, STEPS],
                              "normalized_return": [final / 3, final / 2, final - 1, final],
                              "q_bias_normalized_mean": bias_curves[algorithm]}).to_csv(
                    run_dir / "evaluations.csv", index=False)
                bias = bias_curves[algorithm][-1]
                append_row(path, {"run_id": run_dir.name, "phase": "offline", "online_steps": 0,
                                  "dataset_id": dataset, "algorithm": algorithm, "config_name": "fast", "seed": seed,
                                  "steps": STEPS, "final_normalized_return": final,
                                  "best_normalized_return": final + 3.0,
                                  "q_bias_normalized_mean": None if math.isnan(bias) else bias,
                                  "run_dir": str(run_dir), "git_commit": "abc123", "sweep_id": "sweep-test"})
    return path


def _cell(finals, dataset="halfcheetah/medium-v1", algorithm="CQL-SAC", steps=STEPS) -> pd.DataFrame:
    return pd.DataFrame({"phase": "offline", "dataset_id": dataset, "algorithm": algorithm, "config_name": "fast",
                         "steps": steps, "seed": range(len(finals)), "final_normalized_return": finals,
                         "best_normalized_return": np.asarray(finals) + 1.0, "q_bias_normalized_mean": 0.2,
                         "git_commit": "abc123"})


def test_iqm_is_the_25_percent_trimmed_mean_and_matches_rliable():
    from rliable import metrics

    finals = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 100.0]
    row = per_dataset(_cell(finals)).iloc[0]
    assert row["final_iqm"] == pytest.approx(trim_mean(finals, 0.25)) == pytest.approx(4.5)  # the middle four
    assert row["final_mean"] == pytest.approx(16.0) and row["final_std"] == pytest.approx(np.std(finals, ddof=1))
    assert row["best_mean"] == pytest.approx(17.0) and row["seeds"] == 8 and row["commits"] == 1
    rng = np.random.default_rng(0)
    for size in range(1, 13):  # the leaderboard's numpy iqm is rliable's definition at every size
        values = rng.normal(50, 20, size)
        assert iqm(values) == pytest.approx(metrics.aggregate_iqm(values[:, None]))


def test_the_ci_contains_the_iqm_and_narrows_with_more_seeds():
    rng = np.random.default_rng(3)
    few, many = per_dataset(_cell(rng.normal(50, 10, 4))).iloc[0], per_dataset(_cell(rng.normal(50, 10, 32))).iloc[0]
    for row in (few, many):
        assert row["iqm_ci_low"] < row["final_iqm"] < row["iqm_ci_high"]
    assert many["iqm_ci_high"] - many["iqm_ci_low"] < 0.6 * (few["iqm_ci_high"] - few["iqm_ci_low"])
    assert math.isnan(per_dataset(_cell([42.0])).iloc[0]["iqm_ci_low"])  # one seed: nothing to resample
    assert per_dataset(_cell([42.0])).iloc[0]["final_iqm"] == 42.0


def test_per_dataset_keeps_budgets_apart_and_counts_a_rerun_seed_once():
    frame = pd.concat([_cell([10.0, 20.0]), _cell([99.0], steps=5_000), _cell([30.0])])  # seed 0 re-run: 30 replaces 10
    table = per_dataset(frame).set_index("steps")
    assert table.loc[STEPS, "seeds"] == 2 and table.loc[STEPS, "final_mean"] == pytest.approx(25.0)
    assert table.loc[5_000, "final_mean"] == 99.0
    assert list(per_dataset(frame, min_steps=10_000)["steps"]) == [STEPS]


def test_batched_statistics_are_rliables_functions_resample_by_resample():
    stack = np.random.default_rng(1).normal(60, 40, size=(25, 3, 4))
    for name, (of_one, of_each) in _statistics().items():
        assert of_each(stack) == pytest.approx([of_one(matrix) for matrix in stack]), name


def test_the_stratified_bootstrap_resamples_runs_within_each_task():
    scores = np.array([[0.0, 100.0], [0.0, 100.0], [0.0, 100.0]])  # tasks never mix: every resample keeps both
    low, high = stratified_bootstrap_ci(scores, lambda stack: stack.mean(axis=1), resamples=500)
    assert list(low) == list(high) == [0.0, 100.0]


def _rliable_library():
    try:
        from rliable import library

        library.get_interval_estimates({"a": np.ones((2, 1))}, lambda s: np.array([s.mean()]), reps=10)
    except Exception as exc:  # noqa: BLE001 - arch < 8 fails to import under pandas 3; arch 8 refuses random_state
        pytest.skip(f"rliable.library does not run here ({type(exc).__name__}: {first_line(exc)})")
    return library


def test_the_stratified_bootstrap_agrees_with_rliables_where_rliable_runs():
    library = _rliable_library()
    scores = np.random.default_rng(2).normal(60, 25, size=(5, 3))
    for name, (of_one, of_each) in _statistics().items():
        np.random.seed(0)  # rliable draws its resamples from numpy's global generator
        _, interval = library.get_interval_estimates({"a": scores}, lambda s, f=of_one: np.array([f(s)]),
                                                      reps=20_000)
        low, high = stratified_bootstrap_ci(scores, of_each, 20_000)
        width = interval["a"][1, 0] - interval["a"][0, 0]
        assert abs(low - interval["a"][0, 0]) < 0.06 * width and abs(high - interval["a"][1, 0]) < 0.06 * width, name


def test_across_datasets_uses_the_seeds_every_dataset_has(tmp_path):
    from rliable import metrics

    skip = {("BC", "hopper/medium-replay-v1", 2)} | {("SAC-offline", "walker2d/medium-v1", s) for s in range(3)}
    rows = evidence_rows(read_leaderboard(_grid(tmp_path, skip=skip)), STEPS)
    table = across_datasets(rows, DATASETS, ["CQL-SAC", "BC", "SAC-offline"]).set_index("algorithm")
    assert table.loc["CQL-SAC", "seeds"] == 3 and table.loc["CQL-SAC", "runs_left_out"] == 0
    expected = np.array([[_final("CQL-SAC", d, s) for d in DATASETS] for s in range(3)])
    assert table.loc["CQL-SAC", "iqm"] == pytest.approx(metrics.aggregate_iqm(expected))
    assert table.loc["CQL-SAC", "mean"] == pytest.approx(expected.mean())
    assert table.loc["CQL-SAC", "optimality_gap"] == pytest.approx(100.0 - expected.mean())
    assert table.loc["CQL-SAC", "iqm_ci_low"] < table.loc["CQL-SAC", "iqm"] < table.loc["CQL-SAC", "iqm_ci_high"]
    # BC lacks seed 2 on hopper: seeds 0 and 1 everywhere, the two other seed-2 runs left out
    assert table.loc["BC", "seeds"] == 2 and table.loc["BC", "seeds_used"] == "0,1"
    assert table.loc["BC", "runs_left_out"] == 2
    bc = np.array([[_final("BC", d, s) for d in DATASETS] for s in range(2)])
    assert table.loc["BC", "mean"] == pytest.approx(bc.mean())
    # SAC-offline has no walker2d run: no matrix, said so
    assert table.loc["SAC-offline", "seeds"] == 0 and table.loc["SAC-offline", "missing_datasets"] == DATASETS[2]
    assert math.isnan(table.loc["SAC-offline", "iqm"])


def test_across_datasets_refuses_rows_of_several_budgets():
    frame = pd.concat([_cell([10.0, 20.0]), _cell([30.0], steps=5_000)])
    with pytest.raises(OfflineRLError, match="several training budgets"):
        across_datasets(frame)


def test_the_corl_table_holds_the_verified_numbers_and_its_caveats_once(tmp_path):
    table = corl_comparison_table(per_dataset(read_leaderboard(_grid(tmp_path))))
    assert CORL_PUBLISHED["CQL"]["hopper-medium-replay-v2"] == (95.11, 5.27)
    assert CORL_PUBLISHED["BC"]["walker2d-medium-v2"] == (63.23, 16.24)
    assert "| halfcheetah/medium-v1 | halfcheetah-medium-v2 | CQL-SAC | fast | 3 | 30000 | 52.0 [50.0, 54.0] | " \
           "52.0 ± 2.0 | CQL: 47.04 ± 0.22 |" in table
    assert "| hopper/medium-replay-v1 | hopper-medium-replay-v2 | BC |" in table and "BC: 29.81 ± 2.07 |" in table
    assert "CQL: 80.75 ± 3.28 |" in table and "BC: 63.23 ± 16.24 |" in table  # walker2d medium
    assert "SAC-offline" not in table  # CORL has no plain offline SAC column
    assert table.count("Gymnasium MuJoCo v5") == 1 and "not D4RL's v2 datasets" in table
    assert "30,000 updates (3% of CORL's 1,000,000)" in table and "different seeds" in table
    assert "its medium tiers hold 1M transitions, ours 200,000" in table


def test_differences_are_welch_intervals_read_cql_first_and_say_where_they_separate():
    cql, bc, sac = [44.0, 45.0, 46.5], [44.5, 46.0, 45.0], [-6.0, 0.0, 5.0]
    frame = pd.concat([_cell(sac, algorithm="SAC-offline"), _cell(bc, algorithm="BC"), _cell(cql),
                       _cell([60.0], dataset="hopper/medium-v1"), _cell([30.0, 31.0], dataset="hopper/medium-v1",
                                                                      algorithm="BC")])
    table = differences(frame)
    assert list(zip(table["a"], table["b"], strict=True)) == [("CQL-SAC", "BC"), ("CQL-SAC", "SAC-offline"),
                                                             ("BC", "SAC-offline")]  # hopper: CQL has one seed
    cql_bc, cql_sac = table.iloc[0], table.iloc[1]
    # Welch by hand: the difference of means, its standard error and the Welch-Satterthwaite degrees of freedom
    va, vb = np.var(cql, ddof=1) / 3, np.var(bc, ddof=1) / 3
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 2)
    from scipy.stats import t

    half = t.ppf(0.975, df) * math.sqrt(va + vb)
    assert cql_bc["difference"] == pytest.approx(np.mean(cql) - np.mean(bc))
    assert (cql_bc["ci_low"], cql_bc["ci_high"]) == pytest.approx((cql_bc["difference"] - half,
                                                                   cql_bc["difference"] + half))
    assert cql_bc["verdict"] == "not separated" and cql_sac["verdict"] == "A above B"
    flipped = differences(pd.concat([_cell([-1.0, 0.0, 1.0], algorithm="SAC-offline"), _cell([-9.0, -8.0, -7.5])]))
    assert flipped.iloc[0]["verdict"] == "A below B" and flipped.iloc[0]["difference"] < 0
    flat = differences(pd.concat([_cell([5.0, 5.0], algorithm="BC"), _cell([3.0, 3.0])])).iloc[0]
    assert flat["difference"] == -2.0 and math.isnan(flat["ci_low"]) and flat["verdict"] == "not separated"


def test_the_summary_defines_best_names_the_shared_starts_and_flags_a_commit_no_history_holds(tmp_path):
    frame = read_leaderboard(_grid(tmp_path, seeds=(0,)))
    write_evidence(frame, tmp_path / "out", STEPS)
    summary = (tmp_path / "out" / "evidence_summary.md").read_text()
    assert "Best: each seed's highest evaluation" in summary and "slightly understated" in summary
    assert "Not one clean commit" not in summary
    assert "(no dataset has two algorithms or configs with two seeds each yet)" in summary  # one seed each
    write_evidence(read_leaderboard(_grid(tmp_path / "three")), tmp_path / "three-out", STEPS)
    three = (tmp_path / "three-out" / "evidence_summary.md").read_text()
    assert "| halfcheetah/medium-v1 | CQL-SAC (fast) | BC (fast) | 3, 3 | 10.0 [" in three and "CQL-SAC above" in three
    assert len(pd.read_csv(tmp_path / "three-out" / "evidence_differences.csv")) == 9
    frame.loc[frame.index[0], "git_commit"] = "abc123-dirty"
    frame.loc[frame.index[1], "git_commit"] = "unknown"
    write_evidence(frame, tmp_path / "out", STEPS)
    summary = (tmp_path / "out" / "evidence_summary.md").read_text()
    assert "**Not one clean commit:** abc123-dirty, unknown:" in summary


def test_the_plots_are_written_as_pngs(tmp_path):
    rows = evidence_rows(read_leaderboard(_grid(tmp_path)), STEPS)
    profile = performance_profile_plot(rows, DATASETS, None, tmp_path / "plots" / "profile.png")
    assert profile.read_bytes().startswith(PNG_HEADER)
    curves = learning_curve_plots(rows, tmp_path / "plots")
    assert [p.name for p in curves] == [f"evidence_curves_{d.replace('/', '_')}.png" for d in DATASETS]
    assert all(p.read_bytes().startswith(PNG_HEADER) for p in curves)
    assert not list((tmp_path / "plots").glob(".*.tmp"))  # written through temp files, none left
    assert learning_curve_plots(rows.assign(run_dir="/nonexistent"), tmp_path / "elsewhere") == []
    assert bias_axis_scale([np.array([-0.9, -0.8]), np.array([5.0, 900.0])]) == "symlog"
    assert bias_axis_scale([np.array([-0.9, -0.8]), np.array([0.5, 3.0])]) == "linear"


def test_the_curves_are_kept_for_runs_whose_folders_are_gone(tmp_path):
    frame = read_leaderboard(_grid(tmp_path))
    out = tmp_path / "evidence"
    write_evidence(frame, out, STEPS)
    curves = read_evidence_curves(out / "evidence_curves.csv")
    assert len(curves) == 27 * 3  # three steps per run: the final step written twice is one row, the last
    cql = curves[(curves["algorithm"] == "CQL-SAC") & (curves["dataset_id"] == DATASETS[0]) & (curves["seed"] == 1)]
    assert list(cql["step"]) == [10_000, 20_000, STEPS]
    assert list(cql["normalized_return"]) == [52.0 / 3, 26.0, 52.0]  # the final evaluation's value, not the loop's
    assert list(cql["q_bias_normalized_mean"]) == [-0.5, -0.8, -0.9]
    assert curves.loc[curves["algorithm"] == "BC", "q_bias_normalized_mean"].isna().all()
    plot = out / "evidence_curves_halfcheetah_medium-v1.png"

    for run_dir in (tmp_path / "runs").iterdir():  # the machine changed: no run folder is left
        (run_dir / "evaluations.csv").unlink()
    plot.unlink()
    write_evidence(frame, out, STEPS)
    assert read_evidence_curves(out / "evidence_curves.csv").equals(curves)
    assert plot.read_bytes().startswith(PNG_HEADER)  # redrawn from the kept curves
    assert "27 of 27 runs' curves" in (out / "evidence_summary.md").read_text()

    write_evidence(frame, out, STEPS, datasets=[DATASETS[0]])  # a subset into the same folder loses nothing
    assert len(read_evidence_curves(out / "evidence_curves.csv")) == 27 * 3


def test_a_kept_curve_of_another_run_in_the_same_folder_is_not_the_rows_curve(tmp_path):
    """A folder started again (a new run_id) whose files are gone: the curve kept from the earlier run there is
    not taken for the new row's."""
    frame = read_leaderboard(_grid(tmp_path, seeds=(0,)))
    kept = collect_evidence_curves(evidence_rows(frame, STEPS))
    for run_dir in (tmp_path / "runs").iterdir():
        (run_dir / "evaluations.csv").unlink()
    restarted = frame.assign(run_id=frame["run_id"].where(frame["algorithm"] != "BC", "new-run"))
    curves = collect_evidence_curves(evidence_rows(restarted, STEPS), kept)
    bc_dirs = set(frame.loc[frame["algorithm"] == "BC", "run_dir"].astype(str))
    assert curves.loc[curves["run_dir"].isin(bc_dirs), "run_id"].ne("new-run").all()  # the old curves stay, apart
    assert len(curves) == len(kept)  # kept as they were, none attached to the new rows
    assert set(collect_evidence_curves(evidence_rows(frame, STEPS), kept)["run_id"]) == set(kept["run_id"])
    out = tmp_path / "evidence"
    out.mkdir()
    kept.to_csv(out / "evidence_curves.csv", index=False)
    write_evidence(restarted, out, STEPS)
    assert "6 of 9 runs' curves" in (out / "evidence_summary.md").read_text()  # the 3 BC rows have none


def test_a_curve_that_does_not_end_at_the_rows_budget_is_not_the_rows_curve(tmp_path):
    frame = read_leaderboard(_grid(tmp_path, seeds=(0,)))
    run_dir = Path(frame["run_dir"].iloc[0])
    pd.DataFrame({"step": [10_000, 20_000], "normalized_return": [1.0, 2.0]}).to_csv(  # resumed, unfinished
        run_dir / "evaluations.csv", index=False)
    curves = collect_evidence_curves(evidence_rows(frame, STEPS))
    assert run_dir.as_posix() not in set(curves["run_dir"]) and curves["run_dir"].nunique() == 8
    longer = pd.DataFrame({"step": [10_000, STEPS, 40_000], "normalized_return": [1.0, 2.0, 3.0]})
    longer.to_csv(run_dir / "evaluations.csv", index=False)  # resumed past the row by a longer run: cut at the row
    curves = collect_evidence_curves(evidence_rows(frame, STEPS))
    assert list(curves.loc[curves["run_dir"] == str(run_dir), "step"]) == [10_000, STEPS]
    (tmp_path / "bad.csv").write_text("step,value\n1,2\n")
    with pytest.raises(OfflineRLError, match="bad.csv: not an offrl evidence curves file"):
        read_evidence_curves(tmp_path / "bad.csv")


def test_write_evidence_refuses_a_budget_without_rows_and_writes_nothing(tmp_path):
    frame = read_leaderboard(_grid(tmp_path, seeds=(0,)))
    with pytest.raises(OfflineRLError, match=r"steps 12345: no offline leaderboard rows .* have steps 30000"):
        write_evidence(frame, tmp_path / "out", 12345)
    assert not (tmp_path / "out").exists()


def test_the_cli_writes_the_evidence_and_refuses_an_unknown_budget(tmp_path, capsys):
    path = _grid(tmp_path)
    out = tmp_path / "evidence"
    assert main(["leaderboard", "--leaderboard", str(path), "--evidence", str(STEPS), "--out", str(out)]) == 0
    names = {"evidence_summary.csv", "evidence_differences.csv", "evidence_across_datasets.csv",
             "evidence_summary.md", "evidence_curves.csv",
             "evidence_performance_profile.png", *(f"evidence_curves_{d.replace('/', '_')}.png" for d in DATASETS)}
    assert {p.name for p in out.iterdir()} == names
    assert capsys.readouterr().out.count("wrote ") == len(names)
    summary = pd.read_csv(out / "evidence_summary.csv")
    assert len(summary) == 9 and set(summary["seeds"]) == {3}
    markdown = (out / "evidence_summary.md").read_text()
    assert "| halfcheetah/medium-v1 | BC | fast | 3 | 1 | 42.0 ± 2.0 | 42.0 [40.0, 44.0] | 45.0 | – |" in markdown
    assert "| CQL-SAC | fast | 3 | 3 (0,1,2) | 0 | 62.0 [" in markdown and "CQL: 47.04 ± 0.22" in markdown
    assert "learning curves (27 of 27 runs' curves, kept in evidence_curves.csv)" in markdown

    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert main(["leaderboard", "--leaderboard", str(path), "--evidence", "12345",
                 "--out", str(tmp_path / "nothing")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1 and "steps 12345" in captured.err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    assert main(["leaderboard", "--leaderboard", str(path), "--out", str(out)]) == 2  # --out needs --evidence
    assert "--out: only with --evidence" in capsys.readouterr().err


def test_sweep_picks_the_result_set_when_other_runs_share_its_budget(tmp_path, capsys):
    path = _grid(tmp_path)
    parity = {"run_id": "parity", "phase": "offline", "online_steps": 0, "dataset_id": DATASETS[0],
              "algorithm": "CQL-SAC", "config_name": "d3rlpy", "seed": 0, "steps": STEPS,
              "final_normalized_return": 1.0, "best_normalized_return": 1.0, "run_dir": str(tmp_path / "parity"),
              "git_commit": "def456", "sweep_id": "sweep-parity"}
    append_row(path, parity)  # a parity run at the grid's budget, from another sweep and commit
    everything, grid = tmp_path / "all", tmp_path / "grid"
    assert main(["leaderboard", "--leaderboard", str(path), "--evidence", str(STEPS), "--out", str(everything)]) == 0
    assert "d3rlpy" in set(pd.read_csv(everything / "evidence_summary.csv")["config_name"])
    assert main(["leaderboard", "--leaderboard", str(path), "--evidence", str(STEPS), "--sweep", "sweep-test",
                 "--out", str(grid)]) == 0
    summary = pd.read_csv(grid / "evidence_summary.csv")
    assert set(summary["config_name"]) == {"fast"} and set(summary["commits"]) == {1}
    assert main(["leaderboard", "--leaderboard", str(path), "--evidence", str(STEPS), "--sweep", "sweep-nope",
                 "--out", str(tmp_path / "none")]) == 2
    assert "of sweep(s) sweep-nope" in capsys.readouterr().err
    assert main(["leaderboard", "--leaderboard", str(path), "--sweep", "sweep-test"]) == 2  # needs --evidence
    assert main(["leaderboard", "--leaderboard", str(path), "--evidence", str(STEPS), "--sweep", ","]) == 2
    assert "--sweep ',': name at least one sweep id" in capsys.readouterr().err
    untagged = {**parity, "run_id": "old", "sweep_id": None}  # rows from before sweeps were tagged
    append_row(path, untagged)
    assert main(["leaderboard", "--leaderboard", str(path), "--evidence", str(STEPS), "--sweep", "nan",
                 "--out", str(tmp_path / "nan")]) == 2  # an untagged row is of no sweep


def _with_run_records(tmp_path, gamma=0.9):
    """Give the grid's runs a run.json and a metrics.csv: SAC-offline as offline SAC (its soft backup), CQL-SAC
    with backup_entropy on for seeds 0 and 1 (and rewards scaled by 2), off for seed 2; α and the entropy change
    in the last 10% of the updates only."""
    import json

    for run_dir in (tmp_path / "runs").iterdir():
        algorithm = next(a for a in BASE_SCORE if f"-{a}-" in run_dir.name)
        soft_cql = not run_dir.name.endswith("-s2")
        agent_class, config, reward_scale = {
            "SAC-offline": ("SAC", {"gamma": gamma}, 1.0),
            "CQL-SAC": ("CQL", {"gamma": gamma, "backup_entropy": soft_cql}, 2.0),
            "BC": ("BC", {}, 1.0)}[algorithm]
        (run_dir / "run.json").write_text(json.dumps({"kind": "offline", "agent_class": agent_class,
                                                      "config": config, "reward_scale": reward_scale}))
        pd.DataFrame({"step": [STEPS // 2, STEPS - 2_000, STEPS], "alpha": [9.0, 0.5, 0.3],
                      "entropy": [9.0, -6.0, -4.0]}).to_csv(run_dir / "metrics.csv", index=False)
        evaluations = pd.read_csv(run_dir / "evaluations.csv")
        evaluations["q_bias_mean"] = evaluations["q_bias_normalized_mean"] * 200.0  # |mean G| = 200
        evaluations.to_csv(run_dir / "evaluations.csv", index=False)


def test_soft_backup_offsets_for_the_runs_that_back_up_the_soft_value(tmp_path):
    frame = read_leaderboard(_grid(tmp_path))
    _with_run_records(tmp_path)
    out = tmp_path / "evidence"
    write_evidence(frame, out, STEPS)
    offsets = pd.read_csv(out / "evidence_soft_backup.csv")
    sac = offsets[offsets["algorithm"] == "SAC-offline"]
    cql = offsets[offsets["algorithm"] == "CQL-SAC"]
    assert len(sac) == 9 and sorted(set(cql["seed"])) == [0, 1] and len(offsets) == 15  # not BC, not CQL seed 2
    # means over the last 10% of the updates: α 0.4, H -5; offset 0.4 * -5 * 0.9 / 0.1 over |mean G| 200
    np.testing.assert_allclose(sac["soft_offset_normalized"], 0.4 * -5.0 * 9.0 / 200.0)
    np.testing.assert_allclose(sac["reward_only_q_bias_normalized"], 900.0 + 0.09)
    # CQL's rewards were scaled by 2 in training: its bonus, in env units, is half as large
    np.testing.assert_allclose(cql["soft_offset_normalized"], 0.4 * -5.0 * 9.0 / 200.0 / 2.0)
    np.testing.assert_allclose(cql["reward_only_q_bias_normalized"], -0.9 + 0.045)
    assert "| halfcheetah/medium-v1 | SAC-offline | 0 | 0.4 | -5.00 | -0.09 | +900.00 | +900.09 |" in (
        out / "evidence_summary.md").read_text()
    for run_dir in (tmp_path / "runs").iterdir():  # the folders are gone: the offsets are kept
        (run_dir / "metrics.csv").unlink()
    write_evidence(frame, out, STEPS)
    pd.testing.assert_frame_equal(pd.read_csv(out / "evidence_soft_backup.csv"), offsets)


def _unscored_folder(root, name, commit="abc123", updates=STEPS, evaluations=None, stopped=None, final=False):
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({
        "kind": "offline", "run_id": name, "dataset_id": "hopper/medium-replay-v1", "algorithm": "SAC-offline",
        "config_name": "fast", "seed": 3, "updates": updates, "git_commit": commit}))
    pd.DataFrame({"step": [1000, 2000], "critic_loss": [1.0, 2.0]}).to_csv(folder / "metrics.csv", index=False)
    if evaluations is not None:
        pd.DataFrame(evaluations).to_csv(folder / "evaluations.csv", index=False)
    if stopped is not None:
        (folder / "stopped.json").write_text(json.dumps(stopped))
    if final:
        (folder / "final.json").write_text("{}")
    return folder


def test_runs_of_the_result_set_without_a_row_are_listed_not_silently_missing(tmp_path):
    frame = read_leaderboard(_grid(tmp_path, seeds=(0,)))
    runs = tmp_path / "runs"
    _unscored_folder(runs, "diverged", evaluations={"step": [10_000], "normalized_return": [3.0],
                                                               "q_bias_normalized_mean": [250.0]},
                                stopped={"reason": "diverged", "step": 12_345, "metrics": ["critic_loss=inf"]})
    _unscored_folder(runs, "training")
    _unscored_folder(runs, "finished", final=True)
    (_unscored_folder(runs, "failed") / "error.txt").write_text("OfflineRLError: dataset x: sha256 mismatch\n")
    (runs / "failed-early").mkdir()  # a trial that failed before its run record was written
    (runs / "failed-early" / "error.txt").write_text("OfflineRLError: --datasets: x/y-v0 is not in the store\n")
    _unscored_folder(runs, "other-commit", commit="fff000")  # another result set's
    _unscored_folder(runs, "other-budget", updates=5_000)
    out = tmp_path / "out"
    write_evidence(frame, out, STEPS)
    summary = (out / "evidence_summary.md").read_text()
    assert "5 more run(s) of this result set have no score (yet)" in summary
    assert "| failed | 2,000 of 30,000 | – | OfflineRLError: dataset x: sha256 mismatch |" in summary
    assert ("| (folder failed-early) | – | – | – | failed | – of ? | – | OfflineRLError: --datasets: x/y-v0 is not in "
            "the store |") in summary
    assert ("| hopper/medium-replay-v1 | SAC-offline | fast | 3 | diverged | 12,345 of 30,000 | 10,000: 3.0, +250.00 "
            "| critic_loss=inf |") in summary
    assert "| no score yet | 2,000 of 30,000 | – |" in summary and "| finished |" in summary
    kept = pd.read_csv(out / "evidence_unscored.csv")
    assert sorted(Path(d).name for d in kept["run_dir"]) == ["diverged", "failed", "failed-early", "finished",
                                                              "training"]
    # a clean clone has the kept table but not the folders; a run that has since got its row drops out
    for folder in runs.iterdir():
        if folder.name in ("diverged", "training", "failed", "failed-early"):
            for file in folder.iterdir():
                file.unlink()
            folder.rmdir()
    write_evidence(frame, out, STEPS)
    assert "| diverged | 12,345 of 30,000 |" in (out / "evidence_summary.md").read_text()
    finished = frame.iloc[[0]].assign(run_dir=str(runs / "finished"), run_id="finished", seed=3)
    write_evidence(pd.concat([frame, finished], ignore_index=True), out, STEPS)
    assert sorted(Path(d).name for d in pd.read_csv(out / "evidence_unscored.csv")["run_dir"]) == [
        "diverged", "failed", "failed-early", "training"]


def test_a_run_scored_by_a_row_of_another_sweep_or_named_by_another_path_form_is_not_listed(tmp_path, monkeypatch):
    from offrl.evaluation.aggregate import collect_runs_without_score

    monkeypatch.chdir(tmp_path)
    frame = read_leaderboard(_grid(tmp_path, seeds=(0,)))
    runs = tmp_path / "runs"
    _unscored_folder(runs, "other-sweeps-run")  # same folder, commit and budget; its row belongs to another sweep
    _unscored_folder(runs, "relative")
    relative_row = frame.iloc[[0]].assign(run_dir="./runs/relative", run_id="relative", seed=4)
    listed = collect_runs_without_score(pd.concat([frame, relative_row], ignore_index=True),
                                        scored_dirs=[str(runs / "other-sweeps-run")])
    assert listed.empty
    listed = collect_runs_without_score(frame)
    assert sorted(listed["run_id"]) == ["other-sweeps-run", "relative"]
    assert collect_runs_without_score(frame, previous=listed, scored_dirs=["runs/relative",
                                                                           str(runs / "other-sweeps-run")]).empty
