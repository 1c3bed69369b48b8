"""A run's policy as one self-contained file: TorchScript (`policy.pt`) and/or ONNX (`policy.onnx`).

The exported module takes raw float32 observations, (batch, obs_dim) or (obs_dim,), normalises them with the
run's statistics, takes the deterministic action tanh(mean) of the actor and maps it onto the env's action
bounds, ready for `gymnasium.make(env_id).step`. Loading it needs only `torch.jit.load` or onnxruntime, not
offrl. `policy.json` beside it says what it is, what it takes and returns, and how to load it.

    import numpy as np, torch
    policy = torch.jit.load("export/policy.pt")
    action = policy(torch.as_tensor(obs, dtype=torch.float32)).numpy()
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from offrl import __version__
from offrl.envs import make_env
from offrl.errors import OfflineRLError
from offrl.fileio import atomic_write_bytes
from offrl.runs import restore_run

__all__ = ["FORMATS", "ExportedPolicy", "export_policy"]

FORMATS = {"torchscript": "policy.pt", "onnx": "policy.onnx"}
INPUT, OUTPUT = "observation", "action"
LOAD = {
    "torchscript": ["import torch", "policy = torch.jit.load('policy.pt')",
                    "action = policy(torch.as_tensor(obs, dtype=torch.float32)).numpy()"],
    "onnx": ["import numpy as np, onnxruntime", "session = onnxruntime.InferenceSession('policy.onnx')",
             "action = session.run(None, {'observation': np.asarray(obs, np.float32).reshape(-1, OBS_DIM)})[0]"],
}


class ExportedPolicy(nn.Module):
    """Raw observation → env action: (obs − mean) / std, a plain Linear/ReLU MLP, tanh(mean half of its
    output), clipped to [-1, 1] and mapped affinely onto [low, high] (as `ScaledActionEnv.to_env_action`)."""

    def __init__(self, net: nn.Sequential, mean: torch.Tensor, std: torch.Tensor, low: torch.Tensor,
                 high: torch.Tensor, act_dim: int):
        super().__init__()
        self.net = net
        self.act_dim = act_dim
        for name, value in (("mean", mean), ("std", std), ("scale", (high - low) / 2), ("offset", (high + low) / 2)):
            self.register_buffer(name, value.detach().to(torch.float32).cpu().clone())

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        out = self.net((observation.to(torch.float32) - self.mean) / self.std)
        action = torch.tanh(out[..., : self.act_dim]).clamp(-1.0, 1.0)
        return self.offset + self.scale * action


def _plain_copy(net: nn.Sequential) -> nn.Sequential:
    """The actor's MLP (offrl.nets, with its CPU fast path) as plain nn.Linear / nn.ReLU layers, same weights."""
    layers = [nn.Linear(m.in_features, m.out_features) if isinstance(m, nn.Linear) else nn.ReLU() for m in net]
    plain = nn.Sequential(*layers)
    plain.load_state_dict({k: v.detach().float().cpu() for k, v in net.state_dict().items()})
    return plain.requires_grad_(False).eval()  # so callers can .numpy() the output directly


def _torchscript_bytes(module: ExportedPolicy) -> bytes:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buffer)
    return buffer.getvalue()


def _onnx_bytes(module: ExportedPolicy, obs_dim: int) -> bytes:
    try:
        import onnx  # noqa: F401 - torch's ONNX exporter needs it
    except ImportError:
        raise OfflineRLError("formats: ONNX export needs the onnx package; pip install 'offrl[onnx]'") from None
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter: no onnxscript needed
        torch.onnx.export(module, (torch.zeros(1, obs_dim),), buffer, dynamo=False, input_names=[INPUT],
                          output_names=[OUTPUT], dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
    return buffer.getvalue()


def _formats(formats: str | Iterable[str]) -> tuple[str, ...]:
    chosen = (formats,) if isinstance(formats, str) else tuple(formats)
    unknown = [f for f in chosen if f not in FORMATS]
    if unknown or not chosen:
        raise OfflineRLError(f"formats: expected one or more of {', '.join(FORMATS)}, found {list(chosen)!r}")
    return tuple(dict.fromkeys(chosen))


def export_policy(run_dir: str | Path, out_dir: str | Path | None = None,
                  formats: str | Iterable[str] = ("torchscript",)) -> list[Path]:
    """Write the run's deterministic policy as `policy.pt` (TorchScript) and/or `policy.onnx` into `out_dir`
    (default `<run_dir>/export`), plus `policy.json`; returns the paths written. Every file is built in memory
    first and written through a temp file + rename, so a failure leaves no file behind."""
    chosen = _formats(formats)
    try:
        run = restore_run(Path(run_dir), "cpu", verify_dataset=False)
    except OfflineRLError as exc:
        raise OfflineRLError(f"run_dir: {exc}") from None
    record, agent = run.record, run.agent
    obs_dim, act_dim = int(record["obs_dim"]), int(record["act_dim"])
    env_id = record.get("env_id") or run.card.get("env_id")  # the eval env, else the dataset's
    if env_id:
        space = make_env(env_id).env.action_space
        low, high = torch.as_tensor(space.low, dtype=torch.float64), torch.as_tensor(space.high, dtype=torch.float64)
    else:  # a dataset with no env: actions stay in offrl's [-1, 1]
        low, high = -torch.ones(act_dim, dtype=torch.float64), torch.ones(act_dim, dtype=torch.float64)
    module = ExportedPolicy(_plain_copy(agent.networks.actor.net), agent.normalizer.mean, agent.normalizer.std,
                            low, high, act_dim).eval()
    blobs = {name: _torchscript_bytes(module) if name == "torchscript" else _onnx_bytes(module, obs_dim)
             for name in chosen}

    out = Path(out_dir) if out_dir is not None else run.run_dir / "export"
    card = {
        "format": "offrl-exported-policy", "format_version": 1, "run_id": record["run_id"],
        "dataset_id": record["dataset_id"], "dataset_sha256": record.get("dataset_sha256"),
        "algorithm": record.get("algorithm"), "updates": run.updates, "env_id": env_id, "obs_dim": obs_dim,
        "act_dim": act_dim, "action_low": low.tolist(), "action_high": high.tolist(),
        "input": {"name": INPUT, "dtype": "float32", "shape": ["batch", obs_dim],
                  "note": "raw observations; TorchScript also takes one observation of shape (obs_dim,)"},
        "output": {"name": OUTPUT, "dtype": "float32", "shape": ["batch", act_dim],
                   "note": "deterministic actions in the env's bounds [action_low, action_high]"},
        "formats": list(chosen),
        "files": {name: {"path": FORMATS[name], "sha256": hashlib.sha256(blob).hexdigest()}
                  for name, blob in blobs.items()},
        "load": {name: [line.replace("OBS_DIM", str(obs_dim)) for line in LOAD[name]] for name in chosen},
        "torch": torch.__version__, "offrl_version": __version__,
    }
    written = []
    for name, blob in blobs.items():
        atomic_write_bytes(out / FORMATS[name], blob)
        written.append(out / FORMATS[name])
    atomic_write_bytes(out / "policy.json", (json.dumps(card, indent=2) + "\n").encode())
    return [*written, out / "policy.json"]
