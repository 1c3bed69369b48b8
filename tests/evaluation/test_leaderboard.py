import json
import multiprocessing
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from offrl.errors import OfflineRLError
from offrl.evaluation.leaderboard import COLUMNS, aggregate, append_row, bootstrap_ci, iqm, read_leaderboard


def _row(run_id, seed, final, dataset="hc/medium-v0", config="fast", phase="offline"):
    return {"run_id": run_id, "phase": phase, "online_steps": 0, "dataset_id": dataset, "algorithm": "CQL-SAC",
            "config_name": config, "seed": seed, "steps": 1000, "final_normalized_return": final,
            "best_normalized_return": final + 1, "q_bias_normalized_mean": 0.1, "updates_per_s": 10.0}


def test_iqm_and_bootstrap_on_known_inputs():
    assert iqm(np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 100.0])) == pytest.approx(4.5)  # middle four
    assert iqm(np.array([1.0, 2.0, 9.0])) == pytest.approx(4.0)  # 25% of 3 rounds down to nothing trimmed
    low, high = bootstrap_ci(np.array([10.0, 11.0, 12.0, 13.0]))
    assert 10.0 <= low <= iqm(np.array([10.0, 11.0, 12.0, 13.0])) <= high <= 13.0
    assert bootstrap_ci(np.array([10.0, 11.0, 12.0, 13.0])) == (low, high)  # fixed resampling seed


def test_aggregate_groups_over_seeds(tmp_path):
    path = tmp_path / "lb.csv"
    for seed, final in enumerate([40.0, 50.0, 60.0]):
        append_row(path, _row(f"r{seed}", seed, final))
    append_row(path, _row("other", 0, 10.0, config="corl"))
    summary = aggregate(read_leaderboard(path)).set_index("config_name")
    assert summary.loc["fast", "seeds"] == 3
    assert summary.loc["fast", "final_mean"] == pytest.approx(50.0)
    assert summary.loc["fast", "final_std"] == pytest.approx(10.0)  # the sample std (ddof 1), not 8.16
    assert np.isnan(summary.loc["corl", "final_std"])  # one seed has no spread to report
    assert summary.loc["fast", "best_mean"] == pytest.approx(51.0)
    assert summary.loc["corl", "seeds"] == 1


def _append_many(path, worker):
    for i in range(20):
        append_row(path, _row(f"w{worker}-{i}", worker, float(i)))


def test_concurrent_appends_from_several_processes_lose_no_row(tmp_path):
    path = tmp_path / "lb.csv"
    workers = [multiprocessing.Process(target=_append_many, args=(path, w)) for w in range(4)]
    for p in workers:
        p.start()
    for p in workers:
        p.join()
    frame = pd.read_csv(path)
    assert len(frame) == 80 and frame["run_id"].nunique() == 80
    assert list(frame.columns) == COLUMNS


def test_a_corrupt_leaderboard_is_refused_naming_the_bad_line(tmp_path):
    path = tmp_path / "lb.csv"
    append_row(path, _row("a", 0, 1.0))
    append_row(path, _row("b", 1, 2.0))
    lines = path.read_text().splitlines()
    lines[2] = "b,offline,0,broken"
    path.write_text("\n".join(lines) + "\n")
    before = path.read_text()
    with pytest.raises(OfflineRLError, match="line 3 has 4 fields"):
        append_row(path, _row("c", 2, 3.0))
    assert path.read_text() == before


def _fake_finetune_run(root, name, offline_scores, online_scores):
    offline, online = root / f"{name}-offline", root / f"{name}-offline" / "finetune"
    online.mkdir(parents=True)
    pd.DataFrame({"step": [1000, 2000], "normalized_return": offline_scores}).to_csv(offline / "evaluations.csv")
    (online / "finetune.json").write_text(json.dumps({"from_run": str(offline)}))
    pd.DataFrame({"step": [0, 500, 1000], "offline_steps": 2000, "normalized_return": online_scores,
                  "q_bias_mean": [-1.0, -0.5, -0.2]}).to_csv(online / "evaluations.csv")
    return str(online)


