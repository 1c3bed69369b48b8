"""Roll behaviour policies out into dataset versions (the D4RL tiers).

K envs step in lockstep so the policy runs one batched forward per step. Episodes are kept in the
order they *started*, and the dataset is that prefix cut at N transitions: a policy whose episodes
end early is not over-represented, as it would be if episodes were taken in the order they finished.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from offrl.data.hdf5 import read_transitions, write_transitions
from offrl.data.portable import SAMPLER_VERSION, PortableActor, PortableNormal
from offrl.data.registry import (
    card_or_shipped,
    card_path,
    data_path,
    dataset_writer,
    env_short_name,
    parse_dataset_id,
    read_card,
    register_dataset,
    shipped_card,
    verify_dataset,
)
from offrl.envs import env_spec, make_env, versions
from offrl.errors import OfflineRLError
from offrl.evaluation.rollout import evaluate_policy, uniform_random_policy
from offrl.fileio import atomic_write_bytes, sha256_file, temp_beside
from offrl.nets import TanhGaussianActor, tanh_gaussian_log_prob
from offrl.policies import CARD_EVAL_SEED, load_policy, policy_path

__all__ = ["TIERS", "SAMPLERS", "CollectConfig", "collect", "collect_shipped", "card_sampler", "rollout_transitions",
           "reference_scores"]

TIERS = ("random", "medium", "medium-replay", "expert", "medium-expert")
REFERENCE_EPISODES = 20
# How a stochastic policy's actions are computed (card field `collection.sampler`):
# - "portable": offrl.data.portable, bit-identical on every CPU (the default since the v1 datasets);
# - "torch": the actor's own float32 forward and torch's normal generator, as the v0 cards were made: faster,
#   but its bytes depend on the CPU's vector units, so a v0 card rebuilds only on a host like its own.
SAMPLERS = ("portable", "torch")


@dataclass
class CollectConfig:
    env_id: str = "HalfCheetah-v5"
    tier: str = "medium"
    transitions: int = 1_000_000
    seed: int = 0
    version: int = 0
    namespace: str | None = None
    num_envs: int = 16  # lockstep envs: enough to amortise the policy's forward pass
    replay_file: str | None = None  # medium-replay: the SAC replay buffer export; default from the medium card
    sampler: str = "portable"  # see SAMPLERS

    @property
    def dataset_id(self) -> str:
        prefix = f"{self.namespace}/" if self.namespace else ""
        return f"{prefix}{env_short_name(self.env_id)}/{self.tier}-v{self.version}"

    def validate(self) -> None:
        if self.tier not in TIERS:
            raise OfflineRLError(f"--tier {self.tier!r} is not one of {', '.join(TIERS)}")
        if self.transitions < 1:
            raise OfflineRLError(f"--transitions must be >= 1, found {self.transitions}")
        if self.version < 0:
            raise OfflineRLError(f"--version must be >= 0, found {self.version}")
        if self.num_envs < 1:
            raise OfflineRLError(f"num_envs must be >= 1, found {self.num_envs}")
        if self.sampler not in SAMPLERS:
            raise OfflineRLError(f"--sampler {self.sampler!r} is not one of {', '.join(SAMPLERS)}")


@contextlib.contextmanager
def _single_thread():
    """Policy inference on K rows gains nothing from threads, and one thread keeps the matmul's summation
    order, hence the dataset's bytes, independent of the machine's core count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def rollout_transitions(env_id: str, actor: TanhGaussianActor | None, transitions: int, seed: int,
                        num_envs: int = 16, show_progress: bool = False, sampler: str = "portable"
                        ) -> tuple[dict[str, np.ndarray], float]:
    """Exactly `transitions` rows from stochastic rollouts of `actor` (uniform actions when None), its actions
    computed by `sampler` (see SAMPLERS).

    Returns the arrays and the measured transitions/s (env steps including those discarded at the end).
    """
    if sampler not in SAMPLERS:
        raise OfflineRLError(f"sampler {sampler!r} is not one of {', '.join(SAMPLERS)}")
    with _single_thread():
        return _rollout_transitions(env_id, actor, transitions, seed, num_envs, show_progress, sampler)


