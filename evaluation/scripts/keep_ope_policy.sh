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
if [ $# -lt 1 ]; then
  echo "usage: $0 RUN_DIR [STEP ...]" >&2
  exit 2
fi
run=$(realpath -m -- "$1")  # before the cd below: RUN_DIR may be relative to where this was called
shift
cd "$(dirname "$0")/../.."
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
if [ -e "$dest" ]; then  # kept before: only from the same run, and a kept snapshot is never replaced
  for name in run.json normalizer.json; do
    if ! cmp -s "$run/$name" "$dest/$name"; then
      echo "keep_ope_policy.sh: $dest holds another run's policies ($name differs from $run's); nothing copied" >&2
      exit 2
    fi
  done
  for step in "${steps[@]}"; do
    kept="$dest/snapshots/actor_$step.pt"
    if [ -e "$kept" ] && ! cmp -s "$run/snapshots/actor_$step.pt" "$kept"; then
      echo "keep_ope_policy.sh: $kept differs from $run's snapshot at step $step; nothing copied" >&2
      exit 2
    fi
  done
fi
mkdir -p "$store"
tmp=$(mktemp -d "$store/.keep.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/snapshots"
cp "$run/run.json" "$run/normalizer.json" "$tmp/"
for step in "${steps[@]}"; do cp "$run/snapshots/actor_$step.pt" "$tmp/snapshots/"; done
if [ -e "$dest" ]; then
  for step in "${steps[@]}"; do  # each by rename, so a reader never sees half a file
    [ -e "$dest/snapshots/actor_$step.pt" ] || mv -T "$tmp/snapshots/actor_$step.pt" "$dest/snapshots/actor_$step.pt"
  done
else
  mv -T "$tmp" "$dest"  # fails, rather than nesting, if another keep made $dest meanwhile
fi
for step in "${steps[@]}"; do echo "$dest/snapshots/actor_$step.pt"; done