def test_finetuning_curves_join_the_offline_run_at_the_switch(tmp_path):
    from offrl.evaluation.leaderboard import _finetune_curves, plot_finetuning

    run_dir = _fake_finetune_run(tmp_path, "a", [10.0, 20.0], [21.0, 15.0, 30.0])
    scores, bias, switch = _finetune_curves(Path(run_dir))
    assert switch == 2000
    assert scores.to_dict() == {1000: 10.0, 2000: 21.0, 2500: 15.0, 3000: 30.0}  # step-0 eval is the switch
    assert bias.index.tolist() == [0, 500, 1000]
    frame = pd.DataFrame({"phase": ["online", "online", "offline"], "dataset_id": "toy/random-v0",
                          "algorithm": ["Cal-QL", "Cal-QL", "CQL-SAC"],
                          "run_dir": [run_dir, _fake_finetune_run(tmp_path, "b", [5.0, 6.0], [7.0, 8.0, 9.0]),
                                      str(tmp_path / "a-offline")]})
    assert plot_finetuning(frame, tmp_path / "plots") == [tmp_path / "plots" / "finetune_toy_random-v0.png"]
    frame["run_dir"] = str(tmp_path / "gone")
    assert plot_finetuning(frame, tmp_path / "other") == []  # run directories elsewhere: nothing drawn


def test_learning_curves_are_the_mean_over_seeds_with_a_bootstrap_band(tmp_path):
    from offrl.evaluation.leaderboard import _bootstrap_band, plot_leaderboard

    table = pd.DataFrame({"s0": [0.0, 10.0, 5.0], "s1": [2.0, 10.0, np.nan], "s2": [4.0, 10.0, np.nan]},
                         index=[0, 10, 20])
    low, high = _bootstrap_band(table)
    assert 0.0 <= low[0] <= 2.0 <= high[0] <= 4.0  # the mean (2) inside, within the seeds' range
    assert low[1] == high[1] == 10.0  # no spread, no band
    assert np.isnan(low[2]) and np.isnan(high[2])  # one seed: no band
    rows = []
    for algorithm, bias in (("CQL-SAC", -0.5), ("BC", None)):
        for seed in range(2):
            run_dir = tmp_path / f"{algorithm}-{seed}"
            run_dir.mkdir()
            pd.DataFrame({"step": [10, 20], "normalized_return": [seed, seed + 5.0],
                          "q_bias_normalized_mean": [bias, bias]}).to_csv(run_dir / "evaluations.csv", index=False)
            rows.append({**_row(f"{algorithm}{seed}", seed, 5.0), "algorithm": algorithm, "run_dir": str(run_dir)})
    written = plot_leaderboard(pd.DataFrame(rows), tmp_path / "plots")
    assert written == [tmp_path / "plots" / "leaderboard_hc_medium-v0.png"] and written[0].stat().st_size > 0
    assert plot_leaderboard(pd.DataFrame(rows).assign(run_dir="/nonexistent"), tmp_path / "elsewhere") == []


def test_aggregate_keeps_budgets_apart_and_counts_a_rerun_seed_once(tmp_path):
    path = tmp_path / "lb.csv"
    for seed, final in enumerate([40.0, 42.0, 44.0]):
        append_row(path, {**_row(f"long{seed}", seed, final), "steps": 100000})
    append_row(path, {**_row("long0-again", 0, 46.0), "steps": 100000})  # seed 0 re-run: replaces 40
    append_row(path, {**_row("long0-no-env", 0, 0.0), "steps": 100000, "final_normalized_return": None,
                      "best_normalized_return": None})  # no env, no score: replaces nothing
    for seed in range(2):
        append_row(path, _row(f"short{seed}", seed, 10.0))  # 1000 updates: another budget
    summary = aggregate(read_leaderboard(path)).set_index("steps")
    assert summary.loc[100000, "seeds"] == 3 and summary.loc[100000, "final_mean"] == pytest.approx(44.0)
    assert summary.loc[1000, "seeds"] == 2 and summary.loc[1000, "final_mean"] == pytest.approx(10.0)
    # two seeds: a percentile bootstrap could only return their [min, max], so no CI is given
    assert np.isnan(summary.loc[1000, "iqm_ci_low"]) and np.isfinite(summary.loc[100000, "iqm_ci_low"])


def test_iqm_of_scores_with_a_nan_is_nan_not_a_trimmed_mean():
    assert np.isnan(iqm(np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, np.nan])))
    assert bootstrap_ci(np.array([1.0, 2.0])) == pytest.approx((np.nan, np.nan), nan_ok=True)
