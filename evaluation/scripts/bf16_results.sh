#!/usr/bin/env bash
# bf16 vs fp32 at the same budget and commit: the `fast` and `fast-bf16` configs on halfcheetah/medium-v0,
# seeds 0-2, STEPS updates each, two runs at a time with one torch thread each (2-core machine).
# Usage: bash evaluation/scripts/bf16_results.sh [STEPS]
set -euo pipefail
cd "$(dirname "$0")/../.."
# the repository's store and leaderboard, as the Makefile sets them
export OFFRL_DATASETS_PATH="$PWD/datasets" OFFRL_LEADERBOARD="$PWD/evaluation/leaderboard.csv"
STEPS=${1:-5000}
OUT="runs/results/precision-$(git rev-parse --short HEAD)"  # a new directory per commit: earlier runs stay
run() {
  local config=$1 seed=$2
  .venv/bin/offrl --threads 1 train-cql --dataset halfcheetah/medium-v0 --config "$config" --steps "$STEPS" \
    --seed "$seed" --eval-every 1000 --final-eval-episodes 10 --quiet \
    --out "$OUT/halfcheetah-medium-v0-${config}-seed${seed}-${STEPS}" \
    > "$OUT/halfcheetah-medium-v0-${config}-seed${seed}-${STEPS}.log" 2>&1
}
mkdir -p "$OUT"
for seed in 0 1 2; do
  run fast "$seed" &
  run fast-bf16 "$seed" &
  wait
done
.venv/bin/offrl leaderboard
