"""The parity summary on hand-made run folders of both implementations, with known numbers."""

import json

import numpy as np
import pandas as pd
import pytest

from benchmarks.parity_summary import equivalence, main, parity_table, read_parity_runs

SHA = "ab" * 32


def _offrl_run(folder, seed, returns, finished=True, sha=SHA, commit="abc"):
    """Evaluations at 10, 20, 30, 40 and the final one repeating 40 (the last row counts)."""
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"dataset_id": "halfcheetah/medium-v1", "seed": seed,
                                                 "dataset_sha256": sha, "eval_episodes": 10, "git_commit": commit}))
    steps = [10, 20, 30, 40, 40]
    pd.DataFrame({"step": steps, "normalized_return": returns, "return_mean": returns,
                  "q_bias_normalized_mean": [-0.5] * 5}).to_csv(folder / "evaluations.csv", index=False)
    if finished:
        (folder / "final.json").write_text(json.dumps({"updates_per_s": 8.0}))


def _d3rlpy_run(folder, seed, returns, steps=(10, 20, 30, 40)):
    folder.mkdir(parents=True)
    pd.DataFrame({"step": list(steps), "return_mean": returns, "return_std": 0.0, "normalized_return": returns,
                  "q_bias_normalized_mean": -0.25, "train_critic_loss": 1.0}).to_csv(
        folder / "evaluations.csv", index=False)
    (folder / "final.json").write_text(json.dumps({"impl": "d3rlpy 2.8.1", "dataset_id": "halfcheetah/medium-v1",
                                                   "dataset_sha256": SHA, "eval_episodes": 10, "seed": seed,
                                                   "updates_per_s": 5.0}))


def _both(runs):
    for seed, (last, repeat) in enumerate(((40.0, 42.0), (44.0, 44.0))):
        _offrl_run(runs / "offrl" / f"cql-seed{seed}", seed, [50.0, 10.0, 20.0, last, repeat])
    for seed, final in enumerate((30.0, 34.0)):
        _d3rlpy_run(runs / f"d3rlpy-seed{seed}", seed, [20.0, 10.0, 20.0, final])


def test_late_final_best_q_bias_and_the_welch_and_equivalence_tests(tmp_path):
    runs = tmp_path / "parity"
    _both(runs)
    summary = parity_table(read_parity_runs(runs)).set_index("impl")
    # late = mean of the last 3 evaluations: seed 0 (10 + 20 + 42) / 3, seed 1 (10 + 20 + 44) / 3
    assert summary.loc["offrl", "late_mean"] == pytest.approx((72 / 3 + 74 / 3) / 2)
    assert summary.loc["offrl", "final_mean"] == pytest.approx(43.0)  # 42 and 44: the repeated step's last row
    assert summary.loc["offrl", "best_mean"] == pytest.approx(50.0)
    assert summary.loc["d3rlpy 2.8.1", "final_std"] == pytest.approx(2 ** 0.5 * 2)  # sample std of 30, 34
    assert summary.loc["d3rlpy 2.8.1", "late_q_bias"] == pytest.approx(-0.25)
    assert main([str(runs), "--out", str(tmp_path)]) == 0
    text = (tmp_path / "parity_summary.md").read_text()
    late_difference = (60 / 3 + 64 / 3) / 2 - (72 / 3 + 74 / 3) / 2
    assert f"minus offrl: {late_difference:.1f}, Welch 95% CI" in text and "TOST p" in text
    assert set(pd.read_csv(tmp_path / "parity.csv")["q_bias_normalized_mean"]) == {-0.5, -0.25}
    assert (tmp_path / "parity_halfcheetah_medium-v1.png").read_bytes()[:4] == b"\x89PNG"


def test_equivalence_is_shown_only_when_the_difference_is_small_and_the_seeds_agree():
    close = equivalence(np.array([50.0, 50.5, 49.5]), np.array([50.2, 49.8, 50.0]), margin=5.0)
    assert close["tost_p"] < 0.05 and close["ci_low"] < 0 < close["ci_high"]
    noisy = equivalence(np.array([40.0, 60.0, 50.0]), np.array([45.0, 55.0, 52.0]), margin=5.0)
    assert noisy["tost_p"] > 0.05 and noisy["p"] > 0.05  # neither different nor shown equal
    apart = equivalence(np.array([60.0, 61.0, 59.0]), np.array([50.0, 51.0, 49.0]), margin=5.0)
    assert apart["tost_p"] > 0.05 and apart["p"] < 0.05 and apart["difference"] == pytest.approx(10.0)


