#!/usr/bin/env bash
# bf16 vs fp32 at the same budget, commit and host (issue 15's check that decides whether bf16 becomes the CPU
# default of issue 13): the `fast` and `fast-bf16` configs on halfcheetah/medium-v1 and hopper/medium-v1, seeds
# 0-2, STEPS updates each (default 50,000), evaluated every 10,000, as one `offrl sweep` (two single-thread trials
# at a time). Only meaningful on a CPU with bf16 instructions (AVX512-BF16 or AMX): elsewhere bf16 is emulated,
# ~19x slower than fp32 (evaluation/RESULTS.md), so the script refuses to start. Re-running it skips finished
# trials and resumes interrupted ones. The bf16 trials come first in each dataset's share of the grid: they need
# such a CPU, the fp32 ones would run anywhere. Usage: bash evaluation/scripts/bf16_results.sh [STEPS]
# (from a worktree at a fixed commit; OFFRL_DATASETS_PATH, OFFRL_LEADERBOARD and RUNS may point outside it)
set -euo pipefail
cd "$(dirname "$0")/../.."
export OFFRL_DATASETS_PATH="${OFFRL_DATASETS_PATH:-$PWD/datasets}"
export OFFRL_LEADERBOARD="${OFFRL_LEADERBOARD:-$PWD/evaluation/leaderboard.csv}"
PYTHON=${PYTHON:-.venv/bin/python}
STEPS=${1:-50000}
status=0
"$PYTHON" -c "import sys; from offrl.cpu_kernels import native_cpu_bf16; sys.exit(0 if native_cpu_bf16() else 3)" \
  || status=$?
if [ "$status" = 3 ]; then
  echo "bf16_results.sh: this CPU has no bf16 instructions (AVX512-BF16 or AMX); bf16 would be emulated" >&2
  exit 2
elif [ "$status" != 0 ]; then
  exit "$status"
fi
"$PYTHON" -m offrl.cli sweep --datasets halfcheetah/medium-v1,hopper/medium-v1 --algorithms cql \
  --configs fast-bf16,fast --seeds 0-2 --steps "$STEPS" --eval-every 10000 --eval-episodes 10 \
  --final-eval-episodes 10 --checkpoint-every 5000 --cpus-per-trial 1 --max-concurrent 2 --collect-missing \
  --out "${RUNS:-runs/results/precision-$STEPS}"
