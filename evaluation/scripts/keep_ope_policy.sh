#!/usr/bin/env bash
# Keep a training run's policy snapshots as OPE target policies in the repository: evaluation/ope_policies/NAME/
# gets the run's record (run.json: agent class, config), its observation normaliser and snapshots/actor_STEP.pt
# for each STEP given (default: the last snapshot), which is all `offrl ope --policy` needs to load the same
# sampling policy (offrl.train.ope.load_target_policy). Run folders are not committed, so an OPE sweep whose
# targets are these copies can be re-run from a clean clone (the evidence grid's first run folders were lost
# with a machine, and with them the HalfCheetah OPE sweep's CQL and BC targets).
# Usage: bash evaluation/scripts/keep_ope_policy.sh RUN_DIR [STEP ...]; then pass
# evaluation/ope_policies/NAME/snapshots/actor_STEP.pt to evaluation/scripts/ope_results.sh (OPE_POLICIES moves
# the folder elsewhere).
set -euo pipefail
cd "$(dirname "$0")/../.."
run=${1:?usage: $0 RUN_DIR [STEP ...]}
shift
store=${OPE_POLICIES:-evaluation/ope_policies}
if [ ! -f "$run/run.json" ] || [ ! -f "$run/normalizer.json" ] || [ ! -d "$run/snapshots" ]; then
  echo "keep_ope_policy.sh: $run is not a training run folder with snapshots (run.json, normalizer.json, snapshots/)" >&2
  exit 2
fi
if [ ! -f "$run/final.json" ]; then
  echo "keep_ope_policy.sh: $run has not finished (no final.json)" >&2
  exit 2
fi
steps=("$@")
if [ ${#steps[@]} -eq 0 ]; then
  last=$(ls "$run/snapshots" | sed -n 's/^actor_\([0-9]*\)\.pt$/\1/p' | sort -n | tail -1)
  steps=("$last")
fi
for step in "${steps[@]}"; do
  if [ ! -f "$run/snapshots/actor_$step.pt" ]; then
    echo "keep_ope_policy.sh: $run has no snapshot at step $step" >&2
    exit 2
  fi
done
dest=$store/$(basename "$run")
mkdir -p "$store"
tmp=$(mktemp -d "$store/.keep.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/snapshots"
cp "$run/run.json" "$run/normalizer.json" "$tmp/"
for step in "${steps[@]}"; do cp "$run/snapshots/actor_$step.pt" "$tmp/snapshots/"; done
if [ -d "$dest" ]; then cp -n "$tmp/snapshots/"* "$dest/snapshots/"; else mv "$tmp" "$dest"; fi
for step in "${steps[@]}"; do echo "$dest/snapshots/actor_$step.pt"; done