@pytest.mark.parametrize("spoil, message", [
    (lambda runs: _offrl_run(runs / "offrl" / "cql-seed2", 2, [0.0] * 5, finished=False), "cql-seed2: not finished"),
    (lambda runs: _offrl_run(runs / "offrl" / "cql-seed2", 2, [0.0] * 5), "the sides ran different seeds"),
    (lambda runs: _offrl_run(runs / "offrl" / "cql-seed2", 2, [0.0] * 5, sha="cd" * 32) or _d3rlpy_run(
        runs / "d3rlpy-seed2", 2, [0.0] * 4), "several dataset files"),
    (lambda runs: _offrl_run(runs / "offrl" / "cql-seed2", 2, [0.0] * 5) or _d3rlpy_run(
        runs / "d3rlpy-seed2", 2, [0.0] * 3, steps=(10, 20, 30)), "end at different updates"),
    (lambda runs: _offrl_run(runs / "offrl" / "cql-seed2", 2, [0.0] * 5) or _d3rlpy_run(
        runs / "d3rlpy-seed2", 2, [0.0] * 4, steps=(10, 25, 30, 40)), "evaluate at different steps (d3rlpy"),
])
def test_mismatched_or_unfinished_runs_are_refused_by_name(tmp_path, capsys, spoil, message):
    runs = tmp_path / "parity"
    _both(runs)
    spoil(runs)
    assert main([str(runs), "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "parity.csv").exists()


def test_partial_summarises_the_finished_runs_and_names_the_others(tmp_path):
    runs = tmp_path / "parity"
    _offrl_run(runs / "offrl" / "cql-seed0", 0, [50.0, 10.0, 20.0, 40.0, 42.0])
    _offrl_run(runs / "offrl" / "cql-seed1", 1, [50.0, 10.0, 20.0, 40.0, 44.0], finished=False)
    _d3rlpy_run(runs / "d3rlpy-seed0", 0, [20.0, 10.0, 20.0, 30.0])
    _d3rlpy_run(runs / "d3rlpy-seed1", 1, [20.0, 10.0, 20.0, 34.0])
    assert main([str(runs), "--out", str(tmp_path)]) == 2  # without --partial an unfinished run is refused
    assert main([str(runs), "--out", str(tmp_path), "--partial"]) == 0
    text = (tmp_path / "parity_summary.md").read_text()
    assert "Not finished yet, so not in the table: offrl cql-seed1 (step 40)." in text
    assert "No comparison yet: the sides have finished different seeds (d3rlpy 2.8.1 [0, 1]; offrl [0])" in text
    assert "Welch" not in text
    assert set(zip(*[pd.read_csv(tmp_path / "parity.csv")[c] for c in ("impl", "seed")], strict=True)) == {
        ("offrl", 0), ("d3rlpy 2.8.1", 0), ("d3rlpy 2.8.1", 1)}


def test_curves_of_runs_whose_folders_are_gone_come_from_the_earlier_parity_csv(tmp_path):
    runs = tmp_path / "parity"
    _both(runs)
    for folder in runs.glob("offrl/*"):  # a commit pandas would read as a number
        record = json.loads((folder / "run.json").read_text())
        (folder / "run.json").write_text(json.dumps({**record, "git_commit": "1234567"}))
    assert main([str(runs), "--out", str(tmp_path)]) == 0
    before = (tmp_path / "parity_summary.md").read_text(), pd.read_csv(tmp_path / "parity.csv")
    for folder in (runs / "offrl" / "cql-seed1", runs / "d3rlpy-seed0"):  # a machine that did not come back
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()
    assert main([str(runs), "--out", str(tmp_path)]) == 2  # only the folders, unless asked
    assert main([str(runs), "--out", str(tmp_path), "--earlier-curves"]) == 0
    after = pd.read_csv(tmp_path / "parity.csv")
    text = (tmp_path / "parity_summary.md").read_text()
    assert set(before[0].splitlines()) <= set(text.splitlines())  # the same table and comparison, and which curves
    assert "from the earlier parity.csv (their run folders are gone): d3rlpy 2.8.1 seed 0; offrl seed 1." in text
    key = ["impl", "seed", "step", "normalized_return"]
    pd.testing.assert_frame_equal(after.sort_values(key).reset_index(drop=True)[key],
                                  before[1].sort_values(key).reset_index(drop=True)[key])
    # a folder of that side and seed, even unfinished, is its run: the earlier curve does not stand in for it
    _offrl_run(runs / "offrl" / "cql-seed1", 1, [0.0] * 5, finished=False, commit="1234567")
    assert main([str(runs), "--out", str(tmp_path), "--earlier-curves", "--partial"]) == 0
    text = (tmp_path / "parity_summary.md").read_text()
    assert "Not finished yet, so not in the table: offrl cql-seed1 (step 40)." in text and "offrl seed 1" not in text
    # a run of another commit is not part of this result set
    _offrl_run(runs / "offrl" / "cql-seed2", 2, [0.0] * 5, commit="def")
    _d3rlpy_run(runs / "d3rlpy-seed2", 2, [0.0] * 4)
    assert main([str(runs), "--out", str(tmp_path), "--earlier-curves", "--partial"]) == 2


def test_an_empty_folder_is_one_line_and_exit_2(tmp_path, capsys):
    assert main([str(tmp_path), "--out", str(tmp_path)]) == 2
    assert "no offrl/ or d3rlpy-seed*/ run" in capsys.readouterr().err
    assert not (tmp_path / "parity.csv").exists()


def test_d3rlpys_runs_are_evaluated_and_biased_like_offrls():
    """benchmarks/d3rlpy_parity.py runs in d3rlpy's venv without offrl, so it restates offrl's evaluation seed and
    Q-bias tail tolerance."""
    import re
    from pathlib import Path

    from offrl.evaluation.report import EVAL_SEED, Q_BIAS_TAIL_TOLERANCE

    source = (Path(__file__).parents[2] / "benchmarks" / "d3rlpy_parity.py").read_text()
    assert int(re.search(r"^EVAL_SEED = ([\d_]+)$", source, re.M)[1]) == EVAL_SEED
    assert float(re.search(r"^Q_BIAS_TAIL_TOLERANCE = ([\d.e-]+)$", source, re.M)[1]) == Q_BIAS_TAIL_TOLERANCE
    assert "env.reset(seed=EVAL_SEED + seed + i)" in source


@pytest.mark.parametrize("env_id, obs_dim, act_dim", [("HalfCheetah-v5", 17, 6), ("Hopper-v5", 11, 3)])
def test_d3rlpys_evaluation_restated_gives_offrls_numbers_for_the_same_policy(env_id, obs_dim, act_dim):
    """d3rlpy_parity.evaluate (offrl's evaluation rewritten for d3rlpy's venv) against offrl's evaluate_in_env, on
    one policy (an untrained tiny CQL agent, whose actions are already in these envs' [-1, 1] bounds) handed to it
    as a d3rlpy algo would be: the same returns, Q bias and normalised Q bias, for an env that never terminates
    and one whose episodes end early (the Q bias then keeps every step of a terminated episode)."""
    import torch

    import offrl
    from benchmarks.d3rlpy_parity import evaluate
    from offrl.evaluation.report import evaluate_in_env
    from offrl.evaluation.scores import ReferenceScores

    agent = offrl.CQL("fast", actor_hidden=(8,), critic_hidden=(8,))
    agent.build(obs_dim, act_dim)
    policy = agent.policy

    class Forwarder:
        def compute_expected_q(self, observations, actions, reduction):
            assert reduction == "min"
            return policy.q(observations, actions)

    class D3rlpyLikeAlgo:
        impl = type("Impl", (), {"_q_func_forwarder": Forwarder()})()

        def predict(self, observations):
            with torch.no_grad():
                return policy.act(torch.as_tensor(observations)).numpy()

    ours = evaluate_in_env(policy, env_id, 2, 1, ReferenceScores(0.0, 1.0, "test"), 0.99)
    restated = evaluate(D3rlpyLikeAlgo(), env_id, 2, 1, 0.99)
    np.testing.assert_allclose(restated["return_mean"], ours.return_mean, rtol=1e-6)
    np.testing.assert_allclose(restated["return_std"], ours.return_std, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(restated["q_bias_mean"], ours.q_bias_mean, rtol=1e-5)
    np.testing.assert_allclose(restated["q_bias_normalized_mean"], ours.q_bias_normalized_mean, rtol=1e-5)


def test_the_env_fingerprint_is_a_function_of_the_dynamics():
    from benchmarks.env_fingerprint import fingerprint

    digest, steps = fingerprint("Hopper-v5", min_steps=200)
    assert fingerprint("Hopper-v5", min_steps=200) == (digest, steps) and steps >= 200
    assert fingerprint("Hopper-v5", min_steps=200, seed=1)[0] != digest  # other start states, another fingerprint
