"""The `offrl` command. Thin: parses arguments, calls library functions, turns errors into exit code 2."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

__all__ = ["main"]

DEFAULT_LEADERBOARD = Path("evaluation") / "leaderboard.csv"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, found {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, found {value}")
    return value


def _configure_runtime(threads: int | None) -> None:
    import torch

    from offrl.runtime import keep_freed_memory_mapped

    keep_freed_memory_mapped()
    if threads:
        torch.set_num_threads(threads)


def cmd_pretrain(args: argparse.Namespace) -> int:
    from offrl.train.online import PretrainConfig, pretrain

    config = PretrainConfig(env_id=args.env, steps=args.steps, seed=args.seed, device=args.device)
    if args.eval_every:
        config.eval_every = args.eval_every
    if args.checkpoint_every:
        config.checkpoint_every = args.checkpoint_every
    out = Path(args.out) if args.out else Path("runs") / "pretrain" / f"{args.env}-seed{args.seed}"
    run_dir = pretrain(config, out, resume=args.resume, show_progress=not args.quiet, command=_command_line())
    print(f"run directory: {run_dir}")
    return 0


def cmd_ship_policies(args: argparse.Namespace) -> int:
    from offrl.policies import describe, ship_policies

    cards = ship_policies(Path(args.run), Path(args.dest) if args.dest else None, episodes=args.episodes)
    for card in cards.values():
        print(describe(card))
    return 0


def _add_compile_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--compile", action="store_true",
                        help="compile the CQL losses (torch.compile; CUDA graphs on CUDA). Slower than eager on CPU")


def _command_line() -> str | None:
    return "offrl " + shlex.join(sys.argv[1:]) if sys.argv[1:] else None


def cmd_collect(args: argparse.Namespace) -> int:
    from offrl.data.collect import TIERS, CollectConfig, collect

    tiers = TIERS if args.tier == "all" else [args.tier]
    for tier in tiers:
        config = CollectConfig(env_id=args.env, tier=tier, transitions=args.transitions, seed=args.seed,
                               version=args.version, namespace=args.namespace, num_envs=args.num_envs,
                               replay_file=args.replay_file)
        try:
            card = collect(config, show_progress=not args.quiet, command=_command_line())
        except Exception as exc:
            from offrl.errors import OfflineRLError

            if args.tier == "all" and tier == "medium-replay" and isinstance(exc, OfflineRLError):
                print(f"offrl: skipped {config.dataset_id}: {exc}", file=sys.stderr)
                continue
            raise
        rate = card.get("collection", {}).get("transitions_per_s")
        print(f"{card['id']}: {card['transitions']} transitions, {card['episodes']} episodes, return "
              f"{card['episode_return']['mean']:.1f} ± {card['episode_return']['std']:.1f}"
              + (f", {rate:.0f} transitions/s" if rate else "") + f", sha256 {card['sha256'][:12]}")
    return 0


def _print_table(rows: list[dict]) -> None:
    import pandas as pd

    if not rows:
        print("(none)")
        return
    print(pd.DataFrame(rows).to_string(index=False))


def cmd_datasets(args: argparse.Namespace) -> int:
    import json

    from offrl.data import registry
    from offrl.errors import OfflineRLError

    if args.datasets_command == "list":
        rows = []
        for card in registry.list_cards():
            try:
                registry.verify_dataset(card["id"], structural=False)
                status = "verified"
            except OfflineRLError as exc:
                status = "MISSING FILE" if "missing" in str(exc) else "SHA256 MISMATCH"
            stats = card.get("episode_return") or {}
            rows.append({"id": card["id"], "version": card["version"], "env": card.get("env_id"),
                         "transitions": card["transitions"], "episodes": card["episodes"],
                         "return mean": _fmt(stats.get("mean")), "return std": _fmt(stats.get("std")),
                         "min": _fmt(stats.get("min")), "max": _fmt(stats.get("max")), "status": status})
        _print_table(rows)
        return 0
    if args.datasets_command == "info":
        card = registry.read_card(args.id)
        print(json.dumps(card, indent=2))
        return 0
    if args.datasets_command == "verify":
        ids = [args.id] if args.id else [c["id"] for c in registry.list_cards()]
        rows, failed = [], 0
        for dataset_id in ids:
            try:
                card = registry.verify_dataset(dataset_id)
                rows.append({"id": dataset_id, "sha256": card["sha256"][:16], "result": "ok"})
            except OfflineRLError as exc:
                failed += 1
                rows.append({"id": dataset_id, "sha256": "", "result": str(exc).splitlines()[0]})
                if args.id:
                    raise
        _print_table(rows)
        return 2 if failed else 0
    if args.datasets_command == "import-d4rl":
        from offrl.data.d4rl import import_d4rl

        card = import_d4rl(Path(args.file), args.id, env_id=args.env)
        print(f"{card['id']}: {card['transitions']} transitions, {card['episodes']} episodes")
        return 0
    if args.datasets_command == "import-minari":
        from offrl.data.minari_io import import_minari

        card = import_minari(args.minari_id, args.id, download=args.download, env_id=args.env)
        print(f"{card['id']}: {card['transitions']} transitions, {card['episodes']} episodes")
        return 0
    if args.datasets_command == "export-minari":
        from offrl.data.minari_io import export_minari

        print(f"exported as Minari dataset {export_minari(args.id, args.minari_id)}")
        return 0
    raise AssertionError(args.datasets_command)


def _ensure_dataset(dataset_id: str, transitions: int, show_progress: bool = True) -> None:
    """`train-cql` on a fresh machine: collect one of offrl's own datasets from the shipped policy if absent."""
    from offrl.data.collect import TIERS, CollectConfig, collect
    from offrl.data.registry import card_path, data_path, env_short_name, parse_dataset_id, read_card
    from offrl.envs import FIRST_CLASS_ENVS

    parsed = parse_dataset_id(dataset_id)
    if data_path(parsed).exists():
        return
    envs = {env_short_name(e): e for e in FIRST_CLASS_ENVS}
    if parsed.namespace or parsed.tier not in TIERS or parsed.env not in envs:
        return  # not ours to collect: loading will say what is missing
    card = read_card(dataset_id) if card_path(parsed).exists() else {}
    config = CollectConfig(env_id=card.get("env_id", envs[parsed.env]), tier=parsed.tier,
                           transitions=card.get("transitions", transitions), seed=card.get("seed", 0) or 0,
                           version=parsed.version)
    print(f"dataset {dataset_id} is not here: collecting it from the shipped {parsed.tier} policy", file=sys.stderr)
    command = card.get("command") or (f"offrl collect --env {config.env_id} --tier {parsed.tier} "
                                       f"--transitions {config.transitions} --version {parsed.version}")
    collect(config, show_progress=show_progress, command=command)


