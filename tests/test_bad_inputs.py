"""Every bad input gets one clear line (issue 12): a table of bad inputs, each given to one CLI command or one
public API call, and the same four checks for all of them.

CLI: exit code 2, stderr exactly one line (`offrl: error: ...`) naming the offending file or argument, no
traceback. API: one `OfflineRLError` whose one-line message names the argument or file. Both: nothing
half-written, i.e. the workspace (dataset store, runs, output folders, leaderboards) holds the same files and
folders with the same bytes before and after. Lock files are left out of that comparison: filelock keeps a lock
file in place after release by design, and an empty lock file is no data.

Each case runs in a fresh copy of one small workspace built once per module (a registered Pendulum dataset, a
two-update CQL run, a saved agent), in-process through `offrl.cli.main`; a few run as a real process, where
what matters is what a user's shell sees.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from tests_support import make_arrays

import offrl
from offrl.cli import main
from offrl.errors import OfflineRLError
from offrl.evaluation.leaderboard import COLUMNS

DATASET = "pendulum/random-v0"
TINY = {"actor_hidden": [8], "critic_hidden": [8], "batch_size": 16, "n_actions": 2}
TRAIN = ["train-cql", "--dataset", DATASET, "--config", "fast", "--steps", "2", "--quiet", "--final-eval-episodes",
         "1", *[word for key, value in TINY.items() for word in ("--set", f"{key}={value}".replace(" ", ""))],
         "--out", "{w}/out"]
COLLECT = ["collect", "--env", "Pendulum-v1", "--tier", "random", "--transitions", "10", "--version", "5", "--quiet"]
PRETRAIN = ["pretrain", "--env", "Pendulum-v1", "--steps", "10", "--quiet", "--out", "{w}/out"]
FINETUNE = ["finetune", "--from", "{w}/run", "--online-steps", "2", "--quiet", "--out", "{w}/out"]
EVALUATE = ["evaluate", "{w}/run", "--episodes", "1"]
IMPORT = ["datasets", "import-d4rl", "{w}/d4rl.hdf5", "--id", "pendulum/d4rl-v0", "--env", "Pendulum-v1"]


# --- the workspace ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """Built once: a store holding DATASET, an offline CQL run on it (2 updates) and that agent saved alone."""
    from offrl.data.collect import rollout_transitions
    from offrl.data.registry import register_dataset

    root = tmp_path_factory.mktemp("bad-inputs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OFFRL_DATASETS_PATH", str(root / "store"))
        patch.setenv("OFFRL_HOME", str(root / "home"))
        arrays, _ = rollout_transitions("Pendulum-v1", None, 400, seed=0, num_envs=2)
        register_dataset(DATASET, arrays, {"env_id": "Pendulum-v1"})
        agent = offrl.CQL("fast", **TINY)
        agent.fit(offrl.load_dataset(DATASET), 2, eval_episodes=1, final_eval_episodes=1, log_every=1,
                  checkpoint_every=1, run_dir=root / "run", show_progress=False)
        agent.save(root / "agent.pt")
    (root / "afile").write_text("a plain file where a folder is expected\n")
    return root


def snapshot(root: Path) -> dict[str, str]:
    """Relative path → sha256 of every file (folders too, as "dir"), lock files aside (see the module doc)."""
    state = {}
    for here, folders, files in os.walk(root):
        folders[:] = [name for name in folders if name != ".locks"]
        relative = Path(here).relative_to(root)
        state[f"{relative}/"] = "dir"
        for name in files:
            if not name.endswith(".lock"):
                state[str(relative / name)] = hashlib.sha256((Path(here) / name).read_bytes()).hexdigest()
    return state


class Workspace:
    """A fresh copy of the template, with helpers that make the bad inputs the cases need."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch):
        self.w, self.monkeypatch = root, monkeypatch
        self._read_only: list[Path] = []

    def path(self, relative: str) -> Path:
        return self.w / relative

    def env(self, **values: str) -> None:
        for name, value in values.items():
            self.monkeypatch.setenv(name, value.format(w=self.w))

    def write(self, relative: str, data: bytes | str) -> Path:
        path = self.path(relative)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path

    def append(self, relative: str, data: bytes) -> Path:
        path = self.path(relative)
        with path.open("ab") as f:
            f.write(data)
        return path

    def card(self, edit: Callable[[dict], object] | None = None, text: str | None = None) -> Path:
        """DATASET's card changed in place by `edit`, or replaced by `text`."""
        path = self.path(f"store/{DATASET}.json")
        if text is None:
            card = json.loads(path.read_text())
            edit(card)
            text = json.dumps(card)
        path.write_text(text)
        return path

    def d4rl(self, relative: str = "d4rl.hdf5", rows: int = 20, **overrides) -> Path:
        """A D4RL-layout file for Pendulum (3 observation columns, 1 action); an override of None drops the key,
        "group" puts an HDF5 group where the array belongs."""
        timeouts = np.zeros(rows, bool)
        timeouts[rows // 2 - 1 :: max(rows // 2, 1)] = True
        arrays = {"observations": np.arange(rows * 3, dtype=np.float32).reshape(rows, 3) / 10,
                  "actions": np.zeros((rows, 1), np.float32), "rewards": np.zeros(rows, np.float32),
                  "terminals": np.zeros(rows, bool), "timeouts": timeouts, **overrides}
        path = self.path(relative)
        with h5py.File(path, "w") as f:
            for key, value in arrays.items():
                if isinstance(value, str) and value == "group":
                    f.create_group(key)
                elif value is not None:
                    f[key] = value
        return path

    def leaderboard(self, relative: str, kind: str) -> Path:
        header = ",".join(COLUMNS)
        row = {name: "" for name in COLUMNS} | {"run_id": "r0", "phase": "offline", "online_steps": "0",
                                                "dataset_id": DATASET, "algorithm": "CQL-SAC", "config_name": "fast",
                                                "seed": "0", "steps": "2", "final_normalized_return": "1.5"}
        if kind == "non-numeric":
            row["final_normalized_return"] = "high"
        text = {"empty": "",
                "binary": bytes(range(256)) * 8,
                "non-numeric": f"{header}\n{','.join(row.values())}\n",
                "bad-header": "name,score\nmine,3\n",
                "short-row": f"{header}\nr0,offline,0\n",
                "no-steps": f"{header}\n{','.join((row | {'steps': ''}).values())}\n"}[kind]
        return self.write(relative, text)

    def checkpoint(self, relative: str = "run/checkpoint.pt", wrong_shapes: bool = True) -> Path:
        """The run's checkpoint with one weight tensor of the wrong shape."""
        path = self.path(relative)
        state = torch.load(path, map_location="cpu", weights_only=False)  # our own file, any offrl version
        weights = state["agent"] if "agent" in state else state["networks"]
        name = next(k for k, v in weights.items() if torch.is_tensor(v) and v.is_floating_point())
        weights[name] = torch.zeros(7, 7)
        torch.save(state, path)
        return path

    def run_record(self, edit: Callable[[dict], object] | None = None, text: str | None = None) -> Path:
        path = self.path("run/run.json")
        if text is None:
            record = json.loads(path.read_text())
            edit(record)
            text = json.dumps(record)
        path.write_text(text)
        return path

    def read_only(self, relative: str) -> Path:
        """A folder (created if absent) that nothing may be written into, nor anywhere below it.

        The permission bits do that for an ordinary user; root ignores them, so as root the OS calls that
        write under the folder fail with EACCES here as they would for a user (the same error, the same place)."""
        path = self.path(relative)
        path.mkdir(parents=True, exist_ok=True)
        for here, _, _ in os.walk(path):
            Path(here).chmod(0o555)
        self._read_only.append(path)
        if os.geteuid() == 0:
            _deny_writes_under(path.resolve(), self.monkeypatch)
        return path

    def restore_permissions(self) -> None:
        for path in self._read_only:
            for here, _, _ in os.walk(path):
                Path(here).chmod(0o755)


def _deny_writes_under(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def inside(target) -> bool:
        try:
            path = Path(os.fsdecode(target)).resolve()
        except (TypeError, ValueError):
            return False
        return path == folder or folder in path.parents

    def denied(target):
        return PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(target))

    writing_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    real = {name: getattr(os, name) for name in ("open", "mkdir", "replace", "rename", "unlink", "remove", "rmdir",
                                                 "access")}
    real_open = builtins.open

    def os_open(path, flags, *args, **kwargs):
        if flags & writing_flags and inside(path):
            raise denied(path)
        return real["open"](path, flags, *args, **kwargs)

    def one_path(name):
        def call(path, *args, **kwargs):
            if inside(path):
                raise denied(path)
            return real[name](path, *args, **kwargs)
        return call

    def two_paths(name):
        def call(src, dst, *args, **kwargs):
            if inside(src) or inside(dst):
                raise denied(dst)
            return real[name](src, dst, *args, **kwargs)
        return call

    def access(path, mode, *args, **kwargs):
        return False if mode & os.W_OK and inside(path) else real["access"](path, mode, *args, **kwargs)

    def open_file(file, mode="r", *args, **kwargs):
        if isinstance(file, str | bytes | os.PathLike) and set(mode) & set("wax+") and inside(file):
            raise denied(file)
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", os_open)
    for name in ("mkdir", "unlink", "remove", "rmdir"):
        monkeypatch.setattr(os, name, one_path(name))
    for name in ("replace", "rename"):
        monkeypatch.setattr(os, name, two_paths(name))
    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(builtins, "open", open_file)
    monkeypatch.setattr(io, "open", open_file)


@pytest.fixture
def ws(template, tmp_path, monkeypatch, _isolated_dataset_store):
    root = tmp_path / "w"
    shutil.copytree(template, root)
    for name, value in {"OFFRL_DATASETS_PATH": "store", "OFFRL_LEADERBOARD": "leaderboard.csv",
                        "OFFRL_HOME": "home", "MINARI_DATASETS_PATH": "minari"}.items():
        monkeypatch.setenv(name, str(root / value))
    for name in ("OFFRL_THREADS", "OFFRL_POLICIES_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(root)  # default output folders (runs/...) land in the workspace, where they are seen
    workspace = Workspace(root, monkeypatch)
    yield workspace
    workspace.restore_permissions()


# --- the CLI table ---------------------------------------------------------------------------------------------------

@dataclass
class Case:
    argv: list[str]
    names: list[str]  # what the one line must name: the argument, the file, the value
    prepare: Callable[[Workspace], object] | None = None
    absent: list[str] = field(default_factory=list)  # what it must not say (a wrong file, a flag that does not exist)


def case(case_id: str, argv: list[str], names: list[str], prepare=None, absent=()):
    return pytest.param(Case(argv, names, prepare, list(absent)), id=case_id)


def with_options(base: list[str], *extra: str) -> list[str]:
    return [*base, *extra]


CLI_CASES = [
    # global options and environment variables
    case("threads-zero", ["--threads", "0", "datasets", "list"], ["--threads", "0"]),
    case("threads-not-integer", ["--threads", "many", "datasets", "list"], ["--threads", "'many'"]),
    case("threads-negative", ["--threads", "-2", "datasets", "list"], ["--threads", "-2"]),
    case("env-threads-not-integer", ["datasets", "list"], ["OFFRL_THREADS", "'abc'"],
         lambda ws: ws.env(OFFRL_THREADS="abc")),
    case("env-threads-negative", ["datasets", "list"], ["OFFRL_THREADS", "-2"], lambda ws: ws.env(OFFRL_THREADS="-2")),
    case("env-threads-zero", ["datasets", "list"], ["OFFRL_THREADS", "0"], lambda ws: ws.env(OFFRL_THREADS="0")),
    case("env-threads-fraction", ["datasets", "list"], ["OFFRL_THREADS", "1.5"],
         lambda ws: ws.env(OFFRL_THREADS="1.5")),
    case("command-unknown", ["frobnicate"], ["frobnicate"]),
    case("command-missing", [], ["COMMAND"]),
    case("env-store-is-a-file", ["datasets", "list"], ["OFFRL_DATASETS_PATH", "{w}/afile"],
         lambda ws: ws.env(OFFRL_DATASETS_PATH="{w}/afile")),
    case("env-store-under-a-file", ["datasets", "list"], ["{w}/afile"],
         lambda ws: ws.env(OFFRL_DATASETS_PATH="{w}/afile/store")),
    case("env-leaderboard-binary", ["leaderboard"], ["{w}/binary.csv"],
         lambda ws: (ws.leaderboard("binary.csv", "binary"), ws.env(OFFRL_LEADERBOARD="{w}/binary.csv"))),
    case("env-leaderboard-is-a-folder", ["leaderboard"], ["{w}/run", "not a file"],
         lambda ws: ws.env(OFFRL_LEADERBOARD="{w}/run")),

    # collect
    case("collect-seed-negative", with_options(COLLECT, "--seed", "-1"), ["--seed", "-1"]),
    case("collect-seed-not-integer", with_options(COLLECT, "--seed", "one"), ["--seed", "'one'"]),
    case("collect-transitions-zero", with_options(COLLECT, "--transitions", "0"), ["--transitions", "0"]),
    case("collect-version-negative", with_options(COLLECT, "--version", "-1"), ["--version", "-1"]),
    case("collect-num-envs-zero", with_options(COLLECT, "--num-envs", "0"), ["--num-envs", "0"]),
    case("collect-sampler-unknown", with_options(COLLECT, "--sampler", "dice"), ["--sampler", "dice"]),
    case("collect-store-read-only", COLLECT, ["{w}/store"], lambda ws: ws.read_only("store")),
    case("collect-store-is-a-file", COLLECT, ["{w}/afile"], lambda ws: ws.env(OFFRL_DATASETS_PATH="{w}/afile")),
    case("collect-store-under-a-file", COLLECT, ["{w}/afile"],
         lambda ws: ws.env(OFFRL_DATASETS_PATH="{w}/afile/store")),

    # train-cql
    case("train-seed-negative", with_options(TRAIN, "--seed", "-1"), ["--seed", "-1"]),
    case("train-steps-zero", with_options(TRAIN, "--steps", "0"), ["--steps", "0"]),
    case("train-steps-not-integer", with_options(TRAIN, "--steps", "1e3"), ["--steps", "'1e3'"]),
    case("train-device-unknown", with_options(TRAIN, "--device", "tpu"), ["--device", "tpu"]),
    case("train-device-cuda-index", with_options(TRAIN, "--device", "cuda:99"), ["--device", "cuda:99"]),
    case("train-out-is-a-file", with_options(TRAIN, "--out", "{w}/afile"), ["--out", "{w}/afile"]),
    case("train-out-under-a-file", with_options(TRAIN, "--out", "{w}/afile/run"), ["--out", "{w}/afile"]),
    case("train-out-read-only", with_options(TRAIN, "--out", "{w}/locked/run"), ["{w}/locked"],
         lambda ws: ws.read_only("locked")),
    case("train-card-without-sha256", TRAIN, ["random-v0.json", "sha256"],
         lambda ws: ws.card(lambda card: card.pop("sha256"))),
    case("train-card-transitions-not-number", TRAIN, ["random-v0.json", "transitions"],
         lambda ws: ws.card(lambda card: card.update(transitions="many"))),
    case("train-data-file-tampered", TRAIN, ["random-v0.hdf5", "sha256"],
         lambda ws: ws.append(f"store/{DATASET}.hdf5", b"tampered")),
    case("train-config-yaml-invalid", with_options(TRAIN, "--config", "{w}/mine.yaml"), ["{w}/mine.yaml", "YAML"],
         lambda ws: ws.write("mine.yaml", "actor_lr: [1e-4\n")),
    case("train-set-not-finite", with_options(TRAIN, "--set", "cql_alpha=.nan"), ["cql_alpha", "nan"]),
    case("train-leaderboard-binary", with_options(TRAIN, "--leaderboard", "{w}/board.csv"), ["{w}/board.csv"],
         lambda ws: ws.leaderboard("board.csv", "binary")),
    case("train-leaderboard-non-numeric", with_options(TRAIN, "--leaderboard", "{w}/board.csv"),
         ["{w}/board.csv", "final_normalized_return", "'high'"], lambda ws: ws.leaderboard("board.csv", "non-numeric")),
    case("train-leaderboard-bad-header", with_options(TRAIN, "--leaderboard", "{w}/board.csv"),
         ["{w}/board.csv", "header"], lambda ws: ws.leaderboard("board.csv", "bad-header")),
    case("train-leaderboard-is-a-folder", with_options(TRAIN, "--leaderboard", "{w}/run"), ["{w}/run"]),
    case("train-env-leaderboard-non-numeric", TRAIN, ["{w}/board.csv"],
         lambda ws: (ws.leaderboard("board.csv", "non-numeric"), ws.env(OFFRL_LEADERBOARD="{w}/board.csv"))),
    case("train-resume-checkpoint-wrong-shapes", with_options(TRAIN, "--out", "{w}/run", "--resume", "--steps", "4"),
         ["{w}/run/checkpoint.pt"], lambda ws: ws.checkpoint()),
    case("train-eval-every-zero", with_options(TRAIN, "--eval-every", "0"), ["--eval-every", "0"]),
    case("train-log-every-zero", with_options(TRAIN, "--log-every", "0"), ["--log-every", "0"]),
    case("train-checkpoint-every-zero", with_options(TRAIN, "--checkpoint-every", "0"), ["--checkpoint-every", "0"]),
    case("train-eval-episodes-zero", with_options(TRAIN, "--eval-episodes", "0"), ["--eval-episodes", "0"]),
    case("train-collect-missing-store-read-only",
         with_options(TRAIN, "--dataset", "halfcheetah/random-v1", "--collect-missing"), ["{w}/store"],
         lambda ws: ws.read_only("store")),

    # pretrain
    case("pretrain-seed-negative", with_options(PRETRAIN, "--seed", "-1"), ["--seed", "-1"]),
    case("pretrain-steps-zero", with_options(PRETRAIN, "--steps", "0"), ["--steps", "0"]),
    case("pretrain-out-is-a-file", with_options(PRETRAIN, "--out", "{w}/afile"), ["--out", "{w}/afile"]),
    case("pretrain-out-read-only", with_options(PRETRAIN, "--out", "{w}/locked/run"), ["{w}/locked"],
         lambda ws: ws.read_only("locked")),
    case("pretrain-device-unknown", with_options(PRETRAIN, "--device", "tpu"), ["--device", "tpu"]),
    case("pretrain-eval-every-zero", with_options(PRETRAIN, "--eval-every", "0"), ["--eval-every", "0"]),

    # finetune
    case("finetune-from-run-json-corrupt", FINETUNE, ["{w}/run/run.json"], lambda ws: ws.run_record(text="[1,")),
    case("finetune-from-run-json-missing-keys", FINETUNE, ["{w}/run/run.json", "config"],
         lambda ws: ws.run_record(lambda record: record.pop("config"))),
    case("finetune-from-checkpoint-wrong-shapes", FINETUNE, ["{w}/run/checkpoint.pt"], lambda ws: ws.checkpoint()),
    case("finetune-utd-zero", with_options(FINETUNE, "--utd", "0"), ["--utd", "0"]),
    case("finetune-cql-alpha-online-not-number", with_options(FINETUNE, "--cql-alpha-online", "x"),
         ["--cql-alpha-online", "'x'"]),
    case("finetune-cql-alpha-online-nan", with_options(FINETUNE, "--cql-alpha-online", "nan"),
         ["--cql-alpha-online", "nan"]),
    case("finetune-seed-negative", with_options(FINETUNE, "--seed", "-1"), ["--seed", "-1"]),
    case("finetune-out-is-a-file", with_options(FINETUNE, "--out", "{w}/afile"), ["--out", "{w}/afile"]),
    case("finetune-device-unknown", with_options(FINETUNE, "--device", "tpu"), ["--device", "tpu"]),
    case("finetune-leaderboard-binary", with_options(FINETUNE, "--leaderboard", "{w}/board.csv"), ["{w}/board.csv"],
         lambda ws: ws.leaderboard("board.csv", "binary")),

    # evaluate
    case("evaluate-target-missing", with_options(EVALUATE, "{w}/nothing"), ["{w}/nothing"]),
    case("evaluate-run-json-corrupt", EVALUATE, ["{w}/run/run.json"], lambda ws: ws.run_record(text="{")),
    case("evaluate-run-json-missing-keys", EVALUATE, ["{w}/run/run.json", "obs_dim"],
         lambda ws: ws.run_record(lambda record: record.pop("obs_dim"))),
    case("evaluate-run-json-not-an-object", EVALUATE, ["{w}/run"], lambda ws: ws.run_record(text="[1, 2]")),
    case("evaluate-checkpoint-wrong-shapes", EVALUATE, ["{w}/run/checkpoint.pt"], lambda ws: ws.checkpoint()),
    case("evaluate-normalizer-missing", EVALUATE, ["{w}/run/normalizer.json"],
         lambda ws: ws.path("run/normalizer.json").unlink()),
    case("evaluate-normalizer-wrong-width", EVALUATE, ["{w}/run/normalizer.json"],
         lambda ws: ws.write("run/normalizer.json", '{"mean": [0, 0], "std": [1, 1]}')),
    case("evaluate-episodes-zero", with_options(EVALUATE, "--episodes", "0"), ["--episodes", "0"]),
    case("evaluate-device-unknown", with_options(EVALUATE, "--device", "tpu"), ["--device", "tpu"]),
    case("evaluate-leaderboard-binary", with_options(EVALUATE, "--leaderboard", "{w}/board.csv"), ["{w}/board.csv"],
         lambda ws: ws.leaderboard("board.csv", "binary")),
    case("evaluate-leaderboard-non-numeric", with_options(EVALUATE, "--leaderboard", "{w}/board.csv"),
         ["{w}/board.csv", "'high'"], lambda ws: ws.leaderboard("board.csv", "non-numeric")),
    case("evaluate-leaderboard-is-a-folder", with_options(EVALUATE, "--leaderboard", "{w}/run"), ["{w}/run"]),

    # export-policy
    case("export-format-unknown", ["export-policy", "{w}/run", "--format", "tflite"], ["--format", "tflite"]),
    case("export-out-is-a-file", ["export-policy", "{w}/run", "--out", "{w}/afile"], ["--out", "{w}/afile"]),
    case("export-out-under-a-file", ["export-policy", "{w}/run", "--out", "{w}/afile/export"], ["{w}/afile"]),
    case("export-out-read-only", ["export-policy", "{w}/run", "--out", "{w}/locked/export"], ["{w}/locked"],
         lambda ws: ws.read_only("locked")),
    case("export-checkpoint-wrong-shapes", ["export-policy", "{w}/run"], ["{w}/run/checkpoint.pt"],
         lambda ws: ws.checkpoint()),

    # ship-policies
    case("ship-episodes-zero", ["ship-policies", "--run", "{w}/run", "--episodes", "0"], ["--episodes", "0"]),
    case("ship-dest-is-a-file", ["ship-policies", "--run", "{w}/run", "--dest", "{w}/afile"],
         ["--dest", "{w}/afile"]),

    # datasets list / info / verify
    case("info-card-not-an-object", ["datasets", "info", DATASET], ["random-v0.json"],
         lambda ws: ws.card(text="[1, 2, 3]")),
    case("info-card-without-sha256", ["datasets", "info", DATASET], ["random-v0.json", "sha256"],
         lambda ws: ws.card(lambda card: card.pop("sha256"))),
    case("info-card-of-another-id", ["datasets", "info", DATASET], ["random-v0.json", "pendulum/other-v0"],
         lambda ws: ws.card(lambda card: card.update(id="pendulum/other-v0"))),
    case("info-card-binary", ["datasets", "info", DATASET], ["random-v0.json"],
         lambda ws: ws.path(f"store/{DATASET}.json").write_bytes(bytes(range(128, 256)))),
    case("verify-file-tampered", ["datasets", "verify", DATASET], ["random-v0.hdf5", "sha256"],
         lambda ws: ws.append(f"store/{DATASET}.hdf5", b"x")),
    case("verify-card-without-sha256", ["datasets", "verify", DATASET], ["random-v0.json", "sha256"],
         lambda ws: ws.card(lambda card: card.pop("sha256"))),
    case("verify-card-sha256-malformed", ["datasets", "verify", DATASET], ["random-v0.json", "sha256"],
         lambda ws: ws.card(lambda card: card.update(sha256="abc"))),

    # datasets import-d4rl
    case("import-rewards-two-columns", IMPORT, ["{w}/d4rl.hdf5", "rewards", "(20, 2)"],
         lambda ws: ws.d4rl(rewards=np.zeros((20, 2), np.float32))),
    case("import-zero-rows", IMPORT, ["{w}/d4rl.hdf5", "0 rows"],
         lambda ws: ws.d4rl(rows=0, timeouts=np.zeros(0, bool))),
    case("import-rewards-is-a-group", IMPORT, ["{w}/d4rl.hdf5", "rewards", "group"],
         lambda ws: ws.d4rl(rewards="group")),
    case("import-observations-scalar", IMPORT, ["{w}/d4rl.hdf5", "observations"],
         lambda ws: ws.d4rl(observations=np.float32(1.0))),
    case("import-terminals-fractional", IMPORT, ["{w}/d4rl.hdf5", "terminals", "0.5"],
         lambda ws: ws.d4rl(terminals=np.where(np.arange(20) % 3 == 0, 0.5, 0.0).astype(np.float32))),
    case("import-timeouts-two", IMPORT, ["{w}/d4rl.hdf5", "timeouts", "2"],
         lambda ws: ws.d4rl(timeouts=np.where(np.arange(20) % 10 == 9, 2, 0))),
    case("import-rewards-nan", IMPORT, ["{w}/d4rl.hdf5", "rewards", "NaN"],
         lambda ws: ws.d4rl(rewards=np.where(np.arange(20) == 3, np.nan, 0.0).astype(np.float32)),
         absent=["{w}/store"]),
    case("import-observations-inf", IMPORT, ["{w}/d4rl.hdf5", "observations"],
         lambda ws: ws.d4rl(observations=np.full((20, 3), np.inf, np.float32)), absent=["{w}/store"]),
    case("import-no-usable-row", IMPORT, ["{w}/d4rl.hdf5"],
         lambda ws: ws.d4rl(rows=1, timeouts=np.zeros(1, bool))),
    case("import-id-exists", with_options(IMPORT, "--id", DATASET), [DATASET, "--id"], lambda ws: ws.d4rl(),
         absent=["--version"]),
    case("import-store-read-only", IMPORT, ["{w}/store"], lambda ws: (ws.d4rl(), ws.read_only("store"))),

    # datasets import-minari / export-minari (the local Minari store only: no network)
    case("import-minari-unknown", ["datasets", "import-minari", "mujoco/nothing/here-v0"], ["mujoco/nothing/here-v0"]),
    case("export-minari-minari-id-malformed", ["datasets", "export-minari", DATASET, "--minari-id", "no version"],
         ["--minari-id", "'no version'"]),

    # leaderboard
    case("leaderboard-empty", ["leaderboard", "--leaderboard", "{w}/board.csv"], ["{w}/board.csv", "empty"],
         lambda ws: ws.leaderboard("board.csv", "empty")),
    case("leaderboard-binary", ["leaderboard", "--leaderboard", "{w}/board.csv"], ["{w}/board.csv"],
         lambda ws: ws.leaderboard("board.csv", "binary")),
    case("leaderboard-non-numeric", ["leaderboard", "--leaderboard", "{w}/board.csv"],
         ["{w}/board.csv", "final_normalized_return", "'high'"], lambda ws: ws.leaderboard("board.csv", "non-numeric")),
    case("leaderboard-steps-empty", ["leaderboard", "--leaderboard", "{w}/board.csv"], ["{w}/board.csv", "steps"],
         lambda ws: ws.leaderboard("board.csv", "no-steps")),
    case("leaderboard-is-a-folder", ["leaderboard", "--leaderboard", "{w}/run"], ["{w}/run", "not a file"]),
]


def _fill(text: str, ws: Workspace) -> str:
    return text.replace("{w}", str(ws.w))


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own refusals exit from inside parse_args
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("bad", CLI_CASES)
def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(bad: Case, ws: Workspace, capsys):
    if bad.prepare is not None:
        bad.prepare(ws)
    argv = [_fill(word, ws) for word in bad.argv]
    before = snapshot(ws.w)
    code, out, err = run_cli(argv, capsys)
    assert "Traceback" not in out + err
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1, f"exit {code}, stderr:\n{err}"
    assert lines[0].startswith("offrl: error: "), lines[0]
    for name in bad.names:
        assert _fill(name, ws) in lines[0], f"{_fill(name, ws)!r} not named in: {lines[0]}"
    for name in bad.absent:
        assert _fill(name, ws) not in lines[0], f"{_fill(name, ws)!r} should not be in: {lines[0]}"
    assert snapshot(ws.w) == before


# --- the API table ---------------------------------------------------------------------------------------------------

def _arrays(**changes) -> dict:
    """make_arrays() without next_observations (rows are consecutive), with some arrays replaced."""
    arrays = {k: v for k, v in make_arrays(n=20).items() if k != "next_observations"}
    return {**arrays, **changes}


def _tiny_agent():
    return offrl.CQL("fast", **TINY)


def _dataset(ws):
    return offrl.dataset_from_arrays(**_arrays(), env_id="Pendulum-v1")


def _fit(ws, **options):
    return _tiny_agent().fit(_dataset(ws), options.pop("n_steps", 2), show_progress=False, **options)


def api(case_id: str, call: Callable[[Workspace], object], names: list[str], prepare=None, absent=()):
    return pytest.param(Case([], names, prepare, list(absent)), call, id=case_id)


FRACTIONAL = np.where(np.arange(20) % 3 == 0, 0.5, 0.0)
API_CASES = [
    # offrl.load_dataset
    api("load-dataset-id-not-a-string", lambda ws: offrl.load_dataset(42), ["dataset_id", "int"]),
    api("load-dataset-device-unknown", lambda ws: offrl.load_dataset(DATASET, device="tpu"), ["device", "tpu"]),
    api("load-dataset-card-without-sha256", lambda ws: offrl.load_dataset(DATASET), ["random-v0.json", "sha256"],
        lambda ws: ws.card(lambda card: card.pop("sha256"))),
    api("load-dataset-file-tampered", lambda ws: offrl.load_dataset(DATASET), ["random-v0.hdf5", "sha256"],
        lambda ws: ws.append(f"store/{DATASET}.hdf5", b"x")),
    api("load-dataset-store-is-a-file", lambda ws: offrl.load_dataset(DATASET), ["{w}/afile", "not a directory"],
        lambda ws: ws.env(OFFRL_DATASETS_PATH="{w}/afile")),

    # offrl.dataset_from_arrays
    api("arrays-terminals-fractional", lambda ws: offrl.dataset_from_arrays(**_arrays(terminals=FRACTIONAL)),
        ["terminals", "0.5"]),
    api("arrays-terminals-fractional-with-next", lambda ws: offrl.dataset_from_arrays(
        **_arrays(terminals=FRACTIONAL), next_observations=make_arrays(n=20)["next_observations"]),
        ["terminals", "0.5"]),
    api("arrays-timeouts-two", lambda ws: offrl.dataset_from_arrays(**_arrays(timeouts=_arrays()["timeouts"] * 2.0)),
        ["timeouts", "2"]),
    api("arrays-rewards-two-columns", lambda ws: offrl.dataset_from_arrays(**_arrays(rewards=np.zeros((20, 2)))),
        ["rewards", "(20, 2)"]),
    api("arrays-zero-rows", lambda ws: offrl.dataset_from_arrays(**{k: v[:0] for k, v in _arrays().items()}),
        ["0 rows"]),
    api("arrays-observations-one-dimensional",
        lambda ws: offrl.dataset_from_arrays(**_arrays(observations=np.zeros(20))), ["observations", "(20,)"]),
    api("arrays-rewards-text", lambda ws: offrl.dataset_from_arrays(**_arrays(rewards=np.array(["1"] * 20))),
        ["rewards", "dtype"]),
    api("arrays-reference-scores-not-numbers",
        lambda ws: offrl.dataset_from_arrays(**_arrays(), reference_scores=("low", "high")), ["reference_scores"]),
    api("arrays-reference-scores-three",
        lambda ws: offrl.dataset_from_arrays(**_arrays(), reference_scores=(1, 2, 3)), ["reference_scores"]),
    api("arrays-device-unknown", lambda ws: offrl.dataset_from_arrays(**_arrays(), device="tpu"), ["device", "tpu"]),

    # offrl.import_d4rl
    api("import-d4rl-rewards-two-columns", lambda ws: offrl.import_d4rl(ws.path("d4rl.hdf5"), "pendulum/d4rl-v0",
                                                                        env_id="Pendulum-v1"),
        ["{w}/d4rl.hdf5", "rewards"], lambda ws: ws.d4rl(rewards=np.zeros((20, 2), np.float32))),
    api("import-d4rl-terminals-fractional", lambda ws: offrl.import_d4rl(ws.path("d4rl.hdf5"), "pendulum/d4rl-v0",
                                                                         env_id="Pendulum-v1"),
        ["{w}/d4rl.hdf5", "terminals"], lambda ws: ws.d4rl(terminals=FRACTIONAL)),
    api("import-d4rl-id-exists", lambda ws: offrl.import_d4rl(ws.path("d4rl.hdf5"), DATASET, env_id="Pendulum-v1"),
        [DATASET, "already exists"], lambda ws: ws.d4rl(), absent=["--version"]),

    # offrl.CQL(...)
    api("cql-alpha-nan", lambda ws: offrl.CQL("fast", cql_alpha=float("nan")), ["cql_alpha", "nan"]),
    api("cql-device-unknown", lambda ws: offrl.CQL("fast", device="tpu"), ["device", "tpu"]),

    # agent.fit(...)
    api("fit-run-dir-is-a-file", lambda ws: _fit(ws, run_dir=ws.path("afile")), ["{w}/afile"]),
    api("fit-run-dir-under-a-file", lambda ws: _fit(ws, run_dir=ws.path("afile/run")), ["{w}/afile"]),
    api("fit-run-dir-read-only", lambda ws: _fit(ws, run_dir=ws.path("locked/run")), ["{w}/locked"],
        lambda ws: ws.read_only("locked")),
    api("fit-resume-checkpoint-wrong-shapes", lambda ws: _tiny_agent().fit(
        offrl.load_dataset(DATASET), 4, run_dir=ws.path("run"), resume=True, show_progress=False),
        ["{w}/run/checkpoint.pt"], lambda ws: ws.checkpoint()),
    api("fit-final-eval-episodes-negative", lambda ws: _fit(ws, final_eval_episodes=-1),
        ["final_eval_episodes", "-1"]),
    api("fit-leaderboard-binary", lambda ws: _fit(ws, leaderboard=ws.path("board.csv")), ["{w}/board.csv"],
        lambda ws: ws.leaderboard("board.csv", "binary")),

    # offrl.evaluate
    api("evaluate-episodes-zero", lambda ws: offrl.evaluate(offrl.load_agent(ws.path("agent.pt")), episodes=0),
        ["episodes", "0"]),
    api("evaluate-env-unknown", lambda ws: offrl.evaluate(offrl.load_agent(ws.path("agent.pt")),
                                                          env_id="NoSuchEnv-v0"), ["NoSuchEnv-v0"]),
    api("evaluate-env-dims-differ", lambda ws: offrl.evaluate(offrl.load_agent(ws.path("agent.pt")),
                                                              env_id="HalfCheetah-v5"), ["HalfCheetah-v5"]),
    api("evaluate-agent-wrong-type", lambda ws: offrl.evaluate(42, _dataset(ws)), ["agent", "int"]),
    api("evaluate-dataset-wrong-type", lambda ws: offrl.evaluate(offrl.load_agent(ws.path("agent.pt")), 42),
        ["dataset", "int"]),
    api("evaluate-dataset-dims-differ", lambda ws: offrl.evaluate(
        offrl.load_agent(ws.path("agent.pt")), offrl.dataset_from_arrays(**make_arrays(n=20, obs_dim=5))),
        ["dataset", "5"]),

    # offrl.restore_run
    api("restore-run-json-missing-keys", lambda ws: offrl.restore_run(ws.path("run")),
        ["{w}/run/run.json", "config"], lambda ws: ws.run_record(lambda record: record.pop("config"))),
    api("restore-checkpoint-wrong-shapes", lambda ws: offrl.restore_run(ws.path("run")), ["{w}/run/checkpoint.pt"],
        lambda ws: ws.checkpoint()),
    api("restore-normalizer-corrupt", lambda ws: offrl.restore_run(ws.path("run")), ["{w}/run/normalizer.json"],
        lambda ws: ws.write("run/normalizer.json", "{")),
    api("restore-device-unknown", lambda ws: offrl.restore_run(ws.path("run"), device="tpu"), ["device", "tpu"]),

    # offrl.load_agent
    api("load-agent-wrong-shapes", lambda ws: offrl.load_agent(ws.path("agent.pt")), ["{w}/agent.pt"],
        lambda ws: ws.checkpoint("agent.pt")),
    api("load-agent-key-missing", lambda ws: offrl.load_agent(ws.path("agent.pt")), ["{w}/agent.pt", "obs_dim"],
        lambda ws: _edit_agent_file(ws.path("agent.pt"), lambda state: state.pop("obs_dim"))),
    api("load-agent-device-unknown", lambda ws: offrl.load_agent(ws.path("agent.pt"), device="tpu"),
        ["device", "tpu"]),
]


def _edit_agent_file(path: Path, edit: Callable[[dict], object]) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    edit(state)
    torch.save(state, path)


@pytest.mark.parametrize(("bad", "call"), API_CASES)
def test_api_bad_input_raises_one_offlinerlerror_and_writes_nothing(bad: Case, call, ws: Workspace):
    if bad.prepare is not None:
        bad.prepare(ws)
    before = snapshot(ws.w)
    with pytest.raises(OfflineRLError) as raised:
        call(ws)
    message = str(raised.value)
    assert "\n" not in message, message
    for name in bad.names:
        assert _fill(name, ws) in message, f"{_fill(name, ws)!r} not named in: {message}"
    for name in bad.absent:
        assert _fill(name, ws) not in message, f"{_fill(name, ws)!r} should not be in: {message}"
    assert snapshot(ws.w) == before


# --- a real process: what a user's shell sees ---------------------------------------------------------------------

@pytest.mark.parametrize(("argv", "env", "named"), [
    pytest.param(["datasets", "list"], {"OFFRL_THREADS": "abc"}, "OFFRL_THREADS", id="process-env-threads"),
    pytest.param(["datasets", "list"], {"OFFRL_DATASETS_PATH": "{w}/afile"}, "{w}/afile", id="process-env-store-file"),
    pytest.param(["collect", "--env", "Pendulum-v1", "--tier", "random", "--seed", "-1"], {}, "--seed",
                 id="process-collect-seed-negative"),
])
def test_a_real_process_prints_one_line_and_exits_2(argv, env, named, ws: Workspace):
    package_root = str(Path(offrl.__file__).resolve().parent.parent)  # the offrl under test, whatever is installed
    environment = {**os.environ, **{k: _fill(v, ws) for k, v in env.items()},
                   "PYTHONPATH": os.pathsep.join([package_root, *filter(None, [os.environ.get("PYTHONPATH")])])}
    before = snapshot(ws.w)
    done = subprocess.run([sys.executable, "-m", "offrl.cli", *argv], capture_output=True, text=True, env=environment,
                          cwd=ws.w, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("offrl: error: "), done.stderr
    assert _fill(named, ws) in done.stderr and "Traceback" not in done.stdout + done.stderr
    assert snapshot(ws.w) == before


# --- inputs that are not refused, but must not be mistreated ------------------------------------------------------

@pytest.mark.parametrize(("card_id", "damage", "status"), [
    pytest.param("no-sha256", lambda ws: ws.card(lambda card: card.pop("sha256")), "missing field(s) sha256",
                 id="card-without-sha256"),
    pytest.param("corrupt", lambda ws: ws.card(text='{"card_type": "offrl-dataset", '), "not valid JSON",
                 id="card-corrupt-json"),
])
def test_datasets_list_shows_a_corrupt_card_and_every_other_dataset(card_id, damage, status, ws: Workspace, capsys):
    """A damaged card neither breaks `datasets list` for every dataset nor hides its own dataset."""
    from offrl.data.registry import register_dataset

    register_dataset("pendulum/other-v0", make_arrays(), {"env_id": "Pendulum-v1"})
    damage(ws)
    code, out, err = run_cli(["datasets", "list"], capsys)
    assert code == 0 and "Traceback" not in out + err, err
    rows = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert "CORRUPT CARD" in rows[DATASET] and status in rows[DATASET]
    assert rows["pendulum/other-v0"].rstrip().endswith("verified")
    code, out, _ = run_cli(["datasets", "verify"], capsys)  # every dataset: the corrupt card is a failure, listed
    assert code == 2 and DATASET in out and "pendulum/other-v0" in out


def test_a_float_written_as_3e_4_is_a_number_in_yaml_and_in_set(ws: Workspace):
    """PyYAML reads `3e-4` (no dot) as a string; a float field takes it as the number a user meant."""
    from offrl.config import parse_overrides

    ws.write("mine.yaml", "actor_lr: 3e-4\ncritic_lr: 1E-3\n")
    agent = offrl.CQL(str(ws.path("mine.yaml")), **parse_overrides(["alpha_lr=5e-5"]))
    assert (agent.config.actor_lr, agent.config.critic_lr, agent.config.alpha_lr) == (3e-4, 1e-3, 5e-5)
