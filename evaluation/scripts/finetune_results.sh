#!/usr/bin/env bash
# Offline-to-online fine-tuning, CQL vs Cal-QL (the committed phase=online leaderboard rows and plots):
# halfcheetah/medium-v0 and the harder random-v0 tier, seeds 0-2. Each algorithm is pretrained offline
# (`fast-bf16`, OFFLINE_STEPS updates; Cal-QL calibrated offline too, as in the paper), then fine-tuned for
# ONLINE_STEPS env steps, UTD 1, symmetric 50/50 offline/online batches. Two jobs at a time, one torch
# thread each (2-core machine). Finished runs are skipped and interrupted ones resumed, so rerunning the
# script continues where it stopped. Usage: bash evaluation/scripts/finetune_results.sh [ONLINE_STEPS] [OFFLINE_STEPS]
set -euo pipefail
cd "$(dirname "$0")/../.."
# the repository's store and leaderboard, as the Makefile sets them
export OFFRL_DATASETS_PATH="$PWD/datasets" OFFRL_LEADERBOARD="$PWD/evaluation/leaderboard.csv"
ONLINE_STEPS=${1:-10000}
OFFLINE_STEPS=${2:-5000}
mkdir -p runs/results

offline_dir() {  # dataset algorithm seed
  local name=${1//\//-}-fast-bf16
  [ "$2" = calql ] && name+=-calql
  echo "runs/results/${name}-seed$3-${OFFLINE_STEPS}"
}

job() {  # kind dataset algorithm seed
  local kind=$1 dataset=$2 algorithm=$3 seed=$4 dir resume=() calibrated=()
  dir=$(offline_dir "$dataset" "$algorithm" "$seed")
  [ "$algorithm" = calql ] && calibrated=(--calibrated)
  if [ "$kind" = offline ]; then
    [ -f "$dir/final.json" ] && return 0
    [ -f "$dir/checkpoint.pt" ] && resume=(--resume)
    .venv/bin/offrl --threads 1 train-cql --dataset "$dataset" --config fast-bf16 "${calibrated[@]}" \
      --steps "$OFFLINE_STEPS" --seed "$seed" --eval-every 1000 --final-eval-episodes 10 --quiet "${resume[@]}" \
      --out "$dir" > "$dir.log" 2>&1
  else
    local out="$dir/finetune-ratio0.5-utd1-${ONLINE_STEPS}"
    [ -f "$out/final.json" ] && return 0
    until [ -f "$dir/final.json" ]; do sleep 30; done  # its offline run is still training in the other lane
    [ -f "$out/finetune_checkpoint.pt" ] && resume=(--resume)
    .venv/bin/offrl --threads 1 finetune --from "$dir" --online-steps "$ONLINE_STEPS" --offline-ratio 0.5 \
      --eval-every 2500 --quiet "${resume[@]}" --out "$out" > "$out.log" 2>&1
  fi
}
export -f job offline_dir
export ONLINE_STEPS OFFLINE_STEPS

{
  for kind in offline finetune; do
    for seed in 0 1 2; do
      for dataset in halfcheetah/medium-v0 halfcheetah/random-v0; do
        for algorithm in cql calql; do
          echo "$kind $dataset $algorithm $seed"
        done
      done
    done
  done
} | xargs -P 2 -L 1 bash -c 'job "$@" || echo "FAILED: $*" >&2' _
.venv/bin/offrl leaderboard
