"""d3rlpy 2.8.1's CQL and SAC update rate at offrl's benchmark sizes, on the same synthetic HalfCheetah-shaped
data. Runs in its own venv (.venv-d3rlpy: d3rlpy pins gymnasium 1.0.0); `make bench-d3rlpy` runs
`python -m benchmarks.bench --against-d3rlpy`, which calls this script and offrl's own timings in alternation,
round after round, so every ratio in evaluation/bench.csv comes from neighbouring measurements of one sitting.

Timing covers what d3rlpy's own `fit` loop does per step: sample a mini-batch from its replay buffer and
update (sampling included, as offrl's rows include theirs).
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
from pathlib import Path

import d3rlpy
import numpy as np
import pandas as pd
import torch

OBS_DIM, ACT_DIM, ROWS = 17, 6, 100_000


def dataset() -> d3rlpy.dataset.ReplayBuffer:
    rng = np.random.default_rng(0)
    timeouts = np.zeros(ROWS, dtype=bool)
    timeouts[999::1000] = True
    return d3rlpy.dataset.MDPDataset(
        observations=rng.normal(size=(ROWS, OBS_DIM)).astype(np.float32),
        actions=rng.uniform(-1, 1, (ROWS, ACT_DIM)).astype(np.float32),
        rewards=rng.normal(size=ROWS).astype(np.float32), terminals=np.zeros(ROWS, dtype=np.float32),
        timeouts=timeouts.astype(np.float32))


def updates_per_second(algo, data, seconds: float) -> float:
    for _ in range(5):
        algo.update(data.sample_transition_batch(256))
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or count < 3:
        algo.update(data.sample_transition_batch(256))
        count += 1
    return count / (time.perf_counter() - start)


def main(out: Path, seconds: float) -> None:
    torch.manual_seed(0)
    data = dataset()
    rows = []
    for size_name, hidden in (("d3rlpy 2x256", [256, 256]), ("CORL 3x256", [256, 256, 256])):
        encoder = d3rlpy.models.VectorEncoderFactory(hidden_units=hidden)
        for name, config in (
            ("SAC", d3rlpy.algos.SACConfig(batch_size=256, actor_encoder_factory=encoder,
                                           critic_encoder_factory=encoder)),
            ("CQL", d3rlpy.algos.CQLConfig(batch_size=256, n_action_samples=10, actor_encoder_factory=encoder,
                                           critic_encoder_factory=encoder))):
            algo = config.create(device="cpu:0")
            algo.build_with_dataset(data)
            rows.append({"benchmark": f"{name} update {size_name}", "impl": f"d3rlpy {d3rlpy.__version__}",
                         "precision": "fp32", "value": updates_per_second(algo, data, seconds),
                         "unit": "updates/s"})
            print(rows[-1], flush=True)
    frame = pd.DataFrame(rows)
    frame["threads"] = torch.get_num_threads()
    frame["device"] = "cpu"
    frame["torch"] = torch.__version__
    frame["date"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    frame["command"] = "make bench-d3rlpy"
    if out.is_file():
        old = pd.read_csv(out)
        frame = pd.concat([old[~old["impl"].astype(str).str.startswith("d3rlpy")], frame], ignore_index=True)
    tmp = out.with_suffix(".tmp")
    frame.to_csv(tmp, index=False, float_format="%.4g")
    os.replace(tmp, out)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "evaluation/bench.csv"),
         float(sys.argv[2]) if len(sys.argv) > 2 else 20.0)
