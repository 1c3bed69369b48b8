"""Resume a result set's `offrl sweep` at the commit it started at, with the resume rules of this checkout.

A result set is one `offrl sweep` command at one commit, so a grid that outlives a session resumes from a git
worktree of that commit. Sweeps older than 584aaba decide what is done from their run folders alone, and run
folders are not committed: after a machine change they would train finished trials again and append second rows.
This driver runs the worktree's own `offrl sweep` (every trial runs that commit's code unchanged) and only
changes which trials it schedules, and in what order:
- a trial whose row the sweep already wrote (same sweep id, dataset bytes, config hash, seed and budget; for an
  OPE sweep the policy, method and estimator config) is not run again, as `offrl sweep` does from 584aaba on;
- RESUME_SKIP_MISSING_POLICIES=1: an OPE sweep's trials whose target policy file no longer exists (a snapshot in
  a run folder that went with its machine) are left out and named, instead of refusing the whole sweep;
- RESUME_ORDER=short-first: BC and offline SAC (under an hour) before CQL (hours), so more trials finish within a
  session; RESUME_ORDER=bf16-first: the trials that need a CPU with native bf16 first;
- RESUME_MAX_CONCURRENT=N replaces the command's --max-concurrent;
- RESUME_DRY_RUN=1 prints what would run, in order, and runs nothing.
Usage, from the worktree (the result scripts call "$PYTHON -m offrl.cli sweep ..."; `resume_python.sh` beside
this file is a PYTHON that sends that call here):
    PYTHONPATH=WORKTREE PYTHON=.../evaluation/scripts/resume_python.sh bash evaluation/scripts/evidence_results.sh
"""

import dataclasses
import os
import sys
from pathlib import Path

import pandas as pd

import offrl.sweep as sweep
from offrl.cli import main
from offrl.config import config_hash
from offrl.data.registry import card_path, parse_dataset_id, read_card, shipped_card

_plan_trials = sweep.plan_trials


def _missing_policy(spec: str) -> bool:
    return str(spec).endswith(".pt") and not Path(spec).exists()


if os.environ.get("RESUME_SKIP_MISSING_POLICIES"):
    import offrl.train.ope as ope_module

    _load_target_policy = ope_module.load_target_policy

    class _GonePolicy:  # plan_trials checks each policy's dimensions; a gone one has none to check
        obs_dim = act_dim = None

    def _load_or_gone(spec, *args, **kwargs):
        return _GonePolicy() if _missing_policy(spec) else _load_target_policy(spec, *args, **kwargs)

    ope_module.load_target_policy = _load_or_gone


def _as_int_text(column: pd.Series) -> pd.Series:
    return pd.to_numeric(column, errors="coerce").map(lambda v: "" if v != v else str(int(v)))


def _sha256(dataset_id: str) -> str | None:  # registry.card_or_shipped, which older commits lack
    parsed = parse_dataset_id(dataset_id)
    card = read_card(dataset_id) if card_path(parsed).exists() else shipped_card(parsed)
    return (card or {}).get("sha256")


def plan_remaining(spec):
    trials = _plan_trials(spec)
    path = spec.results if spec.is_ope else spec.leaderboard
    rows = (pd.read_csv(path, dtype=str, keep_default_na=False) if path is not None and Path(path).is_file()
            and Path(path).stat().st_size else pd.DataFrame(columns=["sweep_id"]))
    rows = rows[rows["sweep_id"] == spec.sweep_id].copy()
    if not rows.empty:
        for column in ("seed", "updates" if spec.is_ope else "steps"):
            rows[column] = _as_int_text(rows[column])
    shas = {d: _sha256(d) for d in {t.dataset_id for t in trials}}
    if spec.is_ope:
        done = set() if rows.empty else set(zip(
            rows["dataset_id"], rows["dataset_sha256"], rows["policy"], rows["method"], rows["config_hash"],
            rows["seed"], rows["updates"], strict=True))
        base = sweep._ope_config(spec)
        hashes = {m: config_hash(dataclasses.replace(base, method=m)) for m in {t.method for t in trials}}

        def key(t):
            return (t.dataset_id, shas[t.dataset_id], t.policy, t.method, hashes[t.method], str(t.seed),
                    str(spec.steps))
    else:
        rows = rows[rows["phase"] == "offline"] if not rows.empty else rows
        done = set() if rows.empty else set(zip(
            rows["dataset_id"], rows["dataset_sha256"], rows["algorithm"], rows["config_name"], rows["config_hash"],
            rows["seed"], rows["steps"], strict=True))
        agents = {(a, c): sweep._agent(a, c) for a, c in {(t.algorithm, t.config) for t in trials}}

        def key(t):
            agent = agents[t.algorithm, t.config]
            return (t.dataset_id, shas[t.dataset_id], agent.offline_name, agent.config_name, config_hash(agent.config),
                    str(t.seed), str(spec.steps))
    remaining = []
    for trial in trials:
        if spec.is_ope and _missing_policy(trial.policy):
            print(f"{trial.name}: its target policy {trial.policy} is gone: left out", flush=True)
        elif key(trial) in done:
            print(f"{trial.name}: its row is in {path}: not run again", flush=True)
        else:
            remaining.append(trial)
    order = os.environ.get("RESUME_ORDER", "")
    if order == "short-first":
        remaining.sort(key=lambda t: getattr(t, "algorithm", "") in ("cql", "calql"))
    elif order == "bf16-first":
        remaining.sort(key=lambda t: "bf16" not in str(getattr(t, "config", "")))
    print("to run, in order:", ", ".join(t.name for t in remaining) or "nothing", flush=True)
    return [] if os.environ.get("RESUME_DRY_RUN") else remaining


def _arguments(argv: list[str]) -> list[str]:
    """The sweep command's arguments with RESUME_MAX_CONCURRENT in place of its --max-concurrent (added if it has
    none); bad RESUME_* settings are refused here, before anything is planned."""
    order = os.environ.get("RESUME_ORDER", "")
    if order not in ("", "short-first", "bf16-first"):
        raise ValueError(f"RESUME_ORDER={order!r}: expected short-first or bf16-first")
    limit = os.environ.get("RESUME_MAX_CONCURRENT", "")
    if not limit:
        return argv
    if not limit.isdigit() or int(limit) < 1:
        raise ValueError(f"RESUME_MAX_CONCURRENT={limit!r}: expected a whole number >= 1")
    kept = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--max-concurrent":
            skip = True
        elif not arg.startswith("--max-concurrent="):
            kept.append(arg)
    return [*kept, "--max-concurrent", limit]


if __name__ == "__main__":
    try:
        arguments = _arguments(sys.argv[1:])
    except ValueError as exc:
        print(f"resume_sweep.py: {exc}", file=sys.stderr)
        sys.exit(2)
    sweep.plan_trials = plan_remaining
    sys.exit(main(arguments))
