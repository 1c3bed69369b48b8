"""offrl sweep on a local Ray (2 CPUs): rows, re-runs, resume after a killed trial, a failing trial, clean exit."""

import json
import os
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml

from offrl.data.collect import rollout_transitions
from offrl.data.registry import data_path, register_dataset
from offrl.errors import OfflineRLError
from offrl.sweep import SweepSpec, parse_seeds, plan_trials

ray = pytest.importorskip("ray")

TINY = {"actor_hidden": [16], "critic_hidden": [16], "n_actions": 2, "batch_size": 32, "bc_steps": 5}


@pytest.fixture
def world(tmp_path):
    """Two small Pendulum datasets in the test's store, a tiny config file, and the sweep command's base."""
    for tier, seed in (("random", 0), ("noisy", 1)):
        arrays, _ = rollout_transitions("Pendulum-v1", None, 600, seed=seed, num_envs=2)
        register_dataset(f"pendulum/{tier}-v0", arrays, {"env_id": "Pendulum-v1", "reference_scores": {
            "random": {"return_mean": -1200.0, "source": "test"}, "expert": {"return_mean": -150.0, "source": "t"}}})
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    base = ["sweep", "--algorithms", "cql", "--configs", str(config), "--steps", "30", "--eval-every", "15",
            "--eval-episodes", "1", "--final-eval-episodes", "1", "--log-every", "10", "--checkpoint-every", "10",
            "--out", str(tmp_path / "sweep"), "--leaderboard", str(tmp_path / "lb.csv"), "--cpus-per-trial", "1"]
    return tmp_path, base


def _sweep(base, *extra, fault=None):
    env = {**os.environ, "OFFRL_THREADS": "1"}
    env.pop("OFFRL_FAULT", None)
    if fault:
        env["OFFRL_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "offrl.cli", *base, *extra], env=env, capture_output=True,
                          text=True, timeout=600)


def _ray_pids() -> set[int]:
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return {int(line.split(None, 1)[0]) for line in out.splitlines()
            if any(name in line for name in ("raylet", "gcs_server", "ray::"))}


# Ray processes of other jobs on this machine (another user's cluster, a long sweep) are not the tests' business:
# only processes that appeared after the test session started must be gone.
_RAY_PIDS_BEFORE = _ray_pids()


def _no_ray_processes_left() -> bool:
    deadline = time.time() + 20
    while time.time() < deadline:
        if not _ray_pids() - _RAY_PIDS_BEFORE:
            return True
        time.sleep(0.5)
    return False


def _numbers(leaderboard):
    rows = pd.read_csv(leaderboard).sort_values("run_dir")
    return rows[["run_dir", "seed", "steps", "final_normalized_return", "best_normalized_return", "q_bias_mean"]] \
        .to_dict("records")