def _rollout_transitions(env_id: str, actor: TanhGaussianActor | None, transitions: int, seed: int,
                         num_envs: int, show_progress: bool, sampler: str) -> tuple[dict[str, np.ndarray], float]:
    envs = [make_env(env_id) for _ in range(num_envs)]
    spec = env_spec(envs[0])
    max_len = spec.max_episode_steps or transitions
    act_dim = spec.act_dim
    generator = torch.Generator().manual_seed(seed)
    action_rng = np.random.default_rng(seed)
    portable = None
    if actor is not None and sampler == "portable":
        portable = PortableActor(actor.state_dict(), actor.parameterization), PortableNormal(seed)
    uniform_log_prob = act_dim * math.log(0.5)
    is_mujoco = hasattr(envs[0].unwrapped, "data") and hasattr(envs[0].unwrapped.data, "qpos")

    finished: dict[int, dict[str, np.ndarray]] = {}
    keys = ["observations", "actions", "rewards", "next_observations", "terminals", "timeouts",
            "infos/action_log_probs"] + (["infos/qpos", "infos/qvel"] if is_mujoco else [])
    widths = {"observations": spec.obs_dim, "next_observations": spec.obs_dim, "actions": act_dim}
    if is_mujoco:
        widths.update({"infos/qpos": envs[0].unwrapped.data.qpos.shape[0],
                       "infos/qvel": envs[0].unwrapped.data.qvel.shape[0]})
    # One preallocated episode-sized block per env, written row by row: no per-step list growth.
    blocks = [{k: np.zeros((max_len, widths[k]) if k in widths else max_len,
                           dtype=bool if k in ("terminals", "timeouts") else np.float64) for k in keys}
              for _ in range(num_envs)]
    sim_data = [env.unwrapped.data for env in envs] if is_mujoco else []
    length = [0] * num_envs
    running = [False] * num_envs
    started_index = [-1] * num_envs
    started, bound = 0, 0  # bound: completed lengths + max_len per in-flight episode (an upper bound on rows)
    obs = np.zeros((num_envs, spec.obs_dim), dtype=np.float32)

    def start(i: int) -> None:
        nonlocal started, bound
        first_seed = seed + i if started < num_envs else None  # later resets draw from each env's own RNG
        obs[i] = envs[i].reset(seed=first_seed)[0]
        length[i], running[i], started_index[i] = 0, True, started
        started += 1
        bound += max_len

    for i in range(num_envs):
        if bound < transitions:
            start(i)
    steps_taken, t0 = 0, time.perf_counter()
    progress = tqdm(total=transitions, disable=not show_progress, unit="tr", desc=f"collect {env_id}")
    while any(running):
        active = [i for i in range(num_envs) if running[i]]
        if actor is None:
            actions = action_rng.uniform(-1.0, 1.0, (len(active), act_dim)).astype(np.float32)
            log_probs = np.full(len(active), uniform_log_prob, dtype=np.float32)
        elif portable is not None:
            actions, log_probs = portable[0].sample(obs[active], portable[1])
            actions = actions.astype(np.float32)  # the stored action is exactly the one the env is stepped with
        else:
            with torch.no_grad():
                mean, log_std = actor.distribution_params(torch.as_tensor(obs[active]))
                pre_tanh = mean + log_std.exp() * torch.randn(mean.shape, generator=generator)
                log_probs = tanh_gaussian_log_prob(pre_tanh, mean, log_std).numpy()
                actions = torch.tanh(pre_tanh).numpy()
        env_actions = envs[0].to_env_action(actions)  # all envs share one action space
        for j, i in enumerate(active):
            block, t = blocks[i], length[i]
            if is_mujoco:
                block["infos/qpos"][t] = sim_data[i].qpos
                block["infos/qvel"][t] = sim_data[i].qvel
            next_obs, reward, terminated, truncated, _ = envs[i].step_env_action(env_actions[j])
            truncated = truncated or t + 1 >= max_len
            block["observations"][t] = obs[i]
            block["actions"][t] = actions[j]
            block["rewards"][t] = reward
            block["next_observations"][t] = next_obs
            block["terminals"][t] = terminated
            block["timeouts"][t] = truncated and not terminated
            block["infos/action_log_probs"][t] = log_probs[j]
            obs[i] = next_obs
            length[i] = t + 1
            if terminated or truncated:
                finished[started_index[i]] = {k: v[: t + 1].copy() for k, v in block.items()}
                bound += t + 1 - max_len
                running[i] = False
                if bound < transitions:
                    start(i)
        steps_taken += len(active)
        progress.update(min(len(active), max(0, transitions - progress.n)))
    progress.close()
    rate = steps_taken / max(time.perf_counter() - t0, 1e-9)
    for env in envs:
        env.close()

    ordered = [finished[k] for k in sorted(finished)]
    arrays = {k: np.concatenate([e[k] for e in ordered])[:transitions] for k in ordered[0]}
    arrays["terminals"] = arrays["terminals"].astype(bool)
    arrays["timeouts"] = arrays["timeouts"].astype(bool)
    if not arrays["terminals"][-1]:
        arrays["timeouts"][-1] = True  # the cut at N ends the last episode: "end of collection"
    arrays = {k: (v.astype(np.float32) if k not in ("terminals", "timeouts") else v) for k, v in arrays.items()}
    return arrays, rate


