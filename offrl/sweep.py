"""`offrl sweep`: a grid of datasets × algorithms × configs × seeds as Ray tasks, on one machine or a cluster.

A trial is exactly the `fit` call a user makes by hand (`offrl.agents`), in its own run folder under the sweep's
`out`, with the thread count it was given. Trials are Ray core tasks, not Ray Tune trials: a trial already owns
its checkpoints, exact resume and logs (offrl.train.run_folder), and Tune would add a second experiment state,
trial folders and checkpoint scheme beside them. Tasks give what is missing: scheduling with `num_cpus` on any
node of a cluster, results returned to the driver, and a retry (which resumes from the checkpoint) when a worker
dies. Only the driver appends leaderboard rows, each tagged with the sweep's id, so no file is shared between
machines except through the driver; the run folders under `out` must be on storage every node sees (the local
disk for a one-machine sweep, a shared filesystem on a cluster) for a re-run to resume them.

An OPE sweep (`ope_policies` and `ope_methods` instead of algorithms and configs) is the same machinery for
off-policy evaluation: each trial estimates one policy's value on one dataset with one method and seed
(`offrl.train.ope`), and the driver appends its row to the OPE results CSV (`results`) instead of the leaderboard.

Re-running the same command skips trials whose rows are in the leaderboard, appends the row of a trial that
finished without one, and resumes interrupted trials from their last checkpoint (same seed, same numbers).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import signal
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from offrl.errors import DIVERGENCE_LIMIT, OfflineRLError, TrainingInterrupted, first_line
from offrl.fileio import atomic_write_bytes
from offrl.train.run_folder import TRIAL_ERROR_FILE

__all__ = ["ALGORITHMS", "Trial", "OPETrial", "SweepSpec", "SweepResult", "parse_seeds", "plan_trials", "run_trial",
           "run_sweep"]

# --algorithms names → the agent class that trains them offline.
ALGORITHMS = {"cql": "CQL", "calql": "CalQL", "sac": "SAC", "bc": "BC"}


def _agent(algorithm: str, config: str, device: str = "cpu"):
    """The agent of one trial. CQL and Cal-QL take a shipped CQL config by name; offline SAC takes the SAC
    networks and rates of the same named CQL config (its actor's sizes and learning rates), so a grid compares
    the algorithms at one network size, or "default" for SACConfig's own defaults."""
    from offrl import agents
    from offrl.algos.cql import CQLConfig
    from offrl.config import load_config

    if algorithm not in ALGORITHMS:
        raise OfflineRLError(f"--algorithms: unknown algorithm {algorithm!r}; known: {', '.join(ALGORITHMS)}")
    cls = getattr(agents, ALGORITHMS[algorithm])
    if cls is agents.BC:
        return agents.BC() if config == "default" else agents.BC(config, device=device)
    if cls is agents.SAC:
        if config == "default":
            return agents.SAC(device=device)
        cql_config, _ = load_config(CQLConfig, "cql", config)
        agent = agents.SAC(cql_config.sac_config(), device=device)
        agent.config_name = config
        return agent
    return cls(config, device=device)


@dataclass(frozen=True)
class Trial:
    dataset_id: str
    algorithm: str  # a key of ALGORITHMS
    config: str
    seed: int

    @property
    def name(self) -> str:
        """Its run folder's name under the sweep's `out` (a YAML config path contributes its file name)."""
        config = Path(self.config).stem if self.config.endswith((".yaml", ".yml")) else self.config
        return f"{self.dataset_id.replace('/', '-')}-{self.algorithm}-{config}-seed{self.seed}"


@dataclass(frozen=True)
class OPETrial:
    """One off-policy estimate: `policy`'s value on `dataset_id` by `method`, with `seed`. `settings` is a hash of
    what else defines the estimate (the policy's resolved path, the OPEConfig fields, the truth's episodes), so
    two estimates that differ only there never share a run folder."""

    dataset_id: str
    policy: str  # a policy SPEC of `offrl ope --policy`
    method: str  # fqe, cql-q or cql-v
    seed: int
    settings: str = ""

    @property
    def name(self) -> str:
        from offrl.train.run_folder import snapshot_of

        path = Path(self.policy)
        # a run folder's snapshot (RUN/snapshots/actor_STEP.pt) is named by its run folder too
        parts = path.parts[-3:] if snapshot_of(path) is not None else path.parts[-2:]
        policy = "-".join(parts) if path.exists() else self.policy
        slug = re.sub(r"[^A-Za-z0-9.]+", "-", policy).strip("-")
        return f"ope-{self.dataset_id.replace('/', '-')}-{slug}-{self.method}-seed{self.seed}-{self.settings}"


@dataclass
class SweepSpec:
    datasets: list[str]
    algorithms: list[str]
    configs: list[str]
    seeds: list[int]
    steps: int
    out: Path
    leaderboard: Path
    address: str | None = None  # None: start Ray here with this machine's cores; "auto" or "ray://host:port"
    cpus_per_trial: int = 1
    max_concurrent: int | None = None  # None: as many as Ray can place
    retries: int = 1  # a trial whose worker died runs again, resuming from its checkpoint
    # decide what is done from the run folders alone: a trial whose row is here but whose folder is not trains
    # again (its curve is wanted, e.g. by the parity summary) and appends a second row
    from_folders: bool = False
    eval_every: int | None = None
    eval_episodes: int = 10
    final_eval_episodes: int | None = None
    log_every: int = 1_000
    checkpoint_every: int = 5_000
    divergence_limit: float = DIVERGENCE_LIMIT  # see offrl.train.loop.Schedule.divergence_limit
    collect_missing: bool = False
    command: str | None = None
    env_vars: dict[str, str] = field(default_factory=dict)  # passed to every worker (e.g. OFFRL_DATASETS_PATH)
    # an OPE sweep: these instead of algorithms and configs
    ope_policies: list[str] = field(default_factory=list)
    ope_methods: list[str] = field(default_factory=list)
    ope_config: dict[str, Any] = field(default_factory=dict)  # OPEConfig fields (alpha, mu, ...)
    truth_episodes: int = 50
    results: Path | None = None  # the OPE results CSV the driver appends to

    @property
    def is_ope(self) -> bool:
        return bool(self.ope_policies)

    @property
    def sweep_id(self) -> str:
        """Stable across re-runs of the same grid: what its leaderboard rows carry."""
        grid: dict[str, Any] = {"datasets": self.datasets, "algorithms": self.algorithms, "configs": self.configs,
                                "seeds": self.seeds, "steps": self.steps}
        if self.is_ope:
            grid = {"datasets": self.datasets, "policies": self.ope_policies, "methods": self.ope_methods,
                    "config": self.ope_config, "seeds": self.seeds, "steps": self.steps,
                    "truth_episodes": self.truth_episodes}
        return "sweep-" + hashlib.sha256(json.dumps(grid, sort_keys=True).encode()).hexdigest()[:10]

    def fit_options(self) -> dict[str, Any]:
        return {"eval_every": self.eval_every, "eval_episodes": self.eval_episodes,
                "final_eval_episodes": self.final_eval_episodes, "log_every": self.log_every,
                "checkpoint_every": self.checkpoint_every, "divergence_limit": self.divergence_limit}


@dataclass
class SweepResult:
    sweep_id: str
    finished: list[str] = field(default_factory=list)  # trial names that finished in this invocation
    skipped: list[str] = field(default_factory=list)  # already finished, row already there
    failed: dict[str, str] = field(default_factory=dict)  # trial name → its error
    wall_time_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed


def parse_seeds(text: str) -> list[int]:
    """"0-4" → [0, 1, 2, 3, 4]; "0,3,7" → [0, 3, 7]; ranges and lists combine ("0-2,9")."""
    seeds: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match:
            raise OfflineRLError(f"--seeds {text!r}: expected non-negative seeds like 0-4 or 0,3,7")
        low, high = int(match[1]), int(match[2] or match[1])
        if high < low:
            raise OfflineRLError(f"--seeds {text!r}: the range {low}-{high} is empty")
        seeds += [s for s in range(low, high + 1) if s not in seeds]
    return seeds


def plan_trials(spec: SweepSpec) -> list[Trial] | list[OPETrial]:
    """Every trial of the grid, after refusing (before anything runs) an unknown dataset, algorithm or config
    (an OPE grid: an unknown policy, method or OPEConfig field)."""
    from offrl.data.registry import card_path, parse_dataset_id, shipped_card

    grid = ((("--ope-policies", spec.ope_policies), ("--methods", spec.ope_methods)) if spec.is_ope
            else (("--algorithms", spec.algorithms), ("--configs", spec.configs)))
    for name, values in (("--datasets", spec.datasets), *grid, ("--seeds", spec.seeds)):
        if not values:
            raise OfflineRLError(f"{name}: empty")
    if spec.steps < 1:
        raise OfflineRLError(f"--steps must be >= 1, found {spec.steps}")
    for dataset_id in spec.datasets:
        parsed = parse_dataset_id(dataset_id)
        if not card_path(parsed).exists() and not (spec.collect_missing and shipped_card(parsed) is not None):
            hint = " (pass --collect-missing to collect it from its shipped card)" if shipped_card(parsed) else ""
            raise OfflineRLError(f"--datasets: {dataset_id} is not in the store{hint}; `offrl datasets list` shows "
                                 "what is")
    if spec.is_ope:
        from offrl.data.registry import card_or_shipped

        # each dataset's dimensions, from its card (collected, else shipped: --collect-missing collects it)
        cards = {d: card_or_shipped(d) for d in spec.datasets}
        from offrl.algos.ope import OPE_METHODS
        from offrl.train.ope import load_target_policy

        unknown = [m for m in spec.ope_methods if m not in OPE_METHODS]
        if unknown:
            raise OfflineRLError(f"--methods: unknown method(s) {', '.join(unknown)}; known: {', '.join(OPE_METHODS)}")
        _ope_config(spec)
        for policy in spec.ope_policies:
            if Path(policy).is_dir() and not (Path(policy) / "final.json").is_file():
                raise OfflineRLError(f"--ope-policies: {policy} is a run that has not finished: its trials would "
                                     "each take whatever checkpoint it had when they started; pass one of its "
                                     "snapshots (RUN/snapshots/actor_STEP.pt)")
            target = load_target_policy(policy)  # raises on a policy that cannot be loaded
            for dataset_id, card in cards.items():  # a mismatch would fail every trial of the pair, after the start
                dims = (card.get("obs_dim"), card.get("act_dim"))
                if target.obs_dim is not None and None not in dims and (target.obs_dim, target.act_dim) != dims:
                    raise OfflineRLError(f"--ope-policies: {policy} has observation/action dimensions "
                                         f"{target.obs_dim}/{target.act_dim}, dataset {dataset_id} has "
                                         f"{dims[0]}/{dims[1]}")
        if spec.results is None:
            raise OfflineRLError("an OPE sweep needs --results, the CSV its rows are appended to")
        from offrl.train.ope import check_ope_results

        check_ope_results(spec.results)
        trials = [OPETrial(d, p, m, s, _ope_settings(spec, p)) for d in spec.datasets for p in spec.ope_policies
                  for m in spec.ope_methods for s in spec.seeds]
        names = [trial.name for trial in trials]
        clashes = sorted({name for name in names if names.count(name) > 1})
        if clashes:
            raise OfflineRLError(f"--ope-policies: two trials would share the run folder {clashes[0]}; name each "
                                 "policy once")
        return trials
    for algorithm in spec.algorithms:
        for config in spec.configs:
            _agent(algorithm, config)  # raises on an unknown algorithm or config name
    return [Trial(d, a, c, s) for d in spec.datasets for a in spec.algorithms for c in spec.configs
            for s in spec.seeds]


def _ope_settings(spec: SweepSpec, policy: str) -> str:
    path = Path(policy)
    resolved = str(path.resolve()) if path.exists() else policy
    # the resolved config, not the overrides: a changed default must not map an old command onto new folders
    config = dataclasses.asdict(_ope_config(spec))
    settings = {"policy": resolved, "config": config, "truth_episodes": spec.truth_episodes}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]