def test_a_local_sweep_writes_a_row_per_trial_and_a_rerun_writes_none(world):
    tmp_path, base = world
    first = _sweep(base, "--datasets", "pendulum/random-v0", "--seeds", "0-1")
    assert first.returncode == 0, first.stderr[-2000:]
    rows = pd.read_csv(tmp_path / "lb.csv")
    assert sorted(rows["seed"]) == [0, 1] and rows["sweep_id"].nunique() == 1 and (rows["steps"] == 30).all()
    assert "[2/2]" in first.stdout and "normalized return" in first.stdout
    assert "CQL-SAC" in first.stdout  # the summary table
    again = _sweep(base, "--datasets", "pendulum/random-v0", "--seeds", "0-1")
    assert again.returncode == 0 and "2 already done, 0 to run" in again.stdout
    assert len(pd.read_csv(tmp_path / "lb.csv")) == 2
    # a clean clone keeps the rows, not the run folders: a trial with its row trains no more and gets no second
    # row; one whose row no longer describes it (here seed 1's config hash changed) trains again
    (tmp_path / "sweep").rename(tmp_path / "sweep-elsewhere")
    rows = pd.read_csv(tmp_path / "lb.csv", dtype=str, keep_default_na=False)
    seed1_hash = rows.loc[rows["seed"] == "1", "config_hash"].iloc[0]
    lines = (tmp_path / "lb.csv").read_text().splitlines(keepends=True)
    (tmp_path / "lb.csv").write_text("".join(line.replace(f",{seed1_hash},", ",000000000000,") if "-seed1" in line
                                             else line for line in lines))
    clone = _sweep(base, "--datasets", "pendulum/random-v0", "--seeds", "0-1")
    assert clone.returncode == 0, clone.stderr[-2000:]
    assert "1 already done, 1 to run" in clone.stdout
    assert "pendulum-random-v0-cql-tiny-seed0: its row is in " in clone.stdout
    assert sorted(pd.read_csv(tmp_path / "lb.csv")["seed"]) == [0, 1, 1]
    assert not (tmp_path / "sweep" / "pendulum-random-v0-cql-tiny-seed0").exists()
    # --from-folders: only finished folders count, so seed 0 (row, no folder) trains again
    again = _sweep(base, "--datasets", "pendulum/random-v0", "--seeds", "0-1", "--from-folders")
    assert again.returncode == 0 and "1 already done, 1 to run" in again.stdout, again.stdout[-2000:]
    assert sorted(pd.read_csv(tmp_path / "lb.csv")["seed"]) == [0, 0, 1, 1]
    assert _no_ray_processes_left()
    # a finished trial whose row is refused (a non-finite number) fails alone; the other's row is still written
    final = tmp_path / "sweep" / "pendulum-random-v0-cql-tiny-seed1" / "final.json"
    final.write_text(final.read_text().replace('"q_bias_mean": ', '"q_bias_mean": NaN, "was": ', 1))
    (tmp_path / "lb.csv").unlink()
    refused = _sweep(base, "--datasets", "pendulum/random-v0", "--seeds", "0-1")
    assert refused.returncode == 1, refused.stderr[-2000:]
    assert "seed1: FAILED row refused: run " in refused.stdout and "non-finite q_bias_mean" in refused.stdout
    assert pd.read_csv(tmp_path / "lb.csv")["seed"].tolist() == [0]


def test_a_killed_trial_resumes_to_the_numbers_of_an_uninterrupted_sweep(world, tmp_path_factory):
    tmp_path, base = world
    whole_dir = tmp_path_factory.mktemp("whole")
    whole = [*base]
    whole[whole.index("--out") + 1] = str(whole_dir / "sweep")
    whole[whole.index("--leaderboard") + 1] = str(whole_dir / "lb.csv")
    assert _sweep(whole, "--datasets", "pendulum/random-v0", "--seeds", "3").returncode == 0

    killed = _sweep(base, "--datasets", "pendulum/random-v0", "--seeds", "3", "--retries", "0",
                    fault="checkpoint-written:2")
    assert killed.returncode == 1 and "FAILED" in killed.stdout  # the worker died at its second checkpoint
    assert not (tmp_path / "lb.csv").exists() or len(pd.read_csv(tmp_path / "lb.csv")) == 0
    resumed = _sweep(base, "--datasets", "pendulum/random-v0", "--seeds", "3")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    ours, theirs = _numbers(tmp_path / "lb.csv"), _numbers(whole_dir / "lb.csv")
    for row in (*ours, *theirs):
        row.pop("run_dir")
    assert ours == theirs
    assert (tmp_path / "sweep" / "pendulum-random-v0-cql-tiny-seed3" / "final.json").is_file()
    assert _no_ray_processes_left()


def test_a_trial_with_a_damaged_dataset_fails_alone(world):
    tmp_path, base = world
    intact = data_path("pendulum/noisy-v0").read_bytes()
    data_path("pendulum/noisy-v0").write_bytes(b"damaged")  # its card stays: the sha256 check fails in the trial
    result = _sweep(base, "--datasets", "pendulum/random-v0,pendulum/noisy-v0", "--seeds", "0")
    assert result.returncode == 1
    assert "pendulum-noisy-v0" in result.stdout and "sha256" in result.stdout
    rows = pd.read_csv(tmp_path / "lb.csv")
    assert rows["dataset_id"].tolist() == ["pendulum/random-v0"]
    error = tmp_path / "sweep" / "pendulum-noisy-v0-cql-tiny-seed0" / "error.txt"  # kept in the trial's folder
    assert "sha256" in error.read_text() and len(error.read_text().splitlines()) == 1
    assert not (tmp_path / "sweep" / "pendulum-random-v0-cql-tiny-seed0" / "error.txt").exists()
    # the damage mended, the same command runs the failed trial to its end and its error goes
    data_path("pendulum/noisy-v0").write_bytes(intact)
    again = _sweep(base, "--datasets", "pendulum/random-v0,pendulum/noisy-v0", "--seeds", "0")
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "1 already done, 1 to run" in again.stdout and not error.exists()
    assert sorted(pd.read_csv(tmp_path / "lb.csv")["dataset_id"]) == ["pendulum/noisy-v0", "pendulum/random-v0"]
    assert _no_ray_processes_left()


