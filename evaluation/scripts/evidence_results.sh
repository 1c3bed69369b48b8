#!/usr/bin/env bash
# Issue 15's evidence grid: CQL-SAC, SAC-offline and BC at 100,000 updates on the medium and medium-replay tiers
# of HalfCheetah, Hopper and Walker2d, seeds 0-2, one config (`fast`: 2x256 networks, d3rlpy's size; offline SAC
# and BC take its networks, rates and observation normalisation), normalized return and Q bias every 10,000
# updates. One `offrl sweep` per result set, two single-thread trials at a time on a 2-core machine; re-running
# the same command skips finished trials and resumes interrupted ones from their last checkpoint.
# Usage: bash evaluation/scripts/evidence_results.sh [DATASETS] [STEPS]
# Run it from a git worktree at a fixed commit (the rows record it); OFFRL_DATASETS_PATH, OFFRL_LEADERBOARD and
# RUNS may point outside the worktree (the defaults are the worktree's own).
# --divergence-limit inf: offline SAC's Q-values may grow past offrl's default stop (1e10) within the budget, and
# that growth is what the grid measures against CQL's; NaN or inf still stop a run.
set -euo pipefail
cd "$(dirname "$0")/../.."
DEFAULT_DATASETS=halfcheetah/medium-v1,hopper/medium-v1,walker2d/medium-v1,halfcheetah/medium-replay-v1,walker2d/medium-replay-v1,hopper/medium-replay-v1
DATASETS=${1:-$DEFAULT_DATASETS}
STEPS=${2:-100000}
export OFFRL_DATASETS_PATH="${OFFRL_DATASETS_PATH:-$PWD/datasets}"
export OFFRL_LEADERBOARD="${OFFRL_LEADERBOARD:-$PWD/evaluation/leaderboard.csv}"
PYTHON=${PYTHON:-.venv/bin/python}
"$PYTHON" -m offrl.cli sweep --datasets "$DATASETS" --algorithms cql,sac,bc --configs fast --seeds 0-2 \
  --steps "$STEPS" --eval-every 10000 --eval-episodes 10 --final-eval-episodes 10 --checkpoint-every 5000 \
  --divergence-limit inf \
  --cpus-per-trial 1 --max-concurrent 2 --collect-missing --out "${RUNS:-runs/results/evidence-$STEPS}"
