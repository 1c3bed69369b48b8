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
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from offrl.algos.cql import autocast_for, compiled_cql_losses, cql_losses, cql_update
from offrl.cuda_graph import CUDAGraphUpdate
from offrl.data.buffer import ReplayBuffer
from offrl.data.dataset import MixedSampler, buffer_from_dataset, load_dataset, returns_to_go
from offrl.envs import env_spec, make_env, seed_everything
from offrl.errors import OfflineRLError
from offrl.evaluation.leaderboard import check_appendable
from offrl.evaluation.report import evaluate_in_env
from offrl.evaluation.scores import reference_scores_from_card
from offrl.faults import fault_point
from offrl.fileio import git_commit
from offrl.runs import TrainingReport, append_report, restore_run, write_run_record
from offrl.train.logs import MetricsLog
from offrl.train.loop import EnvSteps, Schedule, run_loop
from offrl.train.run_folder import RunFolder

__all__ = ["FinetuneSettings", "finetune", "unlearning_dip", "online_auc"]

CHECKPOINT_NAME = "checkpoint.pt"
FINETUNE_KIND = "finetune"


@dataclasses.dataclass
class FinetuneSettings:
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
    # CUDA: every update replayed as one CUDA graph (offrl.cuda_graph), as CQL(compile=True) does; CPU: the losses
    # under torch.compile (compiled_cql_losses)
    compile: bool = False

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


def finetune(from_run: Path, settings: FinetuneSettings, out_dir: Path, resume: bool = False,
             leaderboard: Path | None = None, show_progress: bool = True, command: str | None = None,
             tensorboard: bool = False, callbacks: Sequence = ()) -> TrainingReport:
    """Fine-tune an offline run online (on the one loop, offrl.train.loop); returns the report."""
    settings.validate()
    offline_run = restore_run(from_run, settings.device)
    record = offline_run.record
    env_id = record.get("env_id")
    if not env_id:
        raise OfflineRLError(f"{from_run}: the run's dataset has no env, so it cannot be fine-tuned online")
    spec = env_spec(make_env(env_id))
    if (spec.obs_dim, spec.act_dim) != (record["obs_dim"], record["act_dim"]):
        raise OfflineRLError(f"{from_run}: the checkpoint has obs/act dims {record['obs_dim']}/{record['act_dim']}, "
                             f"env {env_id} has {spec.obs_dim}/{spec.act_dim}")
    if leaderboard is not None:
        check_appendable(Path(leaderboard))  # before the work, not after it
    with RunFolder(Path(out_dir), resume, FINETUNE_KIND, CHECKPOINT_NAME) as folder:
        return _finetune(offline_run, settings, folder, leaderboard, show_progress, command, tensorboard, callbacks)


