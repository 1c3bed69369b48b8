"""The one training loop: every algorithm is an update function plus a source of steps.

A step is one update on a fixed buffer offline (`OfflineSteps`) or one env step online (`EnvSteps`, which
also feeds a buffer). The loop owns what all algorithms share: the schedule (log, evaluate, checkpoint),
checkpoints and exact resume, the metric and evaluation logs, divergence detection, callbacks and progress.
Algorithms own their update, their evaluation and their final report.

Per step, in this order: the source advances, the update runs, the source stores what waited for the
update (a finished episode), evaluation (if due), the log row (if due),
a checkpoint (if due and the source is at a boundary: offline every step, online at episode ends, where the
env's whole state is its RNG).

Two guarantees (tests/train/test_loop.py, tests/test_faults.py):
- a checkpoint never holds a diverged state: before every save, and at every log row, the latest metrics and
  every parameter must be finite and the metrics below the schedule's `divergence_limit` (DIVERGENCE_LIMIT
  unless the caller says otherwise), else the loop stops with one error;
- SIGINT and SIGTERM stop the loop at the next boundary with a checkpoint (`TrainingInterrupted`, exit
  130/143 from the CLI); a second SIGINT interrupts at once.
A run stopped for divergence leaves `stopped.json` in its folder (the step, the metrics, the error), so a summary
of a sweep can say why the run has no row instead of leaving it out silently.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm import tqdm

from offrl.errors import DIVERGENCE_LIMIT, OfflineRLError, TrainingInterrupted
from offrl.faults import fault_point
from offrl.fileio import atomic_torch_save, atomic_write_bytes
from offrl.train.checkpoints import CHECKPOINT_FORMAT, load_weights, rng_state, set_rng_state
from offrl.train.logs import MetricsLog
from offrl.train.run_folder import STOPPED_FILE

__all__ = ["Schedule", "LoopState", "StepSource", "OfflineSteps", "EnvSteps", "Callback", "run_loop"]

# callback(event, step, row): event "log" (a metrics row) or "evaluation" (an evaluation row)
Callback = Callable[[str, int, dict[str, Any]], None]


@dataclass
class Schedule:
    """How long a loop runs and how often it logs, evaluates and checkpoints, in loop steps."""

    steps: int  # updates offline, env steps online
    log_every: int = 1_000
    eval_every: int | None = 5_000  # None: no evaluation during the loop (the caller may evaluate after it)
    checkpoint_every: int = 5_000
    extra_eval_steps: tuple[int, ...] = ()  # e.g. fine-tuning's 5% and 10% marks, where the unlearning dip is
    # A finite metric above this stops the run too. Raised for runs whose divergence is the measurement (offline
    # SAC's Q-values, the baseline of the evidence grid); non-finite values always stop a run.
    divergence_limit: float = DIVERGENCE_LIMIT

    def validate(self) -> None:
        for name in ("steps", "log_every", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise OfflineRLError(f"{name} must be an integer >= 1, found {value!r}")
        limit = self.divergence_limit
        if isinstance(limit, bool) or not isinstance(limit, int | float) or math.isnan(limit) or limit <= 0:
            raise OfflineRLError(f"divergence_limit must be a positive number (inf: only NaN/inf stop a run), "
                                 f"found {limit!r}")
        if self.eval_every is not None and (not isinstance(self.eval_every, int) or self.eval_every < 1):
            raise OfflineRLError(f"eval_every must be an integer >= 1 or None, found {self.eval_every!r}")

    def evaluates_at(self, step: int) -> bool:
        """Evaluations inside the loop; the last step's evaluation is the caller's final one."""
        if step >= self.steps:
            return False
        return (self.eval_every is not None and step % self.eval_every == 0) or step in self.extra_eval_steps


@dataclass
class LoopState:
    """What the loop itself carries across a resume."""

    step: int = 0
    next_checkpoint: int = 0
    best_score: float = float("-inf")
    last_score: float = float("nan")
    curve: list[tuple[int, float]] = field(default_factory=list)  # (step, evaluation score)
    elapsed_s: float = 0.0


class StepSource(Protocol):
    at_boundary: bool

    def advance(self) -> None: ...
    def after_update(self) -> None: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...
    def log_fields(self) -> dict[str, float]: ...


class OfflineSteps:
    """Offline training: a step is one update on a fixed buffer; any step is a safe checkpoint."""

    at_boundary = True

    def advance(self) -> None:
        pass

    def after_update(self) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def log_fields(self) -> dict[str, float]:
        return {}


class EnvSteps:
    """Online data: one env step per loop step, acting with `act(obs)` (uniform random actions for the first
    `random_steps`). Transitions enter `buffer` one by one as they happen, or, with `episode_rows`, as whole
    episodes once they end (so returns-to-go are known; see train/finetune.py), after that step's updates. An
    episode's end is a checkpoint boundary: the env is reset lazily at the next step, so a checkpoint holds
    the env's whole state in its RNG."""

    def __init__(self, env, act: Callable[[np.ndarray], np.ndarray], buffer, random_steps: int = 0,
                 episode_rows: Callable[[dict[str, list]], dict[str, torch.Tensor]] | None = None):
        self.env, self.act, self.buffer = env, act, buffer
        self.random_steps, self.episode_rows = random_steps, episode_rows
        self.steps, self.episodes = 0, 0
        self.obs: np.ndarray | None = None
        self.at_boundary = False
        self.episode_return = 0.0
        self.recent_returns: list[float] = []
        self.episode: dict[str, list] = _empty_episode()

    def start(self, seed: int) -> None:
        self.obs, _ = self.env.reset(seed=seed)
        self.env.action_space.seed(seed)

    def advance(self) -> None:
        if self.obs is None:
            self.obs, _ = self.env.reset()
        action = self.env.action_space.sample() if self.steps < self.random_steps else self.act(self.obs)
        next_obs, reward, terminated, truncated, _ = self.env.step(action)
        if self.episode_rows is None:
            self.buffer.add(self.obs, action, reward, next_obs, terminated, truncated)
        else:
            for key, value in zip(self.episode, (self.obs, action, reward, next_obs, terminated,
                                                 truncated and not terminated), strict=True):
                self.episode[key].append(value)
        self.steps += 1
        self.episode_return += float(reward)
        self.obs = next_obs
        self.at_boundary = bool(terminated or truncated)
        if self.at_boundary:
            self.episodes += 1
            self.recent_returns = (self.recent_returns + [self.episode_return])[-100:]
            self.episode_return = 0.0
            self.obs = None

    def after_update(self) -> None:
        """A finished episode enters the buffer after this step's updates (they sample without it)."""
        if self.at_boundary:
            self._flush_episode()

    def _flush_episode(self) -> None:
        if self.episode_rows is not None and self.episode["rewards"]:
            self.buffer.add_batch(self.episode_rows(self.episode))
        self.episode = _empty_episode()

    def state_dict(self) -> dict:
        if not self.at_boundary:
            raise RuntimeError("EnvSteps is checkpointed only at an episode boundary")
        return {"steps": self.steps, "episodes": self.episodes, "recent_returns": list(self.recent_returns),
                "buffer": self.buffer.state_dict(),
                "env_rng": {"reset": self.env.unwrapped.np_random.bit_generator.state,
                            "action_space": self.env.action_space.np_random.bit_generator.state}}

    def load_state_dict(self, state: dict) -> None:
        self.steps, self.episodes, self.recent_returns = state["steps"], state["episodes"], state["recent_returns"]
        self.buffer.load_state_dict(state["buffer"])
        self.env.unwrapped.np_random.bit_generator.state = state["env_rng"]["reset"]
        self.env.action_space.np_random.bit_generator.state = state["env_rng"]["action_space"]
        self.obs, self.at_boundary = None, True

    def log_fields(self) -> dict[str, float]:
        recent = self.recent_returns[-10:]
        return {"episodes": self.episodes, "train_return": float(np.mean(recent)) if recent else float("nan"),
                "buffer_size": len(self.buffer)}