def reference_scores(env_id: str) -> dict:
    """Random = uniform policy's mean return; expert = the shipped expert's card (both >= 20 episodes)."""
    act_dim = env_spec(make_env(env_id)).act_dim
    random_result = evaluate_policy(uniform_random_policy(act_dim, CARD_EVAL_SEED), env_id, REFERENCE_EPISODES,
                                    CARD_EVAL_SEED)
    scores: dict = {"random": {"return_mean": random_result.mean, "episodes": REFERENCE_EPISODES,
                               "source": "uniform random policy in [-1, 1], offrl"}}
    expert_file = policy_path(env_id, "expert")
    if expert_file.exists():
        card = load_policy(expert_file).card
        scores["expert"] = {"return_mean": card["return_mean"], "episodes": card["eval_episodes"],
                            "source": f"shipped expert policy {expert_file.parent.name}/expert.pt "
                                      "(deterministic actions)"}
    else:
        scores["expert"] = None
        scores["note"] = f"no shipped expert policy for {env_id}: normalized scores are unavailable"
    return scores


def _policy_fields(env_id: str, tier: str) -> tuple[TanhGaussianActor, dict]:
    policy = load_policy(env_id, tier)
    fields = {"path": f"datasets/policies/{env_id}/{tier}.pt",
              "sha256": policy.card["sha256"], "return_mean": policy.card["return_mean"],
              "training_steps": policy.card["training_steps"]}
    return policy.actor, fields


def _medium_replay_arrays(config: CollectConfig) -> tuple[dict[str, np.ndarray], dict]:
    replay = config.replay_file
    medium_card_path = policy_path(config.env_id, "medium").with_suffix(".json")
    medium_card = json.loads(medium_card_path.read_text()) if medium_card_path.exists() else {}
    if replay is None:
        replay = medium_card.get("replay_buffer", {}).get("path")
    if replay is None or not Path(replay).is_file():
        run = f"runs/pretrain/{config.env_id}-seed{medium_card.get('seed', 0)}"
        raise OfflineRLError(
            f"medium-replay for {config.env_id} needs the SAC replay buffer up to the medium checkpoint, which is not "
            f"here ({replay or 'no path recorded'}); produce it with `{medium_card.get('command', 'offrl pretrain')}"
            f" --out {run}` then `offrl ship-policies --run {run}`, or pass --replay-file FILE")
    arrays, _ = read_transitions(Path(replay))
    source = {"path": str(replay), "sha256": sha256_file(Path(replay)), "transitions": len(arrays["rewards"]),
              "medium_policy_sha256": medium_card.get("sha256"),
              "medium_policy_steps": medium_card.get("training_steps")}
    return arrays, source


def _medium_replay_rollouts(config: CollectConfig, show_progress: bool) -> tuple[dict[str, np.ndarray], dict, float]:
    """medium-replay from the shipped replay snapshots (offrl.policies.ship_replay_snapshots): uniform actions
    for the run's warm-up steps, then each snapshot's stochastic rollouts for the steps it stands for, in
    training order. The same distribution as SAC's replay buffer up to the medium step, at the granularity of
    the snapshots, and rebuildable on any CPU (the portable sampler), where a replay buffer is not."""
    from offrl.policies import load_replay_card, replay_card_path

    card, actors = load_replay_card(config.env_id)
    start = time.perf_counter()
    parts = [rollout_transitions(config.env_id, None, card["random_transitions"], config.seed, config.num_envs)[0]]
    progress = tqdm(total=len(actors), disable=not show_progress, unit="snapshot",
                    desc=f"medium-replay {config.env_id}")
    for index, (segment, actor) in enumerate(zip(card["segments"], actors, strict=True)):
        arrays, _ = rollout_transitions(config.env_id, actor, segment["transitions"], config.seed + index + 1,
                                        config.num_envs, sampler="portable")
        parts.append(arrays)
        progress.update(1)
    progress.close()
    keys = [k for k in parts[0] if all(k in p for p in parts)]
    arrays = {k: np.concatenate([p[k] for p in parts]) for k in keys}
    policy = {"kind": "rollouts of SAC snapshots along training up to the medium step (replay-buffer stand-in)",
              "replay_card": f"datasets/policies/{config.env_id}/replay.json",
              "replay_card_sha256": sha256_file(replay_card_path(config.env_id)),
              "random_transitions": card["random_transitions"], "up_to": card["up_to"],
              "snapshots": [{k: s[k] for k in ("begin", "end", "step", "sha256", "eval_return_mean")}
                            for s in card["segments"]],
              "source_run": card["source_run"]}
    return arrays, policy, len(arrays["rewards"]) / max(time.perf_counter() - start, 1e-9)


