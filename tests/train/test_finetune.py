import json

import pandas as pd
import pytest
import torch

from offrl.agents import CQL
from offrl.algos.cql import CQLAgent, CQLConfig, cql_critic_loss, sample_cql_actions
from offrl.data.buffer import Batch
from offrl.data.collect import rollout_transitions
from offrl.data.dataset import load_dataset
from offrl.data.registry import data_path, register_dataset
from offrl.errors import OfflineRLError
from offrl.train.finetune import FinetuneSettings, online_auc, unlearning_dip
from offrl.train.finetune import finetune as finetune_report


def finetune(*args, **kwargs):
    return finetune_report(*args, **kwargs).to_dict()


def test_dip_and_area_on_a_known_curve():
    curve = [(0, 50.0), (500, 30.0), (1000, 40.0), (10_000, 80.0)]
    assert unlearning_dip(curve, 10_000) == -20.0
    assert online_auc([(0, 0.0), (10, 10.0)]) == 5.0


def _calibration_case(bound):
    torch.manual_seed(0)
    config = CQLConfig(actor_hidden=(8,), critic_hidden=(8,), n_actions=3, calibrated=True)
    agent = CQLAgent(3, 2, config)
    g = torch.Generator().manual_seed(1)
    batch = Batch(observations=torch.randn(4, 3, generator=g), actions=torch.rand(4, 2, generator=g) * 2 - 1,
                  rewards=torch.zeros(4), next_observations=torch.randn(4, 3, generator=g), terminals=torch.zeros(4),
                  timeouts=torch.zeros(4), mc_returns=torch.full((4,), bound))
    actions, log_density = sample_cql_actions(agent, batch, 3)
    return agent, batch, config, actions, log_density


def test_calibration_floors_only_policy_action_q_values():
    agent, batch, config, actions, log_density = _calibration_case(bound=50.0)
    _, gap, diag = cql_critic_loss(agent, batch, config, torch.zeros(4), actions, log_density)
    assert diag["calql_below_bound"] == 1.0  # an untrained critic sits far below 50
    q = agent.critic(batch.observations.expand(9, 4, 3), actions)  # (2, 9, 4)
    floored = torch.cat([q[:, :3], torch.full_like(q[:, 3:], 50.0)], dim=1)  # uniform actions untouched
    expected = torch.logsumexp(floored - log_density, dim=1) - agent.critic(batch.observations, batch.actions)
    torch.testing.assert_close(gap, expected.mean(dim=1))


def test_calibration_changes_nothing_when_q_is_above_the_bound():
    agent, batch, config, actions, log_density = _calibration_case(bound=-1e6)
    _, calibrated, diag = cql_critic_loss(agent, batch, config, torch.zeros(4), actions, log_density)
    plain = CQLConfig(actor_hidden=(8,), critic_hidden=(8,), n_actions=3)
    _, gap, _ = cql_critic_loss(agent, batch, plain, torch.zeros(4), actions, log_density)
    torch.testing.assert_close(calibrated, gap)
    assert diag["calql_below_bound"] == 0.0


@pytest.fixture
def offline_run(tmp_path):
    arrays, _ = rollout_transitions("Pendulum-v1", None, 800, seed=0, num_envs=2)
    register_dataset("pendulum/random-v0", arrays, {"env_id": "Pendulum-v1", "reference_scores": {
        "random": {"return_mean": -1200.0}, "expert": {"return_mean": -150.0}}})
    config = CQLConfig(actor_hidden=(16,), critic_hidden=(16,), n_actions=2, batch_size=32)
    CQL(config).fit(load_dataset("pendulum/random-v0"), 20, eval_every=100, eval_episodes=1, log_every=10,
                    checkpoint_every=10, run_dir=tmp_path / "offline", show_progress=False)
    return tmp_path / "offline"


def _finetune_run(steps, calibrated=False):
    return FinetuneSettings(online_steps=steps, calibrated=calibrated, eval_every=200, eval_episodes=1, log_every=100,
                       checkpoint_every=200)


