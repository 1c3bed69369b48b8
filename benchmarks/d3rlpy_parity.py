"""d3rlpy 2.8.1's CQL trained on one of offrl's datasets, evaluated like offrl's runs: the other half of the parity
check of issue 15 (offrl's side is `offrl sweep --algorithms cql --configs d3rlpy`, the same hyper-parameters).

Runs in the d3rlpy venv (`make .venv-d3rlpy/.installed`, plus `pip install mujoco h5py` there: d3rlpy pins
gymnasium 1.0.0, whose MuJoCo v5 envs need the mujoco package). Reads the HDF5 file and its card with h5py, trains
d3rlpy's CQL with its defaults (conservative weight 5, Lagrange α′ with threshold 10, 2×256, lr 1e-4/3e-4/1e-4/1e-4,
batch 256, 10 action samples; configs/cql/d3rlpy.yaml lists them and where offrl differs), evaluates the
deterministic policy every `--eval-every` updates on the card's env with the card's reference scores (as
offrl's evaluation does: `--eval-episodes` episodes, env i reset with seed `EVAL_SEED + seed + i`, the start
states offrl's run of the same seed is evaluated from), and writes
`evaluations.csv` and `final.json` into `--out`. Each evaluation also measures the Q-estimate bias as offrl's does
(offrl/evaluation/q_bias.py: the same rollouts continue past the time limit until γ^H ≤ 0.01, the minimum of the
two critics at every in-limit (s_t, a_t) against its discounted Monte-Carlo return, no bootstrapping) and keeps
d3rlpy's own training metrics, averaged over the updates since the last evaluation (offrl's metrics.csv holds
single updates). The file must hash to its card's sha256. Resumable: after every evaluation the model (weights and
optimiser states, d3rlpy's `save_model`), the random states d3rlpy samples from (Python, NumPy, torch) and the rows
so far are saved under the step's name, then progress.json names them; a re-run continues from there.

    .venv-d3rlpy/bin/python benchmarks/d3rlpy_parity.py --dataset datasets/halfcheetah/medium-v1.hdf5 \
        --seed 0 --steps 50000 --eval-every 10000 --out runs/parity/d3rlpy-seed0
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

try:  # only training needs d3rlpy; `evaluate` is also imported by offrl's tests, which check it against offrl's own
    import d3rlpy
except ImportError:
    d3rlpy = None


def _atomic_write(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def load_dataset(path: Path) -> tuple[d3rlpy.dataset.ReplayBuffer, dict]:
    card = json.loads(path.with_suffix(".json").read_text())
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != card["sha256"]:
        print(f"error: {path}: sha256 {digest.hexdigest()} is not its card's {card['sha256']}", file=sys.stderr)
        raise SystemExit(2)
    import h5py

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


# offrl.evaluation.report.Q_BIAS_TAIL_TOLERANCE: Q-bias rollouts run H steps past the limit, γ^H ≤ this
Q_BIAS_TAIL_TOLERANCE = 0.01


def evaluate(algo, env_id: str, episodes: int, seed: int, gamma: float) -> dict[str, float]:
    """offrl's evaluation of one policy (offrl.evaluation.report.evaluate_in_env): the deterministic policy on
    `episodes` envs, env i reset with seed EVAL_SEED + seed + i, all stepped as one batch; the return counts the
    first time-limit steps, and the rollouts go on H steps more for the Q bias of every in-limit state."""
    limit = gym.spec(env_id).max_episode_steps
    horizon = math.ceil(math.log(Q_BIAS_TAIL_TOLERANCE) / math.log(gamma))
    envs = [gym.make(env_id, max_episode_steps=limit + horizon) for _ in range(episodes)]
    obs = np.stack([env.reset(seed=EVAL_SEED + seed + i)[0] for i, env in enumerate(envs)]).astype(np.float32)
    rewards, q_values, terminated = [[] for _ in envs], [[] for _ in envs], [False] * episodes
    active = list(range(episodes))
    while active:
        actions = algo.predict(obs[active])
        with torch.no_grad():  # the minimum over d3rlpy's two critics, as offrl's Q bias takes
            q = algo.impl._q_func_forwarder.compute_expected_q(torch.as_tensor(obs[active]),
                                                               torch.as_tensor(actions), "min")
        still_running = []
        for j, i in enumerate(active):
            q_values[i].append(float(q.reshape(-1)[j]))
            obs_i, reward, term, trunc, _ = envs[i].step(actions[j])
            obs[i] = obs_i
            rewards[i].append(float(reward))
            if term or trunc:
                terminated[i] = bool(term)
            else:
                still_running.append(i)
        active = still_running
    for env in envs:
        env.close()
    returns = np.array([sum(r[:limit]) for r in rewards])
    biases, targets = [], []
    for r, q, term in zip(rewards, q_values, terminated, strict=True):
        discounted = np.zeros(len(r))
        running = 0.0
        for t in range(len(r) - 1, -1, -1):
            running = r[t] + gamma * running
            discounted[t] = running
        keep = min(len(r) if term else max(0, len(r) - horizon), limit)
        biases.append(np.asarray(q[:keep]) - discounted[:keep])
        targets.append(discounted[:keep])
    bias, scale = np.concatenate(biases), abs(float(np.concatenate(targets).mean())) or 1.0
    return {"return_mean": float(returns.mean()), "return_std": float(returns.std()),
            "q_bias_mean": float(bias.mean()), "q_bias_normalized_mean": float((bias / scale).mean())}


def _rng_states() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])


def main() -> None:
    if d3rlpy is None:
        print("error: d3rlpy is not installed here; run this in .venv-d3rlpy (make .venv-d3rlpy/.installed)",
              file=sys.stderr)
        raise SystemExit(2)
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
    progress_path = args.out / "progress.json"

    d3rlpy.seed(args.seed)
    config = d3rlpy.algos.CQLConfig()  # d3rlpy's defaults: the config under test
    algo = config.create(device="cpu:0")
    algo.build_with_dataset(data)
    # like an offrl run record: the commit and evaluation scheme of the first start stay the run's
    progress = {"step": 0, "rows": [], "elapsed_s": 0.0, "git_commit": git_commit(), "eval_seed": EVAL_SEED}
    if progress_path.is_file():
        progress = json.loads(progress_path.read_text())
        if progress.get("eval_seed") != EVAL_SEED or "model" not in progress:
            print(f"error: {args.out} was started by another version of this script (its progress.json names no "
                  f"model or another eval_seed); start it again in a new --out", file=sys.stderr)
            raise SystemExit(2)
        algo.load_model(str(args.out / progress["model"]))
        _set_rng_states(torch.load(args.out / progress["rng"], weights_only=False))
    while progress["step"] < args.steps:
        chunk = min(args.eval_every, args.steps - progress["step"])
        start = time.perf_counter()
        epochs = algo.fit(data, n_steps=chunk, n_steps_per_epoch=chunk, show_progress=False, save_interval=10**9,
                          logger_adapter=d3rlpy.logging.NoopAdapterFactory())
        progress["elapsed_s"] += time.perf_counter() - start
        progress["step"] += chunk
        rng = _rng_states()  # evaluation draws nothing from these, but keep the state training left
        evaluation = evaluate(algo, env_id, args.eval_episodes, args.seed, config.gamma)
        progress["rows"].append({"step": progress["step"], **evaluation,
                                 "normalized_return": 100 * (evaluation["return_mean"] - random_score)
                                 / (expert_score - random_score),
                                 **{f"train_{k}": float(v) for k, v in epochs[-1][1].items()}})
        # new files under the step's name first, then progress.json names them: a kill leaves the old pair named
        model_name, rng_name = f"model_{progress['step']}.d3", f"rng_{progress['step']}.pt"
        algo.save_model(str(args.out / f".{model_name}.tmp"))
        os.replace(args.out / f".{model_name}.tmp", args.out / model_name)
        torch.save(rng, args.out / f".{rng_name}.tmp")
        os.replace(args.out / f".{rng_name}.tmp", args.out / rng_name)
        previous = (progress.get("model"), progress.get("rng"))
        progress["model"], progress["rng"] = model_name, rng_name
        _atomic_write(progress_path, json.dumps(progress, indent=2))
        for name in previous:
            if name:
                (args.out / name).unlink(missing_ok=True)
        print(progress["rows"][-1], flush=True)
    columns = list(progress["rows"][0])
    _atomic_write(args.out / "evaluations.csv", ",".join(columns) + "\n" + "".join(
        ",".join(str(r.get(c, "")) for c in columns) + "\n" for r in progress["rows"]))
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
