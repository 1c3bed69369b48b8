#!/usr/bin/env bash
# The CQL leaderboard rows: 3 seeds on two HalfCheetah tiers with the `fast` config, as one `offrl sweep` (one
# command, one commit; two trials at a time with one CPU each on a 2-core machine). Re-running it skips finished
# trials and resumes interrupted ones. Usage: bash evaluation/scripts/cql_results.sh [STEPS]
set -euo pipefail
cd "$(dirname "$0")/../.."
# the repository's store and leaderboard, as the Makefile sets them
export OFFRL_DATASETS_PATH="$PWD/datasets" OFFRL_LEADERBOARD="$PWD/evaluation/leaderboard.csv"
STEPS=${1:-5000}
.venv/bin/offrl sweep --datasets halfcheetah/medium-v1,halfcheetah/medium-expert-v1 --algorithms cql \
  --configs fast --seeds 0-2 --steps "$STEPS" --eval-every 1000 --final-eval-episodes 10 --cpus-per-trial 1 \
  --collect-missing --out "runs/results/cql-$STEPS"
.venv/bin/offrl leaderboard