def test_unknown_names_and_an_unreachable_cluster_are_refused_before_anything_runs(world, capsys):
    from offrl.cli import main

    tmp_path, base = world
    for extra, message in (
        (["--datasets", "pendulum/nope-v0", "--seeds", "0"], "--datasets: pendulum/nope-v0 is not in the store"),
        (["--datasets", "pendulum/random-v0", "--seeds", "0", "--algorithms", "dqn"], "unknown algorithm 'dqn'"),
        (["--datasets", "pendulum/random-v0", "--seeds", "0", "--configs", "nope"], "no such shipped config"),
        (["--datasets", "pendulum/random-v0", "--seeds", "4-1"], "--seeds '4-1': the range 4-1 is empty"),
        (["--datasets", "pendulum/random-v0", "--seeds", "0", "--address", "ray://127.0.0.1:1"],
         "--address ray://127.0.0.1:1: cannot connect"),
    ):
        argv = list(base)
        if "--algorithms" in extra:
            argv[argv.index("--algorithms") + 1] = extra[extra.index("--algorithms") + 1]
            extra = [e for i, e in enumerate(extra) if i not in (extra.index("--algorithms"),
                                                                 extra.index("--algorithms") + 1)]
        if "--configs" in extra:
            argv[argv.index("--configs") + 1] = extra[extra.index("--configs") + 1]
            extra = [e for i, e in enumerate(extra) if i not in (extra.index("--configs"),
                                                                 extra.index("--configs") + 1)]
        assert main([*argv, *extra]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "sweep").exists() and not (tmp_path / "lb.csv").exists()


def test_seeds_and_the_sweep_id():
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert parse_seeds("0,3,7") == [0, 3, 7]
    assert parse_seeds("0-2,9,1") == [0, 1, 2, 9]
    with pytest.raises(OfflineRLError, match="expected non-negative seeds"):
        parse_seeds("-1")
    spec = dict(datasets=["a/b-v0"], algorithms=["cql"], configs=["fast"], seeds=[0], steps=10)
    one = SweepSpec(**spec, out="x", leaderboard="y")
    assert one.sweep_id == SweepSpec(**spec, out="elsewhere", leaderboard="z").sweep_id
    assert one.sweep_id != SweepSpec(**{**spec, "seeds": [1]}, out="x", leaderboard="y").sweep_id


def test_plan_trials_is_the_whole_grid(world):
    tmp_path, _ = world
    spec = SweepSpec(datasets=["pendulum/random-v0", "pendulum/noisy-v0"], algorithms=["cql", "sac"],
                     configs=["fast"], seeds=[0, 1, 2], steps=10, out=tmp_path / "o", leaderboard=tmp_path / "l")
    trials = plan_trials(spec)
    assert len(trials) == 12 and len({t.name for t in trials}) == 12
    assert json.dumps([t.name for t in trials[:2]]) == json.dumps(["pendulum-random-v0-cql-fast-seed0",
                                                                    "pendulum-random-v0-cql-fast-seed1"])