def _merge_sources(config: CollectConfig) -> tuple[dict[str, np.ndarray], list[dict]]:
    parts, sources = [], []
    for tier in ("medium", "expert"):
        source_id = CollectConfig(env_id=config.env_id, tier=tier, version=config.version,
                                  namespace=config.namespace).dataset_id
        try:
            card = verify_dataset(source_id, structural=False)
        except OfflineRLError as exc:
            raise OfflineRLError(f"medium-expert-v{config.version} concatenates {source_id}, which is not usable: "
                                 f"{exc}. Collect it first: offrl collect --env {config.env_id} --tier {tier} "
                                 f"--version {config.version}") from None
        arrays, _ = read_transitions(data_path(source_id))
        parts.append(arrays)
        sources.append({"id": source_id, "sha256": card["sha256"], "transitions": card["transitions"]})
    keys = [k for k in parts[0] if all(k in p for p in parts)]
    return {k: np.concatenate([p[k] for p in parts]) for k in keys}, sources


def collect(config: CollectConfig, show_progress: bool = True, command: str | None = None) -> dict:
    """Collect one dataset version and register it; returns its card. The id is locked from the start (a
    second writer of the same id fails at once) until its card is written."""
    config.validate()
    with dataset_writer(config.dataset_id):
        return _collect(config, show_progress, command)


def _collect(config: CollectConfig, show_progress: bool, command: str | None) -> dict:
    dataset_id = config.dataset_id
    existing = card_path(dataset_id)
    rebuild_card = None
    if existing.exists():
        if data_path(dataset_id).exists():
            raise OfflineRLError(f"dataset {dataset_id} already exists ({existing}); versions are immutable, pass a "
                                 f"new version (--version {config.version + 1})")
        rebuild_card = read_card(dataset_id)  # card tracked in git, file not: rebuild it and check the bytes
    else:
        rebuild_card = shipped_card(dataset_id)  # one of offrl's own ids: rebuilt from its shipped card
    if rebuild_card is not None:  # a rebuild follows the card's sampler and lockstep width, not the defaults
        config = dataclasses.replace(config, sampler=card_sampler(rebuild_card),
                                     num_envs=rebuild_card.get("collection", {}).get("num_envs", config.num_envs))

    spec = env_spec(make_env(config.env_id))
    fields: dict = {"env_id": config.env_id, **versions(), "tier": config.tier, "seed": config.seed,
                    "command": command or "offrl " + shlex.join(sys.argv[1:])}
    rate = None
    if config.tier == "random":
        arrays, rate = rollout_transitions(config.env_id, None, config.transitions, config.seed, config.num_envs,
                                           show_progress)
        fields["policy"] = {"kind": "uniform random in [-1, 1]"}
    elif config.tier in ("medium", "expert"):
        actor, fields["policy"] = _policy_fields(config.env_id, config.tier)
        arrays, rate = rollout_transitions(config.env_id, actor, config.transitions, config.seed, config.num_envs,
                                           show_progress, config.sampler)
        fields["policy"]["actions"] = "sampled stochastically from the tanh-Gaussian"
    elif config.tier == "medium-replay" and config.replay_file is None and config.sampler == "portable":
        arrays, fields["policy"], rate = _medium_replay_rollouts(config, show_progress)
    elif config.tier == "medium-replay":
        arrays, fields["policy"] = _medium_replay_arrays(config)
        fields["policy"]["kind"] = "SAC replay buffer up to the medium checkpoint"
    else:
        arrays, fields["sources"] = _merge_sources(config)
        fields["policy"] = {"kind": "concatenation of medium and expert datasets"}
    if arrays["observations"].shape[1] != spec.obs_dim or arrays["actions"].shape[1] != spec.act_dim:
        raise OfflineRLError(f"{dataset_id}: data has obs/act dims {arrays['observations'].shape[1]}/"
                             f"{arrays['actions'].shape[1]}, env {config.env_id} has {spec.obs_dim}/{spec.act_dim}")
    if rate is not None:
        fields["collection"] = {"num_envs": config.num_envs, "transitions_per_s": round(rate, 1)}
        if config.tier != "random":  # (medium-replay's rollouts use the sampler too)
            fields["collection"]["sampler"] = SAMPLER_VERSION if config.sampler == "portable" else "torch"
    fields["reference_scores"] = reference_scores(config.env_id)

    if rebuild_card is not None:
        return _rebuild(dataset_id, arrays, rebuild_card)
    return register_dataset(dataset_id, arrays, fields)


