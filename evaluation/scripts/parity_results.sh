#!/usr/bin/env bash
# Issue 15's parity check: offrl's CQL at d3rlpy 2.8.1's CQLConfig defaults (the `d3rlpy` config) against d3rlpy's
# own CQL on halfcheetah/medium-v1, seeds 0-2, STEPS updates each, evaluated alike (10 episodes every 10,000
# updates, the card's reference scores). offrl's side is one `offrl sweep`; d3rlpy's runs in its own venv
# (.venv-d3rlpy: make .venv-d3rlpy/.installed, then pip install mujoco h5py there). Both resume when re-run.
# Then `python -m benchmarks.parity_summary RUNS` writes evaluation/parity*.
# Usage: bash evaluation/scripts/parity_results.sh [STEPS]   (from a worktree at a fixed commit; OFFRL_DATASETS_PATH,
# OFFRL_LEADERBOARD, RUNS and D3RLPY_PYTHON may point outside it)
set -euo pipefail
cd "$(dirname "$0")/../.."
STEPS=${1:-100000}
DATASET=halfcheetah/medium-v1
export OFFRL_DATASETS_PATH="${OFFRL_DATASETS_PATH:-$PWD/datasets}"
export OFFRL_LEADERBOARD="${OFFRL_LEADERBOARD:-$PWD/evaluation/leaderboard.csv}"
PYTHON=${PYTHON:-.venv/bin/python}
D3RLPY_PYTHON=${D3RLPY_PYTHON:-.venv-d3rlpy/bin/python}
RUNS=${RUNS:-runs/results/parity-$STEPS}
"$PYTHON" -m offrl.cli sweep --datasets "$DATASET" --algorithms cql --configs d3rlpy --seeds 0-2 --steps "$STEPS" \
  --eval-every 10000 --eval-episodes 10 --final-eval-episodes 10 --checkpoint-every 5000 --cpus-per-trial 1 \
  --max-concurrent 1 --collect-missing --out "$RUNS/offrl"
for seed in 0 1 2; do
  OFFRL_THREADS=1 "$D3RLPY_PYTHON" benchmarks/d3rlpy_parity.py --dataset "$OFFRL_DATASETS_PATH/$DATASET.hdf5" \
    --seed "$seed" --steps "$STEPS" --eval-every 10000 --eval-episodes 10 --out "$RUNS/d3rlpy-seed$seed"
done
"$PYTHON" -m benchmarks.parity_summary "$RUNS" --out "${PARITY_OUT:-evaluation}"
