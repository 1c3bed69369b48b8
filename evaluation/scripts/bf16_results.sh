#!/usr/bin/env bash
# bf16 vs fp32 at the same budget and commit: the `fast` and `fast-bf16` configs on halfcheetah/medium-v1,
# seeds 0-2, STEPS updates each, as one `offrl sweep` (two trials at a time, one CPU each, on 2 cores).
# Re-running it skips finished trials and resumes interrupted ones. Usage: bash evaluation/scripts/bf16_results.sh [STEPS]
set -euo pipefail
cd "$(dirname "$0")/../.."
# the repository's store and leaderboard, as the Makefile sets them
export OFFRL_DATASETS_PATH="$PWD/datasets" OFFRL_LEADERBOARD="$PWD/evaluation/leaderboard.csv"
STEPS=${1:-5000}
.venv/bin/offrl sweep --datasets halfcheetah/medium-v1 --algorithms cql --configs fast,fast-bf16 --seeds 0-2 \
  --steps "$STEPS" --eval-every 1000 --final-eval-episodes 10 --cpus-per-trial 1 --collect-missing \
  --out "runs/results/precision-$STEPS"
.venv/bin/offrl leaderboard
