"""Runs end finished or resumable, whatever stops them (in-process; the SIGKILL matrix is tests/test_faults.py)."""

import json
import math
import os
import signal

import pandas as pd
import pytest
import torch
from filelock import FileLock

import offrl.agents as agents
import offrl.train.loop as loop_module
from offrl.agents import CQL
from offrl.algos.cql import CQLConfig
from offrl.cli import main
from offrl.data.collect import rollout_transitions
from offrl.data.dataset import load_dataset
from offrl.data.registry import register_dataset
from offrl.errors import OfflineRLError, TrainingInterrupted
from offrl.train.run_folder import LOCK_NAME

TINY = CQLConfig(actor_hidden=(16,), critic_hidden=(16,), n_actions=2, batch_size=32, bc_steps=5)
STABLE = ("final_normalized_return", "best_normalized_return", "mean_return", "q_bias_mean",
          "average_value_estimate", "updates")


@pytest.fixture
def dataset():
    arrays, _ = rollout_transitions("Pendulum-v1", None, 600, seed=0, num_envs=2)
    register_dataset("pendulum/random-v0", arrays, {"env_id": "Pendulum-v1", "reference_scores": {
        "random": {"return_mean": -1200.0, "source": "test"}, "expert": {"return_mean": -150.0, "source": "test"}}})
    return load_dataset("pendulum/random-v0")


def fit(dataset, out, steps=40, checkpoint_every=15, **options):
    return CQL(TINY).fit(dataset, steps, seed=0, eval_every=20, eval_episodes=1, final_eval_episodes=1, log_every=10,
                         checkpoint_every=checkpoint_every, run_dir=out, show_progress=False, **options)


def stable(report) -> dict:
    values = report if isinstance(report, dict) else report.to_dict()
    return {k: values[k] for k in STABLE}


class Stop(BaseException):
    """Stands in for a kill at a fault point (files on disk are what a SIGKILL would leave: writes are atomic)."""


def stop_at(monkeypatch, point: str, nth: int = 1) -> dict:
    """Raise Stop the nth time `point` is reached; returns a switch (`switch["armed"] = False` disarms it)."""
    switch = {"armed": True, "seen": 0}

    def fault(name):
        if switch["armed"] and name == point:
            switch["seen"] += 1
            if switch["seen"] == nth:
                switch["armed"] = False
                raise Stop(point)

    for module in ("offrl.train.loop", "offrl.train.offline", "offrl.evaluation.leaderboard"):
        monkeypatch.setattr(f"{module}.fault_point", fault)
    return switch


def test_checkpoint_every_means_every_n_updates_whatever_log_every_is(dataset, tmp_path, monkeypatch):
    saved = []
    real_save = loop_module.atomic_torch_save
    monkeypatch.setattr(loop_module, "atomic_torch_save",
                        lambda state, path: (saved.append(state["loop"]["step"]), real_save(state, path)))
    fit(dataset, tmp_path / "run", steps=40, checkpoint_every=15)  # log_every is 10
    assert saved == [15, 30, 40]


@pytest.mark.parametrize("point, nth", [("run-record-written", 1), ("checkpoint-written", 1),
                                        ("evaluation-row-written", 1), ("final-evaluation", 1),
                                        ("final-evaluation-row-written", 1), ("final-report-written", 1),
                                        ("leaderboard-append", 1)])
def test_a_run_stopped_anywhere_resumes_to_the_uninterrupted_result(dataset, tmp_path, monkeypatch, point, nth):
    whole = fit(dataset, tmp_path / "whole", leaderboard=tmp_path / "whole.csv")
    stop_at(monkeypatch, point, nth)
    with pytest.raises(Stop):
        fit(dataset, tmp_path / "run", leaderboard=tmp_path / "lb.csv")
    resumed = fit(dataset, tmp_path / "run", leaderboard=tmp_path / "lb.csv", resume=True)
    assert stable(resumed) == stable(whole)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "run" / "evaluations.csv"),
                                  pd.read_csv(tmp_path / "whole" / "evaluations.csv"))
    rows = pd.read_csv(tmp_path / "lb.csv")
    assert len(rows) == 1 and rows["final_normalized_return"][0] == pd.read_csv(tmp_path / "whole.csv")[
        "final_normalized_return"][0]
    again = fit(dataset, tmp_path / "run", leaderboard=tmp_path / "lb.csv", resume=True)  # finished: nothing redone
    assert stable(again) == stable(whole) and len(pd.read_csv(tmp_path / "lb.csv")) == 1


