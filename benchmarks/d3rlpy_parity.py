"""d3rlpy 2.8.1's CQL trained on one of offrl's datasets, evaluated like offrl's runs: the other half of the parity
check of issue 15 (offrl's side is `offrl sweep --algorithms cql --configs d3rlpy`, the same hyper-parameters).

Runs in the d3rlpy venv (`make .venv-d3rlpy/.installed`, plus `pip install mujoco h5py` there: d3rlpy pins
gymnasium 1.0.0, whose MuJoCo v5 envs need the mujoco package). Reads the HDF5 file and its card with h5py, trains
d3rlpy's CQL with its defaults (conservative weight 5, Lagrange α′ with threshold 10, 2×256, lr 1e-4/3e-4/1e-4/1e-4,
batch 256, 10 action samples; configs/cql/d3rlpy.yaml lists them and where offrl differs), evaluates the
deterministic policy every `--eval-every` updates on the card's env with the card's reference scores (as
offrl's evaluation does: `--eval-episodes` episodes, env i reset with seed `EVAL_SEED + seed + i`, the start
states offrl's run of the same seed is evaluated from), and writes
`evaluations.csv` and `final.json` into `--out`. Resumable: after every evaluation the model (weights and optimiser
states, d3rlpy's `save_model`) and the rows written so far are saved; a re-run continues from there (the sampling
RNG is not restored, so a resumed run is not bit-identical to an uninterrupted one).

    .venv-d3rlpy/bin/python benchmarks/d3rlpy_parity.py --dataset datasets/halfcheetah/medium-v1.hdf5 \
        --seed 0 --steps 50000 --eval-every 10000 --out runs/parity/d3rlpy-seed0
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import d3rlpy
import gymnasium as gym
import h5py
import numpy as np
import torch


def _atomic_write(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def load_dataset(path: Path) -> tuple[d3rlpy.dataset.ReplayBuffer, dict]:
    card = json.loads(path.with_suffix(".json").read_text())
    with h5py.File(path, "r") as f:
        arrays = {key: f[key][()] for key in ("observations", "actions", "rewards", "terminals", "timeouts")}
    data = d3rlpy.dataset.MDPDataset(
        observations=arrays["observations"].astype(np.float32), actions=arrays["actions"].astype(np.float32),
        rewards=arrays["rewards"].astype(np.float32), terminals=arrays["terminals"].astype(np.float32),
        timeouts=arrays["timeouts"].astype(np.float32))
    return data, card


# offrl.evaluation.report.EVAL_SEED (offrl itself is not installed in d3rlpy's venv)
EVAL_SEED = 10_000_000


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def evaluate(algo, env_id: str, episodes: int, seed: int) -> np.ndarray:
    returns = []
    for i in range(episodes):
        env = gym.make(env_id)
        observation, _ = env.reset(seed=EVAL_SEED + seed + i)
        total, done = 0.0, False
        while not done:
            action = algo.predict(observation[None].astype(np.float32))[0]
            observation, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = terminated or truncated
        env.close()
        returns.append(total)
    return np.asarray(returns)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, type=Path, help="offrl HDF5 file (its card beside it)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--eval-every", type=int, default=10_000)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OFFRL_THREADS", "1")))
    data, card = load_dataset(args.dataset)
    env_id = card["env_id"]
    random_score = card["reference_scores"]["random"]["return_mean"]
    expert_score = card["reference_scores"]["expert"]["return_mean"]
    args.out.mkdir(parents=True, exist_ok=True)
    progress_path, model_path = args.out / "progress.json", args.out / "model.d3"

    d3rlpy.seed(args.seed)
    algo = d3rlpy.algos.CQLConfig().create(device="cpu:0")  # d3rlpy's defaults: the config under test
    algo.build_with_dataset(data)
    # like an offrl run record: the commit and evaluation scheme of the first start stay the run's
    progress = {"step": 0, "rows": [], "elapsed_s": 0.0, "git_commit": git_commit(), "eval_seed": EVAL_SEED}
    if progress_path.is_file() and model_path.is_file():
        progress = json.loads(progress_path.read_text())
        if progress.get("eval_seed") != EVAL_SEED:
            print(f"error: {args.out} was evaluated from other start states (eval_seed {progress.get('eval_seed')}, "
                  f"now {EVAL_SEED}); start it again in a new --out", file=sys.stderr)
            raise SystemExit(2)
        algo.load_model(str(model_path))
    while progress["step"] < args.steps:
        chunk = min(args.eval_every, args.steps - progress["step"])
        start = time.perf_counter()
        algo.fit(data, n_steps=chunk, n_steps_per_epoch=chunk, show_progress=False, save_interval=10**9,
                 logger_adapter=d3rlpy.logging.NoopAdapterFactory())
        progress["elapsed_s"] += time.perf_counter() - start
        progress["step"] += chunk
        returns = evaluate(algo, env_id, args.eval_episodes, args.seed)
        progress["rows"].append({"step": progress["step"], "return_mean": float(returns.mean()),
                                 "return_std": float(returns.std()),
                                 "normalized_return": float(100 * (returns.mean() - random_score)
                                                            / (expert_score - random_score))})
        algo.save_model(str(args.out / ".model.d3.tmp"))
        os.replace(args.out / ".model.d3.tmp", model_path)
        _atomic_write(progress_path, json.dumps(progress, indent=2))
        print(progress["rows"][-1], flush=True)
    header = "step,return_mean,return_std,normalized_return\n"
    _atomic_write(args.out / "evaluations.csv", header + "".join(
        f"{r['step']},{r['return_mean']},{r['return_std']},{r['normalized_return']}\n" for r in progress["rows"]))
    final = {"impl": f"d3rlpy {d3rlpy.__version__}", "git_commit": progress["git_commit"], "dataset_id": card["id"],
             "dataset_sha256": card["sha256"],
             "seed": args.seed, "updates": progress["step"], "final_normalized_return":
             progress["rows"][-1]["normalized_return"], "best_normalized_return":
             max(r["normalized_return"] for r in progress["rows"]), "wall_time_s": progress["elapsed_s"],
             "updates_per_s": progress["step"] / max(progress["elapsed_s"], 1e-9), "torch": torch.__version__,
             "eval_episodes": args.eval_episodes, "reference": card["reference_scores"]}
    _atomic_write(args.out / "final.json", json.dumps(final, indent=2))


if __name__ == "__main__":
    main()
