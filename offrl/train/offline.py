"""Offline CQL-SAC training: dataset → buffer → updates → periodic evaluation → leaderboard row.

Training reads the dataset store and never writes to it. A run directory holds everything needed to
reproduce and evaluate the run: run.json (resolved config, its name and hash, dataset id and sha256,
git commit, seed), normalizer.json, metrics.csv, evaluations.csv, checkpoint.pt, final.json.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import time
import uuid
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from tqdm import tqdm

from offrl import __version__
from offrl.algos.cql import CQL_METRICS, CQLAgent, CQLConfig, autocast_for, compiled_cql_losses, cql_losses, cql_update
from offrl.config import config_from_dict, config_hash
from offrl.data.dataset import ObservationNormalizer, buffer_from_dataset, load_dataset
from offrl.data.registry import episode_returns, parse_dataset_id
from offrl.envs import env_spec, make_env, seed_everything
from offrl.errors import OfflineRLError
from offrl.evaluation.leaderboard import ONLINE_COLUMNS, append_row
from offrl.evaluation.q_bias import dropped_tail, q_bias, q_estimates
from offrl.evaluation.rollout import rollout_episodes
from offrl.evaluation.scores import normalized_return, reference_scores_from_card
from offrl.fileio import atomic_torch_save, atomic_write_bytes, git_commit
from offrl.train.common import MetricsLog, load_checkpoint, rng_state, run_checkpoint_path, set_rng_state

__all__ = ["OfflineRun", "TrainedPolicy", "TrainedRun", "train_cql", "evaluate_run", "evaluate_policy_report",
           "restore_run", "load_run", "reward_scale_for", "leaderboard_row", "dataset_diagnostics"]

CHECKPOINT_NAME = "checkpoint.pt"
EVAL_SEED = 10_000_000  # evaluation start states: fixed per run seed, disjoint from collection seeds
Q_BIAS_TAIL_TOLERANCE = 0.01


@dataclasses.dataclass
class OfflineRun:
    """Run-level settings (the algorithm's live in CQLConfig)."""

    dataset_id: str
    steps: int
    seed: int = 0
    device: str = "cpu"
    compile: bool = False  # cql_losses under torch.compile (CUDA graphs on CUDA); see compiled_cql_losses
    config_name: str = "corl"
    eval_every: int = 5_000
    eval_episodes: int = 10
    final_eval_episodes: int = 10
    log_every: int = 1_000
    checkpoint_every: int = 5_000

    def validate(self) -> None:
        if self.steps < 1:
            raise OfflineRLError(f"--steps must be >= 1, found {self.steps}")
        for name in ("eval_every", "eval_episodes", "final_eval_episodes", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise OfflineRLError(f"{name} must be >= 1, found {getattr(self, name)}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise OfflineRLError(f"--device {self.device}: CUDA is not available on this machine")


def reward_scale_for(rewards: torch.Tensor, terminals: torch.Tensor, timeouts: torch.Tensor) -> float:
    """CORL's locomotion reward normalisation: 1000 / (max − min episode return)."""
    returns = episode_returns(rewards.cpu().numpy(), terminals.cpu().numpy().astype(bool),
                              timeouts.cpu().numpy().astype(bool))
    spread = float(returns.max() - returns.min()) if len(returns) > 1 else 0.0
    return 1000.0 / spread if spread > 0 else 1.0


class TrainedPolicy:
    """What evaluation needs from a trained agent: deterministic actions and Q̂ on raw observations."""

    def __init__(self, agent: CQLAgent, normalizer: ObservationNormalizer, reward_scale: float):
        self.agent, self.normalizer, self.reward_scale = agent, normalizer, reward_scale

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        return self.agent.actor.act(self.normalizer(obs), deterministic=True)

    def q(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.agent.critic(self.normalizer(obs), actions).min(dim=0).values / self.reward_scale


def evaluate_policy_report(policy: TrainedPolicy, env_id: str, episodes: int, seed: int, reference, gamma: float,
                           device, with_q_bias: bool) -> dict:
    """Normalized return over `episodes` deterministic episodes; with Q bias, the same rollouts continue
    past the time limit (see offrl.evaluation.q_bias) and only the in-limit rewards count as the return."""
    time_limit = gym.spec(env_id).max_episode_steps  # read from the registry: no env built per evaluation
    extended = time_limit + dropped_tail(gamma, Q_BIAS_TAIL_TOLERANCE) if with_q_bias and time_limit else None
    result = rollout_episodes(policy.act, env_id, episodes, EVAL_SEED + seed, device, record=with_q_bias,
                              max_episode_steps=extended)
    returns = np.array([e.rewards[:time_limit].sum() for e in result])
    out = {"return_mean": float(returns.mean()), "return_std": float(returns.std()),
           "normalized_return": normalized_return(float(returns.mean()), reference)}
    if with_q_bias:
        report = q_bias(q_estimates(result, policy.q, device), gamma, Q_BIAS_TAIL_TOLERANCE, time_limit)
        out.update({"q_bias_mean": report.mean_bias, "q_bias_normalized_mean": report.normalized_mean_bias,
                    "q_bias_normalized_std": report.normalized_std, "q_bias_states": report.states,
                    "q_bias_rule": report.rule, "_curve": report.curve})
    return out


@torch.no_grad()
def dataset_diagnostics(policy: TrainedPolicy, observations: torch.Tensor, terminals: torch.Tensor,
                        timeouts: torch.Tensor, max_states: int = 10_000) -> dict:
    """d3rlpy's env-free estimators on raw dataset observations: mean Q(s, π(s)) over dataset states and
    over episode initial states."""
    step = max(1, len(observations) // max_states)
    sample = observations[::step]
    average_value = policy.q(sample, policy.act(sample)).mean().item()
    ends = torch.nonzero((terminals + timeouts) > 0).flatten()
    starts = torch.cat([torch.zeros(1, dtype=torch.long, device=ends.device), ends[:-1] + 1])
    initial = observations[starts]
    return {"average_value_estimate": average_value,
            "initial_state_value_estimate": policy.q(initial, policy.act(initial)).mean().item()}


def load_run(run_dir: Path) -> dict:
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise OfflineRLError(f"{run_dir} is not an offrl offline run: run.json is missing")
    info = json.loads(path.read_text())
    if info.get("kind") != "cql-offline":
        raise OfflineRLError(f"{run_dir} is a {info.get('kind')!r} run, not an offline CQL run")
    return info


def train_cql(run: OfflineRun, config: CQLConfig, out_dir: Path, resume: bool = False,
              leaderboard: Path | None = None, show_progress: bool = True, command: str | None = None) -> dict:
    """Train CQL-SAC offline; returns the final report (also written to final.json)."""
    run.validate()
    config.validate()
    out_dir = Path(out_dir)
    checkpoint_path = run_checkpoint_path(out_dir, CHECKPOINT_NAME, resume)
    device = torch.device(run.device)
    parse_dataset_id(run.dataset_id)
    dataset = load_dataset(run.dataset_id, device)
    card = dataset.card
    env_id = card["env_id"]
    spec = env_spec(make_env(env_id))
    if (dataset.obs_dim, dataset.act_dim) != (spec.obs_dim, spec.act_dim):
        raise OfflineRLError(f"dataset {run.dataset_id}: obs/act dims {dataset.obs_dim}/{dataset.act_dim} do not "
                             f"match env {env_id} ({spec.obs_dim}/{spec.act_dim})")
    reference = reference_scores_from_card(card)
    t = dataset.tensors
    normalizer = (ObservationNormalizer.from_observations(t["observations"]) if config.normalize_observations
                  else ObservationNormalizer.identity(dataset.obs_dim, device))
    reward_scale = reward_scale_for(t["rewards"], t["terminals"], t["timeouts"]) if config.normalize_reward else 1.0
    buffer = buffer_from_dataset(dataset, normalizer=normalizer, reward_scale=reward_scale,
                                 mc_returns_gamma=config.gamma if config.calibrated else None)  # Cal-QL's V_ref

    seed_everything(run.seed)
    agent = CQLAgent(dataset.obs_dim, dataset.act_dim, config).to(device)
    losses = compiled_cql_losses(device) if run.compile else cql_losses
    policy = TrainedPolicy(agent, normalizer, reward_scale)
    name_hash = config_hash(config)
    step, best, elapsed_before, run_id = 0, float("-inf"), 0.0, None
    if resume:
        state = load_checkpoint(checkpoint_path, "cql-offline")
        info = load_run(out_dir)
        if info["dataset_sha256"] != card["sha256"] or info["config_hash"] != name_hash:
            raise OfflineRLError(f"--resume: {out_dir} was trained on dataset sha256 {info['dataset_sha256'][:12]} "
                                 f"with config {info['config_hash']}; now {card['sha256'][:12]} / {name_hash}")
        if state["step"] >= run.steps:
            raise OfflineRLError(f"--resume: {out_dir} already has {state['step']} steps; pass a larger --steps")
        agent.load_state_dict(state["agent"])
        for name, optimizer in agent.optimizers().items():
            optimizer.load_state_dict(state["optimizers"][name])
        set_rng_state(state["rng"])
        step, best, elapsed_before, run_id = state["step"], state["best"], state["elapsed"], info["run_id"]
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        run_id = f"{parse_dataset_id(run.dataset_id).env}-{run.config_name}-s{run.seed}-{uuid.uuid4().hex[:6]}"
        info = {"kind": "cql-offline", "run_id": run_id, "algorithm": "Cal-QL" if config.calibrated else "CQL-SAC",
                "dataset_id": run.dataset_id,
                "dataset_version": card["version"], "dataset_sha256": card["sha256"], "env_id": env_id,
                "config_name": run.config_name, "config_hash": name_hash, "config": dataclasses.asdict(config),
                "run": dataclasses.asdict(run), "seed": run.seed, "reward_scale": reward_scale,
                "reference": reference.source, "git_commit": git_commit(), "offrl_version": __version__,
                "command": command, "obs_dim": dataset.obs_dim, "act_dim": dataset.act_dim}
        atomic_write_bytes(out_dir / "run.json", json.dumps(info, indent=2).encode())
        normalizer.save(out_dir / "normalizer.json")

    metrics_log = MetricsLog(out_dir / "metrics.csv", resume_step=step if resume else None)
    eval_log = MetricsLog(out_dir / "evaluations.csv", resume_step=step if resume else None)
    last_good_step = step
    start = time.perf_counter()
    window_updates, window_start = 0, time.perf_counter()
    eval_time = 0.0
    metrics: dict = dict.fromkeys(CQL_METRICS, torch.tensor(float("nan")))
    progress = tqdm(total=run.steps, initial=step, disable=not show_progress, unit="upd",
                    desc=f"CQL {run.dataset_id}", dynamic_ncols=True)
    last_eval = float("nan")
    while step < run.steps:
        with autocast_for(config, device):
            metrics = cql_update(agent, buffer.sample(config.batch_size), config, step, losses)
        step += 1
        window_updates += 1
        progress.update(1)
        if step % run.log_every == 0 or step == run.steps:
            values = {k: float(v) for k, v in metrics.items()}  # the host sync, once per log interval
            if not all(np.isfinite(v) for v in values.values()):
                bad = ", ".join(k for k, v in values.items() if not np.isfinite(v))
                raise OfflineRLError(f"training diverged: non-finite {bad} at update {step}; stopped. The last good "
                                     f"checkpoint (update {last_good_step}) is kept at {checkpoint_path}")
            now = time.perf_counter()
            ups = window_updates / max(now - window_start - eval_time, 1e-9)
            metrics_log.write({"step": step, **values, "updates_per_s": ups})
            progress.set_postfix(ups=f"{ups:.1f}", norm=f"{last_eval:.1f}")
            window_updates, window_start, eval_time = 0, now, 0.0
            if step % run.checkpoint_every == 0 or step == run.steps:
                last_good_step = step
                atomic_torch_save({"format": "offrl-checkpoint", "kind": "cql-offline", "step": step, "best": best,
                                   "elapsed": elapsed_before + time.perf_counter() - start,
                                   "agent": agent.state_dict(),
                                   "optimizers": {k: o.state_dict() for k, o in agent.optimizers().items()},
                                   "rng": rng_state(), "env_id": env_id, "obs_dim": dataset.obs_dim,
                                   "act_dim": dataset.act_dim}, checkpoint_path)
        if step % run.eval_every == 0 and step != run.steps:
            eval_start = time.perf_counter()
            result = evaluate_policy_report(policy, env_id, run.eval_episodes, run.seed, reference, config.gamma,
                                            device, False)
            last_eval, best = result["normalized_return"], max(best, result["normalized_return"])
            eval_log.write({"step": step, **result})
            eval_time += time.perf_counter() - eval_start
    progress.close()

    wall_time = elapsed_before + time.perf_counter() - start
    final = evaluate_policy_report(policy, env_id, run.final_eval_episodes, run.seed, reference, config.gamma,
                                   device, True)
    curve = final.pop("_curve")
    eval_log.write({"step": step, **{k: v for k, v in final.items() if not k.startswith("q_bias")}})
    best = max(best, final["normalized_return"])
    _write_curve(out_dir / "q_bias_curve.csv", curve)
    diagnostics = dataset_diagnostics(policy, t["observations"], t["terminals"], t["timeouts"])
    metrics_frame = _read_csv(out_dir / "metrics.csv")
    updates_per_s = float(np.nanmean(metrics_frame["updates_per_s"])) if metrics_frame is not None else float("nan")
    report = {"run_id": run_id, "run_dir": str(out_dir), "dataset_id": run.dataset_id, "steps": step,
              "final_normalized_return": final["normalized_return"], "best_normalized_return": best,
              "mean_return": final["return_mean"], "return_std": final["return_std"],
              "reference": reference.source, **{k: v for k, v in final.items() if k.startswith("q_bias")},
              **diagnostics, "wall_time_s": wall_time, "updates_per_s": updates_per_s,
              "eval_episodes": run.final_eval_episodes}
    atomic_write_bytes(out_dir / "final.json", json.dumps(report, indent=2).encode())
    if leaderboard is not None:
        append_row(leaderboard, leaderboard_row(info, report, run, phase="offline", online_steps=0))
    return report


def leaderboard_row(info: dict, report: dict, run: OfflineRun | None, phase: str, online_steps: int) -> dict:
    return {"run_id": info["run_id"], "phase": phase, "online_steps": online_steps,
            "dataset_id": info["dataset_id"], "dataset_version": info["dataset_version"],
            "dataset_sha256": info["dataset_sha256"], "algorithm": info["algorithm"],
            "config_name": info["config_name"], "config_hash": info["config_hash"], "seed": info["seed"],
            "steps": report["steps"], "final_normalized_return": report["final_normalized_return"],
            "best_normalized_return": report["best_normalized_return"], "mean_return": report["mean_return"],
            "reference": report["reference"], "q_bias_mean": report.get("q_bias_mean"),
            "q_bias_normalized_mean": report.get("q_bias_normalized_mean"),
            "q_bias_normalized_std": report.get("q_bias_normalized_std"), "wall_time_s": report.get("wall_time_s"),
            "updates_per_s": report.get("updates_per_s"), "device": (run.device if run else info["run"]["device"]),
            "offrl_version": __version__, "git_commit": info.get("git_commit"),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "run_dir": report["run_dir"],
            **{name: report.get(name) for name in ONLINE_COLUMNS}}


def _write_curve(path: Path, curve: dict) -> None:
    import pandas as pd

    atomic_write_bytes(path, pd.DataFrame(curve).to_csv(index=False).encode())


def _read_csv(path: Path):
    import pandas as pd

    return pd.read_csv(path) if Path(path).is_file() else None


@dataclasses.dataclass
class TrainedRun:
    """An offline run restored from disk: its record, config, checkpoint state and agent."""

    run_dir: Path
    info: dict
    config: CQLConfig
    state: dict
    agent: CQLAgent
    normalizer: ObservationNormalizer
    card: dict

    @property
    def policy(self) -> TrainedPolicy:
        return TrainedPolicy(self.agent, self.normalizer, self.info["reward_scale"])


def restore_run(target: Path, device: str = "cpu") -> TrainedRun:
    """Load RUN_DIR or RUN_DIR/checkpoint.pt; the dataset must still verify and be the one trained on."""
    target = Path(target)
    if not target.exists():
        raise OfflineRLError(f"{target}: no such run directory or checkpoint")
    run_dir = target if target.is_dir() else target.parent
    checkpoint = target / CHECKPOINT_NAME if target.is_dir() else target
    info = load_run(run_dir)
    state = load_checkpoint(checkpoint, "cql-offline")
    config = config_from_dict(CQLConfig, info["config"], str(run_dir / "run.json"))
    card = _verified_card(info)
    agent = CQLAgent(info["obs_dim"], info["act_dim"], config).to(device)
    agent.load_state_dict(state["agent"])
    normalizer = ObservationNormalizer.load(run_dir / "normalizer.json", device)
    return TrainedRun(run_dir, info, config, state, agent, normalizer, card)


def evaluate_run(target: Path, episodes: int, leaderboard: Path | None, device: str = "cpu") -> dict:
    """`offrl evaluate RUN_DIR|CHECKPOINT`: evaluate a saved agent, append a leaderboard row."""
    trained = restore_run(target, device)
    run_dir, info, state, config = trained.run_dir, trained.info, trained.state, trained.config
    reference = reference_scores_from_card(trained.card)
    result = evaluate_policy_report(trained.policy, info["env_id"], episodes, info["seed"], reference,
                                    config.gamma, device, True)
    result.pop("_curve")
    previous = json.loads((run_dir / "final.json").read_text()) if (run_dir / "final.json").is_file() else {}
    report = {"run_id": info["run_id"], "run_dir": str(run_dir), "dataset_id": info["dataset_id"],
              "steps": state["step"], "final_normalized_return": result["normalized_return"],
              "best_normalized_return": max(result["normalized_return"],
                                            previous.get("best_normalized_return", float("-inf"))),
              "mean_return": result["return_mean"], "return_std": result["return_std"],
              "reference": reference.source, **{k: v for k, v in result.items() if k.startswith("q_bias")},
              "wall_time_s": None, "updates_per_s": previous.get("updates_per_s"), "eval_episodes": episodes}
    if leaderboard is not None:
        append_row(leaderboard, leaderboard_row(info, report, None, phase="offline", online_steps=0))
    return report


def _verified_card(info: dict) -> dict:
    from offrl.data.registry import verify_dataset

    card = verify_dataset(info["dataset_id"], structural=False)
    if card["sha256"] != info["dataset_sha256"]:
        raise OfflineRLError(f"dataset {info['dataset_id']} now has sha256 {card['sha256'][:12]}, the run was "
                             f"trained on {info['dataset_sha256'][:12]}")
    return card
