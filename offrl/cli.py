"""The `offrl` command. Thin: parses arguments, calls library functions, turns errors into exit code 2."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

__all__ = ["main"]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, found {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, found {value}")
    return value


def _set_threads(threads: int | None) -> None:
    import torch

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
    command = "offrl " + shlex.join(sys.argv[1:]) if sys.argv[1:] else None
    run_dir = pretrain(config, out, resume=args.resume, show_progress=not args.quiet, command=command)
    print(f"run directory: {run_dir}")
    return 0


def cmd_ship_policies(args: argparse.Namespace) -> int:
    from offrl.policies import describe, ship_policies

    cards = ship_policies(Path(args.run), Path(args.dest) if args.dest else None, episodes=args.episodes)
    for card in cards.values():
        print(describe(card))
    return 0


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
    return parser


def main(argv: list[str] | None = None) -> int:
    from offrl.errors import OfflineRLError

    parser = build_parser()
    args = parser.parse_args(argv)
    threads = args.threads or (int(os.environ["OFFRL_THREADS"]) if os.environ.get("OFFRL_THREADS") else None)
    _set_threads(threads)
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
