"""Shipped behaviour policies: the actors that every offrl dataset is collected from.

Each policy is `datasets/policies/<env id>/<tier>.pt` (actor weights plus what rebuilds the actor)
next to `<tier>.json`, its card. Loading checks the weights' sha256 against the card first.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from offrl import __version__
from offrl.envs import versions
from offrl.errors import OfflineRLError
from offrl.evaluation.rollout import evaluate_policy, uniform_random_policy
from offrl.faults import fault_point
from offrl.fileio import atomic_torch_save, atomic_write_bytes, git_commit, sha256_file
from offrl.nets import ActorParameterization, TanhGaussianActor
from offrl.shipped import shipped_policies_root

__all__ = ["ShippedPolicy", "policy_root", "policy_path", "load_policy", "save_policy",
           "ship_policies", "ship_replay_snapshots", "replay_card_path", "load_replay_card", "CARD_EVAL_SEED"]

POLICY_FORMAT = "offrl-policy"
CARD_EVAL_SEED = 2_000_000  # card returns use start states no training evaluation saw
# Expert returns SAC reaches in about 300k steps (SAC paper, CleanRL and CORL curves): what a shipped expert
# is held to. A card whose expert falls short says so.
EXPERT_TARGETS = {"HalfCheetah-v5": 6000.0, "Hopper-v5": 2500.0, "Walker2d-v5": 3000.0, "Pendulum-v1": -200.0}


@dataclass
class ShippedPolicy:
    actor: TanhGaussianActor
    card: dict
    path: Path


def policy_root() -> Path:
    """The shipped policies (offrl.shipped), unless OFFRL_POLICIES_PATH names another folder."""
    return Path(os.environ.get("OFFRL_POLICIES_PATH") or shipped_policies_root())


def policy_path(env_id: str, tier: str, root: Path | None = None) -> Path:
    return Path(root or policy_root()) / env_id / f"{tier}.pt"


def save_policy(actor: TanhGaussianActor, env_id: str, path: Path) -> str:
    """Write the actor's weights and shape; returns the file's sha256."""
    blob = {"format": POLICY_FORMAT, "format_version": 1, "env_id": env_id, "obs_dim": actor.obs_dim,
            "act_dim": actor.act_dim, "hidden": list(actor.hidden),
            "actor": {k: v.detach().cpu() for k, v in actor.state_dict().items()}}
    if actor.parameterization != ActorParameterization():  # files of the original actor keep their exact bytes
        blob["parameterization"] = dataclasses.asdict(actor.parameterization)
    atomic_torch_save(blob, path)
    return sha256_file(path)


def load_policy(path_or_env: str | Path, tier: str | None = None, device: str | torch.device = "cpu") -> ShippedPolicy:
    """Load `load_policy("HalfCheetah-v5", "expert")` or `load_policy(path/to/expert.pt)`.

    Refuses a file whose sha256 differs from its card's, naming both hashes.
    """
    path = policy_path(str(path_or_env), tier) if tier is not None else Path(path_or_env)
    card_path = path.with_suffix(".json")
    if not path.is_file():
        raise OfflineRLError(f"policy {path}: no such file")
    if not card_path.is_file():
        raise OfflineRLError(f"policy {path}: its card {card_path} is missing")
    try:
        card = json.loads(card_path.read_text())
    except json.JSONDecodeError as exc:
        raise OfflineRLError(f"policy card {card_path}: not valid JSON ({exc})") from None
    actual = sha256_file(path)
    if actual != card.get("sha256"):
        raise OfflineRLError(f"policy {path}: sha256 {actual} does not match its card's {card.get('sha256')}; "
                             "the weights were changed or damaged")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob.get("format") != POLICY_FORMAT:
            raise ValueError("not an offrl policy file")
        actor = TanhGaussianActor(blob["obs_dim"], blob["act_dim"], tuple(blob["hidden"]),
                                  ActorParameterization(**blob.get("parameterization", {})))
        actor.load_state_dict(blob["actor"])
    except Exception as exc:  # noqa: BLE001 - any failure here means a file we cannot use
        raise OfflineRLError(f"policy {path}: cannot be loaded ({type(exc).__name__}: {exc})") from None
    return ShippedPolicy(actor=actor.to(device).eval(), card=card, path=path)


def _medium_target(expert_return: float, random_return: float) -> tuple[float, str]:
    when = ("; D4RL early-stops SAC when it first gets there, so only snapshots up to the first that reaches the "
            "target are candidates")
    if expert_return > 0:
        return expert_return / 3.0, "evaluated return nearest one third of the expert's (D4RL medium)" + when
    # One third of a negative return lies above the expert; use one third of the way up from random.
    return random_return + (expert_return - random_return) / 3.0, \
        "evaluated return nearest one third of the way from the random policy's return to the expert's" + when


def ship_policies(run_dir: Path, dest_root: Path | None = None, episodes: int = 20,
                  command: str | None = None) -> dict[str, dict]:
    """Pick the expert (best evaluated snapshot) and medium snapshots of a pretrain run, evaluate each over
    `episodes` deterministic episodes, write weights + cards, and export the replay buffer up to the
    medium snapshot (compressed HDF5, in the run directory) for the medium-replay tier."""
    from offrl.algos.sac import SACConfig
    from offrl.data.hdf5 import write_replay_prefix
    from offrl.runs import read_run_record
    from offrl.train.checkpoints import load_checkpoint
    from offrl.train.online import ONLINE_KIND

    run_dir = Path(run_dir)
    run = read_run_record(run_dir, ONLINE_KIND)
    evals_path = run_dir / "evaluations.csv"
    if not evals_path.is_file():
        raise OfflineRLError(f"{run_dir} is not a pretrain run: {evals_path.name} is missing")
    settings = run["settings"]
    env_id, seed = settings["env_id"], settings["seed"]
    evals = pd.read_csv(evals_path)
    if evals.empty:
        raise OfflineRLError(f"{evals_path}: no evaluations yet")
    random_result = evaluate_policy(uniform_random_policy(run["act_dim"], CARD_EVAL_SEED), env_id, episodes,
                                    CARD_EVAL_SEED)
    expert_row = evals.loc[evals["return_mean"].idxmax()]
    target, rule = _medium_target(float(expert_row["return_mean"]), random_result.mean)
    reached = evals.index[evals["return_mean"] >= target]
    early = evals.loc[: reached[0]] if len(reached) else evals
    medium_row = early.loc[(early["return_mean"] - target).abs().idxmin()]

    cards = {}
    for tier, row in (("expert", expert_row), ("medium", medium_row)):
        step = int(row["step"])
        snapshot = torch.load(run_dir / "snapshots" / f"actor_{step}.pt", map_location="cpu", weights_only=True)
        sac = SACConfig(**{k: tuple(v) if k == "hidden" else v for k, v in settings["sac"].items()
                           if k in {f.name for f in dataclasses.fields(SACConfig)}})
        actor = TanhGaussianActor(run["obs_dim"], run["act_dim"], sac.hidden, sac.actor_parameterization())
        actor.load_state_dict(snapshot["actor"])
        actor.eval()
        result = evaluate_policy(lambda o, a=actor: a.act(o, deterministic=True), env_id, episodes, CARD_EVAL_SEED)
        weights = policy_path(env_id, tier, dest_root)
        sha = save_policy(actor, env_id, weights)
        fault_point("policy-written")
        cards[tier] = {
            "env_id": env_id, "env_version": env_id.rsplit("-v", 1)[-1], "tier": tier, **versions(),
            "torch": torch.__version__, "offrl_version": __version__, "git_commit": run.get("git_commit", "unknown"),
            "shipped_with_git_commit": git_commit(),
            "algorithm": "SAC", "seed": seed, "training_steps": step, "run_steps": int(settings["env_steps"]),
            "selection": "best evaluated snapshot (10 deterministic episodes)" if tier == "expert" else rule,
            "selection_return_10ep": float(row["return_mean"]),
            "return_mean": result.mean, "return_std": result.std, "return_min": float(result.returns.min()),
            "return_max": float(result.returns.max()), "eval_episodes": episodes, "eval_deterministic": True,
            "eval_seed": CARD_EVAL_SEED, "random_policy_return_mean": random_result.mean,
            "obs_dim": run["obs_dim"], "act_dim": run["act_dim"], "hidden": settings["sac"]["hidden"],
            "weights_file": weights.name, "sha256": sha,
            "command": " && ".join([run["command"], *run.get("resumed_with", [])]),
            "ship_command": command or "offrl " + shlex.join(sys.argv[1:]),
        }
    target_return = EXPERT_TARGETS.get(env_id)
    if target_return is not None:
        expert = cards["expert"]
        expert["target_return"] = target_return
        expert["meets_target"] = expert["return_mean"] >= target_return
        if not expert["meets_target"]:
            expert["shortfall"] = (f"expert return {expert['return_mean']:.0f} is below the {target_return:.0f} target "
                                   f"after {expert['run_steps']} SAC steps; resume the pretrain run with a larger "
                                   "--steps to train longer")
    checkpoint = load_checkpoint(run_dir / "checkpoint.pt", "sac-online")
    medium_step = cards["medium"]["training_steps"]
    if checkpoint["loop"]["step"] >= medium_step:
        replay_path = run_dir / "replay_medium.hdf5"
        write_replay_prefix(checkpoint["source"]["buffer"]["transitions"], medium_step, replay_path, env_id=env_id)
        cards["medium"]["replay_buffer"] = {"path": str(replay_path), "transitions": medium_step}
    for tier, card in cards.items():
        atomic_write_bytes(policy_path(env_id, tier, dest_root).with_suffix(".json"),
                           (json.dumps(card, indent=2) + "\n").encode())
    return cards


REPLAY_CARD = "replay.json"


def replay_card_path(env_id: str, root: Path | None = None) -> Path:
    return Path(root or policy_root()) / env_id / REPLAY_CARD


def ship_replay_snapshots(run_dir: Path, up_to: int, every: int = 10_000, dest_root: Path | None = None,
                          command: str | None = None) -> dict:
    """Ship the actor snapshots of a pretrain run that the portable medium-replay tier is rolled out from.

    The tier stands for SAC's replay buffer up to the medium checkpoint (D4RL medium-replay): the run's first
    `learning_starts` steps were uniform random actions, and from then on the data came from the policy being
    trained. A replay buffer cannot be rebuilt on another machine (SAC training is not bit-reproducible across
    CPUs), so offrl keeps the policies instead: the steps from `learning_starts` to `up_to` are cut into segments
    at the multiples of `every`, and each segment is represented by the run's snapshot nearest its middle (the
    earlier one on a tie), the policy that was acting then. Writes `<env>/replay/actor_<step>.pt` (policy files
    with their sha256) and `<env>/replay.json`, the card `offrl collect --tier medium-replay` reads."""
    from offrl.runs import read_run_record
    from offrl.train.online import ONLINE_KIND

    run_dir = Path(run_dir)
    run = read_run_record(run_dir, ONLINE_KIND)
    settings = run["settings"]
    env_id, start = settings["env_id"], int(settings["learning_starts"])
    if every < 1 or up_to <= start:
        raise OfflineRLError(f"--up-to must exceed the run's learning_starts ({start}) and --every be >= 1")
    bounds = [start, *range(((start // every) + 1) * every, up_to, every), up_to]
    evals = pd.read_csv(run_dir / "evaluations.csv").set_index("step")["return_mean"]
    available = sorted(int(p.stem.split("_")[1]) for p in (run_dir / "snapshots").glob("actor_*.pt"))
    available = [s for s in available if s < up_to]
    if not available:
        raise OfflineRLError(f"{run_dir / 'snapshots'}: no actor snapshot before step {up_to}")
    segments = []
    for begin, until in zip(bounds[:-1], bounds[1:], strict=True):
        middle = (begin + until) / 2
        step = min(available, key=lambda s: (abs(s - middle), s))
        snapshot = run_dir / "snapshots" / f"actor_{step}.pt"
        weights = torch.load(snapshot, map_location="cpu", weights_only=True)["actor"]
        actor = TanhGaussianActor(run["obs_dim"], run["act_dim"], tuple(settings["sac"]["hidden"]))
        actor.load_state_dict(weights)
        path = Path(dest_root or policy_root()) / env_id / "replay" / f"actor_{step}.pt"
        segments.append({"begin": begin, "end": until, "step": step, "file": f"replay/{path.name}",
                         "sha256": save_policy(actor, env_id, path), "transitions": until - begin,
                         "eval_return_mean": float(evals.get(step, float("nan")))})
    card = {"env_id": env_id, "kind": "SAC actor snapshots along training, for the medium-replay tier",
            "random_transitions": start, "up_to": up_to, "every": every, "segments": segments,
            "eval_return_at_up_to": float(evals.get(up_to, float("nan"))),
            "source_run": {"command": " && ".join([run["command"], *run.get("resumed_with", [])]),
                           "git_commit": run.get("git_commit"), "seed": settings["seed"]},
            "torch": torch.__version__, "offrl_version": __version__, "shipped_with_git_commit": git_commit(),
            "ship_command": command or "offrl " + shlex.join(sys.argv[1:])}
    atomic_write_bytes(replay_card_path(env_id, dest_root), (json.dumps(card, indent=2) + "\n").encode())
    return card


def load_replay_card(env_id: str) -> tuple[dict, list[TanhGaussianActor]]:
    """The replay card and its snapshot actors, each checked against the card's sha256."""
    path = replay_card_path(env_id)
    if not path.is_file():
        raise OfflineRLError(f"medium-replay for {env_id}: no replay snapshots shipped ({path} is missing); ship them "
                             "from a pretrain run with `offrl ship-replay --run RUN --up-to MEDIUM_STEP`")
    try:
        card = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise OfflineRLError(f"{path}: not valid JSON ({exc})") from None
    actors = []
    for segment in card["segments"]:
        weights = path.parent / segment["file"]
        if not weights.is_file() or sha256_file(weights) != segment["sha256"]:
            raise OfflineRLError(f"replay snapshot {weights}: missing or its sha256 differs from {path}")
        blob = torch.load(weights, map_location="cpu", weights_only=True)
        actor = TanhGaussianActor(blob["obs_dim"], blob["act_dim"], tuple(blob["hidden"]))
        actor.load_state_dict(blob["actor"])
        actors.append(actor.eval())
    return card, actors


def describe(card: dict) -> str:
    return (f"{card['env_id']} {card['tier']}: {card['return_mean']:.1f} ± {card['return_std']:.1f} "
            f"over {card['eval_episodes']} episodes (step {card['training_steps']})")
