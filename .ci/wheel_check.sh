#!/usr/bin/env bash
# The library as a user gets it: build the wheel, install it (plus torch) into a fresh venv outside the
# repository, and from an empty folder run README's first ```python block unchanged, `offrl --version`, a
# tiny `offrl train-cql` and a tiny `offrl ope`. Everything the user's files need (store, leaderboard) lives
# under a temp OFFRL_HOME.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
python=${PYTHON:-python3}
torch_spec=${TORCH_SPEC:-torch==2.13.0}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
.venv/bin/pip wheel --quiet --no-deps --wheel-dir "$scratch/dist" "$repo"
wheel=$(ls "$scratch"/dist/offrl-*.whl)
contents=$(unzip -l "$wheel")
for needed in offrl/_shipped/policies/HalfCheetah-v5/medium.pt offrl/_shipped/halfcheetah/medium-v0.json \
              offrl/configs/cql/fast.yaml; do
    grep -qF "$needed" <<<"$contents" || { echo "the wheel lacks $needed" >&2; exit 1; }
done
$python -m venv "$scratch/venv"
"$scratch/venv/bin/pip" install --quiet --upgrade pip
"$scratch/venv/bin/pip" install --quiet $torch_spec
"$scratch/venv/bin/pip" install --quiet "$wheel"
mkdir -p "$scratch/empty"
awk '/^```python$/{inside=1; next} /^```$/{if (inside) exit} inside' README.md > "$scratch/readme_example.py"
test -s "$scratch/readme_example.py" || { echo "README has no python block" >&2; exit 1; }
cd "$scratch/empty"
export OFFRL_HOME="$scratch/home"
unset OFFRL_DATASETS_PATH OFFRL_LEADERBOARD OFFRL_POLICIES_PATH
"$scratch/venv/bin/offrl" --version
start=$(date +%s)
"$scratch/venv/bin/python" "$scratch/readme_example.py"
echo "README example: $(( $(date +%s) - start )) s"
"$scratch/venv/bin/offrl" train-cql --dataset halfcheetah/random-v0 --config fast --steps 50 --set batch_size=64 \
    --set bc_steps=10 --log-every 25 --eval-every 1000 --final-eval-episodes 1 --quiet --out "$scratch/empty/run"
# off-policy evaluation of a shipped policy on the dataset just collected (its bootstrap CI needs scipy)
"$scratch/venv/bin/offrl" ope --policy HalfCheetah-v5/medium --dataset halfcheetah/random-v0 --method fqe --steps 20 \
    --truth-episodes 2 --set critic_hidden=[32] --set batch_size=64 --quiet --results "$scratch/empty/ope.csv"
"$scratch/venv/bin/offrl" datasets list
echo "wheel check passed"
