"""`offrl bench`: throughput of the parts that decide a user's wall time, measured in one sitting.

Rows: the machine's large-matmul peak; SAC and CQL-SAC updates/s at d3rlpy's size (2×256) and CORL's
(3×256), fp32 and bf16 autocast, with analytic FLOPs, achieved GFLOP/s and the fraction of the peak;
batch sampling as a fraction of a CQL update; raw env stepping vs. `collect` throughput; loading a
1M-transition dataset. Results go to evaluation/bench.csv with the machine and the command.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from offrl.algos.cql import CQLAgent, CQLConfig, cql_update
from offrl.algos.sac import SACAgent, SACConfig, sac_update
from offrl.data.buffer import ReplayBuffer
from offrl.fileio import atomic_write_bytes, git_commit

__all__ = ["run_bench", "sac_update_flops", "cql_update_flops", "cpu_model"]

OBS_DIM, ACT_DIM = 17, 6  # HalfCheetah


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _mlp_flops(rows: int, dims: list[int]) -> float:
    return float(sum(2 * rows * a * b for a, b in zip(dims[:-1], dims[1:], strict=True)))


def sac_update_flops(batch: int, hidden: tuple[int, ...], obs_dim: int = OBS_DIM, act_dim: int = ACT_DIM) -> float:
    """Matmul FLOPs of one `sac_update` as written (backward ≈ 2× forward, input-only backward ≈ 1×)."""
    critic = _mlp_flops(batch, [obs_dim + act_dim, *hidden, 1])
    actor = _mlp_flops(batch, [obs_dim, *hidden, 2 * act_dim])
    target = actor + 2 * critic  # π(s′), two target critics, no grad
    critic_step = 2 * critic * 3
    actor_step = actor * 3 + 2 * critic * 2  # actor fwd+bwd, critics fwd + input-gradient backward
    return target + critic_step + actor_step


def cql_update_flops(batch: int, critic_hidden: tuple[int, ...], actor_hidden: tuple[int, ...], n_actions: int,
                     obs_dim: int = OBS_DIM, act_dim: int = ACT_DIM) -> float:
    """Matmul FLOPs of one `cql_update` as written."""
    critic_row = _mlp_flops(1, [obs_dim + act_dim, *critic_hidden, 1])
    actor_row = _mlp_flops(1, [obs_dim, *actor_hidden, 2 * act_dim])
    grid_rows = (3 * n_actions + 1) * batch
    return (2 * critic_row * grid_rows * 3  # both critics over the action grid, fwd + bwd
            + 2 * critic_row * batch * 2  # policy loss: critics fwd + input-gradient backward
            + actor_row * batch * 3  # actor fwd + bwd on s
            + actor_row * batch * 3  # π(·|s) and π(·|s′) samples, π(s′) target sample (no grad)
            + 2 * critic_row * batch)  # target critics


def _filled_buffer(rows: int = 100_000) -> ReplayBuffer:
    g = torch.Generator().manual_seed(0)
    buffer = ReplayBuffer(OBS_DIM, ACT_DIM, rows)
    buffer.add_batch({"observations": torch.randn(rows, OBS_DIM, generator=g),
                      "actions": torch.rand(rows, ACT_DIM, generator=g) * 2 - 1,
                      "rewards": torch.randn(rows, generator=g),
                      "next_observations": torch.randn(rows, OBS_DIM, generator=g),
                      "terminals": torch.zeros(rows), "timeouts": torch.zeros(rows)})
    return buffer


def _time_updates(update, seconds: float, warmup: int = 5) -> tuple[float, int]:
    for i in range(warmup):
        update(i)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or count < 3:
        update(warmup + count)
        count += 1
    return count / (time.perf_counter() - start), count


def matmul_peak(dtype: torch.dtype, size: int = 4096, repeats: int = 3) -> float:
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def run_bench(out: Path, seconds: float = 20.0,
              include: tuple[str, ...] = ("matmul", "updates", "critics", "data"),
              command: str | None = None) -> pd.DataFrame:
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    machine = {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": threads, "device": "cpu",
               "torch": torch.__version__, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               "git_commit": git_commit(), "command": command or "offrl bench"}
    rows: list[dict] = []
    peak = {}
    if "matmul" in include or "updates" in include:
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            peak[name] = matmul_peak(dtype)
            rows.append({"benchmark": "matmul 4096^2", "impl": "offrl", "precision": name,
                         "value": peak[name], "unit": "GFLOP/s"})
    if "updates" in include:
        buffer = _filled_buffer()
        sizes = {"d3rlpy 2x256": (256, 256), "CORL 3x256": (256, 256, 256)}
        for size_name, hidden in sizes.items():
            for precision in ("fp32", "bf16"):
                autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
                sac_config = SACConfig(hidden=hidden)
                sac_agent = SACAgent(OBS_DIM, ACT_DIM, sac_config)

                def sac_step(_, agent=sac_agent, config=sac_config, autocast=autocast):
                    with autocast:
                        sac_update(agent, buffer.sample(256), config)

                ups, _ = _time_updates(sac_step, seconds)
                flops = sac_update_flops(256, hidden)
                rows.append({"benchmark": f"SAC update {size_name}", "impl": "offrl", "precision": precision,
                             "value": ups, "unit": "updates/s", "gflop_per_update": flops / 1e9,
                             "gflops": ups * flops / 1e9, "peak_fraction": ups * flops / 1e9 / peak[precision]})
                cql_config = CQLConfig(actor_hidden=hidden, critic_hidden=hidden)
                cql_agent = CQLAgent(OBS_DIM, ACT_DIM, cql_config)

                def cql_step(step, agent=cql_agent, config=cql_config, autocast=autocast):
                    with autocast:
                        cql_update(agent, buffer.sample(256), config, step)

                ups, _ = _time_updates(cql_step, seconds)
                flops = cql_update_flops(256, hidden, hidden, 10)
                rows.append({"benchmark": f"CQL update {size_name}", "impl": "offrl", "precision": precision,
                             "value": ups, "unit": "updates/s", "gflop_per_update": flops / 1e9,
                             "gflops": ups * flops / 1e9, "peak_fraction": ups * flops / 1e9 / peak[precision]})
                if size_name.startswith("d3rlpy") and precision == "fp32":
                    sample_rate, _ = _time_updates(lambda _: buffer.sample(256).observations.sum(), 2.0)
                    rows.append({"benchmark": "batch sampling / CQL update d3rlpy 2x256", "impl": "offrl",
                                 "precision": "fp32", "value": ups / sample_rate, "unit": "fraction"})
    if "critics" in include:
        rows += _critic_layout_rows(seconds)
    if "data" in include:
        rows += _data_rows()
    frame = pd.DataFrame(rows)
    for key, value in machine.items():
        frame[key] = value
    _merge_into(out, frame)
    return frame


def _critic_layout_rows(seconds: float) -> list[dict]:
    """Critic layouts in isolation: forward + backward of both critics over CQL's (3n + 1)·B grid, as two
    GEMM chains vs. one bmm-stacked ensemble (see TwinCritic for why the update keeps the plain pair)."""
    from offrl.nets import TwinCritic

    rows_in = torch.randn(31 * 256, OBS_DIM + ACT_DIM)
    plain = TwinCritic(OBS_DIM, ACT_DIM, (256, 256))
    weights = [torch.nn.Parameter(torch.stack([getattr(plain, q)[i].weight.T.detach() for q in ("q1", "q2")]))
               for i in (0, 2, 4)]
    biases = [torch.nn.Parameter(torch.stack([getattr(plain, q)[i].bias.detach() for q in ("q1", "q2")]))
              for i in (0, 2, 4)]

    def plain_step(_):
        out = plain(rows_in[:, :OBS_DIM], rows_in[:, OBS_DIM:])
        out.sum().backward()

    def stacked_step(_):
        h = rows_in.expand(2, *rows_in.shape)
        for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
            h = torch.baddbmm(b.unsqueeze(1), h, w)
            if i < 2:
                h = torch.relu(h)
        h.sum().backward()

    out = []
    for name, step in (("two plain MLPs (offrl TwinCritic)", plain_step), ("bmm-stacked ensemble", stacked_step)):
        rate, _ = _time_updates(step, seconds)
        out.append({"benchmark": f"critics fwd+bwd over 31x256 rows 2x256: {name}", "impl": "offrl",
                    "precision": "fp32", "value": rate, "unit": "calls/s"})
    return out


def _data_rows() -> list[dict]:
    """Raw env stepping vs. `collect`, and loading a 1M-transition dataset into the buffer."""
    import gymnasium as gym

    from offrl.data.collect import rollout_transitions
    from offrl.data.dataset import buffer_from_dataset, load_dataset
    from offrl.data.registry import register_dataset

    env = gym.make("HalfCheetah-v5")
    env.reset(seed=0)
    actions = np.random.default_rng(0).uniform(-1, 1, (20_000, ACT_DIM)).astype(np.float32)
    start = time.perf_counter()
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
    raw = len(actions) / (time.perf_counter() - start)
    _, collect_rate = rollout_transitions("HalfCheetah-v5", None, 20_000, seed=0, num_envs=16)
    rows = [{"benchmark": "HalfCheetah-v5 raw env steps (gym.make, 1 env)", "impl": "gymnasium",
             "precision": "", "value": raw, "unit": "steps/s"},
            {"benchmark": "HalfCheetah-v5 collect, random tier (16 lockstep envs)", "impl": "offrl",
             "precision": "", "value": collect_rate, "unit": "transitions/s"},
            {"benchmark": "collect / raw stepping", "impl": "offrl", "precision": "", "value": collect_rate / raw,
             "unit": "fraction"}]
    with tempfile.TemporaryDirectory() as store:
        previous = os.environ.get("OFFRL_DATASETS_PATH")
        os.environ["OFFRL_DATASETS_PATH"] = store
        try:
            n = 1_000_000
            rng = np.random.default_rng(0)
            timeouts = np.zeros(n, dtype=bool)
            timeouts[999::1000] = True
            register_dataset("bench/load-v0", {
                "observations": rng.normal(size=(n, OBS_DIM)).astype(np.float32),
                "actions": rng.uniform(-1, 1, (n, ACT_DIM)).astype(np.float32),
                "rewards": rng.normal(size=n).astype(np.float32),
                "next_observations": rng.normal(size=(n, OBS_DIM)).astype(np.float32),
                "terminals": np.zeros(n, dtype=bool), "timeouts": timeouts}, {"env_id": "HalfCheetah-v5"})
            start = time.perf_counter()
            buffer_from_dataset(load_dataset("bench/load-v0"))
            rows.append({"benchmark": "load 1M HalfCheetah transitions into the buffer (sha256 + read)",
                         "impl": "offrl", "precision": "", "value": time.perf_counter() - start, "unit": "s"})
        finally:
            if previous is None:
                os.environ.pop("OFFRL_DATASETS_PATH", None)
            else:
                os.environ["OFFRL_DATASETS_PATH"] = previous
    return rows


def _merge_into(path: Path, frame: pd.DataFrame) -> None:
    """Replace the rows this run measured again; keep the others (d3rlpy's, GPU rows, other benchmarks)."""
    path = Path(path)
    if path.is_file():
        old = pd.read_csv(path)
        key = lambda f: f["impl"].astype(str) + "|" + f["benchmark"] + "|" + f["precision"].fillna("").astype(str)  # noqa: E731
        keep = ~key(old).isin(set(key(frame)))  # a rerun replaces its own rows, keeps everything else
        frame = pd.concat([old[keep], frame], ignore_index=True)
    frame = with_d3rlpy_ratios(frame)
    atomic_write_bytes(path, frame.to_csv(index=False, float_format="%.4g").encode())


def with_d3rlpy_ratios(frame: pd.DataFrame) -> pd.DataFrame:
    """offrl updates/s over d3rlpy's fp32 updates/s for the same benchmark (bf16 rows too: d3rlpy has none)."""
    frame = frame.copy()
    d3rlpy_rows = frame[frame["impl"].astype(str).str.startswith("d3rlpy") & (frame["device"] == "cpu")]
    reference = dict(zip(d3rlpy_rows["benchmark"], d3rlpy_rows["value"], strict=True))
    is_offrl = (frame["impl"] == "offrl") & (frame["unit"] == "updates/s")
    frame["vs_d3rlpy_fp32"] = np.where(is_offrl, frame["value"] / frame["benchmark"].map(reference), np.nan)
    return frame


