"""`offrl ope` and `offrl.evaluate_policy_offline`: estimate, truth, run folder, results row, bad input."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch

import offrl
from offrl.algos.ope import OPEConfig
from offrl.cli import main
from offrl.data.collect import rollout_transitions
from offrl.data.registry import register_dataset
from offrl.train.ope import OPE_COLUMNS, append_ope_row, evaluate_policy_offline, load_target_policy, policy_fingerprint

TINY = OPEConfig(critic_hidden=(16,), batch_size=32, n_actions=4, backup_samples=2)


@pytest.fixture
def pendulum(tiny_policies):
    arrays, _ = rollout_transitions("Pendulum-v1", None, 400, seed=0, num_envs=2)
    register_dataset("pendulum/random-v0", arrays, {"env_id": "Pendulum-v1"})
    return offrl.load_dataset("pendulum/random-v0")


def test_an_estimate_with_its_truth_run_folder_resume_and_results_row(pendulum, tmp_path):
    out = tmp_path / "ope"
    report = evaluate_policy_offline("Pendulum-v1/expert", pendulum, "fqe", 20, config=TINY, truth_episodes=3,
                                     eval_every=10, log_every=10, run_dir=out, show_progress=False)
    assert report.updates == 20 and report.initial_states == 3 and report.initial_state_source == "env reset"
    assert report.estimate_ci_low <= report.estimate <= report.estimate_ci_high
    assert report.true_ci_low <= report.true_value <= report.true_ci_high and report.truth_episodes == 3
    assert report.error == pytest.approx(report.estimate - report.true_value)
    assert report.is_lower_bound == (report.estimate <= report.true_value)
    assert [step for step, _ in report.curve] == [10, 20]
    # the truth is π's mean discounted return from the same reset states, rolled out past Pendulum's 200-step limit
    # (Q̂ bootstraps through time-limit cuts) until γ^T <= 1e-3: 688 steps at γ = 0.99
    policy = load_target_policy("Pendulum-v1/expert")
    from offrl.evaluation.q_bias import discounted_returns
    from offrl.evaluation.rollout import rollout_episodes
    from offrl.train.ope import INITIAL_STATE_SEED, monte_carlo_value

    assert report.truth_horizon == 688
    assert monte_carlo_value(policy, "Pendulum-v1", 3, 0.99)[0] == pytest.approx(report.true_value)
    torch.manual_seed(INITIAL_STATE_SEED)
    episodes = rollout_episodes(lambda obs: policy.sample(obs, 1)[0][0], "Pendulum-v1", 3, INITIAL_STATE_SEED,
                                max_episode_steps=688)
    assert [len(e.rewards) for e in episodes] == [688] * 3
    assert np.mean([discounted_returns(e.rewards, 0.99)[0] for e in episodes]) == pytest.approx(report.true_value)
    estimates = pd.read_csv(out / "estimates.csv")
    assert list(estimates["step"]) == [10, 20] and estimates["estimate"].iloc[-1] == pytest.approx(report.estimate)
    assert json.loads((out / "run.json").read_text())["kind"] == "ope"
    # a finished estimate is reported, not redone
    again = evaluate_policy_offline("Pendulum-v1/expert", pendulum, "fqe", 20, config=TINY, truth_episodes=3,
                                    eval_every=10, log_every=10, run_dir=out, resume=True, show_progress=False)
    assert again.estimate == report.estimate
    results = tmp_path / "ope.csv"
    append_ope_row(results, report)
    append_ope_row(results, again)
    table = pd.read_csv(results)
    assert tuple(table.columns) == OPE_COLUMNS and len(table) == 2 and table["method"].tolist() == ["fqe", "fqe"]
    # the estimator config each row came from
    assert table["config_hash"].tolist() == [json.loads((out / "run.json").read_text())["config_hash"]] * 2
    # once: one row per run folder and number of updates; the folder resumed to more updates gets its own
    assert append_ope_row(results, report, once=True) is False
    longer = dataclasses.replace(report, updates=40)
    assert append_ope_row(results, longer, once=True) is True and append_ope_row(results, longer, once=True) is False
    assert pd.read_csv(results)["updates"].tolist() == [20, 20, 40]


def test_a_resumed_estimate_equals_an_uninterrupted_one(pendulum, tmp_path):
    whole = evaluate_policy_offline("Pendulum-v1/medium", pendulum, "cql-v", 20, config=TINY, truth=False, states=4,
                                    show_progress=False)
    evaluate_policy_offline("Pendulum-v1/medium", pendulum, "cql-v", 10, config=TINY, truth=False, states=4,
                            checkpoint_every=10, run_dir=tmp_path / "r", show_progress=False)
    # the same folder continued to 20 updates: another estimate is refused, naming what differs; the same resumes
    for change, differ in (({"method": "fqe"}, "config_hash"), ({"seed": 7}, "seed"),
                           ({"deterministic": True}, "policy_fingerprint"), ({"states": 5}, "initial_states"),
                           ({"policy": "Pendulum-v1/expert"}, "policy_fingerprint")):
        arguments = {"policy": "Pendulum-v1/medium", "method": "cql-v", "seed": 0, "deterministic": False,
                     "states": 4, **change}
        with pytest.raises(offrl.OfflineRLError, match=f"holds another estimate .*{differ}"):
            evaluate_policy_offline(arguments.pop("policy"), pendulum, arguments.pop("method"), 20, config=TINY,
                                    truth=False, run_dir=tmp_path / "r", resume=True, show_progress=False,
                                    **arguments)
    (tmp_path / "r" / "final.json").unlink()  # as if killed after its last checkpoint, before its report
    resumed = evaluate_policy_offline("Pendulum-v1/medium", pendulum, "cql-v", 20, config=TINY, truth=False,
                                      states=4, checkpoint_every=10, run_dir=tmp_path / "r", resume=True,
                                      show_progress=False)
    assert resumed.estimate == pytest.approx(whole.estimate, abs=0, rel=0)


def test_the_conservative_penalty_pulls_the_estimate_below_fqe_the_more_the_larger_alpha(pendulum):
    def estimate(method: str, alpha: float) -> float:
        config = OPEConfig(**{**TINY.__dict__, "critic_lr": 3e-3, "alpha": alpha})
        return evaluate_policy_offline("Pendulum-v1/expert", pendulum, method, 150, config=config, truth=False,
                                       states=8, show_progress=False).estimate

    fqe = estimate("fqe", 1.0)
    for method in ("cql-v", "cql-q"):
        assert estimate(method, 10.0) < estimate(method, 1.0) < fqe


def test_without_an_env_the_initial_states_are_the_datasets_episode_starts(tiny_policies):
    arrays, _ = rollout_transitions("Pendulum-v1", None, 400, seed=0, num_envs=2)
    keys = ("observations", "actions", "rewards", "terminals", "timeouts")
    dataset = offrl.dataset_from_arrays(*(arrays[k] for k in keys), next_observations=arrays["next_observations"])
    report = evaluate_policy_offline("Pendulum-v1/medium", dataset, "fqe", 5, config=TINY, truth=False,
                                     show_progress=False)
    assert report.initial_state_source == "dataset episode starts" and report.initial_states == 2  # 2 episodes
    with pytest.raises(offrl.OfflineRLError, match="no env to draw initial states from"):
        evaluate_policy_offline("Pendulum-v1/medium", dataset, "fqe", 5, config=TINY, truth=False,
                                initial_state_source="env", show_progress=False)
    assert report.true_value is None and report.is_lower_bound is None
    with pytest.raises(offrl.OfflineRLError, match="no env to roll the policy out in"):
        evaluate_policy_offline("Pendulum-v1/medium", dataset, "fqe", 5, config=TINY, show_progress=False)
    # dataset_from_arrays refuses data whose last row ends no episode; a hand-built OfflineDataset may hold one
    tensors = {**dataset.tensors, "terminals": dataset.tensors["terminals"] * 0,
               "timeouts": dataset.tensors["timeouts"] * 0}
    endless = offrl.OfflineDataset("stream", {"sha256": "x"}, tensors)
    with pytest.raises(offrl.OfflineRLError, match="no episode ends"):
        evaluate_policy_offline("Pendulum-v1/medium", endless, "fqe", 5, config=TINY, truth=False,
                                show_progress=False)


def test_an_exported_policy_is_deterministic_and_softmax_cql_q_refuses_it(pendulum, tmp_path):
    offrl.BC(actor_hidden=(8,), batch_size=16).fit(pendulum, 3, run_dir=tmp_path / "bc", final_eval_episodes=1,
                                                   show_progress=False)
    from offrl.export import export_policy

    exported = export_policy(tmp_path / "bc", tmp_path / "export")[0]
    policy = load_target_policy(exported)
    assert policy.deterministic and (policy.obs_dim, policy.act_dim) == (3, 1)
    observations = pendulum.tensors["observations"][:5]
    actions, densities = policy.sample(observations, 7)
    run_policy = load_target_policy(tmp_path / "bc", deterministic=True)
    np.testing.assert_allclose(actions.numpy(), run_policy.sample(observations, 1)[0].numpy(), atol=1e-5)
    assert actions.shape == (1, 5, 1) and densities is None
    with pytest.raises(offrl.OfflineRLError, match="needs a stochastic policy"):
        evaluate_policy_offline(exported, pendulum, "cql-q", 5, config=TINY, show_progress=False)
    report = evaluate_policy_offline(exported, pendulum, "cql-q", 5, config=OPEConfig(**{**TINY.__dict__, "mu":
                                                                                        "uniform"}),
                                     truth_episodes=2, show_progress=False)
    assert report.deterministic and report.mu == "uniform"


def test_a_runs_policy_snapshot_is_a_target_policy(pendulum, tmp_path):
    offrl.BC(actor_hidden=(8,), batch_size=16).fit(pendulum, 6, run_dir=tmp_path / "bc", eval_every=3,
                                                   eval_episodes=1, final_eval_episodes=1, show_progress=False)
    observations = pendulum.tensors["observations"][:5]

    def mean_action(spec):
        return load_target_policy(spec, deterministic=True).sample(observations, 1)[0]

    last, first = tmp_path / "bc" / "snapshots" / "actor_6.pt", tmp_path / "bc" / "snapshots" / "actor_3.pt"
    assert torch.equal(mean_action(last), mean_action(tmp_path / "bc"))
    assert not torch.equal(mean_action(first), mean_action(last))
    policy = load_target_policy(first)
    assert not policy.deterministic and policy.normalizer is not None  # the run's normaliser comes with it
    assert policy_fingerprint(policy) != policy_fingerprint(load_target_policy(last))
    last.write_bytes(b"not a torch file")
    with pytest.raises(offrl.OfflineRLError, match="policy snapshot .*actor_6.pt: cannot be read safely"):
        load_target_policy(last)


def test_cli_prints_the_estimate_and_appends_a_row(pendulum, tmp_path, capsys):
    results = tmp_path / "results" / "ope.csv"
    code = main(["ope", "--policy", "Pendulum-v1/expert", "--dataset", "pendulum/random-v0", "--method", "cql-v",
                 "--steps", "4", "--alpha", "2", "--truth-episodes", "2", "--quiet", "--set", "critic_hidden=[8]",
                 "--set", "batch_size=16", "--results", str(results), "--out", str(tmp_path / "run")])
    assert code == 0
    out = capsys.readouterr().out
    assert "estimate V(s0)" in out and "true value (Monte Carlo)" in out and "lower bound" in out
    row = pd.read_csv(results).iloc[0]
    assert row["method"] == "cql-v" and row["alpha"] == 2.0 and row["mu"] == "policy" and row["updates"] == 4
    # the dataset's episode starts instead of env resets (d3rlpy's choice), the truth still from env resets
    assert main(["ope", "--policy", "Pendulum-v1/expert", "--dataset", "pendulum/random-v0", "--method", "fqe",
                 "--steps", "2", "--truth-episodes", "2", "--quiet", "--set", "critic_hidden=[8]",
                 "--initial-states", "dataset", "--results", str(results)]) == 0
    row = pd.read_csv(results).iloc[1]
    assert row["initial_state_source"] == "dataset episode starts" and row["initial_states"] == 2


@pytest.mark.parametrize("args, message", [
    (["--policy", "HalfCheetah-v5/expert"], "--policy HalfCheetah-v5/expert: observation/action dimensions 17/6 do "
                                            "not match dataset pendulum/random-v0 (3/1)"),
    (["--policy", "Pendulum-v1/nope"], "--policy Pendulum-v1/nope: no shipped policy 'nope' for Pendulum-v1"),
    (["--policy", "no/such/thing"], "--policy no/such/thing: not a shipped policy"),
    (["--set", "alpha=-1"], "alpha must be a number >= 0"),
    (["--set", "gamma=2"], "gamma must be in [0, 1)"),
    (["--env", "HalfCheetah-v5"], "--env HalfCheetah-v5: observation/action dimensions 17/6 do not match"),
    (["--alpha", "2"], "--alpha: fqe has no penalty to weigh"),
    (["--method", "cql-v", "--mu", "uniform"], "--mu: only cql-q takes a penalty distribution"),
    (["--policy", "random", "--deterministic", ""], "--policy random with --deterministic: a uniform policy has "
                                                    "no mean action"),  # a flag: its empty value is not passed
])
def test_cli_bad_input_is_one_line_exit_2_and_nothing_written(pendulum, tmp_path, capsys, monkeypatch, args,
                                                              message):
    if args[:2] == ["--policy", "HalfCheetah-v5/expert"]:
        monkeypatch.delenv("OFFRL_POLICIES_PATH")  # the shipped HalfCheetah policy
    base = {"--policy": "Pendulum-v1/expert", "--dataset": "pendulum/random-v0", "--method": "fqe", "--steps": "3"}
    flags = dict(zip(args[::2], args[1::2], strict=True))
    argv = ["ope", *[x for k, v in {**base, **flags}.items() if k != "--set" for x in ((k, v) if v else (k,))],
            *(["--set", flags["--set"]] if "--set" in flags else []), "--quiet", "--out", str(tmp_path / "out"),
            "--results", str(tmp_path / "ope.csv")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "ope.csv").exists()


@pytest.mark.parametrize("env_id, message", [
    (None, "dataset pendulum/other-v0: no env to roll the policy out in, so no true value"),
    ("Nope-v9", "dataset pendulum/other-v0 (its env Nope-v9): unknown env id 'Nope-v9'"),
])
def test_cli_a_dataset_without_a_usable_env_is_one_line_exit_2_and_nothing_written(pendulum, tmp_path, capsys,
                                                                                   env_id, message):
    arrays, _ = rollout_transitions("Pendulum-v1", None, 200, seed=3, num_envs=1)
    register_dataset("pendulum/other-v0", arrays, {"env_id": env_id} if env_id else {})
    argv = ["ope", "--policy", "Pendulum-v1/expert", "--dataset", "pendulum/other-v0", "--method", "fqe",
            "--steps", "3", "--quiet", "--out", str(tmp_path / "out"), "--results", str(tmp_path / "ope.csv")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "ope.csv").exists()


def test_deterministic_is_refused_for_a_policy_object_that_samples(pendulum):
    policy = load_target_policy("Pendulum-v1/expert")
    with pytest.raises(offrl.OfflineRLError, match="deterministic=True: the policy object given samples"):
        evaluate_policy_offline(policy, pendulum, "fqe", 2, config=TINY, truth=False, states=2, deterministic=True,
                                show_progress=False)
    report = evaluate_policy_offline(load_target_policy("Pendulum-v1/expert", deterministic=True), pendulum, "fqe",
                                     2, config=TINY, truth=False, states=2, deterministic=True, show_progress=False)
    assert report.deterministic


def test_a_results_file_of_another_kind_is_refused_before_any_work(pendulum, tmp_path, capsys):
    other = tmp_path / "leaderboard.csv"
    other.write_text("run_id,phase\nx,offline\n")
    assert main(["ope", "--policy", "Pendulum-v1/expert", "--dataset", "pendulum/random-v0", "--method", "fqe",
                 "--steps", "2", "--quiet", "--results", str(other), "--out", str(tmp_path / "out")]) == 2
    assert "not an offrl OPE results file" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_a_results_file_of_another_kind_is_refused(pendulum, tmp_path):
    report = evaluate_policy_offline("Pendulum-v1/expert", pendulum, "fqe", 2, config=TINY, truth=False, states=2,
                                     show_progress=False)
    other = tmp_path / "leaderboard.csv"
    other.write_text("run_id,phase\nx,offline\n")
    with pytest.raises(offrl.OfflineRLError, match="not an offrl OPE results file"):
        append_ope_row(other, report)
    assert other.read_text() == "run_id,phase\nx,offline\n"


def test_a_kept_snapshot_is_the_same_target_policy_without_its_run_folder(pendulum, tmp_path):
    """evaluation/scripts/keep_ope_policy.sh copies what a snapshot needs out of a run folder (which is not
    committed), so an OPE sweep over kept copies re-runs from a clean clone."""
    import shutil
    import subprocess
    from pathlib import Path

    script = Path(__file__).parents[2] / "evaluation" / "scripts" / "keep_ope_policy.sh"
    run = tmp_path / "bc-seed0"
    offrl.BC(actor_hidden=(8,), batch_size=16).fit(pendulum, 6, run_dir=run, eval_every=3, eval_episodes=1,
                                                   final_eval_episodes=1, show_progress=False)
    observations = pendulum.tensors["observations"][:5]
    env = {"OPE_POLICIES": str(tmp_path / "kept"), "PATH": "/usr/bin:/bin"}
    before = {step: load_target_policy(run / "snapshots" / f"actor_{step}.pt", deterministic=True)
              .sample(observations, 1)[0] for step in (3, 6)}
    kept = subprocess.run(["bash", str(script), str(run), "3", "6"], env=env, capture_output=True, text=True)
    assert kept.returncode == 0, kept.stderr
    paths = kept.stdout.split()
    assert paths == [str(tmp_path / "kept" / "bc-seed0" / "snapshots" / f"actor_{s}.pt") for s in (3, 6)]
    again = subprocess.run(["bash", str(script), str(run), "6"], env=env, capture_output=True, text=True)
    assert again.returncode == 0 and again.stdout.split() == paths[1:]  # keeping the same snapshot twice is fine
    shutil.rmtree(run)
    for step, path in zip((3, 6), paths, strict=True):
        policy = load_target_policy(path)
        assert not policy.deterministic and policy.normalizer is not None
        assert torch.equal(load_target_policy(path, deterministic=True).sample(observations, 1)[0], before[step])
    refused = subprocess.run(["bash", str(script), str(run)], env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and "is not a training run folder" in refused.stderr
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["bc-seed0"]  # no temp folder left behind
    # another run of the same name (a relative path, from elsewhere) is refused, not mixed into the kept one
    offrl.BC(actor_hidden=(8,), batch_size=16).fit(pendulum, 6, seed=1, run_dir=run, eval_every=3, eval_episodes=1,
                                                   final_eval_episodes=1, show_progress=False)
    other = subprocess.run(["bash", str(script), "bc-seed0", "6"], env=env, cwd=tmp_path, capture_output=True,
                           text=True)
    assert other.returncode == 2 and "holds another run's policies (run.json differs" in other.stderr
    assert torch.equal(load_target_policy(paths[1], deterministic=True).sample(observations, 1)[0], before[6])
