"""Online SAC pretraining: the loop that trains offrl's behaviour policies.

Checkpoints are taken at the first episode boundary at or after every `checkpoint_every` steps,
so the env needs nothing but its reset RNG restored, for any Gymnasium env, and `--resume`
continues bit-for-bit on CPU.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from offrl.algos.sac import SAC_METRICS, SACAgent, SACConfig, sac_update
from offrl.data.buffer import ReplayBuffer
from offrl.envs import env_spec, make_env, seed_everything
from offrl.errors import OfflineRLError
from offrl.evaluation.rollout import evaluate_policy
from offrl.fileio import atomic_torch_save, atomic_write_bytes, git_commit
from offrl.train.common import MetricsLog, load_checkpoint, rng_state, run_checkpoint_path, set_rng_state

__all__ = ["PretrainConfig", "pretrain", "CHECKPOINT_NAME"]

CHECKPOINT_NAME = "checkpoint.pt"
EVAL_SEED_OFFSET = 1_000_000  # evaluation episodes never share start states with training episodes


@dataclass
class PretrainConfig:
    env_id: str = "HalfCheetah-v5"
    steps: int = 300_000
    seed: int = 0
    learning_starts: int = 5_000  # uniform random actions before the first update (CleanRL's value)
    eval_every: int = 10_000
    eval_episodes: int = 10
    checkpoint_every: int = 25_000
    log_every: int = 1_000
    buffer_capacity: int = 1_000_000  # >= steps keeps every transition: the medium-replay tier needs them
    device: str = "cpu"
    sac: SACConfig = field(default_factory=SACConfig)

    def validate(self) -> None:
        if self.steps <= 0:
            raise OfflineRLError(f"--steps must be a positive number of env steps, found {self.steps}")
        for name in ("eval_every", "eval_episodes", "checkpoint_every", "log_every", "buffer_capacity"):
            if getattr(self, name) < 1:
                raise OfflineRLError(f"{name} must be >= 1, found {getattr(self, name)}")
        if self.learning_starts < 0:
            raise OfflineRLError(f"learning_starts must be >= 0, found {self.learning_starts}")
        self.sac.validate()


def _env_rng_state(env) -> dict:
    return {"reset": env.unwrapped.np_random.bit_generator.state,
            "action_space": env.action_space.np_random.bit_generator.state}


def _set_env_rng_state(env, state: dict) -> None:
    env.unwrapped.np_random.bit_generator.state = state["reset"]
    env.action_space.np_random.bit_generator.state = state["action_space"]


def _agent_for(config: PretrainConfig, obs_dim: int, act_dim: int) -> SACAgent:
    return SACAgent(obs_dim, act_dim, config.sac).to(config.device)


def _check_resume(state: dict, config: PretrainConfig, obs_dim: int, act_dim: int, path: Path) -> None:
    if state["env_id"] != config.env_id:
        raise OfflineRLError(f"checkpoint {path}: trained on {state['env_id']!r}, cannot resume on {config.env_id!r}")
    if (state["obs_dim"], state["act_dim"]) != (obs_dim, act_dim):
        raise OfflineRLError(f"checkpoint {path}: obs/act dims {state['obs_dim']}/{state['act_dim']} do not match "
                             f"env {config.env_id} ({obs_dim}/{act_dim})")


def pretrain(config: PretrainConfig, out_dir: Path, resume: bool = False, show_progress: bool = True,
             command: str | None = None) -> Path:
    """Train SAC online; returns the run directory. Writes config.json, metrics.csv, evaluations.csv,
    snapshots/actor_<step>.pt at each evaluation, and checkpoint.pt (with the replay buffer)."""
    config.validate()
    out_dir = Path(out_dir)
    checkpoint_path = run_checkpoint_path(out_dir, CHECKPOINT_NAME, resume)

    device = torch.device(config.device)
    env = make_env(config.env_id)
    spec = env_spec(env)
    obs_dim, act_dim = spec.obs_dim, spec.act_dim
    seed_everything(config.seed)
    agent = _agent_for(config, obs_dim, act_dim)
    buffer = ReplayBuffer(obs_dim, act_dim, max(config.buffer_capacity, 1), device)
    step, episode, next_checkpoint = 0, 0, config.checkpoint_every
    last_eval, recent_returns, elapsed_before = float("nan"), [], 0.0

    if resume:
        state = load_checkpoint(checkpoint_path, "sac-online")
        _check_resume(state, config, obs_dim, act_dim, checkpoint_path)
        agent.load_state_dict(state["agent"])
        for name, opt in agent.optimizers().items():
            opt.load_state_dict(state["optimizers"][name])
        buffer.load_state_dict(state["buffer"])
        step, episode, next_checkpoint = state["step"], state["episode"], state["next_checkpoint"]
        last_eval, recent_returns, elapsed_before = state["last_eval"], state["recent_returns"], state["elapsed"]
        set_rng_state(state["rng"])
        _set_env_rng_state(env, state["env_rng"])
        obs, _ = env.reset()
        # A resumed run may train longer than first planned: the record says so, and how.
        run_info = json.loads((out_dir / "config.json").read_text())
        first = run_info["config"]
        run_info.setdefault("command", f"offrl pretrain --env {first['env_id']} --steps {first['steps']} "
                                       f"--seed {first['seed']}")
        run_info["config"]["steps"] = config.steps
        run_info["resumed_with"] = [*run_info.get("resumed_with", []),
                                    command or f"offrl pretrain --env {config.env_id} --steps {config.steps} "
                                               f"--seed {config.seed} --resume"]
        atomic_write_bytes(out_dir / "config.json", json.dumps(run_info, indent=2).encode())
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "snapshots").mkdir(exist_ok=True)
        run_info = {"kind": "sac-online", "config": dataclasses.asdict(config), "git_commit": git_commit(),
                    "obs_dim": obs_dim, "act_dim": act_dim,
                    "command": command or f"offrl pretrain --env {config.env_id} --steps {config.steps} "
                                          f"--seed {config.seed}"}
        atomic_write_bytes(out_dir / "config.json", json.dumps(run_info, indent=2).encode())
        obs, _ = env.reset(seed=config.seed)
        env.action_space.seed(config.seed)

    metrics_log = MetricsLog(out_dir / "metrics.csv", resume_step=step if resume else None)
    eval_log = MetricsLog(out_dir / "evaluations.csv", resume_step=step if resume else None)

    def save_checkpoint() -> None:
        atomic_torch_save({
            "format": "offrl-checkpoint", "kind": "sac-online", "env_id": config.env_id, "obs_dim": obs_dim,
            "act_dim": act_dim, "config": dataclasses.asdict(config), "step": step, "episode": episode,
            "next_checkpoint": next_checkpoint, "last_eval": last_eval, "recent_returns": recent_returns,
            "elapsed": elapsed_before + time.perf_counter() - start_time, "agent": agent.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in agent.optimizers().items()}, "buffer": buffer.state_dict(),
            "rng": rng_state(), "env_rng": _env_rng_state(env),
        }, checkpoint_path)

    def evaluate_and_snapshot() -> float:
        """Deterministic evaluation; the actor is kept so the medium policy can be picked afterwards."""
        result = evaluate_policy(lambda o: agent.actor.act(o, deterministic=True), config.env_id,
                                 config.eval_episodes, config.seed + EVAL_SEED_OFFSET, device)
        atomic_torch_save({"actor": agent.actor.state_dict(), "step": step},
                          out_dir / "snapshots" / f"actor_{step}.pt")
        eval_log.write({"step": step, "return_mean": result.mean, "return_std": result.std,
                        "episodes": config.eval_episodes})
        return result.mean

    start_time = time.perf_counter()
    window_start, window_updates = time.perf_counter(), 0
    episode_return = 0.0
    metrics: dict = dict.fromkeys(SAC_METRICS, float("nan"))
    progress = tqdm(total=config.steps, initial=step, disable=not show_progress, unit="step",
                    desc=f"SAC {config.env_id}", dynamic_ncols=True)
    while step < config.steps:
        if step < config.learning_starts:
            action = env.action_space.sample()
        else:
            obs_tensor = torch.as_tensor(obs, dtype=torch.float32, device=device).unsqueeze(0)
            action = agent.actor.act(obs_tensor)[0].cpu().numpy()
        next_obs, reward, terminated, truncated, _ = env.step(action)
        buffer.add(obs, action, reward, next_obs, terminated, truncated)
        episode_return += float(reward)
        obs = next_obs
        step += 1

        if step > config.learning_starts:
            for _ in range(config.sac.updates_per_step):
                metrics = sac_update(agent, buffer.sample(config.sac.batch_size), config.sac)
                window_updates += 1

        if step % config.eval_every == 0:
            last_eval = evaluate_and_snapshot()

        if step % config.log_every == 0:
            now = time.perf_counter()
            row = {"step": step, "episodes": episode,
                   "train_return": float(np.mean(recent_returns[-10:])) if recent_returns else float("nan"),
                   "eval_return": last_eval}
            row.update({k: float(v) for k, v in metrics.items()})  # the one host sync per log interval
            row["updates_per_s"] = window_updates / max(now - window_start, 1e-9)
            metrics_log.write(row)
            progress.set_postfix(ups=f"{row['updates_per_s']:.0f}", eval=f"{last_eval:.0f}")
            window_start, window_updates = now, 0
        progress.update(1)

        if terminated or truncated:
            episode += 1
            recent_returns = (recent_returns + [episode_return])[-100:]
            episode_return = 0.0
            # Checkpoints wait for an episode boundary, taken before the reset: the env's whole
            # state is then its RNG, and resuming replays the same reset.
            if step >= next_checkpoint or step >= config.steps:
                while next_checkpoint <= step:
                    next_checkpoint += config.checkpoint_every
                save_checkpoint()
            obs, _ = env.reset()
    progress.close()
    env.close()
    if step % config.eval_every != 0:
        # The final policy is always evaluated and kept; checkpoint.pt stays at the last episode boundary.
        evaluate_and_snapshot()
    return out_dir