def cmd_train_cql(args: argparse.Namespace) -> int:
    from offrl.algos.cql import CQLConfig
    from offrl.config import load_config, shipped_config_path
    from offrl.data.registry import parse_dataset_id
    from offrl.train.offline import OfflineRun, train_cql

    parsed = parse_dataset_id(args.dataset)
    config_name = args.config
    if config_name is None:
        own = f"{parsed.env}-{parsed.tier}"
        config_name = own if shipped_config_path("cql", own).is_file() else "corl"
    config, config_name = load_config(CQLConfig, "cql", config_name)
    if args.calibrated:
        config.calibrated = True
    if args.collect_missing:
        _ensure_dataset(args.dataset, args.collect_transitions, show_progress=not args.quiet)
    run = OfflineRun(dataset_id=args.dataset, steps=args.steps, seed=args.seed, device=args.device,
                     config_name=config_name, compile=args.compile)
    for name in ("eval_every", "eval_episodes", "log_every", "checkpoint_every"):
        if getattr(args, name) is not None:
            setattr(run, name, getattr(args, name))
    if args.final_eval_episodes is not None:
        run.final_eval_episodes = args.final_eval_episodes
    out = Path(args.out) if args.out else Path("runs") / "cql" / f"{parsed.env}-{parsed.tier}-v{parsed.version}-" \
        f"{config_name}{'-calql' if config.calibrated else ''}-seed{args.seed}"
    leaderboard = Path(args.leaderboard) if args.leaderboard else DEFAULT_LEADERBOARD
    report = train_cql(run, config, out, resume=args.resume, leaderboard=leaderboard,
                       show_progress=not args.quiet, command=_command_line())
    _print_report(report, leaderboard)
    return 0


