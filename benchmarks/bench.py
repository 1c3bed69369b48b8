"""`python -m benchmarks.bench`: throughput of the parts that decide a user's wall time, measured in one sitting.

Rows: the machine's large-matmul peak; SAC and CQL-SAC updates/s at d3rlpy's size (2×256) and CORL's
(3×256), fp32 and bf16 autocast, with analytic FLOPs, achieved GFLOP/s and the fraction of the peak;
batch sampling as a fraction of a CQL update; raw env stepping vs. `collect` throughput; loading a
1M-transition dataset. Results go to evaluation/bench.csv with the machine and the command.

Run from the repository root: `python -m benchmarks.bench --help` (or `make bench`, `make bench-d3rlpy`).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from offrl.algos.cql import CQLAgent, CQLConfig, bf16_autocast, compiled_cql_losses, cql_losses, cql_update
from offrl.algos.sac import SACAgent, SACConfig, sac_update
from offrl.cli import positive_int
from offrl.cpu_kernels import fused_cpu_kernels
from offrl.cuda_graph import CUDAGraphUpdate
from offrl.data.buffer import ReplayBuffer
from offrl.errors import OfflineRLError
from offrl.fileio import atomic_write_bytes, git_commit
from offrl.flops import cql_update_flops, sac_update_flops
from offrl.runtime import configure_process

__all__ = ["main", "build_parser", "run_bench", "run_bench_against_d3rlpy", "matmul_peak", "cpu_model",
           "ALL_BENCHMARKS"]

OBS_DIM, ACT_DIM = 17, 6  # HalfCheetah
PROGRAM = "python -m benchmarks.bench"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _filled_buffer(rows: int = 100_000, device: torch.device | str = "cpu") -> ReplayBuffer:
    g = torch.Generator().manual_seed(0)
    buffer = ReplayBuffer(OBS_DIM, ACT_DIM, rows, device)
    buffer.add_batch({"observations": torch.randn(rows, OBS_DIM, generator=g),
                      "actions": torch.rand(rows, ACT_DIM, generator=g) * 2 - 1,
                      "rewards": torch.randn(rows, generator=g),
                      "next_observations": torch.randn(rows, OBS_DIM, generator=g),
                      "terminals": torch.zeros(rows), "timeouts": torch.zeros(rows)})
    return buffer


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CPU = torch.device("cpu")


def _time_updates(update, seconds: float, warmup: int = 5, device: torch.device = CPU) -> tuple[float, int]:
    for i in range(warmup):
        update(i)
    _synchronize(device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or count < 3:
        update(warmup + count)
        count += 1
    _synchronize(device)  # queued GPU work counts too
    return count / (time.perf_counter() - start), count


def matmul_peak(dtype: torch.dtype, size: int = 4096, repeats: int = 3,
                device: torch.device = CPU) -> float:
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    repeats = repeats if device.type == "cpu" else 50 * repeats
    a @ b
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


ALL_BENCHMARKS = ("matmul", "updates", "pretrain", "critics", "fusion", "data")
PRETRAIN_LOOP = "SAC pretrain loop HalfCheetah-v5 2x256 (env step + update)"
COMPARED_WITH = {PRETRAIN_LOOP: "SAC update d3rlpy 2x256"}  # the yardstick: d3rlpy's bare SAC update rate
DEFAULT_SIZES = {"d3rlpy 2x256": (256, 256), "CORL 3x256": (256, 256, 256)}


def _check_include(include: tuple[str, ...]) -> None:
    unknown = sorted(set(include) - set(ALL_BENCHMARKS))
    if unknown:
        raise OfflineRLError(f"--only: unknown benchmark(s) {', '.join(unknown)}; "
                             f"choose from {', '.join(ALL_BENCHMARKS)}")


def _cql_update_rate(buffer: ReplayBuffer, hidden: tuple[int, ...], precision: str, seconds: float,
                     device: torch.device = CPU, losses=cql_losses, cuda_graph: bool = False) -> float:
    """CQL updates/s of a fresh agent with `hidden` actor and critics (batch 256, 10 action samples)."""
    config = CQLConfig(actor_hidden=hidden, critic_hidden=hidden)
    agent = CQLAgent(OBS_DIM, ACT_DIM, config).to(device)
    autocast = bf16_autocast(device.type, precision == "bf16")
    update = lambda batch, index: cql_update(agent, batch, config, index, losses)  # noqa: E731
    if cuda_graph:
        update = CUDAGraphUpdate(update, agent.optimizers().values())

    def step(index: int) -> None:
        with autocast:
            update(buffer.sample(256), index)

    return _time_updates(step, seconds, device=device)[0]


def run_bench(out: Path, seconds: float = 20.0,
              include: tuple[str, ...] = ALL_BENCHMARKS,
              command: str | None = None, device: str = "cpu", compile_update: bool = False,
              sizes: dict[str, tuple[int, ...]] | None = None, peak_size: int = 4096,
              cuda_graph: bool = False, commit: str | None = None) -> pd.DataFrame:
    """Measure and merge the rows into `out`, with `commit` (default: the checkout's, read now).
    `compile_update` times CQL with `compiled_cql_losses` (reduce-overhead CUDA graphs of the losses on CUDA);
    `cuda_graph` times SAC and CQL with the whole update replayed as one CUDA graph (offrl.cuda_graph, what an
    agent's compile=True does on CUDA). The rows say which in their benchmark name."""
    _check_include(include)
    device_ = torch.device(device)
    if device_.type == "cuda" and not torch.cuda.is_available():
        raise OfflineRLError(f"--device {device}: CUDA is not available on this machine")
    if cuda_graph and (device_.type != "cuda" or compile_update):
        raise OfflineRLError("--cuda-graph: needs --device cuda and no --compile (the two kinds of graph do not nest)")
    torch.manual_seed(0)
    machine = {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
               "device": torch.cuda.get_device_name(device_) if device_.type == "cuda" else "cpu",
               "torch": torch.__version__, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               "git_commit": commit if commit is not None else git_commit(), "command": command or PROGRAM}
    rows: list[dict] = []
    peak = {}
    if "matmul" in include or "updates" in include:
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            peak[name] = matmul_peak(dtype, size=peak_size, device=device_)
            rows.append({"benchmark": f"matmul {peak_size}^2", "impl": "offrl", "precision": name,
                         "value": peak[name], "unit": "GFLOP/s"})
    if "updates" in include:
        buffer = _filled_buffer(device=device_)
        losses = compiled_cql_losses(device_) if compile_update else cql_losses
        suffix = " (CUDA graph)" if cuda_graph else " (compiled)" if compile_update else ""
        sac_suffix = suffix if cuda_graph else ""
        for size_name, hidden in (sizes or DEFAULT_SIZES).items():
            for precision in ("fp32", "bf16"):
                autocast = bf16_autocast(device_.type, precision == "bf16")
                sac_config = SACConfig(hidden=hidden)
                sac_agent = SACAgent(OBS_DIM, ACT_DIM, sac_config).to(device_)

                sac_step_update = lambda batch, _, agent=sac_agent, config=sac_config: sac_update(  # noqa: E731
                    agent, batch, config)
                if cuda_graph:
                    sac_step_update = CUDAGraphUpdate(sac_step_update, sac_agent.optimizers().values())

                def sac_step(index, update=sac_step_update, autocast=autocast):
                    with autocast:
                        update(buffer.sample(256), index)

                def rates_row(benchmark: str, ups: float, flops: float, precision: str = precision) -> dict:
                    return {"benchmark": benchmark, "impl": "offrl", "precision": precision, "value": ups,
                            "unit": "updates/s", "gflop_per_update": flops / 1e9, "gflops": ups * flops / 1e9,
                            "peak_fraction": ups * flops / 1e9 / peak[precision]}

                ups, _ = _time_updates(sac_step, seconds, device=device_)
                rows.append(rates_row(f"SAC update {size_name}{sac_suffix}", ups, sac_update_flops(256, hidden)))
                ups = _cql_update_rate(buffer, hidden, precision, seconds, device_, losses, cuda_graph)
                flops = cql_update_flops(256, hidden, hidden, 10)
                rows.append(rates_row(f"CQL update {size_name}{suffix}", ups, flops))
                eager = not (compile_update or cuda_graph)
                if size_name == next(iter(sizes or DEFAULT_SIZES)) and precision == "fp32" and eager:
                    sample_rate, _ = _time_updates(lambda _: buffer.sample(256).observations.sum(), 2.0,
                                                   device=device_)
                    rows.append({"benchmark": f"batch sampling / CQL update {size_name}", "impl": "offrl",
                                 "precision": "fp32", "value": ups / sample_rate, "unit": "fraction"})
    if "pretrain" in include:
        rows += _pretrain_loop_rows()
    if "critics" in include:
        rows += _critic_layout_rows(seconds)
    if "fusion" in include:
        rows += _fusion_rows(seconds)
    if "data" in include:
        rows += _data_rows()
    frame = pd.DataFrame(rows)
    for key, value in machine.items():
        frame[key] = value
    _merge_into(out, frame)
    return frame


def _pretrain_loop_rows(training_steps: int = 2_000) -> list[dict]:
    """The SAC pretrain loop as `offrl pretrain` runs it on HalfCheetah-v5 (policy action, env step, buffer
    insert, one 2x256 update per step), in updates/s over a window with no evaluation in it."""
    from offrl.train.online import PretrainSettings, pretrain

    config = PretrainSettings(env_id="HalfCheetah-v5", env_steps=1_000 + training_steps, learning_starts=1_000,
                              eval_every=10**9, eval_episodes=1, log_every=training_steps // 2,
                              checkpoint_every=10**9, buffer_capacity=1_000 + training_steps)
    with tempfile.TemporaryDirectory() as run_dir:
        pretrain(config, Path(run_dir), show_progress=False)
        rate = pd.read_csv(Path(run_dir) / "metrics.csv")["updates_per_s"].iloc[-1]
    return [{"benchmark": PRETRAIN_LOOP, "impl": "offrl",
             "precision": "fp32", "value": rate, "unit": "updates/s"}]


def _fusion_rows(seconds: float) -> list[dict]:
    """The CPU fast path (`offrl.cpu_kernels`: `linear_relu` and the bf16-input head) against the plain operators it
    replaces: the same CQL update at d3rlpy's size, timed back to back, fp32 and bf16."""
    buffer = _filled_buffer()
    rows = []
    for precision in ("fp32", "bf16"):
        for fused in (False, True):
            with fused_cpu_kernels(fused):
                rate = _cql_update_rate(buffer, (256, 256), precision, seconds)
            variant = "fused CPU kernels" if fused else "plain operators"
            rows.append({"benchmark": f"CQL update d3rlpy 2x256, {variant}", "impl": "offrl",
                         "precision": precision, "value": rate, "unit": "updates/s"})
    return rows


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


D3RLPY_SCRIPT = Path(__file__).resolve().with_name("bench_d3rlpy.py")
ROUND_KEY = ["impl", "benchmark", "precision", "device"]


def run_bench_against_d3rlpy(out: Path, d3rlpy_python: str, seconds: float = 20.0, rounds: int = 3,
                             command: str | None = None, script: Path = D3RLPY_SCRIPT,
                             include: tuple[str, ...] = ALL_BENCHMARKS,
                             sizes: dict[str, tuple[int, ...]] | None = None, peak_size: int = 4096
                             ) -> pd.DataFrame:
    """d3rlpy's and offrl's update rates, alternated `rounds` times in one sitting.

    The machine drifts by ±10% over minutes (d3rlpy's CQL measured 16.8, 18.5 and 20.1 updates/s in three
    sittings within half an hour), so one d3rlpy-then-offrl pass can tilt a ratio either way. Each round's
    ratio is taken between neighbouring measurements; the rows keep the median value and median ratio over
    rounds with the ratio's range, and every round's rows go to `<out stem>_rounds.csv`. The benchmarks
    without a d3rlpy counterpart (critic layouts, data) run once at the end. `script` is called as
    `d3rlpy_python script OUT_CSV SECONDS` and writes d3rlpy's rows."""
    _check_include(include)
    compared = tuple(name for name in include if name in ("matmul", "updates", "pretrain"))
    once = tuple(name for name in include if name not in compared)
    if rounds < 1:
        raise OfflineRLError(f"--rounds: need at least 1, found {rounds}")
    if not Path(script).is_file():
        raise OfflineRLError(f"{script}: the d3rlpy benchmark script is missing (it ships in the repository)")
    # read once, before this sitting writes into the tracked bench.csv (which would make later rows say "-dirty")
    commit = git_commit()
    per_round = []
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(rounds):
            d3rlpy_csv, offrl_csv = Path(tmp) / f"d3rlpy-{index}.csv", Path(tmp) / f"offrl-{index}.csv"
            finished = subprocess.run([d3rlpy_python, str(script), str(d3rlpy_csv), str(seconds)], check=False)
            if finished.returncode != 0 or not d3rlpy_csv.is_file():
                raise OfflineRLError(f"--against-d3rlpy {d3rlpy_python}: {script} failed "
                                     f"(exit {finished.returncode}); see its output above")
            run_bench(offrl_csv, seconds, include=compared, command=command, sizes=sizes, peak_size=peak_size,
                      commit=commit)
            frame = with_d3rlpy_ratios(pd.concat([pd.read_csv(d3rlpy_csv), pd.read_csv(offrl_csv)],
                                                 ignore_index=True))
            frame["round"] = index
            per_round.append(frame)
    all_rounds = pd.concat(per_round, ignore_index=True)
    rounds_path = Path(out).with_name(Path(out).stem + "_rounds.csv")
    atomic_write_bytes(rounds_path, all_rounds.to_csv(index=False, float_format="%.4g").encode())
    medians = _median_over_rounds(all_rounds)
    _merge_into(out, medians)
    if not once:
        return medians
    return pd.concat([medians, run_bench(out, seconds, include=once, command=command, commit=commit)],
                     ignore_index=True)


def _median_over_rounds(all_rounds: pd.DataFrame) -> pd.DataFrame:
    """One row per benchmark: the last round's row (machine, date) with the median value, GFLOP/s, peak
    fraction and d3rlpy ratio over rounds, the ratio's min and max, and the number of rounds."""
    key = all_rounds[ROUND_KEY].astype(str).agg("|".join, axis=1)
    grouped = all_rounds.groupby(key, sort=False)
    medians = grouped.last().reset_index(drop=True)
    for column in ("value", "gflops", "peak_fraction", "vs_d3rlpy_fp32"):
        if column in all_rounds:
            medians[column] = grouped[column].median().to_numpy()
    medians["vs_d3rlpy_fp32_min"] = grouped["vs_d3rlpy_fp32"].min().to_numpy()
    medians["vs_d3rlpy_fp32_max"] = grouped["vs_d3rlpy_fp32"].max().to_numpy()
    medians["rounds"] = grouped.size().to_numpy()
    return medians.drop(columns="round")


def _merge_into(path: Path, frame: pd.DataFrame) -> None:
    """Replace the rows this run measured again (same implementation, benchmark, precision and device);
    keep the others (d3rlpy's, other devices', other benchmarks)."""
    path = Path(path)
    if path.is_file():
        old = pd.read_csv(path)
        key = lambda f: (f["impl"].astype(str) + "|" + f["benchmark"] + "|"  # noqa: E731
                         + f["precision"].fillna("").astype(str) + "|" + f["device"].astype(str))
        keep = ~key(old).isin(set(key(frame)))
        frame = pd.concat([old[keep], frame], ignore_index=True)
    frame = with_d3rlpy_ratios(frame)
    atomic_write_bytes(path, frame.to_csv(index=False, float_format="%.4g").encode())


def with_d3rlpy_ratios(frame: pd.DataFrame) -> pd.DataFrame:
    """offrl updates/s over d3rlpy's fp32 updates/s for the same benchmark on the same device (bf16 rows too:
    d3rlpy has none; compiled rows against d3rlpy's eager ones). A ratio already set (the median over
    rounds of `run_bench_against_d3rlpy`) is kept."""
    frame = frame.copy()
    d3rlpy_rows = frame[frame["impl"].astype(str).str.startswith("d3rlpy")]
    reference = {(b, d): v for b, d, v in zip(d3rlpy_rows["benchmark"], d3rlpy_rows["device"], d3rlpy_rows["value"],
                                               strict=True)}
    is_offrl = (frame["impl"] == "offrl") & (frame["unit"] == "updates/s")
    base = (frame["benchmark"].astype(str).str.removesuffix(" (compiled)").str.removesuffix(" (CUDA graph)")
            .replace(COMPARED_WITH))
    d3rlpy_rate = pd.Series([reference.get((b, d), np.nan) for b, d in zip(base, frame["device"], strict=True)],
                            index=frame.index, dtype=float)
    ratio = pd.Series(np.where(is_offrl, frame["value"] / d3rlpy_rate, np.nan), index=frame.index)
    frame["vs_d3rlpy_fp32"] = frame["vs_d3rlpy_fp32"].fillna(ratio) if "vs_d3rlpy_fp32" in frame else ratio
    return frame


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROGRAM, description="Measure update, sampling, collection and loading "
                                     "throughput; merge the rows into a CSV (run from the repository root).")
    parser.add_argument("--out", default="evaluation/bench.csv",
                        help="CSV the rows are merged into (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="timing window per update benchmark (default: %(default)s)")
    parser.add_argument("--only", default=None,
                        help=f"comma list of: {', '.join(ALL_BENCHMARKS)} (default: all of them)")
    parser.add_argument("--device", default="cpu",
                        help="cpu or cuda (GPU rows are kept apart from CPU rows) (default: %(default)s)")
    parser.add_argument("--against-d3rlpy", metavar="PYTHON", default=None,
                        help="python of a venv with d3rlpy 2.8.1: alternate its timings with offrl's "
                             "(see --rounds) (default: off, offrl only)")
    parser.add_argument("--rounds", type=positive_int, default=3,
                        help="d3rlpy/offrl alternations; rows keep the median (default: %(default)s)")
    parser.add_argument("--compile", action="store_true",
                        help="compile the CQL losses (torch.compile; CUDA graphs on CUDA). Slower than eager on CPU "
                             "(default: off)")
    parser.add_argument("--cuda-graph", action="store_true",
                        help="replay the whole SAC and CQL update as one CUDA graph (offrl.cuda_graph; what "
                             "compile=True does on CUDA); needs --device cuda (default: off)")
    return parser


def _run(args: argparse.Namespace, command: str) -> pd.DataFrame:
    if args.against_d3rlpy:
        if args.only or args.device != "cpu" or args.compile or args.cuda_graph:
            raise OfflineRLError("--against-d3rlpy: runs the CPU eager rows in full; drop --only/--device/--compile/"
                                 "--cuda-graph")
        return run_bench_against_d3rlpy(Path(args.out), args.against_d3rlpy, seconds=args.seconds,
                                        rounds=args.rounds, command=command)
    include = tuple(args.only.split(",")) if args.only else ALL_BENCHMARKS
    return run_bench(Path(args.out), seconds=args.seconds, include=include, command=command,
                     device=args.device, compile_update=args.compile, cuda_graph=args.cuda_graph)


def main(argv: list[str] | None = None) -> int:
    """The benchmark program. Runs with the process settings of the `offrl` commands (glibc keeps freed
    memory mapped; OFFRL_THREADS sets torch's intra-op threads) so its rates are the ones users get."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        configure_process()
        frame = _run(args, f"{PROGRAM} {shlex.join(argv)}".rstrip())
    except OfflineRLError as exc:
        print(f"{PROGRAM}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROGRAM}: interrupted", file=sys.stderr)
        return 130
    columns = [c for c in ("benchmark", "impl", "precision", "value", "unit", "gflops", "peak_fraction",
                           "vs_d3rlpy_fp32") if c in frame]
    print(frame[columns].to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
