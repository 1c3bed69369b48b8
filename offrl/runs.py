"""Run directories: the record a training run leaves, its final report, restoring it, and its leaderboard row.

A run directory holds `run.json` (the record: algorithm, resolved config, dataset id and sha256, git commit,
seed, command), `normalizer.json`, `metrics.csv`, `evaluations.csv`, `checkpoint.pt` and, once finished,
`final.json` (the `TrainingReport`). "Run" always means such a directory or what is restored from it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from offrl import __version__
from offrl.errors import OfflineRLError
from offrl.evaluation.leaderboard import ONLINE_COLUMNS, append_row
from offrl.evaluation.report import evaluate_in_env
from offrl.evaluation.scores import reference_scores_from_card
from offrl.fileio import atomic_write_bytes
from offrl.train.checkpoints import load_checkpoint, load_weights

__all__ = ["RUN_RECORD", "CHECKPOINT_NAME", "TrainingReport", "Run", "read_run_record", "write_run_record",
           "build_run_agent", "refuse_non_finite",
           "restore_run", "evaluate_run", "leaderboard_row", "append_report", "append_finished_run"]

RUN_RECORD = "run.json"
CHECKPOINT_NAME = "checkpoint.pt"
OFFLINE_KIND = "offline"


@dataclass
class TrainingReport:
    """What a finished run reports (run_dir/final.json); fields that do not apply stay None."""

    run_id: str
    run_dir: str | None
    dataset_id: str
    algorithm: str
    updates: int  # gradient updates of the offline phase
    reference: str  # the reference scores' source, "raw" (scores are raw returns) or "no env"
    final_normalized_return: float | None = None
    best_normalized_return: float | None = None
    mean_return: float | None = None
    return_std: float | None = None
    eval_episodes: int = 0
    q_bias_mean: float | None = None
    q_bias_normalized_mean: float | None = None
    q_bias_normalized_std: float | None = None
    q_bias_states: int | None = None
    q_bias_rule: str | None = None
    average_value_estimate: float | None = None
    initial_state_value_estimate: float | None = None
    wall_time_s: float | None = None
    updates_per_s: float | None = None
    # offline → online fine-tuning only
    online_steps: int = 0  # env steps of the online phase
    before_normalized_return: float | None = None
    before_q_bias_normalized_mean: float | None = None
    unlearning_dip: float | None = None
    online_auc: float | None = None
    calibrated: bool | None = None
    offline_ratio: float | str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def write(self, path: Path) -> None:
        atomic_write_bytes(Path(path), json.dumps(self.to_dict(), indent=2).encode())

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainingReport:
        """From `to_dict`'s output (final.json, a sweep trial's result); unknown keys are ignored."""
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values})

    @classmethod
    def read(cls, path: Path) -> TrainingReport:
        return cls.from_dict(json.loads(Path(path).read_text()))


def write_run_record(run_dir: Path, record: dict[str, Any]) -> None:
    atomic_write_bytes(Path(run_dir) / RUN_RECORD, json.dumps(record, indent=2).encode())


def read_run_record(run_dir: Path, kind: str = OFFLINE_KIND) -> dict[str, Any]:
    path = Path(run_dir) / RUN_RECORD
    if not path.is_file():
        raise OfflineRLError(f"{run_dir} is not an offrl {kind} run: {RUN_RECORD} is missing")
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OfflineRLError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(record, dict):
        raise OfflineRLError(f"{path}: not a run record (a JSON {type(record).__name__}, expected an object)")
    if record.get("kind") != kind:
        raise OfflineRLError(f"{run_dir} is a {record.get('kind')!r} run, not an offrl {kind} run")
    return record


@dataclass
class Run:
    """An offline run restored from disk: its record, its checkpoint's update count and the trained agent."""

    run_dir: Path
    record: dict[str, Any]
    updates: int
    agent: Any  # offrl.agents.Agent
    checkpoint: dict[str, Any]

    @property
    def card(self) -> dict[str, Any]:
        return self.record.get("dataset_card") or {"id": self.record["dataset_id"]}