def _empty_episode() -> dict[str, list]:
    return {k: [] for k in ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")}


def run_loop(*, update: Callable[[int], dict[str, torch.Tensor] | None], source: StepSource, schedule: Schedule,
             agent: torch.nn.Module, kind: str, checkpoint_path: Path | None, metrics_log: MetricsLog,
             eval_log: MetricsLog, evaluate: Callable[[int], tuple[float, dict[str, Any]]] | None = None,
             updates_per_step: int = 1, checkpoint_extra: dict[str, Any] | None = None,
             resume_state: dict | None = None, callbacks: Sequence[Callback] = (), progress_desc: str = "train",
             progress_unit: str = "step", show_progress: bool = True) -> LoopState:
    """Run `update(step)` (step = the number of completed steps) until `schedule.steps`; returns the loop state.

    `update` returns detached metric tensors, or None when it did not update (e.g. before learning starts).
    `evaluate(step)` returns (score, row). `agent` is the nn.Module whose state_dict and `optimizers()` a
    checkpoint keeps. `resume_state` is a checkpoint previously written by this loop for the same run."""
    schedule.validate()
    state = LoopState(next_checkpoint=schedule.checkpoint_every)
    if resume_state is not None:
        load_weights(agent, resume_state["agent"], f"checkpoint {checkpoint_path}")
        for name, optimizer in agent.optimizers().items():
            optimizer.load_state_dict(resume_state["optimizers"][name])
        source.load_state_dict(resume_state["source"])
        loop = resume_state["loop"]
        state = LoopState(**{**loop, "curve": [tuple(point) for point in loop["curve"]]})
        set_rng_state(resume_state["rng"])
    start = time.perf_counter()
    elapsed_before = state.elapsed_s
    saved_step = state.step if resume_state is not None else None
    if checkpoint_path is not None:  # a new attempt: an earlier one's stop no longer describes the folder
        (Path(checkpoint_path).parent / STOPPED_FILE).unlink(missing_ok=True)
    metrics: dict[str, torch.Tensor] = {}
    checked_step = -1

    def check_finite(step: int) -> dict[str, float]:
        """The metrics as floats (the host sync), after refusing a diverged state."""
        nonlocal checked_step
        values = {k: float(v) for k, v in metrics.items()}
        bad = [f"{k}={v:.3g}" for k, v in values.items()
               if not math.isfinite(v) or abs(v) > schedule.divergence_limit]
        if not bad and not bool(torch.stack([p.isfinite().all() for p in agent.parameters()]).all()):
            bad = ["non-finite parameters"]
        if bad:
            kept = (f"the last good checkpoint (step {saved_step}) is kept at {checkpoint_path}"
                    if saved_step is not None else "no checkpoint had been written")
            message = (f"training diverged at step {step} ({', '.join(bad)}); stopped (non-finite, or a metric above "
                       f"the divergence limit {schedule.divergence_limit:.3g}), no report or leaderboard row "
                       f"written; {kept}")
            if checkpoint_path is not None:  # the run folder says why it has no report (summaries list it)
                atomic_write_bytes(Path(checkpoint_path).parent / STOPPED_FILE, json.dumps(
                    {"reason": "diverged", "step": step, "metrics": bad, "last_checkpoint_step": saved_step,
                     "divergence_limit": limit if math.isfinite(limit := schedule.divergence_limit) else None,
                     "error": message}).encode())
            raise OfflineRLError(message)
        checked_step = step
        return values

    def save_checkpoint() -> None:
        nonlocal saved_step
        if checkpoint_path is None:
            return
        if checked_step != state.step:
            check_finite(state.step)
        state.elapsed_s = elapsed_before + time.perf_counter() - start
        atomic_torch_save({"format": CHECKPOINT_FORMAT, "kind": kind, "loop": dataclasses.asdict(state),
                           "agent": agent.state_dict(),
                           "optimizers": {k: o.state_dict() for k, o in agent.optimizers().items()},
                           "source": source.state_dict(), "rng": rng_state(), **(checkpoint_extra or {})},
                          checkpoint_path)
        saved_step = state.step
        fault_point("checkpoint-written")

    stop_signal: list[int] = []

    def on_signal(signum, frame) -> None:
        stop_signal.append(signum)
        if signum == signal.SIGINT:  # a second Ctrl-C interrupts at once
            signal.signal(signal.SIGINT, signal.default_int_handler)

    handled = (signal.SIGINT, signal.SIGTERM) if threading.current_thread() is threading.main_thread() else ()
    previous_handlers = {signum: signal.signal(signum, on_signal) for signum in handled}

    window_updates, window_start, eval_time = 0, time.perf_counter(), 0.0
    progress = tqdm(total=schedule.steps, initial=state.step, disable=not show_progress, unit=progress_unit,
                    desc=progress_desc, dynamic_ncols=True)
    try:
        while state.step < schedule.steps:
            if stop_signal and source.at_boundary:
                save_checkpoint()
                raise TrainingInterrupted(stop_signal[0], state.step,
                                          str(checkpoint_path) if checkpoint_path is not None else None)
            source.advance()
            result = update(state.step)
            source.after_update()
            state.step += 1
            step = state.step
            if result is not None:
                metrics = result
                window_updates += updates_per_step
            progress.update(1)
            if evaluate is not None and schedule.evaluates_at(step):
                eval_start = time.perf_counter()
                score, row = evaluate(step)
                state.last_score, state.best_score = score, max(state.best_score, score)
                state.curve.append((step, score))
                eval_log.write({"step": step, **row})
                fault_point("evaluation-row-written")
                for callback in callbacks:
                    callback("evaluation", step, {"step": step, **row})
                eval_time += time.perf_counter() - eval_start
            if step % schedule.log_every == 0 or step == schedule.steps:
                values = check_finite(step)  # the host sync, once per log interval
                now = time.perf_counter()
                row = {"step": step, **values, **source.log_fields(),
                       "updates_per_s": window_updates / max(now - window_start - eval_time, 1e-9)}
                metrics_log.write(row)
                for callback in callbacks:
                    callback("log", step, row)
                progress.set_postfix(ups=f"{row['updates_per_s']:.1f}", score=f"{state.last_score:.1f}")
                window_updates, window_start, eval_time = 0, now, 0.0
            if source.at_boundary and (step >= state.next_checkpoint or step == schedule.steps):
                while state.next_checkpoint <= step:
                    state.next_checkpoint += schedule.checkpoint_every
                save_checkpoint()
        if stop_signal:  # a signal during the last step: the final checkpoint is written, stop before the report
            raise TrainingInterrupted(stop_signal[0], state.step,
                                      str(checkpoint_path) if checkpoint_path is not None else None)
    finally:
        progress.close()
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)
    if checked_step != state.step:
        check_finite(state.step)
    state.elapsed_s = elapsed_before + time.perf_counter() - start
    return state
