#!/usr/bin/env bash
# bf16 vs fp32 at the same budget: the `fast-bf16` config on halfcheetah/medium-v0, seeds 0-2, 5000 updates,
# run like evaluation/scripts/cql_results.sh (one thread each, two at a time), to compare with its `fast` rows.
set -euo pipefail
cd "$(dirname "$0")/../.."
STEPS=${1:-5000}
run() {
  .venv/bin/offrl --threads 1 train-cql --dataset halfcheetah/medium-v0 --config fast-bf16 --steps "$STEPS" \
    --seed "$1" --eval-every 1000 --final-eval-episodes 10 --quiet \
    --out "runs/results/halfcheetah-medium-v0-fast-bf16-seed$1-${STEPS}" > "runs/results/bf16-seed$1.log" 2>&1
}
mkdir -p runs/results
run 0 & run 1 & wait
run 2
.venv/bin/offrl leaderboard
