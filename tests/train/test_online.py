import pandas as pd
import pytest
import torch

from offrl.algos.sac import SACConfig
from offrl.cli import main
from offrl.errors import OfflineRLError
from offrl.train.online import PretrainSettings, pretrain


def _config(steps, env_id="Pendulum-v1"):
    return PretrainSettings(env_id=env_id, env_steps=steps, learning_starts=100, eval_every=200, eval_episodes=2,
                          log_every=50, checkpoint_every=200, sac=SACConfig(hidden=(16, 16), batch_size=16))


def test_resumed_run_logs_exactly_what_an_uninterrupted_run_logs(tmp_path):
    pretrain(_config(600), tmp_path / "whole", show_progress=False)
    pretrain(_config(400), tmp_path / "split", show_progress=False)  # "interrupted" after 400 steps
    pretrain(_config(600), tmp_path / "split", resume=True, show_progress=False)
    whole = pd.read_csv(tmp_path / "whole" / "metrics.csv").drop(columns="updates_per_s")
    split = pd.read_csv(tmp_path / "split" / "metrics.csv").drop(columns="updates_per_s")
    assert len(whole) == 12
    pd.testing.assert_frame_equal(whole, split)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "whole" / "evaluations.csv"),
                                  pd.read_csv(tmp_path / "split" / "evaluations.csv"))
    a = torch.load(tmp_path / "whole" / "snapshots" / "actor_600.pt", weights_only=True)["actor"]
    b = torch.load(tmp_path / "split" / "snapshots" / "actor_600.pt", weights_only=True)["actor"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_holds_everything_needed(tmp_path):
    pretrain(_config(200), tmp_path / "run", show_progress=False)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert state["loop"]["step"] == 200
    assert {"actor", "critic", "critic_target"} <= {k.split(".")[0] for k in state["agent"]}
    assert "log_alpha" in state["agent"]
    assert set(state["optimizers"]) == {"actor", "critic", "alpha"}
    assert {"torch", "numpy", "python"} <= set(state["rng"]) and "reset" in state["source"]["env_rng"]
    assert len(state["source"]["buffer"]["transitions"]["rewards"]) == 200


def test_existing_run_is_not_overwritten_without_resume(tmp_path):
    pretrain(_config(200), tmp_path / "run", show_progress=False)
    before = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    with pytest.raises(OfflineRLError, match="already holds a run"):
        pretrain(_config(200), tmp_path / "run", show_progress=False)
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == before


def test_resume_refuses_a_checkpoint_of_another_env(tmp_path):
    pretrain(_config(200), tmp_path / "run", show_progress=False)
    with pytest.raises(OfflineRLError, match="trained on 'Pendulum-v1'"):
        pretrain(_config(400, env_id="MountainCarContinuous-v0"), tmp_path / "run", resume=True, show_progress=False)


def test_resume_refuses_a_checkpoint_with_other_dims(tmp_path):
    pretrain(_config(200), tmp_path / "run", show_progress=False)
    path = tmp_path / "run" / "checkpoint.pt"
    state = torch.load(path, weights_only=False)
    state["obs_dim"] = 7
    torch.save(state, path)
    with pytest.raises(OfflineRLError, match="obs/act dims 7/1 do not match"):
        pretrain(_config(400), tmp_path / "run", resume=True, show_progress=False)


def test_cli_bad_input_exits_2_with_one_clear_line(tmp_path, capsys):
    assert main(["pretrain", "--env", "NoSuchEnv-v0", "--steps", "10", "--out", str(tmp_path / "a")]) == 2
    assert "unknown env id 'NoSuchEnv-v0'" in capsys.readouterr().err
    assert main(["pretrain", "--env", "Pendulum-v1", "--steps", "10", "--out", str(tmp_path / "b"), "--resume"]) == 2
    assert "holds no run (no such folder)" in capsys.readouterr().err
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "c" / "run.json").write_text('{"kind": "sac-online"}')
    assert main(["pretrain", "--env", "Pendulum-v1", "--steps", "10", "--out", str(tmp_path / "c"), "--resume"]) == 2
    assert "cannot be read" in capsys.readouterr().err
    for bad in ("0", "-5"):
        with pytest.raises(SystemExit) as exit_info:
            main(["pretrain", "--env", "Pendulum-v1", "--steps", bad])
        assert exit_info.value.code == 2
        assert "expected a positive integer" in capsys.readouterr().err


@pytest.mark.slow
def test_sac_learns_pendulum(tmp_path):
    """`make test-slow`: SAC on Pendulum-v1 reaches >= -400 within 20k steps (a few minutes here)."""
    config = PretrainSettings(env_id="Pendulum-v1", env_steps=20_000, learning_starts=1_000, eval_every=5_000)
    pretrain(config, tmp_path / "run", show_progress=False)
    evaluations = pd.read_csv(tmp_path / "run" / "evaluations.csv")
    assert evaluations["return_mean"].iloc[-1] >= -400
