"""The `offrl` command. Thin: parses arguments, calls library functions, turns errors into exit code 2."""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
from pathlib import Path

from offrl.errors import DIVERGENCE_LIMIT
from offrl.runtime import configure_process, parse_integer_at_least

__all__ = ["main", "build_parser", "positive_int", "non_negative_int"]

LEADERBOARD_HELP = ("leaderboard CSV to append the run's row to "
                    "(default: $OFFRL_LEADERBOARD, else ~/.offrl/leaderboard.csv)")


def _integer_at_least(minimum: int):
    """An argparse type: an integer >= minimum, refused in one line otherwise."""
    def parse(text: str) -> int:
        try:
            return parse_integer_at_least(text, minimum)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = "integer"
    return parse


positive_int = _integer_at_least(1)
non_negative_int = _integer_at_least(0)


def _device(text: str) -> str:
    """An argparse type: a torch device this machine has (cpu, cuda, cuda:N), checked before any work."""
    from offrl.errors import OfflineRLError
    from offrl.runtime import resolve_device

    try:
        resolve_device(text)
    except OfflineRLError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


_device.__name__ = "device"


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, found {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, found {text!r}")
    return value


_finite_float.__name__ = "number"


class _Parser(argparse.ArgumentParser):
    """argparse with offrl's convention for bad input: one line on stderr and exit code 2, no usage block."""

    def error(self, message: str):
        self.exit(2, f"offrl: error: {message} (`{self.prog} --help` lists the options)\n")


def _output_folder(path: Path, option: str) -> Path:
    """Refuse at once, creating nothing, an output folder that cannot be made: a file, a path under a file, or
    one whose nearest existing folder is not writable (before a dataset is loaded or collected)."""
    from offrl.errors import OfflineRLError

    if path.exists() and not path.is_dir():
        raise OfflineRLError(f"{option} {path}: exists and is not a directory")
    existing = next(folder for folder in (path, *path.parents, Path(".")) if folder.exists())
    if not existing.is_dir():
        raise OfflineRLError(f"{option} {path}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OfflineRLError(f"{option} {path}: {existing} is not writable")
    return path


def _appendable_leaderboard(args: argparse.Namespace) -> Path | None:
    """The leaderboard a command appends to (None with --no-leaderboard), refused before any work if a row
    could not be appended to it."""
    from offrl.evaluation.leaderboard import check_appendable

    if args.no_leaderboard:
        return None
    path = _leaderboard(args.leaderboard)
    check_appendable(path)
    return path


def _leaderboard(value: str | None) -> Path:
    from offrl.shipped import default_leaderboard

    return Path(value) if value else default_leaderboard()


def cmd_pretrain(args: argparse.Namespace) -> int:
    from offrl.algos.sac import SACConfig
    from offrl.config import config_with_overrides, parse_overrides
    from offrl.train.online import PretrainSettings, pretrain

    sac = config_with_overrides(SACConfig(), parse_overrides(args.set), "--set")
    settings = PretrainSettings(env_id=args.env, env_steps=args.steps, seed=args.seed, device=args.device, sac=sac,
                                eval_every=args.eval_every, checkpoint_every=args.checkpoint_every)
    out = _output_folder(Path(args.out) if args.out else Path("runs") / "pretrain" / f"{args.env}-seed{args.seed}",
                         "--out")
    run_dir = pretrain(settings, out, resume=args.resume, show_progress=not args.quiet, command=_command_line(),
                       tensorboard=args.tensorboard)
    print(f"run directory: {run_dir}")
    return 0


def cmd_ship_policies(args: argparse.Namespace) -> int:
    from offrl.policies import describe, ship_policies

    dest = _output_folder(Path(args.dest), "--dest") if args.dest else None
    cards = ship_policies(Path(args.run), dest, episodes=args.episodes)
    for card in cards.values():
        print(describe(card))
    return 0


def cmd_ship_replay(args: argparse.Namespace) -> int:
    from offrl.policies import ship_replay_snapshots

    dest = _output_folder(Path(args.dest), "--dest") if args.dest else None
    card = ship_replay_snapshots(Path(args.run), args.up_to, args.every, dest)
    returns = ", ".join(f"{s['step']}: {s['eval_return_mean']:.0f}" for s in card["segments"])
    print(f"{card['env_id']}: {len(card['segments'])} snapshots up to step {card['up_to']} (eval returns {returns})")
    return 0


def _command_line() -> str | None:
    return "offrl " + shlex.join(sys.argv[1:]) if sys.argv[1:] else None


def cmd_collect(args: argparse.Namespace) -> int:
    from offrl.data.collect import TIERS, CollectConfig, collect

    tiers = TIERS if args.tier == "all" else [args.tier]
    for tier in tiers:
        config = CollectConfig(env_id=args.env, tier=tier, transitions=args.transitions, seed=args.seed,
                               version=args.version, namespace=args.namespace, num_envs=args.num_envs,
                               replay_file=args.replay_file, sampler=args.sampler)
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
        entries = registry.store_entries()
        present = {entry.dataset_id for entry in entries}
        for card in registry.shipped_cards():
            if card["id"] not in present:
                rows.append(_card_row(card, "shipped, not collected (--collect-missing)"))
        for entry in entries:
            if entry.card is None:  # listed, not hidden: the user has to see that this dataset is unusable
                rows.append({**{key: "" for key in _card_row({}, "")}, "id": entry.dataset_id,
                             "status": f"CORRUPT CARD: {entry.problem}"})
                continue
            try:
                registry.verify_dataset(entry.dataset_id, structural=False)
                status = "verified"
            except OfflineRLError as exc:
                status = "MISSING FILE" if "missing" in str(exc) else "SHA256 MISMATCH"
            rows.append(_card_row(entry.card, status))
        print(f"store: {registry.dataset_root()}")
        _print_table(rows)
        return 0
    if args.datasets_command == "info":
        card = registry.read_card(args.id)
        print(json.dumps(card, indent=2))
        return 0
    if args.datasets_command == "verify":
        ids = args.id or [entry.dataset_id for entry in registry.store_entries()]
        rows, failed = [], 0
        for dataset_id in ids:
            try:
                card = registry.verify_dataset(dataset_id)
                rows.append({"id": dataset_id, "sha256": card["sha256"][:16], "result": "ok"})
            except OfflineRLError as exc:
                failed += 1
                rows.append({"id": dataset_id, "sha256": "", "result": str(exc).splitlines()[0]})
                if len(args.id) == 1:  # one id asked for: its error is the whole answer
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


def cmd_train_cql(args: argparse.Namespace) -> int:
    from offrl.agents import CQL, CalQL
    from offrl.config import parse_overrides, shipped_config_path
    from offrl.data.dataset import load_dataset
    from offrl.data.registry import parse_dataset_id

    parsed = parse_dataset_id(args.dataset)
    config_name = args.config
    if config_name is None:
        own = f"{parsed.env}-{parsed.tier}"
        config_name = own if shipped_config_path("cql", own).is_file() else "corl"
    agent_class = CalQL if args.calibrated else CQL
    agent = agent_class(config_name, device=args.device, compile=args.compile, **parse_overrides(args.set))
    out = Path(args.out) if args.out else Path("runs") / "cql" / f"{parsed.env}-{parsed.tier}-v{parsed.version}-" \
        f"{agent.config_name}{'-calql' if agent.config.calibrated else ''}-seed{args.seed}"
    _output_folder(out, "--out")
    leaderboard = _appendable_leaderboard(args)
    dataset = load_dataset(args.dataset, args.device, collect_missing=args.collect_missing,
                           show_progress=not args.quiet)
    report = agent.fit(dataset, args.steps, seed=args.seed, eval_every=args.eval_every,
                       eval_episodes=args.eval_episodes, final_eval_episodes=args.final_eval_episodes,
                       log_every=args.log_every, checkpoint_every=args.checkpoint_every, run_dir=out,
                       resume=args.resume, tensorboard=args.tensorboard, leaderboard=leaderboard,
                       show_progress=not args.quiet, command=_command_line(), divergence_limit=args.divergence_limit)
    _print_report(report, leaderboard)
    return 0


def _number(value, digits: int = 1) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _print_report(report, leaderboard: Path | None) -> None:
    from offrl.evaluation.scores import RAW

    rows = [("run", report.run_dir), ("dataset", report.dataset_id), ("updates", report.updates)]
    if report.final_normalized_return is not None:
        score = "return" if report.reference == RAW else "normalized return"
        rows += [(f"{score} (final)", _number(report.final_normalized_return)),
                 (f"{score} (best)", _number(report.best_normalized_return)),
                 ("return", f"{_number(report.mean_return)} ± {_number(report.return_std)} "
                            f"over {report.eval_episodes} episodes"),
                 ("reference", report.reference),
                 ("Q bias (mean Q̂ − G)", _number(report.q_bias_mean, 2)),
                 ("Q bias normalized (mean ± std)", f"{_number(report.q_bias_normalized_mean, 3)} ± "
                                                    f"{_number(report.q_bias_normalized_std, 3)}"),
                 ("Q bias rule", report.q_bias_rule or "")]
    else:
        rows += [("reference", report.reference)]
    if report.average_value_estimate is not None:
        rows += [("mean Q(s, π(s)) on dataset states", _number(report.average_value_estimate, 3)),
                 ("mean Q(s0, π(s0)) on episode starts", _number(report.initial_state_value_estimate, 3))]
    rows.append(("updates/s", _number(report.updates_per_s)))
    if leaderboard is not None:
        rows.append(("leaderboard row", str(leaderboard)))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from offrl.runs import evaluate_run

    leaderboard = _appendable_leaderboard(args)
    report = evaluate_run(Path(args.target), args.episodes, leaderboard, device=args.device)
    _print_report(report, leaderboard)
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from offrl.errors import OfflineRLError
    from offrl.evaluation.leaderboard import (
        aggregate,
        plot_finetuning,
        plot_leaderboard,
        read_leaderboard,
        write_summary,
    )

    if args.out is not None and args.evidence is None:
        raise OfflineRLError("--out: only with --evidence (the summary and plots are written beside the leaderboard)")
    if args.sweep is not None and args.evidence is None:
        raise OfflineRLError("--sweep: only with --evidence (it picks the result set to aggregate)")
    path = _leaderboard(args.leaderboard)
    if args.append:
        from offrl.runs import append_finished_run

        for run_dir in args.append:
            written = append_finished_run(Path(run_dir), path)
            print(f"{run_dir}: {'row appended to' if written else 'its row is already in'} {path}")
    frame = read_leaderboard(path)
    if args.evidence is not None:
        from offrl.evaluation.aggregate import write_evidence

        sweeps = [s.strip() for s in args.sweep.split(",") if s.strip()] if args.sweep is not None else None
        if sweeps is not None and not sweeps:
            raise OfflineRLError(f"--sweep {args.sweep!r}: name at least one sweep id")
        for written in write_evidence(frame, Path(args.out) if args.out else path.parent, args.evidence,
                                      sweep_ids=sweeps):
            print(f"wrote {written}")
        return 0
    summary = aggregate(frame)
    out = path.parent
    print(write_summary(summary, out / "leaderboard_summary.csv", out / "leaderboard_summary.md"), end="")
    for plot in [*plot_leaderboard(frame, out), *plot_finetuning(frame, out)]:
        print(f"plot: {plot}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from offrl.config import parse_overrides
    from offrl.errors import OfflineRLError
    from offrl.sweep import SweepSpec, parse_seeds, run_sweep, summary_table

    ope = args.ope_policies is not None
    needed = ("--ope-policies", "--methods", "--results") if ope else ("--algorithms", "--configs")
    missing = [name for name in needed if getattr(args, name[2:].replace("-", "_")) is None]
    if missing:
        raise OfflineRLError(f"{'an OPE' if ope else 'a training'} sweep needs {', '.join(missing)}")
    if ope and args.divergence_limit != DIVERGENCE_LIMIT:
        raise OfflineRLError("--divergence-limit: a training option; an OPE sweep's estimates stop at the default")
    names = {"--datasets": args.datasets, "--algorithms": args.algorithms or "", "--configs": args.configs or "",
             "--ope-policies": args.ope_policies or "", "--methods": args.methods or ""}
    lists = {name: [v.strip() for v in value.split(",") if v.strip()] for name, value in names.items()}
    # The store and the other locations the workers must see as this process does (paths must exist on every node).
    shared = ("OFFRL_DATASETS_PATH", "OFFRL_HOME", "OFFRL_POLICIES_PATH", "OFFRL_FAULT", "MINARI_DATASETS_PATH")
    forwarded = {k: v for k, v in os.environ.items() if k in shared}
    spec = SweepSpec(datasets=lists["--datasets"], algorithms=lists["--algorithms"], configs=lists["--configs"],
                     seeds=parse_seeds(args.seeds), steps=args.steps,
                     out=Path(args.out).resolve(),  # trials and rows name their folders from anywhere
                     leaderboard=_leaderboard(args.leaderboard).resolve(), address=args.address,
                     cpus_per_trial=args.cpus_per_trial, max_concurrent=args.max_concurrent, retries=args.retries,
                     from_folders=args.from_folders,
                     eval_every=args.eval_every, eval_episodes=args.eval_episodes,
                     final_eval_episodes=args.final_eval_episodes, log_every=args.log_every,
                     checkpoint_every=args.checkpoint_every, divergence_limit=args.divergence_limit,
                     collect_missing=args.collect_missing,
                     command=_command_line(), env_vars=forwarded, ope_policies=lists["--ope-policies"],
                     ope_methods=lists["--methods"], ope_config=parse_overrides(args.set),
                     truth_episodes=args.truth_episodes,
                     results=Path(args.results).resolve() if args.results else None)
    spec.out = spec.out.resolve()
    result = run_sweep(spec, echo=lambda line: print(line, flush=True))
    print(f"sweep {result.sweep_id}: {len(result.finished)} finished, {len(result.skipped)} already done, "
          f"{len(result.failed)} failed, {result.wall_time_s:.0f} s")
    if not ope:
        print(summary_table(spec))
    for name, error in result.failed.items():
        print(f"failed: {name}: {error}", file=sys.stderr)
    return 0 if result.ok else 1


def cmd_finetune(args: argparse.Namespace) -> int:
    from offrl.errors import OfflineRLError
    from offrl.train.finetune import FinetuneSettings, finetune

    ratio: float | str = args.offline_ratio
    if ratio != "proportional":
        try:
            ratio = float(ratio)
        except ValueError:
            raise OfflineRLError(f"--offline-ratio must be a number in [0, 1] or 'proportional', found {ratio!r}") \
                from None
    settings = FinetuneSettings(online_steps=args.online_steps, offline_ratio=ratio, utd=args.utd,
                                calibrated=args.calibrated, cql_alpha_online=args.cql_alpha_online, seed=args.seed,
                                device=args.device, compile=args.compile, eval_every=args.eval_every,
                                eval_episodes=args.eval_episodes, log_every=args.log_every,
                                checkpoint_every=args.checkpoint_every)
    source = Path(args.from_run)
    calibration = "" if args.calibrated is None else "-calql" if args.calibrated else "-uncalibrated"
    tag = f"ratio{ratio}-utd{args.utd}-{args.online_steps}{calibration}"
    out = _output_folder(Path(args.out) if args.out else (source if source.is_dir() else source.parent)
                         / f"finetune-{tag}", "--out")
    leaderboard = _appendable_leaderboard(args)
    report = finetune(source, settings, out, resume=args.resume, leaderboard=leaderboard,
                      show_progress=not args.quiet, command=_command_line(), tensorboard=args.tensorboard)
    rows = [("run", report.run_dir), ("dataset", report.dataset_id), ("online steps", report.online_steps),
            ("normalized return before → after", f"{_number(report.before_normalized_return)} → "
                                                 f"{_number(report.final_normalized_return)}"),
            ("unlearning dip (first 10%)", _number(report.unlearning_dip)),
            ("area under the online curve", _number(report.online_auc)),
            ("Q bias normalized before → after", f"{_number(report.before_q_bias_normalized_mean, 3)} → "
                                                 f"{_number(report.q_bias_normalized_mean, 3)}"),
            ("reference", report.reference)]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def cmd_ope(args: argparse.Namespace) -> int:
    from offrl.algos.ope import OPEConfig
    from offrl.config import parse_overrides
    from offrl.data.dataset import load_dataset
    from offrl.errors import OfflineRLError
    from offrl.train.ope import append_ope_row, check_ope_results, evaluate_policy_offline, load_target_policy

    if args.alpha is not None and args.method == "fqe":
        raise OfflineRLError("--alpha: fqe has no penalty to weigh; use --method cql-q or cql-v")
    if args.mu is not None and args.method != "cql-q":
        raise OfflineRLError(f"--mu: only cql-q takes a penalty distribution ({args.method} "
                             f"{'has none' if args.method == 'fqe' else 'uses mu = pi by definition'})")
    overrides = {**parse_overrides(args.set), **({"alpha": args.alpha} if args.alpha is not None else {}),
                 **({"mu": args.mu} if args.mu is not None else {})}
    config = _config_with(OPEConfig, overrides)
    if args.out is not None:
        _output_folder(Path(args.out), "--out")
    if args.results is not None:
        check_ope_results(Path(args.results))
    policy = load_target_policy(args.policy, args.deterministic, args.device)
    dataset = load_dataset(args.dataset, args.device, collect_missing=args.collect_missing,
                           show_progress=not args.quiet)
    report = evaluate_policy_offline(policy, dataset, args.method, args.steps, config=config, seed=args.seed,
                                     env=args.env or True, truth=not args.no_truth,
                                     truth_episodes=args.truth_episodes, states=args.states,
                                     initial_state_source=args.initial_states,
                                     eval_every=args.eval_every, log_every=args.log_every,
                                     checkpoint_every=args.checkpoint_every, deterministic=args.deterministic,
                                     run_dir=args.out, resume=args.resume, show_progress=not args.quiet,
                                     command=_command_line(), policy_name=args.policy)
    if args.results is not None:
        append_ope_row(Path(args.results), report)
    rows = [("policy", report.policy + (" (deterministic)" if report.deterministic else "")),
            ("dataset", report.dataset_id), ("method", report.method + (
                f" (alpha {report.alpha:g}, mu {report.mu})" if report.alpha is not None else "")),
            ("updates", report.updates),
            ("estimate V(s0)", f"{report.estimate:.2f} [{report.estimate_ci_low:.2f}, {report.estimate_ci_high:.2f}] "
                               f"over {report.initial_states} initial states ({report.initial_state_source})")]
    if report.true_value is not None:
        rows += [("true value (Monte Carlo)", f"{report.true_value:.2f} [{report.true_ci_low:.2f}, "
                                              f"{report.true_ci_high:.2f}] over {report.truth_episodes} episodes"),
                 ("error (estimate - truth)", f"{report.error:+.2f}"),
                 ("lower bound", "yes" if report.is_lower_bound else "no")]
    if report.run_dir:
        rows.append(("run", report.run_dir))
    if args.results is not None:
        rows.append(("results row", args.results))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def cmd_ope_summary(args: argparse.Namespace) -> int:
    import pandas as pd

    from offrl.evaluation.ope_summary import read_ope_results, write_ope_summary

    frame = read_ope_results(Path(args.results), args.sweep)
    out = _output_folder(Path(args.out) if args.out else Path(args.results).parent, "--out")
    for path in write_ope_summary(frame, out):
        print(f"wrote {path}")
    print(pd.read_csv(out / "ope_summary.csv").to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


def _config_with(cls, overrides: dict):
    """A config dataclass with CLI overrides, checked like a YAML file's fields."""
    from offrl.config import config_from_dict

    return config_from_dict(cls, overrides, "--set")


def cmd_export_policy(args: argparse.Namespace) -> int:
    from offrl.export import export_policy

    formats = ("torchscript", "onnx") if args.format == "both" else (args.format,)
    out = _output_folder(Path(args.out), "--out") if args.out else None
    for path in export_policy(Path(args.run_dir), out, formats=formats):
        print(f"wrote {path}")
    return 0


def _fmt(value) -> str:
    if value is None:
        return ""
    return f"{value:.1f}" if isinstance(value, int | float) else str(value)


def _card_row(card: dict, status: str) -> dict:
    stats = card.get("episode_return") or {}
    return {"id": card.get("id"), "version": card.get("version"), "env": card.get("env_id"),
            "transitions": card.get("transitions"), "episodes": card.get("episodes"),
            "return mean": _fmt(stats.get("mean")), "return std": _fmt(stats.get("std")),
            "min": _fmt(stats.get("min")), "max": _fmt(stats.get("max")), "status": status}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help shows its default: argparse's own, unless the help already says it in words."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text or action.default is None or action.default is False
                or action.default == argparse.SUPPRESS or not action.option_strings or action.required):
            return text
        return super()._get_help_string(action)


def _offline_schedule_options(p: argparse.ArgumentParser, eval_every: int | None, eval_every_help: str) -> None:
    """The schedule of an offline fit (train-cql and every sweep trial): evaluation, logs, checkpoints."""
    p.add_argument("--eval-every", type=positive_int, default=eval_every, help=eval_every_help)
    p.add_argument("--eval-episodes", type=positive_int, default=10, help="episodes per evaluation")
    p.add_argument("--final-eval-episodes", type=positive_int, default=10,
                   help="episodes of the final evaluation (with Q bias)")
    p.add_argument("--log-every", type=positive_int, default=1_000, help="updates between metrics rows")
    p.add_argument("--checkpoint-every", type=positive_int, default=5_000, help="updates between checkpoints")
    p.add_argument("--divergence-limit", type=_divergence_limit, default=DIVERGENCE_LIMIT, metavar="X",
                   help="a metric above X (or any NaN/inf) stops the run, no row written (default 1e10); raise it "
                        "where divergence is the measurement, e.g. offline SAC's Q-values; inf: only NaN/inf stop")


def _divergence_limit(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number or inf, found {text!r}") from None
    if math.isnan(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number or inf, found {text!r}")
    return value


_divergence_limit.__name__ = "limit"


def _sub(sub, name: str, help_text: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help_text, description=help_text, formatter_class=_HelpFormatter)


def _common_run_options(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--device", type=_device, default="cpu", help="torch device: cpu, cuda or cuda:N")
    p.add_argument("--resume", action="store_true", help=f"continue the {what} in --out from its checkpoint")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard event files under <out>/tensorboard (pip install 'offrl[tensorboard]')")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _set_option(p: argparse.ArgumentParser, config: str) -> None:
    p.add_argument("--set", action="append", metavar="FIELD=VALUE", default=None,
                   help=f"override one {config} field (repeatable), checked like the YAML: e.g. --set cql_alpha=5")


def build_parser() -> argparse.ArgumentParser:
    from offrl import __version__

    parser = _Parser(prog="offrl", description="Dataset-centric offline reinforcement learning.",
                     formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"offrl {__version__}")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch intra-op threads (default: $OFFRL_THREADS, else torch's choice)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _sub(sub, "pretrain", "train a SAC behaviour policy online")
    p.add_argument("--env", required=True, help="Gymnasium env id, e.g. HalfCheetah-v5")
    p.add_argument("--steps", type=positive_int, required=True, help="env steps")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of torch, numpy and the env")
    p.add_argument("--out", help="run directory (default: runs/pretrain/<env>-seed<seed>)")
    p.add_argument("--eval-every", type=positive_int, default=10_000, help="env steps between evaluations")
    p.add_argument("--checkpoint-every", type=positive_int, default=25_000,
                   help="env steps between checkpoints (taken at the next episode end)")
    _set_option(p, "SACConfig")
    _common_run_options(p, "run")
    p.set_defaults(func=cmd_pretrain)

    p = _sub(sub, "ship-policies", "pick the expert and medium policies of a pretrain run and write their cards")
    p.add_argument("--run", required=True, help="pretrain run directory")
    p.add_argument("--dest", help="policy root (default: $OFFRL_POLICIES_PATH, else the shipped policies)")
    p.add_argument("--episodes", type=positive_int, default=20, help="deterministic episodes for the card's return")
    p.set_defaults(func=cmd_ship_policies)

    p = _sub(sub, "ship-replay", "ship a pretrain run's actor snapshots for the medium-replay tier (replay.json)")
    p.add_argument("--run", required=True, help="pretrain run directory (snapshots at --every steps)")
    p.add_argument("--up-to", type=positive_int, required=True,
                   help="the medium step: the replay buffer it stands for ends here")
    p.add_argument("--every", type=positive_int, default=10_000, help="steps each snapshot stands for")
    p.add_argument("--dest", help="policy root (default: $OFFRL_POLICIES_PATH, else the shipped policies)")
    p.set_defaults(func=cmd_ship_replay)

    p = _sub(sub, "collect", "roll a shipped policy out into a new dataset version")
    p.add_argument("--env", required=True, help="Gymnasium env id, e.g. HalfCheetah-v5")
    p.add_argument("--tier", required=True, help="random, medium, medium-replay, expert, medium-expert, or all")
    p.add_argument("--transitions", type=positive_int, default=1_000_000, help="rows in the dataset")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the rollouts")
    p.add_argument("--version", type=non_negative_int, default=0, help="dataset version N in <env>/<tier>-vN")
    p.add_argument("--namespace", default=None, help="optional id namespace (<namespace>/<env>/<tier>-vN)")
    p.add_argument("--num-envs", type=positive_int, default=16, help="envs stepped in lockstep")
    p.add_argument("--replay-file", default=None,
                   help="medium-replay: the SAC replay export (default: the path on the medium policy's card)")
    p.add_argument("--sampler", choices=["portable", "torch"], default="portable",
                   help="how policy actions are computed: portable (bit-identical on every CPU) or torch (faster, "
                        "bytes depend on the CPU; the v0 cards); rebuilding a card follows the card")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_collect)

    p = _sub(sub, "train-cql", "train CQL-SAC (or Cal-QL) offline on a dataset, evaluate, append a leaderboard row")
    p.add_argument("--dataset", required=True,
                   help="dataset id, e.g. halfcheetah/medium-v1, or a Minari id in the local Minari store "
                        "(imported on first use)")
    p.add_argument("--steps", type=positive_int, required=True, help="gradient updates")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of torch, numpy and evaluation")
    p.add_argument("--config", default=None, help="shipped config name (fast, corl, halfcheetah-medium, ...) or a "
                                                  "YAML path (default: the dataset's own config, else corl)")
    _set_option(p, "CQLConfig")
    p.add_argument("--calibrated", action="store_true",
                   help="Cal-QL (Nakamoto et al. 2023): floor policy-action Q-values in the conservative term at the "
                        "Monte-Carlo return-to-go")
    p.add_argument("--out", default=None,
                   help="run directory (default: runs/cql/<env>-<tier>-v<N>-<config>-seed<seed>)")
    p.add_argument("--compile", action="store_true",
                   help="CUDA: replay each update as one CUDA graph; CPU: the CQL losses under torch.compile (slower "
                        "than eager there)")
    p.add_argument("--leaderboard", default=None, help=LEADERBOARD_HELP)
    p.add_argument("--no-leaderboard", action="store_true", help="append no leaderboard row")
    _offline_schedule_options(p, eval_every=5_000, eval_every_help="updates between evaluations")
    p.add_argument("--collect-missing", action="store_true",
                   help="collect the dataset from its shipped policy and card first if it is one of offrl's ids and "
                        "absent from the store")
    _common_run_options(p, "run")
    p.set_defaults(func=cmd_train_cql)

    p = _sub(sub, "finetune", "fine-tune an offline CQL run online with mixed offline/online batches")
    p.add_argument("--from", dest="from_run", required=True, help="offline CQL run directory or its checkpoint")
    p.add_argument("--online-steps", type=positive_int, required=True, help="env steps of the online phase")
    p.add_argument("--offline-ratio", default="0.5", help="fraction of each batch from the dataset, or proportional")
    p.add_argument("--utd", type=positive_int, default=1, help="updates per env step")
    p.add_argument("--calibrated", action=argparse.BooleanOptionalAction, default=None,
                   help="Cal-QL: calibrate the conservative term (default: as the offline run was trained)")
    p.add_argument("--cql-alpha-online", type=_finite_float, default=None,
                   help="α_cql once the online phase starts (default: the offline run's)")
    p.add_argument("--seed", type=non_negative_int, default=None, help="seed (default: the offline run's)")
    p.add_argument("--compile", action="store_true",
                   help="CUDA: replay each update as one CUDA graph; CPU: the CQL losses under torch.compile")
    p.add_argument("--out", default=None,
                   help="run directory (default: <offline run>/finetune-ratio<r>-utd<k>-<steps>)")
    p.add_argument("--leaderboard", default=None, help=LEADERBOARD_HELP)
    p.add_argument("--no-leaderboard", action="store_true", help="append no leaderboard row")
    p.add_argument("--eval-every", type=positive_int, default=5_000, help="env steps between evaluations")
    p.add_argument("--eval-episodes", type=positive_int, default=10, help="episodes per evaluation")
    p.add_argument("--log-every", type=positive_int, default=1_000, help="env steps between metrics rows")
    p.add_argument("--checkpoint-every", type=positive_int, default=5_000,
                   help="env steps between checkpoints (taken at the next episode end)")
    _common_run_options(p, "fine-tuning run")
    p.set_defaults(func=cmd_finetune)

    p = _sub(sub, "sweep", "train a grid of datasets x algorithms x configs x seeds as Ray tasks (pip install "
                           "'offrl[ray]'); one leaderboard row per trial, resumable")
    p.add_argument("--datasets", required=True, help="comma-separated dataset ids")
    p.add_argument("--algorithms", default=None,
                   help="comma-separated: cql, calql, sac (offline SAC), bc (behaviour cloning); a training sweep")
    p.add_argument("--configs", default=None,
                   help="comma-separated shipped CQL config names or YAML paths (offline SAC takes the actor "
                        "sizes and rates of the same config; 'default' for SACConfig's)")
    p.add_argument("--ope-policies", default=None,
                   help="an OPE sweep instead of training: comma-separated policy SPECs of `offrl ope --policy` "
                        "(ENV/TIER, ENV/replay/STEP, random, run folders, policy files)")
    p.add_argument("--methods", default=None, help="OPE sweep: comma-separated fqe, cql-q, cql-v")
    p.add_argument("--results", default=None, help="OPE sweep: the CSV its rows are appended to (e.g. "
                                                  "evaluation/ope.csv)")
    p.add_argument("--truth-episodes", type=_integer_at_least(2), default=50,
                   help="OPE sweep: rollouts of each policy for its true value")
    _set_option(p, "OPEConfig (OPE sweep)")
    p.add_argument("--seeds", required=True, help="seeds: a range 0-4, a list 0,3,7, or both")
    p.add_argument("--steps", type=positive_int, required=True, help="gradient updates per trial")
    p.add_argument("--out", required=True, help="folder of the trials' run folders (shared storage on a cluster)")
    p.add_argument("--leaderboard", default=None, help=LEADERBOARD_HELP + "; only the driver appends")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join: auto, or ray://HOST:PORT (default: start Ray here with this "
                        "machine's cores)")
    p.add_argument("--cpus-per-trial", type=positive_int, default=1,
                   help="CPUs Ray reserves per trial, also its torch thread count")
    p.add_argument("--max-concurrent", type=positive_int, default=None,
                   help="trials running at once (default: as many as the CPUs allow)")
    p.add_argument("--retries", type=non_negative_int, default=1,
                   help="times a trial whose worker died runs again, resuming from its checkpoint")
    p.add_argument("--from-folders", action="store_true",
                   help="decide which trials are done from the run folders under --out alone: a trial whose row is "
                        "in the leaderboard (or --results) but whose folder is not here trains again and appends a "
                        "second row (default: its row means done)")
    _offline_schedule_options(p, eval_every=None, eval_every_help="updates between evaluations (default: only the "
                                                                 "final one)")
    p.add_argument("--collect-missing", action="store_true",
                   help="collect offrl's own dataset ids from their shipped cards when absent")
    p.set_defaults(func=cmd_sweep)

    p = _sub(sub, "evaluate", "evaluate a CQL run or checkpoint: normalized return and Q bias")
    p.add_argument("target", help="run directory or checkpoint file")
    p.add_argument("--episodes", type=positive_int, default=10, help="deterministic evaluation episodes")
    p.add_argument("--device", type=_device, default="cpu", help="torch device: cpu, cuda or cuda:N")
    p.add_argument("--leaderboard", default=None, help=LEADERBOARD_HELP)
    p.add_argument("--no-leaderboard", action="store_true", help="append no leaderboard row")
    p.set_defaults(func=cmd_evaluate)

    p = _sub(sub, "export-policy", "write a run's policy as a self-contained TorchScript and/or ONNX file")
    p.add_argument("run_dir", help="offline run directory")
    p.add_argument("--out", default=None, help="output folder (default: <run_dir>/export)")
    p.add_argument("--format", choices=("torchscript", "onnx", "both"), default="torchscript",
                   help="file format(s); ONNX needs pip install 'offrl[onnx]'")
    p.set_defaults(func=cmd_export_policy)

    p = _sub(sub, "ope", "off-policy evaluation: estimate a fixed policy's value from a dataset alone (FQE, or a "
                         "conservative lower bound), and check it against Monte-Carlo rollouts where the env exists")
    p.add_argument("--policy", required=True,
                   help="a shipped policy ENV/TIER (e.g. HalfCheetah-v5/expert), a shipped snapshot ENV/replay/STEP, "
                        "random, a training run's folder, one of its snapshots RUN/snapshots/actor_STEP.pt, an "
                        "exported policy.pt (beside its policy.json) or a shipped-format policy file")
    p.add_argument("--dataset", required=True, help="dataset id, e.g. halfcheetah/medium-v1")
    p.add_argument("--method", required=True, choices=["fqe", "cql-q", "cql-v"],
                   help="fqe: Fitted Q Evaluation; cql-q: CQL eq. 1, a lower bound on Q at every (s, a); cql-v: CQL "
                        "eq. 2 with mu = pi, a tighter lower bound on the value")
    p.add_argument("--steps", type=positive_int, required=True, help="critic updates")
    p.add_argument("--alpha", type=_finite_float, default=None,
                   help="weight of the conservative penalty (default 0.01)")
    p.add_argument("--mu", choices=["softmax", "uniform", "policy"], default=None,
                   help="cql-q's penalty distribution (default softmax: CQL(H)'s logsumexp over uniform and policy "
                        "actions)")
    _set_option(p, "OPEConfig")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of torch, the initial states and the truth")
    p.add_argument("--deterministic", action="store_true",
                   help="evaluate the policy's mean action (tanh of the mean) instead of the stochastic policy")
    p.add_argument("--env", default=None, help="env for the initial states and the truth (default: the dataset's)")
    p.add_argument("--no-truth", action="store_true", help="no Monte-Carlo truth")
    p.add_argument("--initial-states", choices=["auto", "env", "dataset"], default="auto",
                   help="where V(s0) is averaged: env resets (the truth's own start states), the dataset's episode "
                        "starts (d3rlpy's choice), or auto: env resets when there is an env")
    p.add_argument("--truth-episodes", type=_integer_at_least(2), default=50,
                   help="rollouts of the policy for its true value; their reset states are the initial states")
    p.add_argument("--states", type=positive_int, default=100,
                   help="env initial states for the estimate when there is no truth")
    p.add_argument("--eval-every", type=positive_int, default=None,
                   help="updates between estimates during training (the curve in <out>/estimates.csv)")
    p.add_argument("--log-every", type=positive_int, default=1_000, help="updates between metrics rows")
    p.add_argument("--checkpoint-every", type=positive_int, default=5_000, help="updates between checkpoints")
    p.add_argument("--out", default=None, help="run folder (checkpoints, curves, final.json; resumable)")
    p.add_argument("--results", default=None, help="CSV to append the estimate's row to (e.g. evaluation/ope.csv)")
    p.add_argument("--collect-missing", action="store_true",
                   help="collect the dataset from its shipped card first if it is absent from the store")
    p.add_argument("--device", type=_device, default="cpu", help="torch device: cpu, cuda or cuda:N")
    p.add_argument("--resume", action="store_true", help="continue the estimate in --out from its checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_ope)

    p = _sub(sub, "ope-summary", "summarise OPE results DOPE-style (absolute error, rank correlation, regret@1, "
                                 "lower-bound rate per env and method) with a scatter plot per env")
    p.add_argument("results", help="the OPE results CSV (e.g. evaluation/ope.csv)")
    p.add_argument("--out", default=None, help="folder for ope_summary.{csv,md} and the plots (default: beside it)")
    p.add_argument("--sweep", default=None, metavar="SWEEP_ID", help="only the rows of this sweep (its sweep_id)")
    p.set_defaults(func=cmd_ope_summary)

    p = _sub(sub, "leaderboard", "aggregate the leaderboard over seeds; write summary and plots beside it")
    p.add_argument("--leaderboard", default=None,
                   help="leaderboard CSV (default: $OFFRL_LEADERBOARD, else ~/.offrl/leaderboard.csv)")
    p.add_argument("--append", nargs="+", metavar="RUN_DIR", default=None,
                   help="first append the rows of these finished runs (train-cql or finetune folders with a "
                        "final.json), once each: for a run trained with --no-leaderboard or a leaderboard it "
                        "could not write")
    p.add_argument("--evidence", type=positive_int, default=None, metavar="STEPS",
                   help="instead of the summary, aggregate the offline runs of exactly STEPS updates as the evidence "
                        "grid (rliable IQM and CIs per dataset and across datasets, performance profile, learning "
                        "curves, CORL's published scores beside ours); needs pip install 'offrl[eval]'")
    p.add_argument("--sweep", default=None, metavar="SWEEP_ID[,...]",
                   help="with --evidence: only the rows of these sweeps (the sweep id `offrl sweep` prints and the "
                        "rows record), so other runs at the same budget stay out of the result set")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="with --evidence: the folder for evidence_summary.{csv,md} and the plots (default: the "
                        "leaderboard's folder, evaluation/ in the repository)")
    p.set_defaults(func=cmd_leaderboard)

    p = _sub(sub, "datasets", "list, inspect, verify, import and export datasets")
    p.set_defaults(func=cmd_datasets)
    ds = p.add_subparsers(dest="datasets_command", required=True, metavar="SUBCOMMAND")
    _sub(ds, "list", "every dataset in the store and every shipped id, with its status")
    q = _sub(ds, "info", "a dataset's card")
    q.add_argument("id", help="dataset id")
    q = _sub(ds, "verify", "sha256 and structural checks (every dataset in the store without ID)")
    q.add_argument("id", nargs="*", help="dataset ids (default: all)")
    q = _sub(ds, "import-d4rl", "register a D4RL HDF5 file")
    q.add_argument("file", help="the D4RL .hdf5 file")
    q.add_argument("--id", required=True, help="offrl id to register it as, e.g. d4rl/halfcheetah/medium-v2")
    q.add_argument("--env", default=None, help="Gymnasium env id (default: from the id's env part)")
    q = _sub(ds, "import-minari", "register a dataset from the local Minari store")
    q.add_argument("minari_id", help="Minari dataset id, e.g. mujoco/halfcheetah/medium-v0")
    q.add_argument("--id", default=None, help="offrl id (default: the Minari id, lower case)")
    q.add_argument("--download", action="store_true", help="let Minari download it (needs network)")
    q.add_argument("--env", default=None, help="Gymnasium env id (default: the one Minari records)")
    q = _sub(ds, "export-minari", "write a dataset into the local Minari store")
    q.add_argument("id", help="offrl dataset id")
    q.add_argument("--minari-id", default=None, help="Minari id (default: offrl/<env>/<tier>-vN)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from offrl.errors import OfflineRLError, TrainingInterrupted

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        configure_process(args.threads)
        return args.func(args)
    except OfflineRLError as exc:
        print(f"offrl: error: {exc}", file=sys.stderr)
        return 2
    except TrainingInterrupted as exc:
        print(f"offrl: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("offrl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