def test_an_ope_sweep_appends_one_results_row_per_trial_once(world, tiny_policies):
    tmp_path, _ = world
    results = tmp_path / "ope.csv"
    base = ["sweep", "--datasets", "pendulum/random-v0", "--ope-policies", "Pendulum-v1/expert,random",
            "--methods", "fqe,cql-v", "--seeds", "0", "--steps", "20", "--eval-every", "10", "--truth-episodes", "2",
            "--set", "critic_hidden=[8]", "--set", "batch_size=16", "--set", "backup_samples=1",
            "--results", str(results), "--out", str(tmp_path / "ope"), "--cpus-per-trial", "1"]
    first = _sweep(base)  # tiny_policies has set OFFRL_POLICIES_PATH, which the sweep forwards to its workers
    assert first.returncode == 0, first.stderr[-2000:]
    rows = pd.read_csv(results)
    assert sorted(zip(rows["policy"], rows["method"], strict=True)) == [
        ("Pendulum-v1/expert", "cql-v"), ("Pendulum-v1/expert", "fqe"), ("random", "cql-v"), ("random", "fqe")]
    assert rows["sweep_id"].nunique() == 1 and (rows["updates"] == 20).all() and rows["true_value"].notna().all()
    # the same initial states and truth for every method of one policy
    for _, group in rows.groupby("policy"):
        assert group["true_value"].nunique() == 1
    assert "estimate" in first.stdout and "truth" in first.stdout
    again = _sweep(base)
    assert again.returncode == 0 and "4 already done, 0 to run" in again.stdout and len(pd.read_csv(results)) == 4
    (tmp_path / "ope").rename(tmp_path / "ope-elsewhere")  # a clean clone: the rows, no run folders
    clone = _sweep(base)
    assert clone.returncode == 0 and "4 already done, 0 to run" in clone.stdout and len(pd.read_csv(results)) == 4
    missing = _sweep([a for a in base if a not in ("--results", str(results))])
    assert missing.returncode == 2 and "needs --results" in missing.stderr


def test_an_ope_sweep_refuses_a_run_still_training_as_a_policy(world):
    tmp_path, _ = world
    running = tmp_path / "running-run"
    running.mkdir()
    (running / "run.json").write_text("{}")
    spec = SweepSpec(datasets=["pendulum/random-v0"], algorithms=[], configs=[], seeds=[0], steps=10,
                     out=tmp_path / "o", leaderboard=tmp_path / "l", ope_policies=[str(running)],
                     ope_methods=["fqe"], results=tmp_path / "ope.csv")
    with pytest.raises(OfflineRLError, match="running-run is a run that has not finished.*snapshots"):
        plan_trials(spec)


def test_an_ope_sweep_refuses_a_policy_whose_dimensions_do_not_match_a_dataset(world, capsys):
    from offrl.cli import main

    tmp_path, _ = world
    spec = SweepSpec(datasets=["pendulum/random-v0"], algorithms=[], configs=[], seeds=[0], steps=10,
                     out=tmp_path / "o", leaderboard=tmp_path / "l", ope_policies=["random", "HalfCheetah-v5/expert"],
                     ope_methods=["fqe"], results=tmp_path / "ope.csv")
    with pytest.raises(OfflineRLError, match="HalfCheetah-v5/expert has observation/action dimensions 17/6, dataset "
                                             "pendulum/random-v0 has 3/1"):
        plan_trials(spec)
    assert main(["sweep", "--datasets", "pendulum/random-v0", "--ope-policies", "HalfCheetah-v5/expert", "--methods",
                 "fqe", "--results", str(tmp_path / "ope.csv"), "--seeds", "0", "--steps", "5", "--out",
                 str(tmp_path / "o")]) == 2
    assert "dimensions 17/6" in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert not (tmp_path / "ope.csv").exists()


def test_snapshots_of_two_runs_are_two_ope_trials(tmp_path):
    from offrl.sweep import OPETrial

    names = []
    for run in ("cql-seed0", "cql-seed1"):
        snapshot = tmp_path / run / "snapshots" / "actor_100.pt"
        snapshot.parent.mkdir(parents=True)
        snapshot.write_bytes(b"")
        names.append(OPETrial("pendulum/random-v0", str(snapshot), "fqe", 0).name)
    assert names[0] != names[1] and "cql-seed0-snapshots-actor-100.pt" in names[0]


def test_a_trial_runs_with_the_process_settings_of_the_cli(world, monkeypatch):
    """A worker is an offrl program too: its thread count and glibc's memory settings are those the CLI sets."""
    import offrl.runtime
    from offrl.sweep import Trial, run_trial

    tmp_path, _ = world
    calls = []
    monkeypatch.setattr(offrl.runtime, "configure_process", lambda threads=None: calls.append(threads))
    spec = SweepSpec(datasets=["pendulum/none-v0"], algorithms=["cql"], configs=["fast"], seeds=[0], steps=1,
                     out=tmp_path / "o", leaderboard=tmp_path / "l", cpus_per_trial=2)
    outcome = run_trial(Trial("pendulum/none-v0", "cql", "fast", 0), spec, tmp_path / "o" / "t")
    assert calls == [2] and outcome["status"] == "failed"  # the settings come first, before the trial's own work