def _finetune(offline_run, settings: FinetuneSettings, folder: RunFolder, leaderboard: Path | None,
              show_progress: bool, command: str | None, tensorboard: bool, callbacks: Sequence) -> TrainingReport:
    device = torch.device(settings.device)
    record, networks, normalizer = offline_run.record, offline_run.agent.networks, offline_run.agent.normalizer
    # One optimizer state across both phases, as CORL's and Cal-QL's fine-tuning: a fresh Adam would move every
    # weight by about lr·sign(g) in its first ~100 steps, the very window the unlearning dip measures.
    for name, optimizer in networks.optimizers().items():
        optimizer.load_state_dict(offline_run.checkpoint["optimizers"][name])
    out_dir, env_id = folder.path, record["env_id"]
    env = make_env(env_id)
    offline_config = offline_run.agent.config
    calibrated = offline_config.calibrated if settings.calibrated is None else settings.calibrated
    config = dataclasses.replace(offline_config, calibrated=calibrated)
    if settings.cql_alpha_online is not None:
        config = dataclasses.replace(config, cql_alpha=settings.cql_alpha_online)
    reference = reference_scores_from_card(offline_run.card)
    reward_scale = record["reward_scale"]
    seed = record["seed"] if settings.seed is None else settings.seed

    dataset = load_dataset(record["dataset_id"], device)
    offline = buffer_from_dataset(dataset, normalizer=normalizer, reward_scale=reward_scale,
                                  mc_returns_gamma=config.gamma)
    online = ReplayBuffer(dataset.obs_dim, dataset.act_dim, settings.online_steps, device, with_mc_returns=True)
    sampler = MixedSampler(offline, online, settings.offline_ratio)
    cuda_graph = settings.compile and device.type == "cuda"
    losses = compiled_cql_losses(device) if settings.compile and not cuda_graph else cql_losses

    def one_update(batch, step: int) -> dict:
        with autocast_for(config, device):
            return cql_update(networks, batch, config, step, losses)

    if cuda_graph:
        one_update = CUDAGraphUpdate(one_update, networks.optimizers().values(),
                                     phase=lambda step: step < config.bc_steps)
    policy = offline_run.agent.policy

    def act(obs):
        obs_tensor = torch.as_tensor(obs, dtype=torch.float32, device=device).unsqueeze(0)
        return networks.actor.act(normalizer(obs_tensor))[0].cpu().numpy()

    source = EnvSteps(env, act, online, episode_rows=lambda episode: _episode_rows(
        episode, normalizer, reward_scale, config.gamma, device))
    resume_state = None
    if folder.resume:
        finished = folder.finished_report(settings.online_steps)
        if finished is not None:  # killed after its report: only the row may be missing
            report = TrainingReport.from_dict(finished)
            if leaderboard is not None:
                append_report(leaderboard, record, report, phase="online", once=True)
            return report
        resume_state = folder.resume_state()
        if resume_state is not None and resume_state["from_run_id"] != record["run_id"]:
            raise OfflineRLError(f"--resume: {out_dir} fine-tunes run {resume_state['from_run_id']}, "
                                 f"not {record['run_id']}")
    if resume_state is None:  # a new run, or one killed before its first checkpoint: start (over)
        write_run_record(out_dir, {"kind": FINETUNE_KIND, "from_run": str(offline_run.run_dir),
                                   "from_run_id": record["run_id"], "offline_updates": offline_run.updates,
                                   "dataset_id": record["dataset_id"], "dataset_sha256": record["dataset_sha256"],
                                   "env_id": env_id, "settings": dataclasses.asdict(settings),
                                   "config": dataclasses.asdict(config), "seed": seed, "git_commit": git_commit(),
                                   "command": command})
        fault_point("run-record-written")
        seed_everything(seed)
        source.start(seed)

    resume_step = resume_state["loop"]["step"] if resume_state is not None else None
    # The final evaluation's row follows the last checkpoint (see train/offline.py).
    eval_keep = resume_step - 1 if resume_step is not None and resume_step >= settings.online_steps else resume_step
    tensorboard_dir = out_dir / "tensorboard" if tensorboard else None
    metrics_log = MetricsLog(out_dir / "metrics.csv", resume_step, tensorboard_dir, "train")
    eval_log = MetricsLog(out_dir / "evaluations.csv", eval_keep, tensorboard_dir, "eval")

    def evaluate(step: int) -> tuple[float, dict]:
        result = evaluate_in_env(policy, env_id, settings.eval_episodes, seed, reference, config.gamma, device, True)
        return result.normalized_return, {"offline_updates": offline_run.updates, **result.to_dict()}

    def update(step: int) -> dict:
        metrics = {}
        for i in range(settings.utd):
            metrics = one_update(sampler.sample(config.batch_size), config.bc_steps + step * settings.utd + i)
        return metrics

    if resume_state is None:
        eval_log.write({"step": 0, **evaluate(0)[1]})
    # The unlearning dip is read from the first 10% of online steps: evaluate there too, at 5% and 10%.
    dip_steps = tuple(sorted({max(1, settings.online_steps * i // 20) for i in (1, 2)}))
    schedule = Schedule(steps=settings.online_steps, log_every=settings.log_every, eval_every=settings.eval_every,
                        checkpoint_every=settings.checkpoint_every, extra_eval_steps=dip_steps)
    state = run_loop(update=update, source=source, schedule=schedule, agent=networks, kind=FINETUNE_KIND,
                     checkpoint_path=folder.checkpoint_path, metrics_log=metrics_log, eval_log=eval_log,
                     evaluate=evaluate,
                     updates_per_step=settings.utd, checkpoint_extra={"from_run_id": record["run_id"]},
                     resume_state=resume_state, callbacks=callbacks, progress_desc=f"fine-tune {record['dataset_id']}",
                     show_progress=show_progress)
    env.close()
    fault_point("final-evaluation")
    score, row = evaluate(state.step)
    eval_log.write({"step": state.step, **row})
    fault_point("final-evaluation-row-written")
    curve = [(int(float(r["step"])), float(r["normalized_return"])) for r in eval_log.rows]
    evaluations = pd.DataFrame(eval_log.rows).astype({"normalized_return": float})
    first, last = evaluations.iloc[0].to_dict(), evaluations.iloc[-1].to_dict()
    updates_run = (state.step - (resume_step or 0)) * settings.utd
    report = TrainingReport(
        run_id=f"{record['run_id']}-ft-{'calql' if calibrated else 'cql'}-{settings.offline_ratio}",
        run_dir=str(out_dir), dataset_id=record["dataset_id"], algorithm="Cal-QL" if calibrated else "CQL-SAC",
        updates=offline_run.updates, reference=reference.source, online_steps=state.step,
        before_normalized_return=float(first["normalized_return"]),
        before_q_bias_normalized_mean=_float(first.get("q_bias_normalized_mean")),
        final_normalized_return=score, best_normalized_return=max(s for _, s in curve),
        mean_return=_float(last["return_mean"]), return_std=_float(last["return_std"]),
        eval_episodes=settings.eval_episodes, q_bias_mean=_float(last.get("q_bias_mean")),
        q_bias_normalized_mean=_float(last.get("q_bias_normalized_mean")),
        q_bias_normalized_std=_float(last.get("q_bias_normalized_std")),
        unlearning_dip=unlearning_dip(curve, settings.online_steps), online_auc=online_auc(curve),
        wall_time_s=state.elapsed_s, updates_per_s=updates_run / max(state.elapsed_s, 1e-9),
        calibrated=calibrated, offline_ratio=settings.offline_ratio)
    metrics_log.close()
    eval_log.close()
    report.write(out_dir / "final.json")
    fault_point("final-report-written")
    if leaderboard is not None:
        append_report(leaderboard, record, report, phase="online", once=True)
    return report


def _float(value) -> float | None:
    return None if value is None or value == "" else float(value)


def _episode_rows(episode: dict[str, list], normalizer, reward_scale: float, gamma: float, device
                  ) -> dict[str, torch.Tensor]:
    """One finished online episode as buffer rows, as the offline rows are stored (normalized observations,
    scaled rewards) plus their Monte-Carlo returns-to-go (Cal-QL's bound)."""
    rewards = np.asarray(episode["rewards"], dtype=np.float64) * reward_scale
    terminals = np.asarray(episode["terminals"], dtype=bool)
    timeouts = np.asarray(episode["timeouts"], dtype=bool)
    if not (terminals[-1] or timeouts[-1]):
        timeouts[-1] = True  # the online budget ended mid-episode
    as_tensor = lambda x: torch.as_tensor(np.asarray(x, dtype=np.float32), device=device)  # noqa: E731
    return {"observations": normalizer(as_tensor(episode["observations"])),
            "actions": as_tensor(episode["actions"]), "rewards": as_tensor(rewards),
            "next_observations": normalizer(as_tensor(episode["next_observations"])),
            "terminals": as_tensor(terminals), "timeouts": as_tensor(timeouts),
            "mc_returns": as_tensor(returns_to_go(rewards, terminals, timeouts, gamma))}