def test_a_finished_run_appends_its_missing_row_once(dataset, tmp_path):
    report = fit(dataset, tmp_path / "run")  # no leaderboard given
    resumed = fit(dataset, tmp_path / "run", resume=True, leaderboard=tmp_path / "lb.csv")
    fit(dataset, tmp_path / "run", resume=True, leaderboard=tmp_path / "lb.csv")
    assert stable(resumed) == stable(report)
    assert pd.read_csv(tmp_path / "lb.csv")["run_id"].tolist() == [report.run_id]


def test_sigterm_and_sigint_checkpoint_at_the_next_update_and_resume_exactly(dataset, tmp_path):
    whole = fit(dataset, tmp_path / "whole")
    before = signal.getsignal(signal.SIGTERM)
    for signum, folder in ((signal.SIGTERM, "term"), (signal.SIGINT, "int")):
        def send(event, step, row, signum=signum):
            if event == "log" and step == 20:
                os.kill(os.getpid(), signum)

        with pytest.raises(TrainingInterrupted) as info:
            fit(dataset, tmp_path / folder, callbacks=[send])
        assert info.value.exit_code == 128 + signum and info.value.step == 20
        assert torch.load(tmp_path / folder / "checkpoint.pt", weights_only=True)["loop"]["step"] == 20
        assert signal.getsignal(signal.SIGTERM) is before  # handlers restored
        assert stable(fit(dataset, tmp_path / folder, resume=True)) == stable(whole)