def build_run_agent(run_dir: Path, device: str = "cpu"):
    """(record, agent): the agent a run folder's record describes (class, config, normaliser, dimensions), built
    with fresh weights; `restore_run` then loads the checkpoint's, a policy snapshot loads its own actor's."""
    from offrl.agents import agent_class
    from offrl.config import config_from_dict
    from offrl.data.dataset import ObservationNormalizer

    record = read_run_record(run_dir)
    missing = [k for k in ("run_id", "algorithm", "dataset_id", "dataset_sha256", "config", "config_name", "obs_dim",
                           "act_dim", "reward_scale", "seed") if k not in record]
    if missing:
        raise OfflineRLError(f"{run_dir / RUN_RECORD}: missing key(s) {', '.join(missing)}; the run record is damaged")
    cls = agent_class(record.get("agent_class"), str(run_dir / RUN_RECORD))
    agent = cls(config_from_dict(cls.config_class, record["config"], str(run_dir / RUN_RECORD)), device=device)
    agent.config_name = record["config_name"]
    normalizer = ObservationNormalizer.load(run_dir / "normalizer.json", device, record["obs_dim"])
    agent.build(record["obs_dim"], record["act_dim"], normalizer, record["reward_scale"], record.get("env_id"))
    return record, agent


def refuse_non_finite(weights: dict[str, Any], source: str) -> None:
    """One OfflineRLError naming `source` if any floating-point tensor in `weights` holds NaN or inf."""
    non_finite = [name for name, value in weights.items()
                  if torch.is_tensor(value) and value.is_floating_point() and not bool(value.isfinite().all())]
    if non_finite:
        raise OfflineRLError(f"{source}: non-finite weights ({non_finite[0]}"
                             f"{f' and {len(non_finite) - 1} more' if len(non_finite) > 1 else ''}); the run diverged, "
                             "refusing to evaluate or continue it")


def restore_run(target: Path, device: str = "cpu", verify_dataset: bool = True) -> Run:
    """Load RUN_DIR or RUN_DIR/checkpoint.pt; with `verify_dataset`, the dataset must still be the one
    trained on (a registered dataset's sha256 is checked against the record)."""
    target = Path(target)
    if not target.exists():
        raise OfflineRLError(f"{target}: no such run directory or checkpoint")
    run_dir = target if target.is_dir() else target.parent
    checkpoint_path = target / CHECKPOINT_NAME if target.is_dir() else target
    record, agent = build_run_agent(run_dir, device)  # a damaged or foreign record is refused first
    checkpoint = load_checkpoint(checkpoint_path, OFFLINE_KIND)
    refuse_non_finite(checkpoint["agent"], f"checkpoint {checkpoint_path}")
    load_weights(agent.networks, checkpoint["agent"], f"checkpoint {checkpoint_path}")
    if verify_dataset and record.get("dataset_registered", True):
        from offrl.data.registry import verify_dataset as verify

        card = verify(record["dataset_id"], structural=False)
        if card["sha256"] != record["dataset_sha256"]:
            raise OfflineRLError(f"dataset {record['dataset_id']} now has sha256 {card['sha256'][:12]}, the run was "
                                 f"trained on {record['dataset_sha256'][:12]}")
    return Run(run_dir, record, checkpoint["loop"]["step"], agent, checkpoint)


def evaluate_run(target: Path, episodes: int, leaderboard: Path | None, device: str = "cpu") -> TrainingReport:
    """`offrl evaluate RUN_DIR|CHECKPOINT`: evaluate a saved agent in its env, optionally append a row."""
    run = restore_run(target, device)
    record = run.record
    if not record.get("env_id"):
        raise OfflineRLError(f"{run.run_dir}: the run's dataset has no env, so it cannot be evaluated by rollouts")
    reference = reference_scores_from_card(run.card)
    result = evaluate_in_env(run.agent.policy, record["env_id"], episodes, record["seed"], reference,
                             run.agent.config.gamma, device, with_q_bias=True)
    final_path = run.run_dir / "final.json"
    previous = TrainingReport.read(final_path) if final_path.is_file() else None
    best = result.normalized_return
    if previous is not None and previous.best_normalized_return is not None:
        best = max(best, previous.best_normalized_return)
    report = TrainingReport(run_id=record["run_id"], run_dir=str(run.run_dir), dataset_id=record["dataset_id"],
                            algorithm=record["algorithm"], updates=run.updates, reference=result.reference,
                            final_normalized_return=result.normalized_return, best_normalized_return=best,
                            mean_return=result.return_mean, return_std=result.return_std, eval_episodes=episodes,
                            q_bias_mean=result.q_bias_mean, q_bias_normalized_mean=result.q_bias_normalized_mean,
                            q_bias_normalized_std=result.q_bias_normalized_std, q_bias_states=result.q_bias_states,
                            q_bias_rule=result.q_bias_rule,
                            updates_per_s=previous.updates_per_s if previous is not None else None)
    if leaderboard is not None:
        append_report(leaderboard, record, report, phase="offline")
    return report


