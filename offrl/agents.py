"""The agents a user builds, trains and queries: `CQL`, `CalQL` and `SAC`, in d3rlpy's shape.

    agent = offrl.CQL("fast", cql_alpha=5.0)     # a shipped config by name, any field overridden
    agent.fit(dataset, n_steps=10_000)           # the one training loop (offrl.train.loop)
    actions = agent.predict(observations)         # numpy in, numpy out; normalisation inside

An agent holds its config, its networks (built from the first dataset it sees), the observation normaliser
and reward scale it trains with, and the env it was trained for. The updates themselves live in
`offrl.algos` (one file per algorithm); this module only wires them to the loop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from offrl.algos.bc import BCConfig, BCNetworks, bc_update
from offrl.algos.cql import CQLAgent, CQLConfig, autocast_for, compiled_cql_losses, cql_losses, cql_update
from offrl.algos.sac import SACAgent, SACConfig, sac_update
from offrl.config import config_from_dict, config_with_overrides, load_config
from offrl.cuda_graph import CUDAGraphUpdate
from offrl.data.buffer import Batch
from offrl.data.dataset import ObservationNormalizer, OfflineDataset, load_dataset
from offrl.errors import DIVERGENCE_LIMIT, OfflineRLError
from offrl.fileio import atomic_torch_save, safe_torch_load
from offrl.runtime import resolve_device
from offrl.train.checkpoints import load_weights

__all__ = ["Agent", "CQL", "CalQL", "SAC", "BC", "load_agent", "agent_class", "AgentPolicy"]

AGENT_FORMAT = "offrl-agent"


class AgentPolicy:
    """An agent as evaluation sees it: deterministic actions and Q̂ (in reward units) on raw observations."""

    def __init__(self, networks: SACAgent | BCNetworks, normalizer: ObservationNormalizer, reward_scale: float):
        self.networks, self.normalizer, self.reward_scale = networks, normalizer, reward_scale
        if not hasattr(networks, "critic"):
            self.q = None  # an actor alone (BC): evaluation reports no Q bias and no value estimates

    def act(self, observations: torch.Tensor) -> torch.Tensor:
        return self.networks.actor.act(self.normalizer(observations), deterministic=True)

    def q(self, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.networks.critic(self.normalizer(observations), actions).min(dim=0).values / self.reward_scale


class Agent:
    """Shared by every agent: config, networks, normaliser, predict, save and load. Subclasses name their
    algorithm, config class and networks, and supply `update` (one gradient step on a batch)."""

    algorithm: ClassVar[str]
    config_class: ClassVar[type]
    config_folder: ClassVar[str | None] = None  # where its shipped YAML configs live (offrl/configs/<folder>)

    def __init__(self, config: Any = None, *, device: str | torch.device = "cpu", **overrides: Any):
        if isinstance(config, str):
            if self.config_folder is None:
                raise OfflineRLError(f"{type(self).__name__}: no shipped configs; pass a {self.config_class.__name__}")
            config, self.config_name = load_config(self.config_class, self.config_folder, config)
        elif config is None:
            config, self.config_name = self.config_class(), "default"
        elif isinstance(config, self.config_class):
            self.config_name = "custom"
        else:
            raise OfflineRLError(f"config: expected a shipped config name or a {self.config_class.__name__}, "
                                 f"found {type(config).__name__}")
        self.config = config_with_overrides(config, overrides, f"{type(self).__name__} arguments")
        self.device = resolve_device(device)
        self.networks: SACAgent | None = None
        self._graph: CUDAGraphUpdate | None = None  # compile on CUDA: the networks' update, captured
        self.normalizer: ObservationNormalizer | None = None
        self.reward_scale = 1.0
        self.env_id: str | None = None
        self.obs_dim = self.act_dim = 0

    @property
    def offline_name(self) -> str:
        """Its `algorithm` on the leaderboard when trained offline."""
        return self.algorithm

    # --- building -------------------------------------------------------------------------------------
    def _make_networks(self, obs_dim: int, act_dim: int) -> SACAgent:
        raise NotImplementedError

    def build(self, obs_dim: int, act_dim: int, normalizer: ObservationNormalizer | None = None,
              reward_scale: float = 1.0, env_id: str | None = None) -> None:
        """Create fresh networks for these dimensions (the global torch RNG decides their initial weights)."""
        self.obs_dim, self.act_dim, self.env_id = obs_dim, act_dim, env_id
        self.normalizer = normalizer or ObservationNormalizer.identity(obs_dim, self.device)
        self.reward_scale = reward_scale
        self.networks = self._make_networks(obs_dim, act_dim).to(self.device)
        self._graph = None  # captured for the networks replaced just now: capture again, let its memory go

    def _built(self) -> SACAgent:
        if self.networks is None:
            raise OfflineRLError(f"{type(self).__name__}: not trained or loaded yet; call fit() or load() first")
        return self.networks

    def update(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        """One gradient update on `batch` (`step` = updates done so far); returns detached metric tensors."""
        raise NotImplementedError

    def _graphed(self, update, batch: Batch, step: int, phase=lambda step: None) -> dict[str, torch.Tensor]:
        """`update(batch, step)` replayed as one CUDA graph (offrl.cuda_graph), captured again whenever the
        networks are rebuilt (`build`, from a new `fit` or `load`, drops the graph)."""
        if self._graph is None:
            self._graph = CUDAGraphUpdate(update, self._built().optimizers().values(), phase)
        return self._graph(batch, step)

    # --- training -----------------------------------------------------------------------------------------
    def fit(self, dataset: OfflineDataset | str, n_steps: int, *, seed: int = 0, eval_env: str | None | bool = True,
            eval_every: int | None = None, eval_episodes: int = 10, final_eval_episodes: int | None = None,
            log_every: int = 1_000, checkpoint_every: int = 5_000, run_dir: str | Path | None = None,
            resume: bool = False, tensorboard: bool = False, callbacks: Sequence = (),
            leaderboard: str | Path | None = None, show_progress: bool = True, command: str | None = None,
            divergence_limit: float = DIVERGENCE_LIMIT):
        """Train for `n_steps` updates on `dataset` (an `OfflineDataset` or a registered id); returns the
        `TrainingReport` (also run_dir/final.json when `run_dir` is given).

        eval_env: True evaluates in the dataset's env (if it has one), a Gymnasium id evaluates there, False or
        None only reports the env-free diagnostics. run_dir: record, logs and checkpoints (resumable with
        `resume=True`). tensorboard: event files under run_dir/tensorboard. callbacks: `f(event, step, row)`
        at every log row (event "log") and evaluation (event "evaluation"). leaderboard: append a row there.
        divergence_limit: a metric above it (or any NaN/inf) stops the run with one error and no row; raise it
        where divergence is what is measured (offline SAC's Q-values), math.inf leaves only NaN/inf."""
        from offrl.train.offline import fit_offline

        if isinstance(dataset, str):
            dataset = load_dataset(dataset, self.device)
        if not isinstance(dataset, OfflineDataset):
            raise OfflineRLError(f"dataset: expected an OfflineDataset or a dataset id, found {type(dataset).__name__}")
        return fit_offline(self, dataset, n_steps, seed=seed, eval_env=eval_env, eval_every=eval_every,
                           eval_episodes=eval_episodes, final_eval_episodes=final_eval_episodes, log_every=log_every,
                           checkpoint_every=checkpoint_every, run_dir=run_dir, resume=resume,
                           tensorboard=tensorboard, callbacks=callbacks, leaderboard=leaderboard,
                           show_progress=show_progress, command=command, divergence_limit=divergence_limit)

    # --- using ----------------------------------------------------------------------------------------------
    @property
    def policy(self) -> AgentPolicy:
        return AgentPolicy(self._built(), self.normalizer, self.reward_scale)

    def _observations(self, observations: Any, name: str = "observations") -> tuple[torch.Tensor, bool]:
        array = np.asarray(observations, dtype=np.float32)
        single = array.ndim == 1
        if single:
            array = array[None]
        if array.ndim != 2 or array.shape[1] != self.obs_dim:
            raise OfflineRLError(f"{name}: expected shape ({self.obs_dim},) or (N, {self.obs_dim}), found "
                                 f"{np.shape(observations)}")
        if not np.isfinite(array).all():
            raise OfflineRLError(f"{name}: holds NaN or inf")
        return torch.as_tensor(array, device=self.device), single

    def predict(self, observations: Any) -> np.ndarray:
        """Deterministic actions in [-1, 1] (offrl's policy space) for raw observations, (N, obs) or (obs,)."""
        self._built()
        obs, single = self._observations(observations)
        actions = self.policy.act(obs).cpu().numpy()
        return actions[0] if single else actions

    def predict_value(self, observations: Any, actions: Any) -> np.ndarray:
        """Q̂(s, a) (the clipped minimum of the critics, in the dataset's reward units)."""
        self._built()
        obs, single = self._observations(observations)
        act = np.asarray(actions, dtype=np.float32).reshape(len(obs), -1)
        if act.shape[1] != self.act_dim:
            raise OfflineRLError(f"actions: expected {self.act_dim} columns, found {act.shape[1]}")
        values = self.policy.q(obs, torch.as_tensor(act, device=self.device)).cpu().numpy()
        return values[0] if single else values

    # --- files ------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything that rebuilds this agent, as plain types and tensors (loads with weights_only=True)."""
        networks = self._built()
        return {"format": AGENT_FORMAT, "algorithm": self.algorithm, "config": dataclasses.asdict(self.config),
                "config_name": self.config_name, "env_id": self.env_id, "obs_dim": self.obs_dim,
                "act_dim": self.act_dim, "reward_scale": self.reward_scale,
                "normalizer": {"mean": self.normalizer.mean.cpu(), "std": self.normalizer.std.cpu()},
                "networks": {k: v.cpu() for k, v in networks.state_dict().items()}}

    def save(self, path: str | Path) -> Path:
        """One file with the config, normaliser and weights; `offrl.load_agent(path)` restores it."""
        atomic_torch_save(self.state(), Path(path))
        return Path(path)

    @classmethod
    def from_state(cls, state: dict[str, Any], device: str | torch.device = "cpu", source: str = "agent") -> Agent:
        agent = cls(config_from_dict(cls.config_class, state["config"], source), device=device)
        agent.config_name = state.get("config_name", "custom")
        normalizer = ObservationNormalizer(mean=state["normalizer"]["mean"].to(device),
                                           std=state["normalizer"]["std"].to(device))
        agent.build(state["obs_dim"], state["act_dim"], normalizer, state["reward_scale"], state.get("env_id"))
        load_weights(agent.networks, state["networks"], source)
        return agent


def load_agent(path: str | Path, device: str | torch.device = "cpu") -> Agent:
    """Load an agent saved with `Agent.save` (any algorithm)."""
    path = Path(path)
    state = safe_torch_load(path, "agent")
    if not isinstance(state, dict) or state.get("format") != AGENT_FORMAT:
        raise OfflineRLError(f"agent {path}: not an offrl agent file")
    missing = [k for k in ("config", "obs_dim", "act_dim", "reward_scale", "normalizer", "networks") if k not in state]
    if missing:
        raise OfflineRLError(f"agent {path}: an incomplete offrl agent file, missing {', '.join(missing)}")
    return agent_class(state.get("algorithm"), f"agent {path}").from_state(state, device, str(path))


def agent_class(algorithm: str | None, where: str) -> type[Agent]:
    """The agent class an agent file or run record names (its `algorithm`)."""
    classes = {cls.algorithm: cls for cls in (CQL, CalQL, SAC, BC)}
    if algorithm not in classes:
        raise OfflineRLError(f"{where}: unknown algorithm {algorithm!r}; known: {', '.join(classes)}")
    return classes[algorithm]


class CQL(Agent):
    """CQL-SAC, CQL(H) (Kumar et al. 2020), offline. Configs: `corl` (CORL's defaults), `fast` (2×256 for a
    CPU), `fast-bf16`, per-dataset ones. `compile=True`: on CUDA the whole update replays as one CUDA graph
    (offrl.cuda_graph); on CPU the losses run under torch.compile (slower than eager there; bench rows)."""

    algorithm = "CQL-SAC"
    config_class = CQLConfig
    config_folder = "cql"

    def __init__(self, config: CQLConfig | str | None = "corl", *, device: str | torch.device = "cpu",
                 compile: bool = False, **overrides: Any):
        super().__init__(config, device=device, **overrides)
        self.compile = compile
        # On CUDA the whole-update graph beats compiling the losses alone (GPU bench rows "(CUDA graph)" against
        # "(compiled)"), and the two do not nest: reduce-overhead brings its own graphs.
        self._losses = compiled_cql_losses(self.device) if compile and self.device.type != "cuda" else cql_losses

    @property
    def offline_name(self) -> str:
        return "Cal-QL" if self.config.calibrated else "CQL-SAC"

    def _make_networks(self, obs_dim: int, act_dim: int) -> CQLAgent:
        return CQLAgent(obs_dim, act_dim, self.config)

    def update(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        if self.compile and self.device.type == "cuda":
            return self._graphed(self._eager_update, batch, step, phase=lambda step: step < self.config.bc_steps)
        return self._eager_update(batch, step)

    def _eager_update(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        with autocast_for(self.config, self.device):
            return cql_update(self.networks, batch, self.config, step, self._losses)


class CalQL(CQL):
    """Cal-QL (Nakamoto et al. 2023): CQL with policy-action Q-values in the conservative term floored at the
    Monte-Carlo return-to-go. The CQL configs with `calibrated: true`."""

    algorithm = "Cal-QL"

    def __init__(self, config: CQLConfig | str | None = "corl", *, device: str | torch.device = "cpu",
                 compile: bool = False, **overrides: Any):
        super().__init__(config, device=device, compile=compile, **{"calibrated": True, **overrides})
        if not self.config.calibrated:
            raise OfflineRLError("CalQL: calibrated must stay true (use CQL for the uncalibrated algorithm)")


class SAC(Agent):
    """Soft Actor-Critic. `fit` trains it offline on a dataset with no conservative term (the baseline CQL
    exists to beat); `fit_online` trains it in an env (how offrl's behaviour policies are made). `compile=True`
    (CUDA only) replays `fit`'s updates as one CUDA graph each; `fit_online` steps an env between updates and
    keeps the eager update."""

    algorithm = "SAC"
    config_class = SACConfig

    @property
    def offline_name(self) -> str:
        return "SAC-offline"  # the baseline of the CQL paper's argument: SAC's update, no conservative term

    def __init__(self, config: SACConfig | None = None, *, device: str | torch.device = "cpu", compile: bool = False,
                 **overrides: Any):
        super().__init__(config, device=device, **overrides)
        if compile and self.device.type != "cuda":
            raise OfflineRLError("SAC: compile=True replays the update as a CUDA graph and needs device='cuda' "
                                 "(on CPU the eager update is the fast one)")
        self.compile = compile

    def _make_networks(self, obs_dim: int, act_dim: int) -> SACAgent:
        return SACAgent(obs_dim, act_dim, self.config)

    def update(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        if self.compile:
            return self._graphed(lambda batch, step: sac_update(self.networks, batch, self.config), batch, step)
        return sac_update(self.networks, batch, self.config)

    def fit_online(self, env_id: str, n_steps: int, *, seed: int = 0, run_dir: str | Path, resume: bool = False,
                   learning_starts: int = 5_000, eval_every: int = 10_000, eval_episodes: int = 10,
                   checkpoint_every: int = 25_000, log_every: int = 1_000, buffer_capacity: int = 1_000_000,
                   tensorboard: bool = False, callbacks: Sequence = (), show_progress: bool = True,
                   command: str | None = None) -> Path:
        """Train online in `env_id` for `n_steps` env steps (offrl.train.online); returns the run directory."""
        from offrl.train.online import PretrainSettings, pretrain

        settings = PretrainSettings(env_id=env_id, env_steps=n_steps, seed=seed, learning_starts=learning_starts,
                                    eval_every=eval_every, eval_episodes=eval_episodes,
                                    checkpoint_every=checkpoint_every, log_every=log_every,
                                    buffer_capacity=buffer_capacity, device=str(self.device), sac=self.config)
        return pretrain(settings, Path(run_dir), resume=resume, show_progress=show_progress, command=command,
                        tensorboard=tensorboard, callbacks=callbacks, agent=self)


class BC(Agent):
    """Behaviour cloning (offrl.algos.bc): CQL's actor trained by maximum likelihood on the data. Built from a
    `BCConfig`, or from a shipped CQL config's name (`BC("fast")`: that config's actor, rate and normalisation,
    so BC and CQL compare at one network). It has no critic: `predict_value` and Q bias do not apply."""

    algorithm = "BC"
    config_class = BCConfig

    def __init__(self, config: BCConfig | str | None = None, *, device: str | torch.device = "cpu", **overrides: Any):
        name = None
        if isinstance(config, str):
            cql, name = load_config(CQLConfig, "cql", config)
            config = BCConfig.from_cql(cql)
        super().__init__(config, device=device, **overrides)
        if name is not None:
            self.config_name = name

    def _make_networks(self, obs_dim: int, act_dim: int) -> BCNetworks:
        return BCNetworks(obs_dim, act_dim, self.config)

    def update(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        return bc_update(self.networks, batch)

    def predict_value(self, observations: Any, actions: Any) -> np.ndarray:
        raise OfflineRLError("BC has no critic, so it has no value estimates (predict_value)")
