#!/usr/bin/env bash
# GPU rows for evaluation/bench.csv, sized for a lent device machine (under 5 minutes): SAC and CQL updates
# at both sizes, fp32 and bf16, eager and compiled (torch.compile "reduce-overhead" = CUDA graphs), plus the
# card's matmul peak. It uses that machine's own python3 and CUDA PyTorch; the bench path needs no
# gymnasium/MuJoCo/Minari. The rows are merged into a copy of evaluation/bench.csv under OUT_DIR (CPU and
# d3rlpy rows kept; GPU rows keyed by the card's name). Usage: bash evaluation/scripts/bench_gpu.sh OUT_DIR
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:?usage: bench_gpu.sh OUT_DIR}
mkdir -p "$out"
cp evaluation/bench.csv "$out/bench.csv"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$out/gpu.txt"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
python3 -m benchmarks.bench --device cuda --only matmul,updates --seconds 5 --out "$out/bench.csv"
python3 -m benchmarks.bench --device cuda --compile --only updates --seconds 5 --out "$out/bench.csv"