def _ope_config(spec: SweepSpec):
    from offrl.algos.ope import OPEConfig
    from offrl.config import config_from_dict

    return config_from_dict(OPEConfig, spec.ope_config, "--set")


def run_trial(trial: Trial, spec: SweepSpec, run_dir: Path) -> dict[str, Any]:
    """One trial, where Ray placed it: fit (resuming if its folder holds a run), report back. Never raises: a
    failure comes back as a status and one line, so it cannot stop the other trials."""
    from offrl.data.dataset import load_dataset
    from offrl.runs import read_run_record
    from offrl.runtime import configure_process

    os.environ.update(spec.env_vars)
    # what the CLI does for every program: the trial's thread count, and glibc keeping freed activations mapped
    # (without it every update page-faults its memory in afresh: the `updates` rows of evaluation/bench.csv)
    configure_process(spec.cpus_per_trial)
    (run_dir / TRIAL_ERROR_FILE).unlink(missing_ok=True)  # this attempt's outcome replaces an earlier one's
    if isinstance(trial, OPETrial):
        return _run_ope_trial(trial, spec, run_dir)
    try:
        agent = _agent(trial.algorithm, trial.config)
        dataset = load_dataset(trial.dataset_id, collect_missing=spec.collect_missing)
        report = agent.fit(dataset, spec.steps, seed=trial.seed, run_dir=run_dir,
                           resume=(run_dir / "run.json").is_file(), show_progress=False,
                           command=spec.command, **spec.fit_options())
        return {"status": "ok", "trial": trial.name, "report": report.to_dict(), "record": read_run_record(run_dir)}
    except TrainingInterrupted as exc:
        return {"status": "interrupted", "trial": trial.name, "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - any failure of one trial is reported, the others go on
        return {"status": "failed", "trial": trial.name, "error": f"{type(exc).__name__}: {first_line(exc)}"}


def _run_ope_trial(trial: OPETrial, spec: SweepSpec, run_dir: Path) -> dict[str, Any]:
    from offrl.data.dataset import load_dataset
    from offrl.train.ope import evaluate_policy_offline

    try:
        dataset = load_dataset(trial.dataset_id, collect_missing=spec.collect_missing)
        report = evaluate_policy_offline(trial.policy, dataset, trial.method, spec.steps, config=_ope_config(spec),
                                         seed=trial.seed, truth_episodes=spec.truth_episodes,
                                         eval_every=spec.eval_every, log_every=spec.log_every,
                                         checkpoint_every=spec.checkpoint_every, run_dir=run_dir,
                                         resume=(run_dir / "run.json").is_file(), show_progress=False,
                                         command=spec.command, policy_name=trial.policy)
        return {"status": "ok", "trial": trial.name, "report": report.to_dict(), "record": None}
    except TrainingInterrupted as exc:
        return {"status": "interrupted", "trial": trial.name, "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - any failure of one trial is reported, the others go on
        return {"status": "failed", "trial": trial.name, "error": f"{type(exc).__name__}: {first_line(exc)}"}


def _append(spec: SweepSpec, record: dict | None, report: dict) -> bool:
    from offrl.runs import TrainingReport, append_report

    if spec.is_ope:
        from offrl.train.ope import OPEReport, append_ope_row

        return append_ope_row(spec.results, OPEReport.from_dict(report), sweep_id=spec.sweep_id, once=True)

    return append_report(spec.leaderboard, record, TrainingReport.from_dict(report), "offline", once=True,
                         sweep_id=spec.sweep_id)


def _check_reachable(address: str) -> None:
    """A host:port address (ray://HOST:PORT or HOST:PORT) must accept a connection within 5 s; Ray's own client
    waits ~30 s before it gives up on an unreachable head."""
    match = re.fullmatch(r"(?:ray://)?\[?([^\]/]+?)\]?:(\d+)", address)
    if match is None:
        return  # "auto" and other forms: Ray itself says what is wrong, at once
    try:
        socket.create_connection((match[1], int(match[2])), timeout=5).close()
    except OSError as exc:
        raise OfflineRLError(f"--address {address}: cannot connect to a Ray cluster ({exc.strerror or exc})") from None


def _start_ray(spec: SweepSpec):
    try:
        import ray
    except ImportError:
        raise OfflineRLError("offrl sweep needs Ray: pip install 'offrl[ray]'") from None
    if spec.address is not None:
        _check_reachable(spec.address)
    runtime_env = {"env_vars": dict(spec.env_vars)} if spec.env_vars else None
    try:
        if spec.address is None:
            ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False,
                     runtime_env=runtime_env, configure_logging=False)
        else:
            ray.init(address=spec.address, log_to_driver=False, runtime_env=runtime_env, configure_logging=False)
    except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError here
        raise OfflineRLError(f"--address {spec.address}: cannot connect to a Ray cluster ({first_line(exc)})") \
            from None
    return ray


def run_sweep(spec: SweepSpec, echo: Callable[[str], None] = print) -> SweepResult:
    """Run every trial of the grid that has no row yet; returns what happened (the CLI prints the summary)."""
    from offrl.evaluation.leaderboard import check_appendable
    from offrl.runs import read_run_record
    from offrl.train.run_folder import finished_report

    if spec.cpus_per_trial < 1:
        raise OfflineRLError(f"--cpus-per-trial must be >= 1, found {spec.cpus_per_trial}")
    if spec.max_concurrent is not None and spec.max_concurrent < 1:
        raise OfflineRLError(f"--max-concurrent must be >= 1, found {spec.max_concurrent}")
    trials = plan_trials(spec)
    if not spec.is_ope:
        check_appendable(spec.leaderboard)
    if spec.out.exists() and not spec.out.is_dir():
        raise OfflineRLError(f"--out {spec.out}: exists and is not a directory")
    result = SweepResult(spec.sweep_id)
    start = time.perf_counter()
    to_run = []
    with_rows = _trials_with_rows(spec, trials)
    for trial in trials:
        run_dir = spec.out / trial.name
        report = finished_report(run_dir, "offline", spec.steps)
        if report is None and trial.name in with_rows:  # e.g. a clean clone of a repository that keeps the rows
            result.skipped.append(trial.name)
            echo(f"{trial.name}: its row is in {spec.results if spec.is_ope else spec.leaderboard} (its run folder "
                 "is not here): not run again")
            continue
        if report is None:
            to_run.append(trial)
            continue
        try:
            appended = _append(spec, None if spec.is_ope else read_run_record(run_dir), report)
        except OfflineRLError as exc:  # its row is refused (e.g. not finite): this trial fails, the others go on
            result.failed[trial.name] = f"row refused: {exc}"
            echo(f"{trial.name}: FAILED row refused: {exc}")
            _record_outcome(run_dir, {"status": "failed", "error": f"row refused: {exc}"})
            continue
        _record_outcome(run_dir, {"status": "ok"})  # finished: an earlier attempt's error no longer holds
        if appended:
            result.finished.append(trial.name)  # it had finished without its row: the row is there now
            echo(f"{trial.name}: finished earlier, row appended")
        else:
            result.skipped.append(trial.name)
    echo(f"sweep {spec.sweep_id}: {len(trials)} trials, {len(result.skipped)} already done, {len(to_run)} to run")
    if to_run:
        _run_remote(spec, to_run, result, echo)
    result.wall_time_s = time.perf_counter() - start
    return result


def _trials_with_rows(spec: SweepSpec, trials: Sequence[Trial] | Sequence[OPETrial]) -> set[str]:
    """Names of the trials whose row this sweep already wrote: same sweep id, dataset bytes (sha256), seed and
    budget, and the same algorithm and resolved config (its hash), or policy, method and estimator config. They
    are done even where their run folders are not, as on a clean clone or another machine, and must neither train
    again nor get a second row; a row whose config or dataset has changed since does not count."""
    import pandas as pd

    from offrl.config import config_hash
    from offrl.data.registry import card_or_shipped

    path = spec.results if spec.is_ope else spec.leaderboard
    if spec.from_folders or path is None or not Path(path).is_file() or Path(path).stat().st_size == 0:
        return set()
    if spec.is_ope:
        rows = pd.read_csv(path, dtype=str, keep_default_na=False)
    else:
        from offrl.evaluation.leaderboard import read_leaderboard

        rows = read_leaderboard(Path(path)).astype(str)
        rows = rows[rows["phase"] == "offline"]
    rows = rows[rows["sweep_id"] == spec.sweep_id].copy()
    if rows.empty:
        return set()
    for column in ("seed", "updates" if spec.is_ope else "steps"):  # "3", or "3.0" where pandas read floats
        rows[column] = pd.to_numeric(rows[column], errors="coerce").map(lambda v: "" if v != v else str(int(v)))

    shas = {d: (card_or_shipped(d) or {}).get("sha256") for d in {t.dataset_id for t in trials}}
    if spec.is_ope:
        base = _ope_config(spec)
        hashes = {m: config_hash(dataclasses.replace(base, method=m)) for m in {t.method for t in trials}}
        done = set(zip(rows["dataset_id"], rows["dataset_sha256"], rows["policy"], rows["method"], rows["config_hash"],
                       rows["seed"], rows["updates"], strict=True))
        return {t.name for t in trials if (t.dataset_id, shas[t.dataset_id], t.policy, t.method, hashes[t.method],
                                           str(t.seed), str(spec.steps)) in done}
    done = set(zip(rows["dataset_id"], rows["dataset_sha256"], rows["algorithm"], rows["config_name"],
                   rows["config_hash"], rows["seed"], rows["steps"], strict=True))
    agents = {(a, c): _agent(a, c) for a, c in {(t.algorithm, t.config) for t in trials}}  # their row's names
    names = {key: (agent.offline_name, agent.config_name, config_hash(agent.config)) for key, agent in agents.items()}
    return {t.name for t in trials
            if (t.dataset_id, shas[t.dataset_id], *names[t.algorithm, t.config], str(t.seed), str(spec.steps)) in done}


def _run_remote(spec: SweepSpec, trials: Sequence[Trial], result: SweepResult, echo: Callable[[str], None]) -> None:
    # ray.init installs its own SIGTERM/SIGINT handlers in the driver and does not restore them on shutdown
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        ray = _start_ray(spec)
    except BaseException:
        _restore(handlers)
        raise
    try:
        spec.out.mkdir(parents=True, exist_ok=True)
        task = ray.remote(num_cpus=spec.cpus_per_trial, max_retries=spec.retries)(run_trial)
        limit = spec.max_concurrent or len(trials)
        waiting = list(trials)
        in_flight: dict[Any, Trial] = {}
        done, total = 0, len(trials)
        while waiting or in_flight:
            while waiting and len(in_flight) < limit:
                trial = waiting.pop(0)
                in_flight[task.remote(trial, spec, spec.out / trial.name)] = trial
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            trial = in_flight.pop(ready[0])
            done += 1
            try:
                outcome = ray.get(ready[0])
            except Exception as exc:  # noqa: BLE001 - a worker that died (every retry spent) or a lost node
                outcome = {"status": "failed", "error": f"{type(exc).__name__}: {first_line(exc)}"[:300]}
            if outcome["status"] == "ok":
                try:
                    _append(spec, outcome["record"], outcome["report"])
                except OfflineRLError as exc:  # a row refused (e.g. not finite) fails its trial, not the sweep
                    outcome = {"status": "failed", "error": f"row refused: {exc}"}
            if outcome["status"] == "ok":
                report = outcome["report"]
                score = report.get("final_normalized_return")
                if "estimate" in report:
                    truth = report.get("true_value")
                    outcome_text = f"estimate {report['estimate']:.1f}" + (
                        f", truth {truth:.1f}" if truth is not None else "")
                else:
                    outcome_text = f"normalized return {score:.1f}" if score is not None else "finished (no env)"
                echo(f"[{done}/{total}] {trial.name}: {outcome_text}, {report.get('wall_time_s') or 0:.0f} s")
                result.finished.append(trial.name)
            else:
                result.failed[trial.name] = outcome["error"]
                echo(f"[{done}/{total}] {trial.name}: {outcome['status'].upper()} {outcome['error']}")
            _record_outcome(spec.out / trial.name, outcome)
    finally:
        ray.shutdown()
        _restore(handlers)


def _record_outcome(run_dir: Path, outcome: dict) -> None:
    """A failed trial's error goes into its folder (summaries read it; the driver's output is gone by then); a
    trial that finishes, or is interrupted to resume, drops an earlier attempt's."""
    error = run_dir / TRIAL_ERROR_FILE
    if outcome["status"] == "failed":
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(error, (outcome["error"].rstrip() + "\n").encode())
    else:
        error.unlink(missing_ok=True)


def _restore(handlers: dict) -> None:
    for signum, handler in handlers.items():
        if handler is not None:
            signal.signal(signum, handler)


def summary_table(spec: SweepSpec) -> str:
    """The leaderboard aggregation of this sweep's rows (mean ± std, IQM with its CI, per dataset/algorithm)."""
    import pandas as pd

    from offrl.evaluation.leaderboard import aggregate, read_leaderboard

    if not spec.leaderboard.is_file():
        return "(no rows)"
    frame = read_leaderboard(spec.leaderboard)
    frame = frame[frame["sweep_id"].astype(str) == spec.sweep_id]
    if frame.empty:
        return "(no rows)"
    summary = aggregate(frame)
    table = pd.DataFrame({
        "dataset": summary["dataset_id"], "algorithm": summary["algorithm"], "config": summary["config_name"],
        "seeds": summary["seeds"], "steps": summary["steps"],
        "final (mean ± sample std)": [f"{m:.1f} ± {s:.1f}" for m, s in zip(summary["final_mean"],
                                                                          summary["final_std"], strict=True)],
        "IQM [95% CI]": [f"{q:.1f} [{lo:.1f}, {hi:.1f}]" for q, lo, hi in zip(
            summary["final_iqm"], summary["iqm_ci_low"], summary["iqm_ci_high"], strict=True)],
        "Q bias (norm.)": [f"{b:.3f}" for b in summary["q_bias_normalized_mean"]]})
    return table.to_string(index=False)


