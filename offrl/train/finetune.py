"""Offline-to-online fine-tuning of a CQL run with mixed buffers ("offline-online combined updates").

Env steps alternate with `utd` updates; every batch mixes offline and online transitions at
`offline_ratio` (0.5: RLPD / Cal-QL symmetric sampling; "proportional": uniform over the union, as CORL's
CQL fine-tuning). The CQL weight switches to `cql_alpha_online` when the online phase starts. With
`calibrated` (Cal-QL), the policy-action Q-values inside the conservative term are floored at the
Monte-Carlo return-to-go of the state's trajectory: for the dataset at load time and for each online
episode as it completes (calibration stays on online, as in the paper).

Online episodes enter the online buffer when they complete, so their returns-to-go are known.
Checkpoints are taken at episode boundaries (see train/online.py) and `--resume` continues exactly.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from offrl.algos.cql import CQL_METRICS, autocast_for, compiled_cql_losses, cql_losses, cql_update
from offrl.data.buffer import ReplayBuffer
from offrl.data.dataset import MixedSampler, buffer_from_dataset, load_dataset, returns_to_go
from offrl.envs import env_spec, make_env, seed_everything
from offrl.errors import OfflineRLError
from offrl.evaluation.leaderboard import append_row
from offrl.evaluation.scores import reference_scores_from_card
from offrl.fileio import atomic_torch_save, atomic_write_bytes, git_commit
from offrl.train.common import MetricsLog, load_checkpoint, rng_state, run_checkpoint_path, set_rng_state
from offrl.train.offline import evaluate_policy_report, leaderboard_row, restore_run

__all__ = ["FinetuneRun", "finetune", "unlearning_dip", "online_auc"]

CHECKPOINT_NAME = "finetune_checkpoint.pt"


@dataclasses.dataclass
class FinetuneRun:
    online_steps: int
    offline_ratio: float | str = 0.5
    utd: int = 1
    calibrated: bool | None = None  # None: as the offline run was trained (CQL or Cal-QL)
    cql_alpha_online: float | None = None  # None: keep the offline α_cql
    seed: int | None = None  # None: the offline run's seed
    eval_every: int = 5_000
    eval_episodes: int = 10
    log_every: int = 1_000
    checkpoint_every: int = 5_000
    device: str = "cpu"
    compile: bool = False  # cql_losses under torch.compile (CUDA graphs on CUDA); see compiled_cql_losses

    def validate(self) -> None:
        if self.online_steps < 1:
            raise OfflineRLError(f"--online-steps must be >= 1, found {self.online_steps}")
        if self.utd < 1:
            raise OfflineRLError(f"--utd must be >= 1, found {self.utd}")
        if self.offline_ratio != "proportional":
            if not isinstance(self.offline_ratio, float | int) or not 0 <= self.offline_ratio <= 1:
                raise OfflineRLError(f"--offline-ratio must be in [0, 1] or 'proportional', "
                                     f"found {self.offline_ratio!r}")
        if self.cql_alpha_online is not None and self.cql_alpha_online < 0:
            raise OfflineRLError(f"--cql-alpha-online must be >= 0, found {self.cql_alpha_online}")
        for name in ("eval_every", "eval_episodes", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise OfflineRLError(f"{name} must be >= 1, found {getattr(self, name)}")


def unlearning_dip(curve: list[tuple[int, float]], online_steps: int) -> float:
    """Worst normalized return in the first 10% of online steps minus the starting one (<= 0 is a dip)."""
    start = curve[0][1]
    early = [score for step, score in curve if step <= 0.1 * online_steps]
    return min(early) - start


def online_auc(curve: list[tuple[int, float]]) -> float:
    """Area under the normalized-return curve over online steps, divided by its length: the mean score."""
    steps = np.array([s for s, _ in curve], dtype=np.float64)
    scores = np.array([v for _, v in curve], dtype=np.float64)
    if len(steps) < 2 or steps[-1] == steps[0]:
        return float(scores.mean())
    return float(np.sum((scores[1:] + scores[:-1]) / 2 * np.diff(steps)) / (steps[-1] - steps[0]))


def finetune(from_run: Path, run: FinetuneRun, out_dir: Path, resume: bool = False, leaderboard: Path | None = None,
             show_progress: bool = True, command: str | None = None) -> dict:
    run.validate()
    device = torch.device(run.device)
    trained = restore_run(from_run, run.device)
    info, agent, normalizer = trained.info, trained.agent, trained.normalizer
    out_dir = Path(out_dir)
    checkpoint_path = run_checkpoint_path(out_dir, CHECKPOINT_NAME, resume)
    env_id = info["env_id"]
    env = make_env(env_id)
    spec = env_spec(env)
    if (spec.obs_dim, spec.act_dim) != (info["obs_dim"], info["act_dim"]):
        raise OfflineRLError(f"{from_run}: the checkpoint has obs/act dims {info['obs_dim']}/{info['act_dim']}, env "
                             f"{env_id} has {spec.obs_dim}/{spec.act_dim}")
    calibrated = trained.config.calibrated if run.calibrated is None else run.calibrated
    config = dataclasses.replace(trained.config, calibrated=calibrated)
    if run.cql_alpha_online is not None:
        config = dataclasses.replace(config, cql_alpha=run.cql_alpha_online)
    reference = reference_scores_from_card(trained.card)
    reward_scale = info["reward_scale"]
    seed = info["seed"] if run.seed is None else run.seed

    dataset = load_dataset(info["dataset_id"], device)
    offline = buffer_from_dataset(dataset, normalizer=normalizer, reward_scale=reward_scale,
                                  mc_returns_gamma=config.gamma)
    online = ReplayBuffer(dataset.obs_dim, dataset.act_dim, run.online_steps, device, with_mc_returns=True)
    sampler = MixedSampler(offline, online, run.offline_ratio)
    losses = compiled_cql_losses(device) if run.compile else cql_losses
    policy = trained.policy

    step, updates, next_checkpoint, curve, elapsed_before = 0, 0, run.checkpoint_every, [], 0.0
    if resume:
        state = load_checkpoint(checkpoint_path, "cql-finetune")
        if state["from_run_id"] != info["run_id"]:
            raise OfflineRLError(f"--resume: {out_dir} fine-tunes run {state['from_run_id']}, not {info['run_id']}")
        agent.load_state_dict(state["agent"])
        for name, optimizer in agent.optimizers().items():
            optimizer.load_state_dict(state["optimizers"][name])
        online.load_state_dict(state["online_buffer"])
        set_rng_state(state["rng"])
        env.unwrapped.np_random.bit_generator.state = state["env_rng"]
        step, updates, next_checkpoint = state["step"], state["updates"], state["next_checkpoint"]
        curve, elapsed_before = [tuple(p) for p in state["curve"]], state["elapsed"]
        obs, _ = env.reset()
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        record = {"kind": "cql-finetune", "from_run": str(trained.run_dir), "from_run_id": info["run_id"],
                  "from_steps": trained.state["step"], "dataset_id": info["dataset_id"],
                  "dataset_sha256": info["dataset_sha256"], "env_id": env_id, "run": dataclasses.asdict(run),
                  "config": dataclasses.asdict(config), "seed": seed, "git_commit": git_commit(), "command": command}
        atomic_write_bytes(out_dir / "finetune.json", json.dumps(record, indent=2).encode())
        seed_everything(seed)
        obs, _ = env.reset(seed=seed)

    metrics_log = MetricsLog(out_dir / "metrics.csv", resume_step=step if resume else None)
    eval_log = MetricsLog(out_dir / "evaluations.csv", resume_step=step if resume else None)

    def evaluate(at_step: int) -> dict:
        result = evaluate_policy_report(policy, env_id, run.eval_episodes, seed, reference, config.gamma, device,
                                        True)
        result.pop("_curve")  # per-timestep Q-bias curves are kept for offline runs only
        eval_log.write({"step": at_step, "offline_steps": trained.state["step"], **result})
        return result

    if not resume:
        curve.append((0, evaluate(0)["normalized_return"]))

    episode: dict[str, list] = {k: [] for k in ("observations", "actions", "rewards", "next_observations",
                                                "terminals", "timeouts")}
    metrics: dict = dict.fromkeys(CQL_METRICS, torch.tensor(float("nan")))
    # The unlearning dip is read from the first 10% of online steps: evaluate there too, at 5% and 10%.
    dip_steps = {max(1, run.online_steps * i // 20) for i in (1, 2)}
    start, start_updates = time.perf_counter(), updates
    progress = tqdm(total=run.online_steps, initial=step, disable=not show_progress, unit="step",
                    desc=f"fine-tune {info['dataset_id']}", dynamic_ncols=True)
    while step < run.online_steps:
        obs_tensor = torch.as_tensor(obs, dtype=torch.float32, device=device).unsqueeze(0)
        action = agent.actor.act(normalizer(obs_tensor))[0].cpu().numpy()
        next_obs, reward, terminated, truncated, _ = env.step(action)
        for key, value in zip(episode, (obs, action, reward, next_obs, terminated, truncated and not terminated),
                              strict=True):
            episode[key].append(value)
        obs = next_obs
        step += 1
        for _ in range(run.utd):
            with autocast_for(config, device):
                metrics = cql_update(agent, sampler.sample(config.batch_size), config, config.bc_steps + updates,
                                     losses)
            updates += 1
        progress.update(1)
        if terminated or truncated or step == run.online_steps:
            _add_episode(online, episode, normalizer, reward_scale, config.gamma, device)
            episode = {k: [] for k in episode}
        if step % run.log_every == 0:
            values = {k: float(v) for k, v in metrics.items()}
            if not all(np.isfinite(v) for v in values.values()):
                raise OfflineRLError(f"fine-tuning diverged at online step {step}: non-finite metrics; the last good "
                                     f"checkpoint is kept at {checkpoint_path}")
            metrics_log.write({"step": step, **values, "online_size": len(online)})
        if step % run.eval_every == 0 or step == run.online_steps or step in dip_steps:
            result = evaluate(step)
            curve.append((step, result["normalized_return"]))
            progress.set_postfix(norm=f"{result['normalized_return']:.1f}")
        if terminated or truncated:
            if step >= next_checkpoint:
                while next_checkpoint <= step:
                    next_checkpoint += run.checkpoint_every
                atomic_torch_save({"format": "offrl-checkpoint", "kind": "cql-finetune", "step": step,
                                   "updates": updates, "next_checkpoint": next_checkpoint, "curve": curve,
                                   "from_run_id": info["run_id"], "agent": agent.state_dict(),
                                   "optimizers": {k: o.state_dict() for k, o in agent.optimizers().items()},
                                   "online_buffer": online.state_dict(), "rng": rng_state(),
                                   "env_rng": env.unwrapped.np_random.bit_generator.state,
                                   "elapsed": elapsed_before + time.perf_counter() - start}, checkpoint_path)
            obs, _ = env.reset()
    progress.close()
    evaluations = pd.read_csv(out_dir / "evaluations.csv")
    first, last = evaluations.iloc[0].to_dict(), evaluations.iloc[-1].to_dict()
    report = {"run_id": f"{info['run_id']}-ft-{'calql' if calibrated else 'cql'}-{run.offline_ratio}",
              "run_dir": str(out_dir), "dataset_id": info["dataset_id"], "steps": trained.state["step"],
              "online_steps": step, "before_normalized_return": first["normalized_return"],
              "before_q_bias_normalized_mean": first.get("q_bias_normalized_mean"),
              "final_normalized_return": last["normalized_return"],
              "best_normalized_return": max(score for _, score in curve), "mean_return": last["return_mean"],
              "return_std": last["return_std"], "reference": reference.source,
              "q_bias_mean": last.get("q_bias_mean"), "q_bias_normalized_mean": last.get("q_bias_normalized_mean"),
              "q_bias_normalized_std": last.get("q_bias_normalized_std"),
              "unlearning_dip": unlearning_dip(curve, run.online_steps), "online_auc": online_auc(curve),
              "wall_time_s": elapsed_before + time.perf_counter() - start,
              "updates_per_s": (updates - start_updates) / max(time.perf_counter() - start, 1e-9),
              "calibrated": calibrated, "offline_ratio": run.offline_ratio, "eval_episodes": run.eval_episodes}
    atomic_write_bytes(out_dir / "final.json", json.dumps(report, indent=2).encode())
    if leaderboard is not None:
        row_info = {**info, "run_id": report["run_id"],
                    "algorithm": "Cal-QL" if calibrated else "CQL-SAC"}
        append_row(leaderboard, leaderboard_row(row_info, report, None, phase="online", online_steps=step))
    return report


def _add_episode(buffer: ReplayBuffer, episode: dict[str, list], normalizer, reward_scale: float, gamma: float,
                 device) -> None:
    if not episode["rewards"]:
        return
    rewards = np.asarray(episode["rewards"], dtype=np.float64) * reward_scale
    terminals = np.asarray(episode["terminals"], dtype=bool)
    timeouts = np.asarray(episode["timeouts"], dtype=bool)
    if not (terminals[-1] or timeouts[-1]):
        timeouts[-1] = True  # the online budget ended mid-episode
    as_tensor = lambda x: torch.as_tensor(np.asarray(x, dtype=np.float32), device=device)  # noqa: E731
    buffer.add_batch({"observations": normalizer(as_tensor(episode["observations"])),
                      "actions": as_tensor(episode["actions"]), "rewards": as_tensor(rewards),
                      "next_observations": normalizer(as_tensor(episode["next_observations"])),
                      "terminals": as_tensor(terminals), "timeouts": as_tensor(timeouts),
                      "mc_returns": as_tensor(returns_to_go(rewards, terminals, timeouts, gamma))})
