"""The kill matrix (`make test-faults`): real processes killed with SIGKILL at every named fault point
(offrl.faults), then the same command run again. Each must end in one of two states: finished, with the numbers an
uninterrupted run gives, or resumable to them. Plus concurrent writers of one dataset id, one run folder and one
leaderboard. The in-process versions of these cases run in `make test` (tests/train/test_run_folder.py)."""

import concurrent.futures
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.faults

TINY_CONFIG = {"actor_hidden": [16], "critic_hidden": [16], "n_actions": 2, "batch_size": 32, "bc_steps": 5}
STABLE = ("final_normalized_return", "best_normalized_return", "mean_return", "q_bias_mean",
          "average_value_estimate", "updates", "online_steps", "unlearning_dip")
ROW_NUMBERS = ("final_normalized_return", "best_normalized_return", "mean_return", "q_bias_mean", "steps")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A store with a small Pendulum dataset, a tiny config, and the environment every process gets."""
    root = tmp_path_factory.mktemp("faults")
    env = {**os.environ, "OFFRL_DATASETS_PATH": str(root / "store"), "OFFRL_LEADERBOARD": str(root / "unused.csv"),
           "OFFRL_HOME": str(root / "home"), "OFFRL_THREADS": "1", "OFFRL_POLICIES_PATH": str(root / "policies")}
    env.pop("OFFRL_FAULT", None)
    shipped = Path(__file__).resolve().parents[1] / "datasets" / "policies" / "Pendulum-v1"
    (root / "policies" / "Pendulum-v1").mkdir(parents=True)
    for item in shipped.iterdir():
        (root / "policies" / "Pendulum-v1" / item.name).write_bytes(item.read_bytes())
    (root / "tiny.yaml").write_text(yaml.safe_dump(TINY_CONFIG))
    result = _offrl(env, "collect", "--env", "Pendulum-v1", "--tier", "random", "--transitions", "600", "--quiet")
    assert result.returncode == 0, result.stderr
    return root, env


def _offrl(env, *args, fault=None, timeout=300) -> subprocess.CompletedProcess:
    env = {**env, **({"OFFRL_FAULT": fault} if fault else {})}
    return subprocess.run([sys.executable, "-m", "offrl.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _final(folder: Path) -> dict:
    report = json.loads((folder / "final.json").read_text())
    return {k: report.get(k) for k in STABLE}


def _rows(leaderboard: Path) -> list[dict]:
    rows = pd.read_csv(leaderboard)
    return [{k: row[k] for k in ROW_NUMBERS} for _, row in rows.iterrows()]


def _kill_then_rerun(env, command, fault, resume_flag=("--resume",)):
    killed = _offrl(env, *command, fault=fault)
    assert killed.returncode == -signal.SIGKILL, f"{fault}: not reached ({killed.returncode}) {killed.stderr[-400:]}"
    rerun = _offrl(env, *command, *resume_flag)
    assert rerun.returncode == 0, f"after a kill at {fault}: {rerun.stderr[-600:]}"


def _train_command(root, out, leaderboard):
    return ["train-cql", "--dataset", "pendulum/random-v0", "--config", str(root / "tiny.yaml"), "--steps", "40",
            "--eval-every", "20", "--eval-episodes", "1", "--final-eval-episodes", "1", "--log-every", "10",
            "--checkpoint-every", "15", "--quiet", "--out", str(out), "--leaderboard", str(leaderboard)]


@pytest.fixture(scope="module")
def reference_run(world):
    root, env = world
    out, leaderboard = root / "reference", root / "reference.csv"
    result = _offrl(env, *_train_command(root, out, leaderboard))
    assert result.returncode == 0, result.stderr
    return out, leaderboard


TRAIN_POINTS = ["run-folder-locked", "run-record-written", "checkpoint-written:1", "checkpoint-written:2",
                "evaluation-row-written", "checkpoint-written:3", "final-evaluation", "final-evaluation-row-written",
                "final-report-written", "leaderboard-append"]


@pytest.mark.parametrize("fault", TRAIN_POINTS)
def test_train_cql_killed_anywhere_resumes_to_the_uninterrupted_result(world, reference_run, fault):
    root, env = world
    reference, reference_board = reference_run
    out, leaderboard = root / f"train-{fault}", root / f"train-{fault}.csv"
    _kill_then_rerun(env, _train_command(root, out, leaderboard), fault)
    assert _final(out) == _final(reference)
    pd.testing.assert_frame_equal(pd.read_csv(out / "evaluations.csv"), pd.read_csv(reference / "evaluations.csv"))
    pd.testing.assert_frame_equal(pd.read_csv(out / "metrics.csv").drop(columns="updates_per_s"),
                                  pd.read_csv(reference / "metrics.csv").drop(columns="updates_per_s"))
    assert _rows(leaderboard) == _rows(reference_board)  # exactly one row, the same numbers
    assert not list(out.glob(".*.tmp"))


def _finetune_command(reference, out, leaderboard):
    return ["finetune", "--from", str(reference), "--online-steps", "400", "--eval-every", "200", "--eval-episodes",
            "1", "--log-every", "100", "--checkpoint-every", "200", "--quiet", "--out", str(out), "--leaderboard",
            str(leaderboard)]


@pytest.mark.parametrize("fault", ["run-record-written", "checkpoint-written:1", "evaluation-row-written:2",
                                   "final-evaluation", "final-report-written", "leaderboard-append"])
def test_finetune_killed_anywhere_resumes_to_the_uninterrupted_result(world, reference_run, fault):
    root, env = world
    reference, _ = reference_run
    whole, whole_board = root / "ft-whole", root / "ft-whole.csv"
    if not (whole / "final.json").exists():
        assert _offrl(env, *_finetune_command(reference, whole, whole_board)).returncode == 0
    out, leaderboard = root / f"ft-{fault}", root / f"ft-{fault}.csv"
    _kill_then_rerun(env, _finetune_command(reference, out, leaderboard), fault)
    assert _final(out) == _final(whole)
    pd.testing.assert_frame_equal(pd.read_csv(out / "evaluations.csv"), pd.read_csv(whole / "evaluations.csv"))
    assert _rows(leaderboard) == _rows(whole_board)


def _pretrain_command(out):
    return ["pretrain", "--env", "Pendulum-v1", "--steps", "600", "--eval-every", "200", "--checkpoint-every",
            "200", "--set", "hidden=[16, 16]", "--set", "batch_size=32", "--quiet", "--out", str(out)]


def _snapshots(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((folder / "snapshots").iterdir())}


@pytest.fixture(scope="module")
def pretrain_reference(world):
    root, env = world
    out = root / "pretrain-whole"
    result = _offrl(env, *_pretrain_command(out))
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.parametrize("fault", ["run-folder-locked", "checkpoint-written:1", "evaluation-row-written:2",
                                   "final-evaluation"])
def test_pretrain_killed_anywhere_resumes_to_the_uninterrupted_result(world, pretrain_reference, fault):
    root, env = world
    out = root / f"pretrain-{fault}"
    _kill_then_rerun(env, _pretrain_command(out), fault)
    pd.testing.assert_frame_equal(pd.read_csv(out / "evaluations.csv"),
                                  pd.read_csv(pretrain_reference / "evaluations.csv"))
    assert _snapshots(out) == _snapshots(pretrain_reference)


def test_ship_policies_killed_between_its_files_is_finished_by_running_it_again(world, pretrain_reference):
    root, env = world
    outputs = {}
    for name, fault in (("whole", None), ("killed", "policy-written")):
        policies = root / f"ship-{name}"
        ship_env = {**env, "OFFRL_POLICIES_PATH": str(policies)}
        command = ["ship-policies", "--run", str(pretrain_reference), "--episodes", "2"]
        if fault:
            killed = _offrl(ship_env, *command, fault=fault)
            assert killed.returncode == -signal.SIGKILL
        assert _offrl(ship_env, *command).returncode == 0
        outputs[name] = {p.name: p.read_bytes() for p in sorted((policies / "Pendulum-v1").iterdir())}
    assert outputs["killed"] == outputs["whole"]


@pytest.mark.parametrize("fault", ["dataset-locked", "dataset-file-written"])
def test_collect_killed_mid_write_is_finished_by_running_it_again(world, fault):
    root, env = world
    command = ["collect", "--env", "Pendulum-v1", "--tier", "medium", "--transitions", "500", "--quiet"]
    stores = {}
    for name, kill in (("whole", None), ("killed", fault)):
        store_env = {**env, "OFFRL_DATASETS_PATH": str(root / f"store-{fault}-{name}")}
        if kill:
            killed = _offrl(store_env, *command, fault=kill)
            assert killed.returncode == -signal.SIGKILL
        assert _offrl(store_env, *command).returncode == 0
        card = json.loads((root / f"store-{fault}-{name}" / "pendulum" / "medium-v0.json").read_text())
        stores[name] = card["sha256"]
        assert not list((root / f"store-{fault}-{name}" / "pendulum").glob(".*.tmp"))
    assert stores["killed"] == stores["whole"]


def test_two_collects_of_one_id_at_once_leave_one_winner(world):
    root, env = world
    store_env = {**env, "OFFRL_DATASETS_PATH": str(root / "store-race")}
    commands = [["collect", "--env", "Pendulum-v1", "--tier", "random", "--transitions", "3000", "--seed", str(seed),
                 "--quiet"] for seed in (1, 2)]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda c: _offrl(store_env, *c), commands))
    assert sorted(r.returncode for r in results) == [0, 2], [r.stderr for r in results]
    loser = next(r for r in results if r.returncode == 2)
    assert len(loser.stderr.strip().splitlines()) == 1 and "Traceback" not in loser.stderr
    winner_seed = 1 if results[0].returncode == 0 else 2
    card = json.loads((root / "store-race" / "pendulum" / "random-v0.json").read_text())
    assert card["seed"] == winner_seed
    verify = _offrl(store_env, "datasets", "verify", "pendulum/random-v0")
    assert verify.returncode == 0


def test_two_trainings_into_one_folder_leave_one_run_and_one_row(world):
    root, env = world
    out, leaderboard = root / "race-run", root / "race.csv"
    command = _train_command(root, out, leaderboard)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: _offrl(env, *command), range(2)))
    assert sorted(r.returncode for r in results) == [0, 2], [r.stderr[-300:] for r in results]
    loser = next(r for r in results if r.returncode == 2)
    assert len(loser.stderr.strip().splitlines()) == 1
    assert len(pd.read_csv(leaderboard)) == 1
    assert pd.read_csv(out / "metrics.csv")["step"].tolist() == [10, 20, 30, 40]


APPENDER = """
import sys
from offrl.evaluation.leaderboard import append_row
for i in range(int(sys.argv[3])):
    append_row(sys.argv[1], {"run_id": f"{sys.argv[2]}-{i}", "phase": "offline", "dataset_id": "x/y-v0", "steps": i})
