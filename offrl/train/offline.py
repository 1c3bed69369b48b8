"""Offline training of any agent on a fixed dataset: dataset → buffer → the loop → final report.

Training reads the dataset store and never writes to it. With a run directory the run is recorded,
logged, checkpointed and resumable (offrl.runs describes the files); without one it runs in memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from offrl import __version__
from offrl.config import config_hash
from offrl.data.dataset import ObservationNormalizer, OfflineDataset, buffer_from_dataset
from offrl.data.registry import episode_returns, parse_dataset_id
from offrl.envs import env_spec, make_env, seed_everything
from offrl.errors import DIVERGENCE_LIMIT, OfflineRLError
from offrl.evaluation.leaderboard import check_appendable
from offrl.evaluation.report import dataset_diagnostics, evaluate_in_env
from offrl.evaluation.scores import reference_scores_from_card
from offrl.faults import fault_point
from offrl.fileio import atomic_write_bytes, git_commit
from offrl.runs import (
    OFFLINE_KIND,
    TrainingReport,
    append_report,
    read_run_record,
    write_run_record,
)
from offrl.train.logs import MetricsLog
from offrl.train.loop import OfflineSteps, Schedule, run_loop
from offrl.train.run_folder import RunFolder, drop_snapshots_after, save_policy_snapshot

if TYPE_CHECKING:
    from offrl.agents import Agent

__all__ = ["fit_offline", "reward_scale_for"]

NO_ENV = "no env"


def reward_scale_for(rewards: torch.Tensor, terminals: torch.Tensor, timeouts: torch.Tensor) -> float:
    """CORL's locomotion reward normalisation: 1000 / (max − min episode return)."""
    returns = episode_returns(rewards.cpu().numpy(), terminals.cpu().numpy().astype(bool),
                              timeouts.cpu().numpy().astype(bool))
    spread = float(returns.max() - returns.min()) if len(returns) > 1 else 0.0
    return 1000.0 / spread if spread > 0 else 1.0


def _eval_env(dataset: OfflineDataset, eval_env: str | bool | None) -> str | None:
    env_id = dataset.env_id if eval_env is True else (eval_env or None)
    if env_id is None:
        return None
    spec = env_spec(make_env(env_id))
    if (dataset.obs_dim, dataset.act_dim) != (spec.obs_dim, spec.act_dim):
        raise OfflineRLError(f"dataset {dataset.dataset_id}: obs/act dims {dataset.obs_dim}/{dataset.act_dim} do not "
                             f"match env {env_id} ({spec.obs_dim}/{spec.act_dim})")
    return env_id