def test_every_fit_option_of_a_sweep_reaches_the_trials_fit(tmp_path):
    import inspect
    import math

    from offrl.agents import Agent
    from offrl.cli import build_parser

    args = build_parser().parse_args(["sweep", "--datasets", "d/x-v0", "--algorithms", "sac", "--seeds", "0",
                                      "--steps", "5", "--out", str(tmp_path), "--divergence-limit", "inf"])
    assert args.divergence_limit == math.inf
    options = SweepSpec(datasets=[], algorithms=[], configs=[], seeds=[], steps=1, out=tmp_path, leaderboard=tmp_path,
                        divergence_limit=args.divergence_limit).fit_options()
    assert options["divergence_limit"] == math.inf
    assert set(options) <= set(inspect.signature(Agent.fit).parameters)


def test_an_ope_sweep_refuses_the_training_only_divergence_limit(tmp_path, capsys):
    from offrl.cli import main

    assert main(["sweep", "--datasets", "d/x-v0", "--ope-policies", "random", "--methods", "fqe", "--results",
                 str(tmp_path / "ope.csv"), "--seeds", "0", "--steps", "5", "--out", str(tmp_path),
                 "--divergence-limit", "inf"]) == 2
    assert "--divergence-limit: a training option" in capsys.readouterr().err


def test_the_resume_driver_plans_with_the_sweeps_own_code_and_runs_nothing_in_a_dry_run(world):
    """evaluation/scripts/resume_sweep.py (resuming a result set at its own commit): BC and offline SAC before CQL
    when asked, nothing run in a dry run."""
    from pathlib import Path

    tmp_path, base = world
    script = Path(__file__).parents[1] / "evaluation" / "scripts" / "resume_sweep.py"
    argv = [a if a != "cql" else "cql,bc" for a in base] + ["--datasets", "pendulum/random-v0", "--seeds", "0"]
    env = {**os.environ, "OFFRL_THREADS": "1", "RESUME_DRY_RUN": "1", "RESUME_ORDER": "short-first",
           "PYTHONPATH": str(Path(__file__).parents[1])}
    planned = subprocess.run([sys.executable, str(script), *argv], env=env, capture_output=True, text=True,
                             timeout=300)
    assert planned.returncode == 0, planned.stderr[-2000:]
    assert ("to run, in order: pendulum-random-v0-bc-tiny-seed0, pendulum-random-v0-cql-tiny-seed0"
            in planned.stdout)
    assert not (tmp_path / "lb.csv").exists() and not (tmp_path / "sweep").exists()
    wrong = subprocess.run([sys.executable, str(script), *argv], env={**env, "RESUME_ORDER": "fastest"},
                           capture_output=True, text=True, timeout=300)
    assert wrong.returncode == 2 and "RESUME_ORDER='fastest'" in wrong.stderr and "to run" not in wrong.stdout

    # trials whose rows are there (their folders gone) are not run again
    assert _sweep(argv).returncode == 0
    (tmp_path / "sweep").rename(tmp_path / "sweep-gone")
    resumed = subprocess.run([sys.executable, str(script), *argv], env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    for name in ("bc", "cql"):
        assert f"pendulum-random-v0-{name}-tiny-seed0: its row is in " in resumed.stdout
    assert "to run, in order: nothing" in resumed.stdout

    # an OPE sweep whose target policy file is gone: its trials are left out, not the whole sweep refused
    gone = str(tmp_path / "lost-run" / "snapshots" / "actor_5.pt")
    ope = ["sweep", "--datasets", "pendulum/random-v0", "--ope-policies", f"random,{gone}", "--methods", "fqe",
           "--seeds", "0", "--steps", "20", "--results", str(tmp_path / "ope.csv"), "--out", str(tmp_path / "ope")]
    refused = subprocess.run([sys.executable, str(script), *ope], env={**env, "RESUME_ORDER": ""},
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2  # without the setting, the sweep's own refusal of a policy it cannot load
    left_out = subprocess.run([sys.executable, str(script), *ope], capture_output=True, text=True, timeout=300,
                              env={**env, "RESUME_ORDER": "", "RESUME_SKIP_MISSING_POLICIES": "1"})
    assert left_out.returncode == 0, left_out.stderr[-2000:]
    assert f"its target policy {gone} is gone: left out" in left_out.stdout
    assert "to run, in order: ope-pendulum-random-v0-random-fqe-seed0" in left_out.stdout
