import json

import pandas as pd
import pytest
import torch
import yaml

import offrl.agents as agents
from offrl.agents import CQL
from offrl.algos.cql import CQLConfig
from offrl.cli import main
from offrl.data.collect import rollout_transitions
from offrl.data.dataset import load_dataset
from offrl.data.registry import register_dataset
from offrl.errors import OfflineRLError
from offrl.evaluation.leaderboard import COLUMNS
from offrl.runs import evaluate_run

TINY = {"actor_hidden": [16, 16], "critic_hidden": [16, 16], "n_actions": 2, "batch_size": 32, "bc_steps": 5}


@pytest.fixture
def pendulum_dataset():
    arrays, _ = rollout_transitions("Pendulum-v1", None, 1000, seed=0, num_envs=2)
    register_dataset("pendulum/random-v0", arrays, {"env_id": "Pendulum-v1", "reference_scores": {
        "random": {"return_mean": -1200.0, "source": "test"}, "expert": {"return_mean": -150.0, "source": "test"}}})
    return "pendulum/random-v0"


def train_cql(dataset, config, out, steps=40, seed=0, **options):
    """The API path `offrl train-cql` takes, with the tiny schedule these tests use; returns the report dict."""
    report = CQL(config).fit(load_dataset(dataset), steps, seed=seed, eval_every=20, eval_episodes=2,
                             final_eval_episodes=2, log_every=10, checkpoint_every=20, run_dir=out,
                             show_progress=False, **options)
    return report.to_dict()


def test_a_run_leaves_its_record_and_a_leaderboard_row(pendulum_dataset, tmp_path):
    leaderboard = tmp_path / "lb.csv"
    report = train_cql(pendulum_dataset, CQLConfig(**{**TINY, "actor_hidden": (16, 16),
                                                            "critic_hidden": (16, 16)}),
                       tmp_path / "run", leaderboard=leaderboard)
    run_dir = tmp_path / "run"
    info = json.loads((run_dir / "run.json").read_text())
    assert info["dataset_sha256"] and info["seed"] == 0 and info["config"]["n_actions"] == 2 and info["git_commit"]
    assert {"mean", "std"} == set(json.loads((run_dir / "normalizer.json").read_text()))
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert metrics["step"].tolist() == [10, 20, 30, 40]
    for column in ("q_data", "q_random", "q_pi_s", "q_pi_next_s", "cql_gap", "alpha", "alpha_prime", "entropy"):
        assert column in metrics
    assert (run_dir / "q_bias_curve.csv").is_file()
    evaluations = pd.read_csv(run_dir / "evaluations.csv")
    assert evaluations["step"].tolist() == [20, 40]  # the Q-bias learning curve: at every evaluation
    assert evaluations[["q_bias_mean", "q_bias_normalized_mean"]].notna().all().all()
    assert evaluations["q_bias_mean"].iloc[-1] == pytest.approx(report["q_bias_mean"])
    assert report["q_bias_states"] > 0 and "dropped" in report["q_bias_rule"]
    assert "average_value_estimate" in report and "initial_state_value_estimate" in report
    row = pd.read_csv(leaderboard)
    assert list(row.columns) == COLUMNS and len(row) == 1
    assert row.loc[0, "dataset_id"] == pendulum_dataset and row.loc[0, "final_normalized_return"] == pytest.approx(
        report["final_normalized_return"])
    evaluated = evaluate_run(run_dir, episodes=2, leaderboard=leaderboard)
    assert evaluated.final_normalized_return == pytest.approx(report["final_normalized_return"])
    assert len(pd.read_csv(leaderboard)) == 2


def test_a_run_keeps_its_policy_at_every_evaluation(pendulum_dataset, tmp_path):
    from offrl.runs import restore_run
    from offrl.train.run_folder import snapshot_path, snapshot_steps

    train_cql(pendulum_dataset, CQLConfig(**TINY), tmp_path / "run", steps=40)
    assert snapshot_steps(tmp_path / "run") == [20, 40]  # the evaluations' steps, the final one included
    final = restore_run(tmp_path / "run").agent.networks.actor.state_dict()
    at_40 = torch.load(snapshot_path(tmp_path / "run", 40), weights_only=True)
    at_20 = torch.load(snapshot_path(tmp_path / "run", 20), weights_only=True)
    assert all(torch.equal(at_40[k], final[k]) for k in final)
    assert not all(torch.equal(at_20[k], final[k]) for k in final)
    # a CQL snapshot is a target policy of `offrl ope`, with the run's normaliser, checkpoint or not
    from offrl.train.ope import load_target_policy

    observations = load_dataset(pendulum_dataset).tensors["observations"][:4]
    from_run = load_target_policy(tmp_path / "run", deterministic=True).sample(observations, 1)[0]
    (tmp_path / "run" / "checkpoint.pt").unlink()
    snapshot = load_target_policy(snapshot_path(tmp_path / "run", 40), deterministic=True)
    assert torch.equal(snapshot.sample(observations, 1)[0], from_run)
    at_20["mean.weight" if "mean.weight" in at_20 else next(iter(at_20))].fill_(float("nan"))
    torch.save(at_20, snapshot_path(tmp_path / "run", 20))
    with pytest.raises(OfflineRLError, match="policy snapshot .*actor_20.pt: non-finite weights"):
        load_target_policy(snapshot_path(tmp_path / "run", 20))