"""


def test_eight_writers_and_a_killed_one_lose_no_row(world):
    root, env = world
    leaderboard = root / "shared.csv"
    writers = [subprocess.Popen([sys.executable, "-c", APPENDER, str(leaderboard), f"w{n}", "25"], env=env)
               for n in range(8)]
    killed = subprocess.Popen([sys.executable, "-c", APPENDER, str(leaderboard), "killed", "25"],
                              env={**env, "OFFRL_FAULT": "leaderboard-append:5"})
    assert [w.wait(timeout=300) for w in writers] == [0] * 8
    assert killed.wait(timeout=300) == -signal.SIGKILL
    rows = pd.read_csv(leaderboard)
    ids = rows["run_id"].tolist()
    assert len(ids) == len(set(ids)) == 8 * 25 + 4  # the killed writer's first 4 rows, nothing of its 5th
    subprocess.run([sys.executable, "-c", APPENDER, str(leaderboard), "after", "1"], env=env, check=True)
    assert not list(root.glob(".*shared.csv.*.tmp"))


def test_sigterm_checkpoints_and_exits_143_then_resumes_exactly(world):
    root, env = world
    def command(out):
        command = _train_command(root, out, root / f"{out.name}.csv")
        command[command.index("--steps") + 1] = "2000"  # long enough to be running when the signal comes
        command[command.index("--eval-every") + 1] = "500"
        return command

    whole, out = root / "sigterm-whole", root / "sigterm"
    assert _offrl(env, *command(whole)).returncode == 0
    process = subprocess.Popen([sys.executable, "-m", "offrl.cli", *command(out)], env={
        **env, "OFFRL_FAULT": ""}, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "metrics.csv").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    if process.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert process.returncode == 143, stderr
    assert "interrupted by SIGTERM" in stderr and "--resume" in stderr
    assert json.loads((out / "run.json").read_text())  # the run is there to resume
    assert _offrl(env, *command(out), "--resume").returncode == 0
    assert _final(out) == _final(whole)