def fit_offline(agent: Agent, dataset: OfflineDataset, n_steps: int, *, seed: int = 0,
                eval_env: str | bool | None = True, eval_every: int | None = None, eval_episodes: int = 10,
                final_eval_episodes: int | None = None, log_every: int = 1_000, checkpoint_every: int = 5_000,
                run_dir: str | Path | None = None, resume: bool = False, tensorboard: bool = False,
                callbacks: Sequence = (), leaderboard: str | Path | None = None, show_progress: bool = True,
                command: str | None = None, divergence_limit: float = DIVERGENCE_LIMIT) -> TrainingReport:
    """Train `agent` for `n_steps` updates on `dataset`; see `offrl.agents.Agent.fit`."""
    for name, value, minimum in (("n_steps", n_steps, 1), ("eval_episodes", eval_episodes, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise OfflineRLError(f"{name} must be an integer >= {minimum}, found {value!r}")
    schedule = Schedule(steps=n_steps, log_every=log_every, eval_every=eval_every, checkpoint_every=checkpoint_every,
                        divergence_limit=divergence_limit)
    schedule.validate()
    final_eval_episodes = eval_episodes if final_eval_episodes is None else final_eval_episodes
    if isinstance(final_eval_episodes, bool) or not isinstance(final_eval_episodes, int) or final_eval_episodes < 1:
        raise OfflineRLError(f"final_eval_episodes must be an integer >= 1 or None, found {final_eval_episodes!r}")
    if resume and run_dir is None:
        raise OfflineRLError("resume=True needs the run_dir of the run to continue")
    if tensorboard and run_dir is None:
        raise OfflineRLError("tensorboard=True needs a run_dir to write the event files into")
    if isinstance(callbacks, (str, bytes)) or not isinstance(callbacks, Sequence) \
            or not all(callable(c) for c in callbacks):
        raise OfflineRLError(f"callbacks: expected a list of functions f(event, step, row), found {callbacks!r}")
    if leaderboard is not None:
        check_appendable(Path(leaderboard))  # before the work, not after it
    card = dataset.card
    env_id = _eval_env(dataset, eval_env)
    folder = RunFolder(Path(run_dir), resume, OFFLINE_KIND) if run_dir is not None else None
    with folder if folder is not None else contextlib.nullcontext():
        return _fit(agent, dataset, card, env_id, schedule, folder, seed=seed, eval_episodes=eval_episodes,
                    final_eval_episodes=final_eval_episodes, tensorboard=tensorboard, callbacks=callbacks,
                    leaderboard=leaderboard, show_progress=show_progress, command=command)


def _fit(agent: Agent, dataset: OfflineDataset, card: dict, env_id: str | None, schedule: Schedule,
         folder: RunFolder | None, *, seed: int, eval_episodes: int, final_eval_episodes: int, tensorboard: bool,
         callbacks: Sequence, leaderboard: str | Path | None, show_progress: bool, command: str | None
         ) -> TrainingReport:
    config = agent.config
    out_dir = folder.path if folder is not None else None
    reference = reference_scores_from_card(card)
    device = agent.device
    t = {k: v.to(device) for k, v in dataset.tensors.items()}
    normalizer = (ObservationNormalizer.from_observations(t["observations"])
                  if getattr(config, "normalize_observations", False)
                  else ObservationNormalizer.identity(dataset.obs_dim, device))
    reward_scale = (reward_scale_for(t["rewards"], t["terminals"], t["timeouts"])
                    if getattr(config, "normalize_reward", False) else 1.0)
    calibrated = getattr(config, "calibrated", False)
    buffer = buffer_from_dataset(dataclasses.replace(dataset, tensors=t), normalizer=normalizer,
                                 reward_scale=reward_scale, mc_returns_gamma=config.gamma if calibrated else None)

    seed_everything(seed)
    agent.build(dataset.obs_dim, dataset.act_dim, normalizer, reward_scale, env_id)
    algorithm = agent.offline_name
    name_hash = config_hash(config)
    resume_state = None
    if folder is not None and folder.resume:
        record = read_run_record(out_dir)
        if record["dataset_sha256"] != card["sha256"] or record["config_hash"] != name_hash:
            raise OfflineRLError(f"--resume: {out_dir} was trained on dataset sha256 {record['dataset_sha256'][:12]} "
                                 f"with config {record['config_hash']}; now {card['sha256'][:12]} / {name_hash}")
        started_with = record.get("divergence_limit", DIVERGENCE_LIMIT)  # runs from before the option: the default
        if started_with != schedule.divergence_limit:
            raise OfflineRLError(f"--resume: {out_dir} was started with --divergence-limit {started_with:g}; resume "
                                 f"it with the same limit, not {schedule.divergence_limit:g}")
        finished = folder.finished_report(schedule.steps)
        if finished is not None:  # killed after its report: only the row may be missing
            report = TrainingReport.from_dict(finished)
            if leaderboard is not None and report.final_normalized_return is not None:
                append_report(Path(leaderboard), record, report, phase="offline", once=True)
            return report
        resume_state = folder.resume_state()  # None: killed before its first checkpoint, so it starts over
    else:
        env_name = parse_dataset_id(dataset.dataset_id).env if "/" in dataset.dataset_id else dataset.dataset_id
        record = {"kind": OFFLINE_KIND, "run_id": f"{env_name}-{agent.config_name}-s{seed}-{uuid.uuid4().hex[:6]}",
                  "algorithm": algorithm, "agent_class": type(agent).algorithm, "dataset_id": dataset.dataset_id,
                  "dataset_version": card.get("version"), "dataset_sha256": card["sha256"],
                  "dataset_registered": "card_type" in card, "dataset_card": _card_summary(card),
                  "env_id": env_id, "config_name": agent.config_name, "config_hash": name_hash,
                  "config": dataclasses.asdict(config), "updates": schedule.steps, "seed": seed,
                  "device": str(device), "compile": getattr(agent, "compile", False),
                  "eval_every": schedule.eval_every, "eval_episodes": eval_episodes,
                  "divergence_limit": schedule.divergence_limit,
                  "final_eval_episodes": final_eval_episodes, "reward_scale": reward_scale,
                  "reference": reference.source, "git_commit": git_commit(), "offrl_version": __version__,
                  "command": command, "obs_dim": dataset.obs_dim, "act_dim": dataset.act_dim}
        if out_dir is not None:
            write_run_record(out_dir, record)
            fault_point("run-record-written")
    if out_dir is not None:
        normalizer.save(out_dir / "normalizer.json")

    resume_step = resume_state["loop"]["step"] if resume_state is not None else None
    if out_dir is not None:  # snapshots a killed attempt wrote after its last checkpoint belong to no run now
        drop_snapshots_after(out_dir, resume_step or 0)
    # The final evaluation's row (at the last step) follows the last checkpoint: a run resumed at its last
    # step evaluates again, so that row is dropped; an evaluation inside the loop precedes its checkpoint.
    eval_keep = resume_step - 1 if resume_step is not None and resume_step >= schedule.steps else resume_step
    tensorboard_dir = out_dir / "tensorboard" if tensorboard else None
    metrics_log = MetricsLog(out_dir / "metrics.csv" if out_dir else None, resume_step, tensorboard_dir, "train")
    eval_log = MetricsLog(out_dir / "evaluations.csv" if out_dir else None, eval_keep, tensorboard_dir, "eval")
    policy = agent.policy

    def evaluation_row(result) -> dict:
        # Q bias at every evaluation, not only the last: the learning curve of the critic's error is the evidence
        # (an unconstrained critic's estimates drift up while a conservative one's stay below the returns).
        return {"normalized_return": result.normalized_return, "return_mean": result.return_mean,
                "return_std": result.return_std, "q_bias_mean": result.q_bias_mean,
                "q_bias_normalized_mean": result.q_bias_normalized_mean}

    def evaluate(step: int) -> tuple[float, dict]:
        result = evaluate_in_env(policy, env_id, eval_episodes, seed, reference, config.gamma, device, True)
        if out_dir is not None:
            save_policy_snapshot(out_dir, step, agent.networks.actor)
        return result.normalized_return, evaluation_row(result)

    state = run_loop(update=lambda step: agent.update(buffer.sample(config.batch_size), step), source=OfflineSteps(),
                     schedule=schedule, agent=agent.networks, kind=OFFLINE_KIND,
                     checkpoint_path=folder.checkpoint_path if folder is not None else None,
                     metrics_log=metrics_log, eval_log=eval_log, evaluate=evaluate if env_id else None,
                     checkpoint_extra={"env_id": env_id, "obs_dim": dataset.obs_dim, "act_dim": dataset.act_dim},
                     resume_state=resume_state, callbacks=callbacks, progress_desc=f"{algorithm} {dataset.dataset_id}",
                     progress_unit="upd", show_progress=show_progress)

    report = TrainingReport(run_id=record["run_id"], run_dir=str(out_dir) if out_dir else None,
                            dataset_id=dataset.dataset_id, algorithm=algorithm, updates=state.step,
                            reference=reference.source if env_id else NO_ENV, eval_episodes=0)
    if env_id is not None:
        fault_point("final-evaluation")
        final = evaluate_in_env(policy, env_id, final_eval_episodes, seed, reference, config.gamma, device, True)
        if out_dir is not None:
            save_policy_snapshot(out_dir, state.step, agent.networks.actor)
        row = {"step": state.step, **evaluation_row(final)}
        eval_log.write(row)
        fault_point("final-evaluation-row-written")
        for callback in callbacks:
            callback("evaluation", state.step, row)
        report.final_normalized_return = final.normalized_return
        report.best_normalized_return = max(state.best_score, final.normalized_return)
        report.mean_return, report.return_std, report.eval_episodes = final.return_mean, final.return_std, \
            final_eval_episodes
        for name in ("q_bias_mean", "q_bias_normalized_mean", "q_bias_normalized_std", "q_bias_states", "q_bias_rule"):
            setattr(report, name, getattr(final, name))
        if out_dir is not None:
            atomic_write_bytes(out_dir / "q_bias_curve.csv", pd.DataFrame(final.q_bias_curve).to_csv(index=False)
                               .encode())
    diagnostics = dataset_diagnostics(policy, t["observations"], t["terminals"], t["timeouts"])
    report.average_value_estimate = diagnostics["average_value_estimate"]
    report.initial_state_value_estimate = diagnostics["initial_state_value_estimate"]
    rates = [float(row["updates_per_s"]) for row in metrics_log.rows]
    report.updates_per_s = float(np.nanmean(rates)) if rates else float("nan")
    report.wall_time_s = state.elapsed_s
    metrics_log.close()
    eval_log.close()
    if out_dir is not None:
        report.write(out_dir / "final.json")
        fault_point("final-report-written")
    if leaderboard is not None:
        append_report(Path(leaderboard), record, report, phase="offline", once=True)
    return report


def _card_summary(card: dict) -> dict:
    """The parts of a dataset's card a restored run needs without the store (env, references)."""
    return {k: card[k] for k in ("id", "env_id", "reference_scores", "sha256") if k in card}
