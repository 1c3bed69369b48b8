"""The parity summary on hand-made run folders of both implementations, with known numbers."""

import json

import pandas as pd
import pytest

from benchmarks.parity_summary import main, parity_table, read_parity_runs


def _offrl_run(folder, seed, returns, finished=True):
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"dataset_id": "halfcheetah/medium-v1", "seed": seed,
                                                 "git_commit": "abc"}))
    steps = [10, 20, 20]  # the final evaluation repeats the last step; the last row counts
    pd.DataFrame({"step": steps, "normalized_return": returns, "return_mean": returns}).to_csv(
        folder / "evaluations.csv", index=False)
    if finished:
        (folder / "final.json").write_text(json.dumps({"updates_per_s": 8.0}))


def _d3rlpy_run(folder, seed, returns):
    folder.mkdir(parents=True)
    pd.DataFrame({"step": [10, 20], "return_mean": returns, "return_std": 0.0, "normalized_return": returns}).to_csv(
        folder / "evaluations.csv", index=False)
    (folder / "final.json").write_text(json.dumps({"impl": "d3rlpy 2.8.1", "dataset_id": "halfcheetah/medium-v1",
                                                   "seed": seed, "updates_per_s": 5.0}))


def test_final_best_and_welch_difference(tmp_path):
    runs = tmp_path / "parity"
    for seed, (last, repeat) in enumerate(((40.0, 42.0), (44.0, 44.0))):
        _offrl_run(runs / "offrl" / f"cql-seed{seed}", seed, [50.0, last, repeat])
    _offrl_run(runs / "offrl" / "unfinished", 2, [0.0, 0.0, 0.0], finished=False)
    for seed, final in enumerate((30.0, 34.0)):
        _d3rlpy_run(runs / f"d3rlpy-seed{seed}", seed, [20.0, final])
    table = read_parity_runs(runs)
    assert sorted(table["impl"].unique()) == ["d3rlpy 2.8.1", "offrl"] and 2 not in set(table["seed"])
    summary = parity_table(table).set_index("impl")
    assert summary.loc["offrl", "final_mean"] == pytest.approx(43.0)  # 42 and 44: the repeated step's last row
    assert summary.loc["offrl", "best_mean"] == pytest.approx(50.0)
    assert summary.loc["d3rlpy 2.8.1", "final_std"] == pytest.approx(2 ** 0.5 * 2)  # sample std of 30, 34
    assert main([str(runs), "--out", str(tmp_path)]) == 0
    text = (tmp_path / "parity_summary.md").read_text()
    assert "minus offrl: -11.0" in text and "Welch 95% CI" in text
    assert (tmp_path / "parity_halfcheetah_medium-v1.png").read_bytes()[:4] == b"\x89PNG"


def test_an_empty_folder_is_one_line_and_exit_2(tmp_path, capsys):
    assert main([str(tmp_path), "--out", str(tmp_path)]) == 2
    assert "no finished offrl/ or d3rlpy-seed*/ run" in capsys.readouterr().err
    assert not (tmp_path / "parity.csv").exists()


def test_d3rlpys_runs_are_evaluated_from_offrls_start_states():
    """benchmarks/d3rlpy_parity.py runs in d3rlpy's venv without offrl, so it restates offrl's evaluation seed."""
    import re
    from pathlib import Path

    from offrl.evaluation.report import EVAL_SEED

    source = (Path(__file__).parents[2] / "benchmarks" / "d3rlpy_parity.py").read_text()
    assert int(re.search(r"^EVAL_SEED = ([\d_]+)$", source, re.M)[1]) == EVAL_SEED
    assert "env.reset(seed=EVAL_SEED + seed + i)" in source