def _print_report(report: dict, leaderboard: Path | None) -> None:
    rows = [("run", report["run_dir"]), ("dataset", report["dataset_id"]), ("updates", report["steps"]),
            ("normalized return (final)", f"{report['final_normalized_return']:.1f}"),
            ("normalized return (best)", f"{report['best_normalized_return']:.1f}"),
            ("return", f"{report['mean_return']:.1f} ± {report['return_std']:.1f} "
                       f"over {report['eval_episodes']} episodes"),
            ("reference", report["reference"]),
            ("Q bias (mean Q̂ − G)", f"{report.get('q_bias_mean', float('nan')):.2f}"),
            ("Q bias normalized (mean ± std)", f"{report.get('q_bias_normalized_mean', float('nan')):.3f} ± "
                                               f"{report.get('q_bias_normalized_std', float('nan')):.3f}"),
            ("Q bias rule", report.get("q_bias_rule", "")),
            ("updates/s", f"{report['updates_per_s']:.1f}" if report.get("updates_per_s") else "")]
    if leaderboard is not None:
        rows.append(("leaderboard row", str(leaderboard)))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from offrl.train.offline import evaluate_run

    leaderboard = Path(args.leaderboard) if args.leaderboard else DEFAULT_LEADERBOARD
    report = evaluate_run(Path(args.target), args.episodes, leaderboard, device=args.device)
    _print_report(report, leaderboard)
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from offrl.evaluation.leaderboard import (
        aggregate,
        plot_finetuning,
        plot_leaderboard,
        read_leaderboard,
        write_summary,
    )

    path = Path(args.leaderboard) if args.leaderboard else DEFAULT_LEADERBOARD
    frame = read_leaderboard(path)
    summary = aggregate(frame)
    out = path.parent
    print(write_summary(summary, out / "leaderboard_summary.csv", out / "leaderboard_summary.md"), end="")
    for plot in [*plot_leaderboard(frame, out), *plot_finetuning(frame, out)]:
        print(f"plot: {plot}")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from offrl.errors import OfflineRLError
    from offrl.train.finetune import FinetuneRun, finetune

    ratio: float | str = args.offline_ratio
    if ratio != "proportional":
        try:
            ratio = float(ratio)
        except ValueError:
            raise OfflineRLError(f"--offline-ratio must be a number in [0, 1] or 'proportional', found {ratio!r}") \
                from None
    run = FinetuneRun(online_steps=args.online_steps, offline_ratio=ratio, utd=args.utd, calibrated=args.calibrated,
                      cql_alpha_online=args.cql_alpha_online, seed=args.seed, device=args.device,
                      compile=args.compile)
    for name in ("eval_every", "eval_episodes", "log_every", "checkpoint_every"):
        if getattr(args, name) is not None:
            setattr(run, name, getattr(args, name))
    source = Path(args.from_run)
    calibration = "" if args.calibrated is None else "-calql" if args.calibrated else "-uncalibrated"
    tag = f"ratio{ratio}-utd{args.utd}-{args.online_steps}{calibration}"
    out = Path(args.out) if args.out else (source if source.is_dir() else source.parent) / f"finetune-{tag}"
    leaderboard = Path(args.leaderboard) if args.leaderboard else DEFAULT_LEADERBOARD
    report = finetune(source, run, out, resume=args.resume, leaderboard=leaderboard, show_progress=not args.quiet,
                      command=_command_line())
    rows = [("run", report["run_dir"]), ("dataset", report["dataset_id"]),
            ("online steps", report["online_steps"]),
            ("normalized return before → after", f"{report['before_normalized_return']:.1f} → "
                                                 f"{report['final_normalized_return']:.1f}"),
            ("unlearning dip (first 10%)", f"{report['unlearning_dip']:.1f}"),
            ("area under the online curve", f"{report['online_auc']:.1f}"),
            ("Q bias normalized before → after", f"{report['before_q_bias_normalized_mean']:.3f} → "
                                                 f"{report['q_bias_normalized_mean']:.3f}"),
            ("reference", report["reference"])]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from offrl.bench import ALL_BENCHMARKS, run_bench, run_bench_against_d3rlpy
    from offrl.errors import OfflineRLError

    if args.against_d3rlpy:
        if args.only or args.device != "cpu" or args.compile:
            raise OfflineRLError("--against-d3rlpy: runs the CPU eager rows in full; drop --only/--device/--compile")
        frame = run_bench_against_d3rlpy(Path(args.out), args.against_d3rlpy, seconds=args.seconds,
                                         rounds=args.rounds, command=_command_line())
    else:
        include = tuple(args.only.split(",")) if args.only else ALL_BENCHMARKS
        frame = run_bench(Path(args.out), seconds=args.seconds, include=include, command=_command_line(),
                          device=args.device, compile_update=args.compile)
    columns = [c for c in ("benchmark", "impl", "precision", "value", "unit", "gflops", "peak_fraction",
                           "vs_d3rlpy_fp32") if c in frame]
    print(frame[columns].to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(f"written to {args.out}")
    return 0


def _fmt(value) -> str:
    return "" if value is None else f"{value:.1f}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="offrl", description="Dataset-centric offline reinforcement learning.")
    parser.add_argument("--threads", type=_positive_int, default=None,
                        help="torch intra-op threads (default: torch's choice; OFFRL_THREADS also sets it)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="train a SAC behaviour policy online")
    p.add_argument("--env", required=True, help="Gymnasium env id, e.g. HalfCheetah-v5")
    p.add_argument("--steps", type=_positive_int, required=True, help="env steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="run directory (default runs/pretrain/<env>-seed<seed>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--device", default="cpu")
    p.add_argument("--eval-every", type=_positive_int, default=None)
    p.add_argument("--checkpoint-every", type=_positive_int, default=None)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("ship-policies",
                       help="pick the expert and medium policies of a pretrain run and write their cards")
    p.add_argument("--run", required=True, help="pretrain run directory")
    p.add_argument("--dest", help="policy root (default datasets/policies)")
    p.add_argument("--episodes", type=_positive_int, default=20, help="deterministic episodes for the card's return")
    p.set_defaults(func=cmd_ship_policies)

    p = sub.add_parser("collect", help="roll a shipped policy out into a new dataset version")
    p.add_argument("--env", required=True, help="Gymnasium env id, e.g. HalfCheetah-v5")
    p.add_argument("--tier", required=True, help="random, medium, medium-replay, expert, medium-expert, or all")
    p.add_argument("--transitions", type=_positive_int, default=1_000_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--version", type=int, default=0, help="dataset version N in <env>/<tier>-vN")
    p.add_argument("--namespace", default=None, help="optional id namespace")
    p.add_argument("--num-envs", type=_positive_int, default=16, help="envs stepped in lockstep")
    p.add_argument("--replay-file", default=None, help="medium-replay: SAC replay export (default: from the card)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_collect)

    p = sub.add_parser("train-cql", help="train CQL-SAC offline on a dataset, evaluate, append a leaderboard row")
    p.add_argument("--dataset", required=True, help="dataset id, e.g. halfcheetah/medium-v0")
    p.add_argument("--steps", type=_positive_int, required=True, help="gradient updates")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", default=None, help="shipped config name (fast, corl, halfcheetah-medium, ...) or a "
                                                  "YAML path; default: the dataset's own config, else corl")
    p.add_argument("--calibrated", action="store_true",
                   help="Cal-QL (Nakamoto et al. 2023): floor policy-action Q-values in the conservative term at the "
                        "Monte-Carlo return-to-go")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", default=None, help="run directory (default runs/cql/<dataset>-<config>-seed<seed>)")
    _add_compile_flag(p)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--leaderboard", default=None, help=f"leaderboard CSV (default {DEFAULT_LEADERBOARD})")
    p.add_argument("--eval-every", type=_positive_int, default=None)
    p.add_argument("--eval-episodes", type=_positive_int, default=None)
    p.add_argument("--final-eval-episodes", type=_positive_int, default=None)
    p.add_argument("--log-every", type=_positive_int, default=None)
    p.add_argument("--checkpoint-every", type=_positive_int, default=None)
    p.add_argument("--collect-missing", action="store_true",
                   help="collect the dataset from the shipped policy first if it is one of offrl's and absent")
    p.add_argument("--collect-transitions", type=_positive_int, default=200_000)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train_cql)

    p = sub.add_parser("finetune", help="fine-tune an offline CQL run online with mixed offline/online batches")
    p.add_argument("--from", dest="from_run", required=True, help="offline CQL run directory or its checkpoint")
    p.add_argument("--online-steps", type=_positive_int, required=True)
    p.add_argument("--offline-ratio", default="0.5", help="fraction of each batch from the dataset, or proportional")
    p.add_argument("--utd", type=_positive_int, default=1, help="updates per env step")
    p.add_argument("--calibrated", action=argparse.BooleanOptionalAction, default=None,
                   help="Cal-QL: calibrate the conservative term (default: as the offline run was trained)")
    p.add_argument("--cql-alpha-online", type=float, default=None, help="α_cql once the online phase starts")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default="cpu")
    _add_compile_flag(p)
    p.add_argument("--out", default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--leaderboard", default=None)
    p.add_argument("--eval-every", type=_positive_int, default=None)
    p.add_argument("--eval-episodes", type=_positive_int, default=None)
    p.add_argument("--log-every", type=_positive_int, default=None)
    p.add_argument("--checkpoint-every", type=_positive_int, default=None)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("evaluate", help="evaluate a CQL run or checkpoint: normalized return and Q bias")
    p.add_argument("target", help="run directory or checkpoint file")
    p.add_argument("--episodes", type=_positive_int, default=10)
    p.add_argument("--device", default="cpu")
    p.add_argument("--leaderboard", default=None)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("leaderboard", help="aggregate the leaderboard over seeds; write summary and plots")
    p.add_argument("--leaderboard", default=None)
    p.set_defaults(func=cmd_leaderboard)

    p = sub.add_parser("bench", help="measure update, sampling, collection and loading throughput")
    p.add_argument("--out", default="evaluation/bench.csv")
    p.add_argument("--seconds", type=float, default=20.0, help="timing window per update benchmark")
    p.add_argument("--only", default=None, help="comma list of: matmul, updates, pretrain, critics, fusion, data")
    p.add_argument("--device", default="cpu", help="cpu or cuda (GPU rows are kept apart from CPU rows)")
    p.add_argument("--against-d3rlpy", metavar="PYTHON", default=None,
                   help="python of a venv with d3rlpy 2.8.1: alternate its timings with offrl's (see --rounds)")
    p.add_argument("--rounds", type=_positive_int, default=3, help="d3rlpy/offrl alternations; rows keep the median")
    _add_compile_flag(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("datasets", help="list, inspect, verify, import and export datasets")
    p.set_defaults(func=cmd_datasets)
    ds = p.add_subparsers(dest="datasets_command", required=True)
    ds.add_parser("list", help="every dataset in the store, verified or not")
    q = ds.add_parser("info", help="a dataset's card")
    q.add_argument("id")
    q = ds.add_parser("verify", help="sha256 and structural checks (all datasets without ID)")
    q.add_argument("id", nargs="?")
    q = ds.add_parser("import-d4rl", help="register a D4RL HDF5 file")
    q.add_argument("file")
    q.add_argument("--id", required=True, help="e.g. d4rl/halfcheetah/medium-v2")
    q.add_argument("--env", default=None, help="Gymnasium env id (default: from the id)")
    q = ds.add_parser("import-minari", help="register a dataset from the local Minari store")
    q.add_argument("minari_id")
    q.add_argument("--id", default=None, help="offrl id (default: the Minari id)")
    q.add_argument("--download", action="store_true", help="let Minari download it (needs network)")
    q.add_argument("--env", default=None)
    q = ds.add_parser("export-minari", help="write a dataset into the local Minari store")
    q.add_argument("id")
    q.add_argument("--minari-id", default=None, help="default offrl/<env>/<tier>-vN")
    return parser


def main(argv: list[str] | None = None) -> int:
    from offrl.errors import OfflineRLError

    parser = build_parser()
    args = parser.parse_args(argv)
    threads = args.threads or (int(os.environ["OFFRL_THREADS"]) if os.environ.get("OFFRL_THREADS") else None)
    _configure_runtime(threads)
    try:
        return args.func(args)
    except OfflineRLError as exc:
        print(f"offrl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("offrl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