def test_interrupted_cli_run_says_how_to_resume(dataset, tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise TrainingInterrupted(signal.SIGTERM, 7, str(tmp_path / "checkpoint.pt"))

    monkeypatch.setattr("offrl.agents.Agent.fit", interrupted)
    code = main(["train-cql", "--dataset", "pendulum/random-v0", "--steps", "5", "--out", str(tmp_path / "x"),
                 "--quiet", "--no-leaderboard"])
    assert code == 143
    assert capsys.readouterr().err.strip() == (f"offrl: interrupted by SIGTERM at step 7; checkpoint saved at "
                                               f"{tmp_path / 'checkpoint.pt'}, continue with --resume")


def _diverge_parameters_at(monkeypatch, step_to_break: int, value: float = float("inf"), metric: str | None = None):
    real_update = agents.cql_update

    def update(agent, batch, config, step, losses):
        metrics = real_update(agent, batch, config, step, losses)
        if step + 1 >= step_to_break:  # `step` counts completed updates: this is update number step + 1
            if metric is None:
                with torch.no_grad():
                    agent.critic.q1[0].weight.mul_(value)
            else:
                metrics[metric] = torch.tensor(value)
        return metrics

    monkeypatch.setattr(agents, "cql_update", update)


def test_divergence_is_caught_before_it_is_saved_even_when_losses_still_look_finite(dataset, tmp_path,
                                                                                     monkeypatch, capsys):
    _diverge_parameters_at(monkeypatch, 23)  # the weights turn inf in update 23; its losses were computed before
    with pytest.raises(OfflineRLError, match=r"diverged at step 23 \(non-finite parameters\).*last good checkpoint "
                                             r"\(step 22\)"):
        fit(dataset, tmp_path / "run", checkpoint_every=1, leaderboard=tmp_path / "lb.csv")
    kept = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert kept["loop"]["step"] == 22
    assert all(bool(v.isfinite().all()) for v in kept["agent"].values() if v.is_floating_point())
    assert not (tmp_path / "lb.csv").exists() and not (tmp_path / "run" / "final.json").exists()
    stopped = json.loads((tmp_path / "run" / "stopped.json").read_text())  # why the folder has no report
    assert stopped["reason"] == "diverged" and stopped["step"] == 23 and stopped["last_checkpoint_step"] == 22
    assert stopped["metrics"] == ["non-finite parameters"] and "diverged at step 23" in stopped["error"]
    assert stopped["divergence_limit"] == 1e10  # (inf is written as null: JSON has no infinity)
    monkeypatch.undo()  # the cause gone, the run resumes from its last good checkpoint and its stop record goes
    fit(dataset, tmp_path / "run", checkpoint_every=1, leaderboard=tmp_path / "lb.csv", resume=True)
    assert (tmp_path / "run" / "final.json").is_file() and not (tmp_path / "run" / "stopped.json").exists()


def test_absurd_finite_losses_are_divergence_and_an_early_one_names_no_checkpoint(dataset, tmp_path, monkeypatch):
    _diverge_parameters_at(monkeypatch, 3, value=7e31, metric="critic_loss")
    with pytest.raises(OfflineRLError, match=r"diverged at step 10 \(critic_loss=7e\+31\).*no checkpoint had been "
                                             r"written"):
        fit(dataset, tmp_path / "run", checkpoint_every=15)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_a_raised_divergence_limit_lets_a_finite_blow_up_finish_but_never_a_non_finite_one(dataset, tmp_path,
                                                                                             monkeypatch, capsys):
    """Offline SAC's diverging Q-values are the evidence grid's measurement: with the limit raised the run finishes
    and its record says so; NaN/inf still stop it, whatever the limit."""
    _diverge_parameters_at(monkeypatch, 3, value=7e31, metric="critic_loss")
    report = fit(dataset, tmp_path / "run", divergence_limit=math.inf)
    assert report.updates == 40 and (tmp_path / "run" / "final.json").is_file()
    assert json.loads((tmp_path / "run" / "run.json").read_text())["divergence_limit"] == math.inf
    fit(dataset, tmp_path / "short", steps=20, divergence_limit=math.inf)
    with pytest.raises(OfflineRLError, match="was started with --divergence-limit inf; resume it with the same"):
        fit(dataset, tmp_path / "short", steps=40, resume=True)  # the default limit would stop it where inf did not
    assert fit(dataset, tmp_path / "short", steps=40, resume=True, divergence_limit=math.inf).updates == 40
    _diverge_parameters_at(monkeypatch, 3, value=float("nan"), metric="critic_loss")
    with pytest.raises(OfflineRLError, match=r"diverged at step 10 \(critic_loss=nan\).*divergence limit 1e\+40"):
        fit(dataset, tmp_path / "nan", divergence_limit=1e40)
    with pytest.raises(SystemExit) as exit_info:  # argparse's own refusal
        main(["train-cql", "--dataset", "x/y-v0", "--steps", "1", "--divergence-limit", "-1"])
    assert exit_info.value.code == 2
    assert "argument --divergence-limit: expected a positive number or inf" in capsys.readouterr().err


def test_evaluate_refuses_a_diverged_checkpoint(dataset, tmp_path, capsys):
    fit(dataset, tmp_path / "run")
    path = tmp_path / "run" / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    state["agent"]["critic.q1.0.weight"][0, 0] = float("nan")
    torch.save(state, path)
    leaderboard = tmp_path / "lb.csv"
    assert main(["evaluate", str(tmp_path / "run"), "--episodes", "1", "--leaderboard", str(leaderboard)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("offrl: error: checkpoint ") and "non-finite weights (critic.q1.0.weight)" in err
    assert "\n" not in err and not leaderboard.exists()


def test_a_tampered_checkpoint_is_refused_without_running_its_code(dataset, tmp_path, capsys):
    fit(dataset, tmp_path / "run")
    path = tmp_path / "run" / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    state["payload"] = os.system  # would run on an unsafe load
    torch.save(state, path)
    assert main(["evaluate", str(tmp_path / "run"), "--episodes", "1", "--no-leaderboard"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot be read safely" in err and "\n" not in err


def test_the_leaderboard_is_checked_before_training(dataset, tmp_path):
    corrupt = tmp_path / "corrupt.csv"
    corrupt.write_text("not,a,leaderboard\n")
    with pytest.raises(OfflineRLError, match="line 1 is not the leaderboard header"):
        fit(dataset, tmp_path / "a", leaderboard=corrupt)
    assert not (tmp_path / "a").exists()  # nothing was trained, nothing was made
    not_a_folder = tmp_path / "plain-file"
    not_a_folder.write_text("x")
    with pytest.raises(OfflineRLError, match="is not a writable directory"):
        fit(dataset, tmp_path / "b", leaderboard=not_a_folder / "lb.csv")
    assert not (tmp_path / "b").exists()
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if not os.access(locked, os.W_OK):  # root can write anywhere: then only the case above applies
            with pytest.raises(OfflineRLError, match="is not a writable directory"):
                fit(dataset, tmp_path / "c", leaderboard=locked / "lb.csv")
    finally:
        locked.chmod(0o700)
    assert not (tmp_path / "c").exists()


def test_a_symlinked_leaderboard_stays_a_link_and_gets_the_row(dataset, tmp_path):
    shared = tmp_path / "shared" / "leaderboard.csv"
    shared.parent.mkdir()
    link = tmp_path / "mine.csv"
    link.symlink_to(shared)
    fit(dataset, tmp_path / "run", leaderboard=link)
    fit(dataset, tmp_path / "run2", leaderboard=link)
    assert link.is_symlink() and len(pd.read_csv(shared)) == 2


def test_one_writer_per_run_folder(dataset, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = FileLock(str(out / LOCK_NAME), timeout=0)
    holder.acquire()  # another process is training into this folder
    try:
        with pytest.raises(OfflineRLError, match="another offrl process is writing it"):
            fit(dataset, out)
    finally:
        holder.release()
    assert [p.name for p in out.iterdir()] == [LOCK_NAME]  # the loser wrote nothing


def test_a_run_killed_before_its_first_checkpoint_can_resume_and_leftover_temps_go(dataset, tmp_path, monkeypatch):
    whole = fit(dataset, tmp_path / "whole")
    stop_at(monkeypatch, "run-record-written")
    with pytest.raises(Stop):
        fit(dataset, tmp_path / "run")
    orphan = tmp_path / "run" / ".checkpoint.pt.x1y2.tmp"
    orphan.write_bytes(b"half a checkpoint")
    with pytest.raises(OfflineRLError, match="already holds a run; pass --resume"):
        fit(dataset, tmp_path / "run")
    assert stable(fit(dataset, tmp_path / "run", resume=True)) == stable(whole)
    assert not orphan.exists()


def test_bad_input_after_the_folder_is_made_leaves_no_folder(tmp_path, monkeypatch):
    from offrl.train.run_folder import RunFolder

    with pytest.raises(OfflineRLError, match="boom"):
        with RunFolder(tmp_path / "new", resume=False, kind="offline"):
            raise OfflineRLError("boom")
    assert not (tmp_path / "new").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(OfflineRLError, match="exists and is not a directory"):
        RunFolder(tmp_path / "file", resume=False, kind="offline").__enter__()
    with pytest.raises(OfflineRLError, match="cannot be written"):
        RunFolder(tmp_path / "file" / "child", resume=False, kind="offline").__enter__()


def test_leaderboard_append_adds_a_finished_runs_row_once(dataset, tmp_path, capsys):
    report = fit(dataset, tmp_path / "run")
    leaderboard = tmp_path / "lb.csv"
    for _ in range(2):
        assert main(["leaderboard", "--leaderboard", str(leaderboard), "--append", str(tmp_path / "run")]) == 0
    assert pd.read_csv(leaderboard)["run_id"].tolist() == [report.run_id]
    assert "its row is already in" in capsys.readouterr().out
    (tmp_path / "run" / "final.json").unlink()
    assert main(["leaderboard", "--leaderboard", str(leaderboard), "--append", str(tmp_path / "run")]) == 2
    assert "not finished (final.json is missing); finish it with --resume" in capsys.readouterr().err