def test_finetune_reports_before_during_after_and_writes_an_online_row(offline_run, tmp_path):
    leaderboard = tmp_path / "lb.csv"
    report = finetune(offline_run, _finetune_run(400, calibrated=True), tmp_path / "ft", leaderboard=leaderboard,
                      show_progress=False)
    evaluations = pd.read_csv(tmp_path / "ft" / "evaluations.csv")
    assert evaluations["step"].tolist() == [0, 20, 40, 200, 400]  # 5% and 10% too, for the dip
    assert "q_bias_normalized_mean" in evaluations
    assert {"unlearning_dip", "online_auc", "before_normalized_return"} <= set(report)
    metrics = pd.read_csv(tmp_path / "ft" / "metrics.csv")
    assert metrics["buffer_size"].tolist() == [0, 200, 200, 400]  # episodes (200 steps) enter when complete
    assert "calql_below_bound" in metrics
    row = pd.read_csv(leaderboard).iloc[0]
    assert row["phase"] == "online" and row["online_steps"] == 400 and row["algorithm"] == "Cal-QL"


def test_resume_in_the_middle_of_fine_tuning_continues_exactly(offline_run, tmp_path):
    finetune(offline_run, _finetune_run(600), tmp_path / "whole", show_progress=False)
    finetune(offline_run, _finetune_run(400), tmp_path / "split", show_progress=False)
    finetune(offline_run, _finetune_run(600), tmp_path / "split", resume=True, show_progress=False)
    whole = pd.read_csv(tmp_path / "whole" / "metrics.csv").drop(columns="updates_per_s")
    split = pd.read_csv(tmp_path / "split" / "metrics.csv").drop(columns="updates_per_s")
    pd.testing.assert_frame_equal(whole, split)


def test_bad_sources_are_refused_and_nothing_is_written(offline_run, tmp_path):
    with pytest.raises(OfflineRLError, match="not an offrl offline run"):
        finetune(tmp_path, _finetune_run(10), tmp_path / "a", show_progress=False)
    info = json.loads((offline_run / "run.json").read_text())
    (offline_run / "run.json").write_text(json.dumps({**info, "env_id": "MountainCarContinuous-v0"}))
    with pytest.raises(OfflineRLError, match="obs/act dims 3/1, env MountainCarContinuous-v0 has 2/1"):
        finetune(offline_run, _finetune_run(10), tmp_path / "b", show_progress=False)
    (offline_run / "run.json").write_text(json.dumps(info))
    with open(data_path("pendulum/random-v0"), "ab") as f:
        f.write(b"tampered")
    with pytest.raises(OfflineRLError, match="sha256 mismatch"):
        finetune(offline_run, _finetune_run(10), tmp_path / "c", show_progress=False)
    assert not any((tmp_path / name).exists() for name in "abc")


def test_cal_ql_pretrains_calibrated_offline_and_fine_tuning_keeps_it(tmp_path):
    arrays, _ = rollout_transitions("Pendulum-v1", None, 600, seed=0, num_envs=2)
    register_dataset("pendulum/random-v0", arrays, {"env_id": "Pendulum-v1", "reference_scores": {
        "random": {"return_mean": -1200.0}, "expert": {"return_mean": -150.0}}})
    config = CQLConfig(actor_hidden=(16,), critic_hidden=(16,), n_actions=2, batch_size=32, calibrated=True)
    CQL(config).fit(load_dataset("pendulum/random-v0"), 20, eval_every=100, eval_episodes=1, log_every=10,
                    checkpoint_every=10, run_dir=tmp_path / "offline", show_progress=False)
    assert json.loads((tmp_path / "offline" / "run.json").read_text())["algorithm"] == "Cal-QL"
    below = pd.read_csv(tmp_path / "offline" / "metrics.csv")["calql_below_bound"]
    assert below.between(0, 1).all()

    inherited = finetune(tmp_path / "offline", _finetune_run(200, calibrated=None), tmp_path / "ft",
                         show_progress=False)
    switched_off = finetune(tmp_path / "offline", _finetune_run(200, calibrated=False), tmp_path / "ft-off",
                            show_progress=False)
    assert inherited["calibrated"] is True and switched_off["calibrated"] is False
    assert "calql_below_bound" in pd.read_csv(tmp_path / "ft" / "metrics.csv")
    assert "calql_below_bound" not in pd.read_csv(tmp_path / "ft-off" / "metrics.csv")


