"""Off-policy evaluation runs: a fixed policy, a dataset, an estimator (offrl.algos.ope) → V̂^π with a CI, and,
where the dataset's env exists, the true value from Monte-Carlo rollouts of π and the estimate's error.

V̂^π = E_{s0}[E_{a~π(s0)} Q̂^π(s0, a)] over initial states: env resets (the same reset seeds the truth's rollouts
start from) or the dataset's episode starts (d3rlpy's choice, and the only one without an env). Its CI is a
bootstrap over those states (scipy), so it measures how many states were averaged, not the estimator's error;
the error is what the truth is for. The truth is the mean discounted return of `truth_episodes` rollouts of π
(the same stochastic or deterministic π), with its own bootstrap CI. The backup bootstraps through time-limit
cuts, so Q̂ estimates the value without a time limit; the truth's rollouts therefore run past the env's limit
until γ^T ≤ TRUTH_TAIL (Pendulum's 200-step limit would otherwise drop 13% of the value at γ = 0.99).

A run folder (optional) holds run.json, metrics.csv, estimates.csv (V̂ every `eval_every` updates: the curve
that shows the estimate has stopped moving), checkpoints and final.json; it resumes like a training run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from offrl import __version__
from offrl.algos.ope import OPEConfig, OPECritic, TargetPolicy, ope_update, policy_value
from offrl.config import config_hash
from offrl.data.dataset import ObservationNormalizer, OfflineDataset, buffer_from_dataset
from offrl.envs import env_spec, make_env, seed_everything
from offrl.errors import OfflineRLError
from offrl.evaluation.q_bias import discounted_returns, dropped_tail
from offrl.evaluation.rollout import rollout_episodes
from offrl.fileio import atomic_write_bytes, git_commit, safe_torch_load
from offrl.runs import build_run_agent, read_run_record, refuse_non_finite, write_run_record
from offrl.train.checkpoints import load_weights
from offrl.train.logs import MetricsLog
from offrl.train.loop import OfflineSteps, Schedule, run_loop
from offrl.train.run_folder import RunFolder, snapshot_of

__all__ = ["OPE_KIND", "OPE_COLUMNS", "OPEReport", "ActorPolicy", "ExportedFilePolicy", "UniformPolicy",
           "load_target_policy",
           "initial_states", "bootstrap_mean_ci", "truth_horizon", "monte_carlo_value", "evaluate_policy_offline",
           "policy_fingerprint", "check_ope_results", "append_ope_row"]

OPE_KIND = "ope"
# Reset seeds of the initial states and of the truth's rollouts: apart from training's evaluation seeds.
INITIAL_STATE_SEED = 3_000_000
TRUTH_TAIL = 1e-3  # the truth's rollouts end where γ^T is below this (or at the env's limit, if later)
INITIAL_STATE_CHOICES = ("auto", "env", "dataset")


@dataclass
class OPEReport:
    """What one estimate found. Values are discounted returns (γ of the config) from an initial state."""

    policy: str
    dataset_id: str
    method: str
    alpha: float | None
    mu: str | None
    updates: int
    seed: int
    gamma: float
    deterministic: bool
    estimate: float
    estimate_ci_low: float
    estimate_ci_high: float
    initial_states: int
    initial_state_source: str  # "env reset" or "dataset episode starts"
    policy_fingerprint: str | None = None  # sha256 of π's weights: what a resume and a results row identify π by
    truth_horizon: int | None = None  # steps per truth rollout
    true_value: float | None = None
    true_ci_low: float | None = None
    true_ci_high: float | None = None
    truth_episodes: int = 0
    error: float | None = None  # estimate − truth
    is_lower_bound: bool | None = None  # estimate ≤ truth
    curve: list[tuple[int, float]] = field(default_factory=list)  # (updates, V̂)
    dataset_sha256: str | None = None
    config_hash: str | None = None  # of the whole OPEConfig: estimates are pooled only under one estimator config
    run_dir: str | None = None
    wall_time_s: float = 0.0
    git_commit: str | None = None
    offrl_version: str = __version__

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> OPEReport:
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values})


# --- the policy being evaluated -------------------------------------------------------------------------------

def _tensors_sha256(*state_dicts: dict) -> str:
    digest = hashlib.sha256()
    for state in state_dicts:
        for key in sorted(state):
            digest.update(key.encode())
            digest.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def policy_fingerprint(policy: TargetPolicy) -> str:
    """π's identity for resume checks and results rows: its weights' sha256 (and whether it is deterministic)."""
    if isinstance(policy, ActorPolicy):
        normalizer = ({"mean": policy.normalizer.mean, "std": policy.normalizer.std}
                      if policy.normalizer is not None else {})
        digest = _tensors_sha256(policy.actor.state_dict(), normalizer)
    elif isinstance(policy, ExportedFilePolicy):
        digest = _tensors_sha256(dict(policy.module.state_dict()))
    elif isinstance(policy, UniformPolicy):
        digest = "uniform"
    else:
        digest = type(policy).__name__
    return f"{digest[:16]}{'-deterministic' if policy.deterministic else ''}"


class ActorPolicy:
    """A tanh-Gaussian actor (shipped policy or a run's), on raw observations through its own normaliser."""

    def __init__(self, actor, normalizer: ObservationNormalizer | None = None, deterministic: bool = False,
                 name: str = "policy"):
        self.actor, self.normalizer, self.deterministic, self.name = actor.eval(), normalizer, deterministic, name
        self.obs_dim, self.act_dim = actor.obs_dim, actor.act_dim

    @torch.no_grad()
    def sample(self, observations: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        inputs = self.normalizer(observations) if self.normalizer is not None else observations
        if self.deterministic:
            return self.actor.act(inputs, deterministic=True).unsqueeze(0), None
        return self.actor.sample_n(inputs, n)


class ExportedFilePolicy:
    """A policy exported by `offrl export-policy` (TorchScript): deterministic, env-bounds actions mapped back
    onto offrl's [-1, 1]."""

    deterministic = True

    def __init__(self, module, card: dict, name: str):
        self.module, self.name = module, name
        self.obs_dim, self.act_dim = int(card["obs_dim"]), int(card["act_dim"])
        low = torch.as_tensor(card["action_low"], dtype=torch.float32)
        high = torch.as_tensor(card["action_high"], dtype=torch.float32)
        self.offset, self.scale = (high + low) / 2, (high - low) / 2

    @torch.no_grad()
    def sample(self, observations: torch.Tensor, n: int) -> tuple[torch.Tensor, None]:
        actions = self.module(observations.float().cpu())
        return ((actions - self.offset) / self.scale).clamp(-1.0, 1.0).to(observations).unsqueeze(0), None


class UniformPolicy:
    """The uniform random policy on [-1, 1]^|A| (the low end of a benchmark's value range); fits any dataset."""

    deterministic = False

    def __init__(self, obs_dim: int | None = None, act_dim: int | None = None):
        self.obs_dim, self.act_dim, self.name = obs_dim, act_dim, "random"

    def sample(self, observations: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (n, observations.shape[0], self.act_dim)
        actions = torch.rand(shape, device=observations.device, dtype=observations.dtype) * 2 - 1
        return actions, torch.full(shape[:2], self.act_dim * math.log(0.5), device=observations.device,
                                   dtype=observations.dtype)


def load_target_policy(spec: str | Path, deterministic: bool = False, device: str | torch.device = "cpu"
                       ) -> TargetPolicy:
    """SPEC: a shipped policy `ENV/TIER` (`HalfCheetah-v5/expert`), a shipped medium-replay snapshot
    `ENV/replay/STEP`, `random` (uniform actions), a training run's folder, one of its policy snapshots
    (`RUN/snapshots/actor_STEP.pt`, written at each evaluation), an exported `policy.pt` (beside its
    `policy.json`), or a shipped-format policy file (beside its card)."""
    from offrl.policies import load_policy, load_replay_card, policy_path
    from offrl.runs import restore_run

    text = str(spec)
    if text == "random":
        if deterministic:
            raise OfflineRLError("--policy random with --deterministic: a uniform policy has no mean action to "
                                 "take; evaluate it as it samples")
        return UniformPolicy()
    replay = re.fullmatch(r"([^/]+)/replay/(\d+)", text)
    if replay is not None:
        card, actors = load_replay_card(replay[1])
        steps = [segment["step"] for segment in card["segments"]]
        if int(replay[2]) not in steps:
            raise OfflineRLError(f"--policy {text}: no replay snapshot at step {replay[2]} (shipped: "
                                 f"{', '.join(map(str, steps))})")
        return ActorPolicy(actors[steps.index(int(replay[2]))].to(device), None, deterministic, text)
    path = Path(text)
    if path.is_dir():
        run = restore_run(path, str(device), verify_dataset=False)
        return ActorPolicy(run.agent.networks.actor, run.agent.normalizer, deterministic, text)
    snapshot = snapshot_of(path)
    if path.is_file() and snapshot is not None and (snapshot[0] / "run.json").is_file():
        # RUN/snapshots/actor_STEP.pt: the actor the run's record describes (config, normaliser) with that step's
        # weights; the run's checkpoint is not needed (a run that diverged later keeps its good early snapshots)
        _, agent = build_run_agent(snapshot[0], str(device))
        weights = safe_torch_load(path, "policy snapshot")
        refuse_non_finite(weights if isinstance(weights, dict) else {}, f"policy snapshot {path}")
        load_weights(agent.networks.actor, weights, f"policy snapshot {path}")
        return ActorPolicy(agent.networks.actor, agent.normalizer, deterministic, text)
    if path.is_file():
        exported_card = path.parent / "policy.json"
        if exported_card.is_file() and _json(exported_card).get("format") == "offrl-exported-policy":
            try:
                module = torch.jit.load(str(path), map_location="cpu").eval()
            except Exception as exc:  # noqa: BLE001 - any failure means a file we cannot use
                raise OfflineRLError(f"--policy {path}: cannot be loaded ({type(exc).__name__})") from None
            return ExportedFilePolicy(module, _json(exported_card), text)
        return ActorPolicy(load_policy(path, device=device).actor, None, deterministic, text)
    if text.count("/") == 1 and not text.endswith((".pt", ".json")):
        env_id, tier = text.split("/")
        if not policy_path(env_id, tier).is_file():
            raise OfflineRLError(f"--policy {text}: no shipped policy {tier!r} for {env_id} "
                                 f"(no {policy_path(env_id, tier)})")
        return ActorPolicy(load_policy(env_id, tier, device=device).actor, None, deterministic, text)
    raise OfflineRLError(f"--policy {text}: not a shipped policy (ENV/TIER, e.g. HalfCheetah-v5/expert), a run "
                         "directory or a policy file")


def _json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OfflineRLError(f"{path}: not readable JSON ({exc})") from None
    return value if isinstance(value, dict) else {}


# --- initial states and the truth ------------------------------------------------------------------------------

def initial_states(dataset: OfflineDataset, env_id: str | None, count: int, seed: int) -> tuple[torch.Tensor, str]:
    """(states, source): `count` env resets (seeds INITIAL_STATE_SEED + 1000·seed + i) when `env_id` is given,
    else every episode start of the dataset (row 0 and each row after a terminal or time-limit row)."""
    if env_id is not None:
        base = INITIAL_STATE_SEED + 1000 * seed
        env = make_env(env_id)
        states = np.stack([env.reset(seed=base + i)[0] for i in range(count)]).astype(np.float32)
        env.close()
        return torch.as_tensor(states), "env reset"
    t = dataset.tensors
    ends = torch.nonzero((t["terminals"] + t["timeouts"]) > 0).flatten().cpu()
    if len(ends) == 0:
        raise OfflineRLError(f"dataset {dataset.dataset_id}: no episode ends (terminals/timeouts), so no episode "
                             "starts to estimate the value from; give the env it came from")
    starts = torch.cat([torch.zeros(1, dtype=torch.long), ends[:-1] + 1])
    return t["observations"][starts.to(t["observations"].device)].cpu(), "dataset episode starts"


def bootstrap_mean_ci(values: np.ndarray, seed: int = 0, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile-bootstrap CI of the mean (scipy.stats.bootstrap); a single value is its own interval."""
    from scipy.stats import bootstrap

    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2 or np.ptp(values) == 0:
        return float(values.mean()), float(values.mean())
    result = bootstrap((values,), np.mean, confidence_level=confidence, n_resamples=2000, method="percentile",
                       random_state=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def truth_horizon(env_id: str, gamma: float) -> int:
    """Steps per truth rollout: past the env's time limit until γ^T ≤ TRUTH_TAIL (Q̂ knows no time limit)."""
    import gymnasium as gym

    limit = gym.spec(env_id).max_episode_steps or 0
    return max(limit, dropped_tail(gamma, TRUTH_TAIL))


def monte_carlo_value(policy: TargetPolicy, env_id: str, episodes: int, gamma: float, seed: int = 0,
                      device: str | torch.device = "cpu") -> tuple[float, float, float]:
    """π's true value from the same initial states as `initial_states`: the mean discounted return of
    `episodes` rollouts of `truth_horizon` steps (ended early only by a true termination), and its bootstrap CI."""
    def act(observations: torch.Tensor) -> torch.Tensor:
        return policy.sample(observations, 1)[0][0]

    torch.manual_seed(INITIAL_STATE_SEED + seed)  # π's own sampling noise, repeatable
    rollouts = rollout_episodes(act, env_id, episodes, INITIAL_STATE_SEED + 1000 * seed, device,
                                max_episode_steps=truth_horizon(env_id, gamma))
    returns = np.array([discounted_returns(r.rewards, gamma)[0] for r in rollouts])
    low, high = bootstrap_mean_ci(returns, seed)
    return float(returns.mean()), low, high


# --- one estimate ----------------------------------------------------------------------------------------------

def evaluate_policy_offline(policy: str | Path | TargetPolicy, dataset: OfflineDataset | str, method: str, steps: int,
                            *,
                            config: OPEConfig | None = None, seed: int = 0, env: str | bool | None = True,
                            truth: bool = True, truth_episodes: int = 50, states: int = 100,
                            initial_state_source: str = "auto",
                            eval_every: int | None = None, log_every: int = 1_000, checkpoint_every: int = 5_000,
                            deterministic: bool = False, run_dir: str | Path | None = None, resume: bool = False,
                            show_progress: bool = True, command: str | None = None,
                            policy_name: str | None = None) -> OPEReport:
    """Estimate π's value from `dataset` with `method` (fqe, cql-q, cql-v) after `steps` critic updates.

    `env`: True for the dataset's env, an env id, or False/None for none (initial states from the dataset's
    episode starts; no truth). `truth`: also roll π out in the env for its true value (needs an env).
    `initial_state_source`: "env" (resets: `truth_episodes` of them with the truth, else `states`), "dataset" (its
    episode starts) or "auto" (env resets when there is an env)."""
    if isinstance(dataset, str):
        from offrl.data.dataset import load_dataset

        dataset = load_dataset(dataset)
    config = dataclasses.replace(config or OPEConfig(), method=method)
    config.validate()
    for name, value, minimum in (("steps", steps, 1), ("truth_episodes", truth_episodes, 2), ("states", states, 1),
                                 ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise OfflineRLError(f"{name} must be an integer >= {minimum}, found {value!r}")
    schedule = Schedule(steps=steps, log_every=log_every, eval_every=eval_every, checkpoint_every=checkpoint_every)
    schedule.validate()
    if resume and run_dir is None:
        raise OfflineRLError("resume=True needs the run_dir of the estimate to continue")
    if initial_state_source not in INITIAL_STATE_CHOICES:
        raise OfflineRLError(f"initial states {initial_state_source!r}: choose from {', '.join(INITIAL_STATE_CHOICES)}")
    device = dataset.tensors["observations"].device
    target = (policy if not isinstance(policy, str | Path)
              else load_target_policy(policy, deterministic, device))
    if deterministic and not target.deterministic:  # only a SPEC is loaded in the mode asked for
        raise OfflineRLError("deterministic=True: the policy object given samples its actions; pass a deterministic "
                             "policy (e.g. ActorPolicy(..., deterministic=True)) or a policy SPEC")
    if isinstance(target, UniformPolicy) and target.act_dim is None:
        target = UniformPolicy(dataset.obs_dim, dataset.act_dim)
    policy_name = policy_name or (str(policy) if isinstance(policy, str | Path)
                                  else getattr(policy, "name", type(policy).__name__))
    if (target.obs_dim, target.act_dim) != (dataset.obs_dim, dataset.act_dim):
        raise OfflineRLError(f"--policy {policy_name}: observation/action dimensions {target.obs_dim}/{target.act_dim} "
                             f"do not match dataset {dataset.dataset_id} ({dataset.obs_dim}/{dataset.act_dim})")
    env_id = dataset.env_id if env is True else (env or None)
    if truth and env_id is None:
        raise OfflineRLError(f"dataset {dataset.dataset_id}: no env to roll the policy out in, so no true value; "
                             "pass truth=False (--no-truth) or name the env (--env)")
    if env_id is not None:
        try:
            env = make_env(env_id)
        except OfflineRLError as exc:
            where = f"--env {env_id}" if env is not True else f"dataset {dataset.dataset_id} (its env {env_id})"
            raise OfflineRLError(f"{where}: {exc}; pass --no-truth --initial-states dataset to estimate without an "
                                 "env") from None
        spec = env_spec(env)
        env.close()
        if (spec.obs_dim, spec.act_dim) != (dataset.obs_dim, dataset.act_dim):
            raise OfflineRLError(f"--env {env_id}: observation/action dimensions {spec.obs_dim}/{spec.act_dim} do "
                                 f"not match dataset {dataset.dataset_id} ({dataset.obs_dim}/{dataset.act_dim})")
    if config.method == "cql-q" and config.mu == "softmax" and target.deterministic:
        raise OfflineRLError("--method cql-q with mu=softmax needs a stochastic policy (the densities of its actions);"
                             " pass --mu uniform or --mu policy for a deterministic one")
    if initial_state_source == "env" and env_id is None:
        raise OfflineRLError(f"dataset {dataset.dataset_id}: no env to draw initial states from; use the dataset's "
                             "episode starts (--initial-states dataset) or name the env (--env)")
    from_env = env_id if initial_state_source in ("auto", "env") else None
    start_states, state_source = initial_states(dataset, from_env, truth_episodes if truth else states, seed)
    folder = RunFolder(Path(run_dir), resume, OPE_KIND) if run_dir is not None else None
    with folder if folder is not None else contextlib.nullcontext():
        return _estimate(target, policy_name, dataset, config, schedule, folder, start_states, state_source,
                         env_id if truth else None, truth_episodes, seed, deterministic or target.deterministic,
                         show_progress, command)


def _estimate(policy: TargetPolicy, policy_name: str, dataset: OfflineDataset, config: OPEConfig,
              schedule: Schedule, folder: RunFolder | None, start_states: torch.Tensor, state_source: str,
              truth_env: str | None, truth_episodes: int, seed: int, deterministic: bool, show_progress: bool,
              command: str | None) -> OPEReport:
    out_dir = folder.path if folder is not None else None
    card = dataset.card
    record = {"kind": OPE_KIND, "run_id": f"ope-{config.method}-s{seed}-{uuid.uuid4().hex[:6]}", "policy": policy_name,
              "deterministic": deterministic, "dataset_id": dataset.dataset_id, "dataset_sha256": card.get("sha256"),
              "method": config.method, "config": dataclasses.asdict(config), "config_hash": config_hash(config),
              "updates": schedule.steps, "seed": seed, "truth_env": truth_env, "truth_episodes": truth_episodes,
              "policy_fingerprint": policy_fingerprint(policy), "initial_state_source": state_source,
              "initial_states": len(start_states),
              "git_commit": git_commit(), "offrl_version": __version__, "command": command}
    resume_state = None
    if folder is not None and folder.resume:
        previous = read_run_record(out_dir, OPE_KIND)  # refuses a missing, damaged or non-OPE record
        identity = ("config_hash", "dataset_sha256", "policy_fingerprint", "deterministic", "seed",
                    "truth_env", "truth_episodes", "initial_state_source", "initial_states")
        differ = [key for key in identity if previous.get(key) != record[key]]
        if differ:
            raise OfflineRLError(f"--resume: {out_dir} holds another estimate ({', '.join(differ)} differ)")
        finished = folder.finished_report(schedule.steps)
        if finished is not None:
            return OPEReport.from_dict(finished)
        record = previous
        resume_state = folder.resume_state()
    elif out_dir is not None:
        write_run_record(out_dir, record)

    device = dataset.tensors["observations"].device
    seed_everything(seed)
    normalizer = (ObservationNormalizer.from_observations(dataset.tensors["observations"])
                  if config.normalize_observations else ObservationNormalizer.identity(dataset.obs_dim, device))
    buffer = buffer_from_dataset(dataset)  # raw observations: π reads them as stored, the critics normalise
    model = OPECritic(dataset.obs_dim, dataset.act_dim, config).to(device)
    start_states = start_states.to(device)

    def estimate_at_states() -> np.ndarray:
        return policy_value(model, policy, start_states, normalizer).double().cpu().numpy()

    resume_step = resume_state["loop"]["step"] if resume_state is not None else None
    # the final estimate's row follows the last checkpoint: a run resumed at its last step writes it again
    keep = resume_step - 1 if resume_step is not None and resume_step >= schedule.steps else resume_step
    metrics_log = MetricsLog(out_dir / "metrics.csv" if out_dir else None, resume_step)
    estimates_log = MetricsLog(out_dir / "estimates.csv" if out_dir else None, keep)

    def evaluate(step: int) -> tuple[float, dict]:
        value = float(estimate_at_states().mean())
        return value, {"estimate": value}

    state = run_loop(update=lambda step: ope_update(model, policy, buffer.sample(config.batch_size), config,
                                                    normalizer),
                     source=OfflineSteps(), schedule=schedule, agent=model, kind=OPE_KIND,
                     checkpoint_path=folder.checkpoint_path if folder is not None else None,
                     metrics_log=metrics_log, eval_log=estimates_log, evaluate=evaluate,
                     resume_state=resume_state, progress_desc=f"{config.method} {dataset.dataset_id}",
                     progress_unit="upd", show_progress=show_progress)
    values = estimate_at_states()
    estimate = float(values.mean())
    low, high = bootstrap_mean_ci(values, seed)
    estimates_log.write({"step": state.step, "estimate": estimate})
    metrics_log.close()
    estimates_log.close()
    report = OPEReport(policy=policy_name, dataset_id=dataset.dataset_id, method=config.method,
                       alpha=None if config.method == "fqe" else float(config.alpha),
                       mu={"fqe": None, "cql-v": "policy"}.get(config.method, config.mu), updates=state.step,
                       seed=seed, gamma=config.gamma, deterministic=deterministic, estimate=estimate,
                       estimate_ci_low=low, estimate_ci_high=high, initial_states=len(values),
                       initial_state_source=state_source, curve=[*state.curve, (state.step, estimate)],
                       policy_fingerprint=record["policy_fingerprint"],
                       dataset_sha256=card.get("sha256"), config_hash=record["config_hash"],
                       run_dir=str(out_dir) if out_dir else None,
                       wall_time_s=state.elapsed_s, git_commit=record.get("git_commit"))
    if truth_env is not None:
        truth, truth_low, truth_high = monte_carlo_value(policy, truth_env, truth_episodes, config.gamma, seed, device)
        report.truth_horizon = truth_horizon(truth_env, config.gamma)
        report.true_value, report.true_ci_low, report.true_ci_high = truth, truth_low, truth_high
        report.truth_episodes = truth_episodes
        report.error = estimate - truth
        report.is_lower_bound = bool(estimate <= truth)
    if out_dir is not None:
        atomic_write_bytes(out_dir / "final.json", json.dumps(report.to_dict(), indent=2).encode())
    return report


# --- the results table (evaluation/ope.csv) ---------------------------------------------------------------------

OPE_COLUMNS = ("policy", "policy_fingerprint", "dataset_id", "dataset_sha256", "method", "alpha", "mu",
               "deterministic", "seed", "updates", "gamma", "config_hash", "estimate", "estimate_ci_low",
               "estimate_ci_high", "initial_states", "initial_state_source", "true_value", "true_ci_low",
               "true_ci_high", "truth_episodes", "truth_horizon", "error", "is_lower_bound", "wall_time_s",
               "git_commit", "offrl_version", "date", "run_dir", "sweep_id")


def check_ope_results(path: Path) -> None:
    """Refuse, before any work, a results path a row could not be appended to."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise OfflineRLError(f"--results {path}: exists and is not a file")
    if path.is_file():
        with path.open() as f:
            header = f.readline().strip()
        if header and tuple(header.split(",")) != OPE_COLUMNS:
            raise OfflineRLError(f"--results {path}: not an offrl OPE results file (its header differs)")
    existing = next(folder for folder in (path.parent, *path.parent.parents) if folder.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OfflineRLError(f"--results {path}: {existing} is not writable")


def append_ope_row(path: Path, report: OPEReport, sweep_id: str | None = None, once: bool = False) -> bool:
    """Append the report's row to a results CSV (created with its header), under a lock, through a temp file and
    a rename: a reader never sees half a row. A file with another header is refused, not appended to. With
    `once`, a row of the same run folder and number of updates already there is not appended again (returns
    False); a run resumed to more updates gets a row of its own."""
    import datetime as dt
    import io

    import pandas as pd
    from filelock import FileLock

    path = Path(path)
    if path.exists() and not path.is_file():
        raise OfflineRLError(f"--results {path}: exists and is not a file")
    values = report.to_dict()
    row = {column: values.get(column) for column in OPE_COLUMNS}
    row["date"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    row["sweep_id"] = sweep_id
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.with_name(f".{path.name}.lock"))):
        text = path.read_text() if path.exists() else ""
        if text:
            header = text.splitlines()[0].split(",")
            if tuple(header) != OPE_COLUMNS:
                raise OfflineRLError(f"--results {path}: not an offrl OPE results file (its header differs)")
            if once and report.run_dir is not None:
                rows = pd.read_csv(io.StringIO(text))
                if ((rows["run_dir"].astype(str) == str(report.run_dir)) & (rows["updates"] == report.updates)).any():
                    return False
        buffer = io.StringIO()
        pd.DataFrame([row], columns=list(OPE_COLUMNS)).to_csv(buffer, index=False, header=not text)
        atomic_write_bytes(path, (text + buffer.getvalue()).encode())
    return True
