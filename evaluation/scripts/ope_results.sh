#!/usr/bin/env bash
# Issue 16's DOPE-style benchmark for one env: every target policy of the env's set evaluated by fqe, cql-q
# (μ softmax, CQL(H)'s) and cql-v (eq. 2) at α = 0.01 on its medium and medium-replay tiers, 40,000 critic updates
# per estimate (the estimate every 2,000, so its curve shows whether it stopped moving), truth from 50 rollouts.
# The policies span the env's value range: uniform random, two SAC snapshots along the behaviour policy's training
# (the medium-replay tier's `ENV/replay/STEP`), the shipped medium and expert policies, and any extra SPECs given
# (the evidence grid's CQL and BC policies: policies an offline user would choose between; pass the copies that
# evaluation/scripts/keep_ope_policy.sh keeps in the repository, evaluation/ope_policies/RUN/snapshots/actor_STEP.pt,
# not run folders, which are not committed and do not survive a machine).
# n_actions = 5 (5 uniform + 5 π samples for cql-q's logsumexp, 5 π samples for cql-v's E_π Q) instead of
# OPEConfig's 10: it halves the two conservative estimators' cost (cql-q 11 → 18.5 updates/s on one AVX2 core),
# which is what makes ~14 estimates per env and estimator affordable; cql-v's penalty is unbiased for any n.
# One `offrl sweep` per env, OPE_CONCURRENT trials at a time (default 1: it shares the machine with the evidence
# grid); re-running the same command skips finished estimates and resumes interrupted ones. Rows go to OPE_RESULTS.
# Usage: bash evaluation/scripts/ope_results.sh ENV [EXTRA_POLICY_SPECS]     (ENV: halfcheetah, hopper, walker2d)
# Run it from a git worktree at a fixed commit (the rows record it); OFFRL_DATASETS_PATH, OPE_RESULTS and RUNS may
# point outside the worktree.
set -euo pipefail
cd "$(dirname "$0")/../.."
case "${1:-}" in
  halfcheetah) POLICIES=random,HalfCheetah-v5/replay/25000,HalfCheetah-v5/replay/35000,HalfCheetah-v5/medium,HalfCheetah-v5/expert ;;
  hopper) POLICIES=random,Hopper-v5/replay/10000,Hopper-v5/replay/90000,Hopper-v5/medium,Hopper-v5/expert ;;
  walker2d) POLICIES=random,Walker2d-v5/replay/15000,Walker2d-v5/replay/25000,Walker2d-v5/medium,Walker2d-v5/expert ;;
  *) echo "usage: $0 halfcheetah|hopper|walker2d [EXTRA_POLICY_SPECS]" >&2; exit 2 ;;
esac
ENV=$1
POLICIES=$POLICIES${2:+,$2}
export OFFRL_DATASETS_PATH="${OFFRL_DATASETS_PATH:-$PWD/datasets}"
PYTHON=${PYTHON:-.venv/bin/python}
"$PYTHON" -m offrl.cli sweep --datasets "$ENV/medium-v1,$ENV/medium-replay-v1" --ope-policies "$POLICIES" \
  --methods fqe,cql-q,cql-v --set alpha=0.01 --set n_actions=5 --seeds 0 --steps 40000 --eval-every 2000 \
  --truth-episodes 50 \
  --cpus-per-trial 1 --max-concurrent "${OPE_CONCURRENT:-1}" --collect-missing --results "${OPE_RESULTS:-evaluation/ope.csv}" \
  --out "${RUNS:-runs/results/ope}/$ENV"