def test_fine_tuning_continues_the_offline_optimizer_state(offline_run, tmp_path):
    """Adam's moments and step counts carry over from the offline checkpoint (CORL, Cal-QL): after 20 offline and
    400 online updates every optimizer has taken 420 steps, not 400."""
    offline = torch.load(offline_run / "checkpoint.pt", weights_only=True)
    finetune(offline_run, _finetune_run(400), tmp_path / "ft", show_progress=False)
    online = torch.load(tmp_path / "ft" / "checkpoint.pt", weights_only=True)
    for name in ("actor", "critic", "alpha"):
        before = {int(s["step"]) for s in offline["optimizers"][name]["state"].values()}
        after = {int(s["step"]) for s in online["optimizers"][name]["state"].values()}
        assert before == {20} and after == {420}, name


def test_online_episodes_enter_the_buffer_normalized_scaled_and_with_their_returns_to_go():
    from offrl.data.dataset import ObservationNormalizer
    from offrl.train.finetune import _episode_rows

    normalizer = ObservationNormalizer(mean=torch.tensor([1.0, -2.0]), std=torch.tensor([2.0, 4.0]))
    episode = {"observations": [[1.0, -2.0], [3.0, 2.0], [5.0, 6.0]], "actions": [[0.1], [0.2], [0.3]],
               "rewards": [1.0, 2.0, 4.0], "next_observations": [[3.0, 2.0], [5.0, 6.0], [7.0, 10.0]],
               "terminals": [False, False, False], "timeouts": [False, False, False]}  # cut by the online budget
    rows = _episode_rows(episode, normalizer, reward_scale=0.5, gamma=0.9, device="cpu")
    torch.testing.assert_close(rows["observations"], torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]))
    torch.testing.assert_close(rows["next_observations"], torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]))
    torch.testing.assert_close(rows["rewards"], torch.tensor([0.5, 1.0, 2.0]))
    assert rows["timeouts"].tolist() == [0.0, 0.0, 1.0] and rows["terminals"].tolist() == [0.0, 0.0, 0.0]
    # G_t in scaled reward units, no bootstrap past the cut: 2; 1 + 0.9·2; 0.5 + 0.9·(1 + 0.9·2)
    torch.testing.assert_close(rows["mc_returns"], torch.tensor([0.5 + 0.9 * 2.8, 2.8, 2.0]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fine_tuning_with_compile_on_cuda_replays_whole_update_graphs(offline_run, tmp_path, monkeypatch):
    import dataclasses

    import offrl.train.finetune as finetune_module

    made = []

    class Recorded(finetune_module.CUDAGraphUpdate):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(finetune_module, "CUDAGraphUpdate", Recorded)
    settings = dataclasses.replace(_finetune_run(400, calibrated=True), device="cuda", compile=True)
    report = finetune(offline_run, settings, tmp_path / "ft", show_progress=False)
    assert len(made) == 1 and set(made[0].graphs) == {False}  # every online update replayed the one graph
    metrics = pd.read_csv(tmp_path / "ft" / "metrics.csv")
    assert metrics["buffer_size"].tolist() == [0, 200, 200, 400]
    assert metrics[["critic_loss", "cql_loss", "actor_loss"]].notna().all().all()
    assert report["before_normalized_return"] is not None
    # resumed from its own checkpoint (capturable optimiser state included), it continues to the new budget
    longer = dataclasses.replace(settings, online_steps=600)
    finetune(offline_run, longer, tmp_path / "ft", resume=True, show_progress=False)
    assert pd.read_csv(tmp_path / "ft" / "metrics.csv")["step"].max() == 600
