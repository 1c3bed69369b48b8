"""`python -m benchmarks.profile_update`: where a CQL update's time goes (issue 13's "profile first").

Profiles UPDATES CQL updates (after a warm-up) at d3rlpy's size (2×256) and CORL's (3×256), fp32 and bf16, with
`torch.profiler`, and groups every operator's *self* time (so nothing is counted twice) into the kinds the speed
issue weighs: GEMMs, dtype casts, ReLU backward, reductions (bias gradients, losses), the optimizer, and the rest.
Writes `evaluation/profile_update.md` (per setting: ms per update and share per kind, then the top operators) and
`profile_update.csv` (every operator), with the machine, thread count, commit and command.

Profiling slows small operators more than large ones, so the shares are the profile's, not the update's rates:
those come from `make bench`. Run from the repository root, on a quiet machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import sys
from pathlib import Path

import pandas as pd
import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.bench import ACT_DIM, DEFAULT_SIZES, OBS_DIM, _filled_buffer, cpu_model
from offrl.algos.cql import CQLAgent, CQLConfig, bf16_autocast, cql_update
from offrl.cli import positive_int
from offrl.cpu_kernels import native_cpu_bf16
from offrl.errors import OfflineRLError
from offrl.fileio import atomic_write_bytes, git_commit
from offrl.runtime import configure_process

__all__ = ["OPERATOR_KINDS", "operator_kind", "profile_updates", "main"]

PROGRAM = "python -m benchmarks.profile_update"
# Operator name → kind, first match wins (see operator_kind). The GEMM entries are the names oneDNN and ATen give
# matrix products on CPU.
OPERATOR_KINDS = (
    ("GEMM", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "mkldnn::_linear_pointwise",
              "aten::linear", "aten::_addmm_activation", "mkldnn::")),
    # in fp32 these are plain copies (cat, clone, index results); under bf16 autocast most are dtype casts
    ("copies and dtype casts", ("aten::copy_", "aten::_to_copy", "aten::to", "aten::_copy_from")),
    ("ReLU backward", ("aten::threshold_backward",)),
    ("reductions (bias grads, losses)", ("aten::sum", "aten::mean", "aten::logsumexp", "aten::amax", "aten::min",
                                         "aten::max")),
    ("target update (Polyak)", ("aten::_foreach_lerp_", "aten::lerp_")),
    ("zero_grad / fill", ("Optimizer.zero_grad#", "aten::zero_", "aten::fill_", "aten::zeros", "aten::empty")),
    ("optimizer (Adam)", ("aten::_foreach_", "Optimizer.", "aten::_fused_adam_")),
)
FAMILY_ENDINGS = ("_", ".", "::", "#")  # an entry ending so names a family ("aten::_foreach_"); others one name


def operator_kind(name: str) -> str:
    """The kind of one profiled operator name (`OPERATOR_KINDS`), "other" when none matches."""
    for kind, names in OPERATOR_KINDS:
        if any(name == n or (n.endswith(FAMILY_ENDINGS) and name.startswith(n)) for n in names):
            return kind
    return "other"


def profile_updates(hidden: tuple[int, ...], precision: str, updates: int, warmup: int = 10) -> pd.DataFrame:
    """One row per operator: self CPU time per update (ms), calls per update and its kind."""
    if precision == "bf16" and not native_cpu_bf16():
        raise OfflineRLError("--precisions bf16: this CPU has no bf16 instructions (AVX512-BF16 or AMX); a bf16 "
                             "profile here would measure the emulation")
    buffer = _filled_buffer()
    config = CQLConfig(actor_hidden=hidden, critic_hidden=hidden)
    agent = CQLAgent(OBS_DIM, ACT_DIM, config)
    autocast = bf16_autocast("cpu", precision == "bf16")

    def step(index: int) -> None:
        with autocast:
            cql_update(agent, buffer.sample(256), config, index)

    for index in range(warmup):
        step(index)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for index in range(updates):
            step(warmup + index)
    rows = [{"operator": e.key, "self_ms_per_update": e.self_cpu_time_total / 1e3 / updates,
             "calls_per_update": e.count / updates} for e in prof.key_averages() if e.self_cpu_time_total > 0]
    frame = pd.DataFrame(rows)
    frame["kind"] = frame["operator"].map(operator_kind)
    return frame.sort_values("self_ms_per_update", ascending=False, ignore_index=True)


def _kind_table(frame: pd.DataFrame) -> pd.DataFrame:
    kinds = frame.groupby("kind", as_index=False)[["self_ms_per_update", "calls_per_update"]].sum()
    kinds["share"] = kinds["self_ms_per_update"] / kinds["self_ms_per_update"].sum()
    return kinds.sort_values("self_ms_per_update", ascending=False, ignore_index=True)


def _markdown(settings: list[tuple[str, pd.DataFrame]], header: str, top: int) -> str:
    lines = [header, ""]
    for name, frame in settings:
        kinds = _kind_table(frame)
        lines += [f"## {name}: {frame['self_ms_per_update'].sum():.1f} ms of operator self time per update", "",
                  "| kind | ms / update | share | calls / update |", "|---|---|---|---|"]
        lines += [f"| {r.kind} | {r.self_ms_per_update:.2f} | {r.share:.0%} | {r.calls_per_update:.0f} |"
                  for r in kinds.itertuples()]
        lines += ["", f"Top {top} operators:", "", "| operator | kind | ms / update | calls / update |",
                  "|---|---|---|---|"]
        lines += [f"| `{r.operator}` | {r.kind} | {r.self_ms_per_update:.2f} | {r.calls_per_update:.0f} |"
                  for r in frame.head(top).itertuples()]
        lines.append("")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROGRAM, description="Profile CQL updates and group their operators' "
                                     "self time by kind (run from the repository root).")
    parser.add_argument("--updates", type=positive_int, default=20, help="profiled updates per setting "
                        "(default: %(default)s)")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma list of fp32, bf16 (default: %(default)s)")
    parser.add_argument("--out", default="evaluation/profile_update.md",
                        help="markdown table; the CSV of every operator goes beside it (default: %(default)s)")
    parser.add_argument("--top", type=positive_int, default=12, help="operators listed per setting "
                        "(default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        configure_process()
        precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
        unknown = sorted(set(precisions) - {"fp32", "bf16"})
        if unknown or not precisions:
            raise OfflineRLError(f"--precisions {args.precisions!r}: choose from fp32, bf16")
        if "bf16" in precisions and not native_cpu_bf16():
            raise OfflineRLError("--precisions bf16: this CPU has no bf16 instructions (AVX512-BF16 or AMX); a bf16 "
                                 "profile here would measure the emulation (pass --precisions fp32)")
        out = Path(args.out)
        if out.suffix != ".md" or out.is_dir():
            raise OfflineRLError(f"--out {out}: expected a .md file path (its CSV goes beside it)")
        settings, frames = [], []
        for size_name, hidden in DEFAULT_SIZES.items():
            for precision in precisions:
                frame = profile_updates(hidden, precision, args.updates)
                settings.append((f"CQL {size_name} {precision}", frame))
                frames.append(frame.assign(setting=f"CQL {size_name} {precision}"))
    except OfflineRLError as exc:
        print(f"{PROGRAM}: error: {exc}", file=sys.stderr)
        return 2
    command = f"{PROGRAM} {shlex.join(argv)}".rstrip()
    header = (f"# Where a CQL update's time goes\n\n`{command}` at {git_commit() or 'unknown'} on {cpu_model()}, "
              f"{torch.get_num_threads()} threads, torch {torch.__version__}, "
              f"{dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; {args.updates} profiled updates "
              "per setting (batch 256, 10 action samples), operator self time (profiling inflates small operators).")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, _markdown(settings, header, args.top).encode())
    atomic_write_bytes(out.with_suffix(".csv"), pd.concat(frames, ignore_index=True).to_csv(index=False).encode())
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