def test_a_resumed_run_drops_snapshots_written_after_its_last_checkpoint(pendulum_dataset, tmp_path):
    import shutil

    from offrl.train.run_folder import snapshot_path, snapshot_steps

    train_cql(pendulum_dataset, CQLConfig(**TINY), tmp_path / "run", steps=20)
    shutil.copy(snapshot_path(tmp_path / "run", 20), snapshot_path(tmp_path / "run", 30))  # a killed attempt's
    train_cql(pendulum_dataset, CQLConfig(**TINY), tmp_path / "run", steps=40, resume=True)
    assert snapshot_steps(tmp_path / "run") == [20, 40]


def test_resume_continues_exactly(pendulum_dataset, tmp_path):
    config = lambda: CQLConfig(actor_hidden=(16, 16), critic_hidden=(16, 16), n_actions=2, batch_size=32)  # noqa: E731
    train_cql(pendulum_dataset, config(), tmp_path / "whole", steps=40)
    train_cql(pendulum_dataset, config(), tmp_path / "split", steps=20)
    train_cql(pendulum_dataset, config(), tmp_path / "split", steps=40, resume=True)
    whole = pd.read_csv(tmp_path / "whole" / "metrics.csv").drop(columns="updates_per_s")
    split = pd.read_csv(tmp_path / "split" / "metrics.csv").drop(columns="updates_per_s")
    pd.testing.assert_frame_equal(whole, split)


def test_a_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(pendulum_dataset, tmp_path,
                                                                             monkeypatch):
    real_update = agents.cql_update

    def diverging(agent, batch, config, step, losses):
        metrics = real_update(agent, batch, config, step, losses)
        if step >= 25:
            metrics["critic_loss"] = torch.tensor(float("nan"))
        return metrics

    monkeypatch.setattr(agents, "cql_update", diverging)
    with pytest.raises(OfflineRLError,
                       match=r"diverged at step 30 \(critic_loss=nan\).*last good checkpoint \(step 20\)"):
        train_cql(pendulum_dataset, CQLConfig(actor_hidden=(16,), critic_hidden=(16,), n_actions=2),
                  tmp_path / "run")
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["loop"]["step"] == 20


def test_cli_bad_input_is_one_clear_error(pendulum_dataset, tmp_path, capsys):
    def run(*extra):
        code = main(["train-cql", "--dataset", pendulum_dataset, "--steps", "5", "--out", str(tmp_path / "x"),
                     "--leaderboard", str(tmp_path / "lb.csv"), "--quiet", *extra])
        return code, capsys.readouterr().err

    assert run("--config", "nope") == (2, run("--config", "nope")[1])
    assert "no such shipped config" in run("--config", "nope")[1]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**TINY, "learning_rate": 1.0}))
    assert "unknown key(s) learning_rate" in run("--config", str(bad))[1]
    bad.write_text(yaml.safe_dump({**TINY, "critic_lr": -1.0}))
    assert "critic_lr must be a positive number" in run("--config", str(bad))[1]
    bad.write_text(yaml.safe_dump({**TINY, "n_actions": 0}))
    assert "n_actions must be an integer >= 1" in run("--config", str(bad))[1]
    code = main(["train-cql", "--dataset", "pendulum/nothing-v0", "--steps", "5", "--out", str(tmp_path / "y")])
    assert code == 2 and "unknown dataset 'pendulum/nothing-v0'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_dataset_whose_dims_do_not_match_its_env_is_refused(tmp_path):
    arrays, _ = rollout_transitions("Pendulum-v1", None, 200, seed=0, num_envs=1)
    register_dataset("hopper/wrong-v0", arrays, {"env_id": "Hopper-v5", "reference_scores": {
        "random": {"return_mean": 0.0}, "expert": {"return_mean": 1.0}}})
    with pytest.raises(OfflineRLError, match="obs/act dims 3/1 do not match env Hopper-v5 .11/3."):
        train_cql("hopper/wrong-v0", CQLConfig(), tmp_path / "run")