def leaderboard_row(record: dict[str, Any], report: TrainingReport, phase: str,
                    sweep_id: str | None = None) -> dict[str, Any]:
    return {"run_id": report.run_id, "phase": phase, "online_steps": report.online_steps,
            "dataset_id": record["dataset_id"], "dataset_version": record.get("dataset_version"),
            "dataset_sha256": record["dataset_sha256"], "algorithm": report.algorithm,
            "config_name": record["config_name"], "config_hash": record["config_hash"], "seed": record["seed"],
            "steps": report.updates, "final_normalized_return": report.final_normalized_return,
            "best_normalized_return": report.best_normalized_return, "mean_return": report.mean_return,
            "reference": report.reference, "q_bias_mean": report.q_bias_mean,
            "q_bias_normalized_mean": report.q_bias_normalized_mean,
            "q_bias_normalized_std": report.q_bias_normalized_std, "wall_time_s": report.wall_time_s,
            "updates_per_s": report.updates_per_s, "device": record["device"], "offrl_version": __version__,
            "git_commit": record.get("git_commit"),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "run_dir": report.run_dir,
            **{name: getattr(report, name) for name in ONLINE_COLUMNS}, "sweep_id": sweep_id}


def append_report(leaderboard: Path, record: dict[str, Any], report: TrainingReport, phase: str,
                  once: bool = False, sweep_id: str | None = None) -> bool:
    """Append the run's row; a row with a non-finite number (a diverged run) is refused, never written.
    `once`: not if the run's row for `phase` is already there (see `append_row`)."""
    row = leaderboard_row(record, report, phase, sweep_id)
    bad = [k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise OfflineRLError(f"run {report.run_id}: non-finite {', '.join(bad)}; no leaderboard row written")
    return append_row(Path(leaderboard), row, once=once)


def append_finished_run(run_dir: Path, leaderboard: Path) -> bool:
    """Append the row of a finished offline or fine-tuning run from its run.json and final.json, unless its row
    is already there. Returns whether a row was written."""
    run_dir = Path(run_dir)
    final_path = run_dir / "final.json"
    record_path = run_dir / RUN_RECORD
    if not record_path.is_file():
        raise OfflineRLError(f"{run_dir} is not an offrl run: {RUN_RECORD} is missing")
    if not final_path.is_file():
        raise OfflineRLError(f"{run_dir}: not finished ({final_path.name} is missing); finish it with --resume first")
    try:
        kind = json.loads(record_path.read_text()).get("kind")
        report = TrainingReport.read(final_path)
    except (json.JSONDecodeError, TypeError, AttributeError) as exc:
        raise OfflineRLError(f"{run_dir}: run.json or final.json is not valid ({exc})") from None
    if kind == OFFLINE_KIND:
        record, phase = read_run_record(run_dir), "offline"
    elif kind == "finetune":
        record, phase = read_run_record(Path(read_run_record(run_dir, "finetune")["from_run"])), "online"
    else:
        raise OfflineRLError(f"{run_dir}: a {kind!r} run has no leaderboard row (only train-cql and finetune runs)")
    if report.final_normalized_return is None:
        raise OfflineRLError(f"{run_dir}: the run was not evaluated in an env, so it has no leaderboard row")
    return append_report(Path(leaderboard), record, report, phase, once=True)