def _rebuild(dataset_id: str, arrays: dict[str, np.ndarray], card: dict) -> dict:
    """Recreate a card's missing file; keep it only if its bytes hash to the card's sha256."""
    final = data_path(dataset_id)
    final.parent.mkdir(parents=True, exist_ok=True)
    candidate = Path(temp_beside(final))  # a killed rebuild leaves a temp file that the id's next writer removes
    try:
        write_transitions(candidate, arrays, {"dataset_id": dataset_id, "env_id": card.get("env_id", "")})
        actual = sha256_file(candidate)
        if actual != card["sha256"]:
            cpu_bound = (card.get("tier") in ("medium", "expert") and card_sampler(card) == "torch")
            hint = (" This card was collected with the torch sampler, whose bytes depend on the CPU's vector units "
                    "(AVX2, AVX-512, AMX): it rebuilds only on a host like the one that made it; ids collected with "
                    "the portable sampler (`collection.sampler` on the card, e.g. the v1 datasets) rebuild anywhere."
                    if cpu_bound else " Collect a new version instead.")
            raise OfflineRLError(
                f"dataset {dataset_id}: the recollected file does not reproduce the card's bytes (card sha256 "
                f"{card['sha256'][:16]}…, rebuilt {actual[:16]}…; library versions now {versions()}, card: gymnasium "
                f"{card.get('gymnasium')}, mujoco {card.get('mujoco')}); nothing was written.{hint}")
        candidate.replace(final)
    finally:
        candidate.unlink(missing_ok=True)
    if not card_path(dataset_id).exists():
        atomic_write_bytes(card_path(dataset_id), (json.dumps(card, indent=2) + "\n").encode())
    return card


def card_sampler(card: dict) -> str:
    """The SAMPLERS entry that rebuilds a card: cards without the field predate the portable sampler."""
    recorded = card.get("collection", {}).get("sampler", "torch")
    if recorded == "torch":
        return "torch"
    if recorded != SAMPLER_VERSION:
        raise OfflineRLError(f"dataset {card.get('id')}: collected with sampler {recorded!r}; this offrl has "
                             f"{SAMPLER_VERSION!r} and cannot rebuild it (install the offrl version that made it)")
    return "portable"


def collect_shipped(dataset_id: str, show_progress: bool = True) -> dict:
    """Collect one of offrl's own dataset ids from its shipped policy, reproducing its card's bytes.

    The card comes from the store (a source checkout tracks it) or from the cards offrl ships; collection
    follows the card's settings, and the file is kept only if its sha256 matches the card's."""
    from offrl.envs import FIRST_CLASS_ENVS

    parsed = parse_dataset_id(dataset_id)
    card = card_or_shipped(dataset_id)
    envs = {env_short_name(e): e for e in FIRST_CLASS_ENVS}
    if card is None or parsed.namespace or parsed.tier not in TIERS or parsed.env not in envs:
        raise OfflineRLError(f"dataset {dataset_id}: not in the store ({card_path(parsed)}) and not one of offrl's "
                             "shipped ids, so it cannot be collected; `offrl datasets list` shows what is here")
    config = CollectConfig(env_id=card.get("env_id", envs[parsed.env]), tier=parsed.tier,
                           transitions=card["transitions"], seed=card.get("seed") or 0, version=parsed.version,
                           sampler=card_sampler(card))
    print(f"dataset {dataset_id} is not here: collecting it from the shipped {parsed.tier} policy", file=sys.stderr)
    return collect(config, show_progress=show_progress, command=card.get("command"))
