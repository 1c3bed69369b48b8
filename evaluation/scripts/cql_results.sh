#!/usr/bin/env bash
# The committed CQL leaderboard rows: 3 seeds on two HalfCheetah tiers with the `fast` config, two runs at a
# time with one torch thread each (2-core machine). Usage: bash evaluation/scripts/cql_results.sh [STEPS]
set -euo pipefail
cd "$(dirname "$0")/../.."
# the repository's store and leaderboard, as the Makefile sets them
export OFFRL_DATASETS_PATH="$PWD/datasets" OFFRL_LEADERBOARD="$PWD/evaluation/leaderboard.csv"
STEPS=${1:-5000}
run() {
  local dataset=$1 seed=$2
  .venv/bin/offrl --threads 1 train-cql --dataset "$dataset" --config fast --steps "$STEPS" --seed "$seed" \
    --eval-every 1000 --final-eval-episodes 10 --quiet \
    --out "runs/results/${dataset//\//-}-fast-seed${seed}-${STEPS}" > "runs/results/${dataset//\//-}-seed${seed}.log" 2>&1
}
mkdir -p runs/results
for seed in 0 1 2; do
  run halfcheetah/medium-v0 "$seed" &
  run halfcheetah/medium-expert-v0 "$seed" &
  wait
done
.venv/bin/offrl leaderboard
