#!/usr/bin/env bash
# GPU rows for evaluation/bench.csv, sized for a lent device machine (under 6 minutes): SAC and CQL updates
# at both sizes, fp32 and bf16, eager, with the CQL losses compiled (torch.compile "reduce-overhead") and with
# the whole update as one CUDA graph (offrl.cuda_graph, what compile=True does on CUDA), plus the card's matmul
# peak; first the CUDA-graph tests. It uses that machine's own python3, CUDA PyTorch and pytest; importing
# offrl needs gymnasium, which that image lacks: carry its wheels (gymnasium, farama-notifications) in .whl/
# and install them to /tmp/site first (/work/.library/device/README.md). The rows are merged into a copy of
# evaluation/bench.csv under OUT_DIR (CPU and d3rlpy rows kept; GPU rows keyed by the card's name).
# Usage: bash evaluation/scripts/bench_gpu.sh OUT_DIR
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:?usage: bench_gpu.sh OUT_DIR}
mkdir -p "$out"
cp evaluation/bench.csv "$out/bench.csv"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$out/gpu.txt"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
# the tests do not gate the rows (one lent machine, one try): their outcome is kept beside them
python3 -m pytest -q -p no:cacheprovider tests/test_cuda_graph.py tests/train/test_finetune.py -k "cuda or compile" \
    2>&1 | tee "$out/tests.txt" \
    || echo "CUDA graph tests FAILED (tests.txt): the (CUDA graph) rows time an update that is not the eager one"
python3 -m benchmarks.bench --device cuda --only matmul,updates --seconds 5 --out "$out/bench.csv"
python3 -m benchmarks.bench --device cuda --compile --only updates --seconds 5 --out "$out/bench.csv"
python3 -m benchmarks.bench --device cuda --cuda-graph --only updates --seconds 5 --out "$out/bench.csv"
