"""Online SAC pretraining: how offrl's behaviour policies are trained, on the one loop (offrl.train.loop).

Checkpoints are taken at the first episode boundary at or after every `checkpoint_every` env steps, so the
env needs nothing but its RNG restored, for any Gymnasium env, and `--resume` continues bit-for-bit on CPU.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from offrl.algos.sac import SACConfig, sac_update
from offrl.data.buffer import ReplayBuffer
from offrl.envs import env_spec, make_env, seed_everything
from offrl.errors import OfflineRLError
from offrl.evaluation.rollout import evaluate_policy
from offrl.faults import fault_point
from offrl.fileio import atomic_torch_save, git_commit
from offrl.runs import read_run_record, write_run_record
from offrl.train.logs import MetricsLog
from offrl.train.loop import EnvSteps, Schedule, run_loop
from offrl.train.run_folder import RunFolder

__all__ = ["PretrainSettings", "pretrain", "CHECKPOINT_NAME", "ONLINE_KIND"]

CHECKPOINT_NAME = "checkpoint.pt"
ONLINE_KIND = "sac-online"
EVAL_SEED_OFFSET = 1_000_000  # evaluation episodes never share start states with training episodes


@dataclass
class PretrainSettings:
    env_id: str = "HalfCheetah-v5"
    env_steps: int = 300_000
    seed: int = 0
    learning_starts: int = 5_000  # uniform random actions before the first update (CleanRL's value)
    eval_every: int = 10_000
    eval_episodes: int = 10
    checkpoint_every: int = 25_000
    log_every: int = 1_000
    buffer_capacity: int = 1_000_000  # >= env_steps keeps every transition: the medium-replay tier needs them
    device: str = "cpu"
    sac: SACConfig = field(default_factory=SACConfig)

    def validate(self) -> None:
        if self.env_steps <= 0:
            raise OfflineRLError(f"--steps must be a positive number of env steps, found {self.env_steps}")
        for name in ("eval_every", "eval_episodes", "checkpoint_every", "log_every", "buffer_capacity"):
            if getattr(self, name) < 1:
                raise OfflineRLError(f"{name} must be >= 1, found {getattr(self, name)}")
        if self.learning_starts < 0:
            raise OfflineRLError(f"learning_starts must be >= 0, found {self.learning_starts}")
        self.sac.validate()


def pretrain(settings: PretrainSettings, out_dir: Path, resume: bool = False, show_progress: bool = True,
             command: str | None = None, tensorboard: bool = False, callbacks: Sequence = (), agent=None) -> Path:
    """Train SAC online; returns the run directory. Writes run.json, metrics.csv, evaluations.csv,
    snapshots/actor_<step>.pt at each evaluation, and checkpoint.pt (with the replay buffer).
    `agent`: an `offrl.SAC` to train (its networks are built here); by default a new one."""
    settings.validate()
    env = make_env(settings.env_id)  # an unknown env is refused before the folder is made
    with RunFolder(Path(out_dir), resume, ONLINE_KIND, CHECKPOINT_NAME) as folder:
        return _pretrain(settings, folder, env, show_progress, command, tensorboard, callbacks, agent)


def _pretrain(settings: PretrainSettings, folder: RunFolder, env, show_progress: bool, command: str | None,
              tensorboard: bool, callbacks: Sequence, agent) -> Path:
    from offrl.agents import SAC

    out_dir, checkpoint_path = folder.path, folder.checkpoint_path
    device = torch.device(settings.device)
    spec = env_spec(env)
    obs_dim, act_dim = spec.obs_dim, spec.act_dim
    seed_everything(settings.seed)
    sac = agent if agent is not None else SAC(settings.sac, device=device)
    sac.build(obs_dim, act_dim, env_id=settings.env_id)
    networks = sac.networks
    buffer = ReplayBuffer(obs_dim, act_dim, settings.buffer_capacity, device)
    command = command or f"offrl pretrain --env {settings.env_id} --steps {settings.env_steps} --seed {settings.seed}"

    def act(obs):
        obs_tensor = torch.as_tensor(obs, dtype=torch.float32, device=device).unsqueeze(0)
        return networks.actor.act(obs_tensor)[0].cpu().numpy()

    source = EnvSteps(env, act, buffer, random_steps=settings.learning_starts)
    resume_state = folder.resume_state()  # None for a new run or one killed before its first checkpoint
    if resume_state is not None:
        if resume_state["env_id"] != settings.env_id:
            raise OfflineRLError(f"checkpoint {checkpoint_path}: trained on {resume_state['env_id']!r}, cannot resume "
                                 f"on {settings.env_id!r}")
        if (resume_state["obs_dim"], resume_state["act_dim"]) != (obs_dim, act_dim):
            raise OfflineRLError(f"checkpoint {checkpoint_path}: obs/act dims {resume_state['obs_dim']}/"
                                 f"{resume_state['act_dim']} do not match env {settings.env_id} ({obs_dim}/{act_dim})")
        # A resumed run may train longer than first planned: the record says so, and how.
        record = read_run_record(out_dir, ONLINE_KIND)
        record["settings"]["env_steps"] = settings.env_steps
        record["resumed_with"] = [*record.get("resumed_with", []), command]
        write_run_record(out_dir, record)
    else:
        (out_dir / "snapshots").mkdir(exist_ok=True)
        write_run_record(out_dir, {"kind": ONLINE_KIND, "settings": dataclasses.asdict(settings),
                                   "git_commit": git_commit(), "obs_dim": obs_dim, "act_dim": act_dim,
                                   "command": command})
        source.start(settings.seed)

    resume_step = resume_state["loop"]["step"] if resume_state is not None else None
    tensorboard_dir = out_dir / "tensorboard" if tensorboard else None
    metrics_log = MetricsLog(out_dir / "metrics.csv", resume_step, tensorboard_dir, "train")
    eval_log = MetricsLog(out_dir / "evaluations.csv", resume_step, tensorboard_dir, "eval")

    def update(step: int):
        if step + 1 <= settings.learning_starts:
            return None
        metrics = None
        for _ in range(settings.sac.updates_per_step):
            metrics = sac_update(networks, buffer.sample(settings.sac.batch_size), settings.sac)
        return metrics

    def evaluate(step: int) -> tuple[float, dict]:
        """Deterministic evaluation; the actor is kept so the medium policy can be picked afterwards."""
        result = evaluate_policy(lambda o: networks.actor.act(o, deterministic=True), settings.env_id,
                                 settings.eval_episodes, settings.seed + EVAL_SEED_OFFSET, device)
        atomic_torch_save({"actor": networks.actor.state_dict(), "step": step},
                          out_dir / "snapshots" / f"actor_{step}.pt")
        return result.mean, {"return_mean": result.mean, "return_std": result.std,
                             "episodes": settings.eval_episodes}

    state = run_loop(update=update, source=source,
                     schedule=Schedule(steps=settings.env_steps, log_every=settings.log_every,
                                       eval_every=settings.eval_every, checkpoint_every=settings.checkpoint_every),
                     agent=networks, kind=ONLINE_KIND, checkpoint_path=checkpoint_path, metrics_log=metrics_log,
                     eval_log=eval_log, evaluate=evaluate, updates_per_step=settings.sac.updates_per_step,
                     checkpoint_extra={"env_id": settings.env_id, "obs_dim": obs_dim, "act_dim": act_dim},
                     resume_state=resume_state, callbacks=callbacks, progress_desc=f"SAC {settings.env_id}",
                     show_progress=show_progress)
    env.close()
    evaluated = [int(float(row["step"])) for row in eval_log.rows]
    if state.step not in evaluated:  # the final policy is always evaluated and kept
        fault_point("final-evaluation")
        _, row = evaluate(state.step)
        eval_log.write({"step": state.step, **row})
    metrics_log.close()
    eval_log.close()
    return out_dir

