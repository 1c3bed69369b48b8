import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from offrl.agents import CQL
from offrl.algos.cql import CQLConfig
from offrl.data.collect import rollout_transitions
from offrl.data.dataset import load_dataset
from offrl.data.registry import register_dataset
from offrl.envs import make_env
from offrl.errors import OfflineRLError
from offrl.export import export_policy
from offrl.fileio import sha256_file
from offrl.runs import restore_run

TINY = CQLConfig(actor_hidden=(16, 16), critic_hidden=(16, 16), n_actions=2, batch_size=32)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One tiny CQL run on a random Pendulum dataset, shared by the tests of this file (read-only)."""
    root = tmp_path_factory.mktemp("export")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OFFRL_DATASETS_PATH", str(root / "store"))
        mp.setenv("OFFRL_HOME", str(root / "offrl-home"))
        arrays, _ = rollout_transitions("Pendulum-v1", None, 1000, seed=0, num_envs=2)
        register_dataset("pendulum/random-v0", arrays, {"env_id": "Pendulum-v1"})
        CQL(TINY).fit(load_dataset("pendulum/random-v0"), 20, eval_env=False, log_every=10, checkpoint_every=20,
                      run_dir=root / "run", show_progress=False)
    return root / "run"


@pytest.fixture(scope="module")
def expected(run_dir):
    """Observations (a batch, including out-of-range ones, and a single one) and the run's own env actions."""
    env = make_env("Pendulum-v1")
    observations = np.random.default_rng(0).normal(0.0, 2.0, size=(2048, 3)).astype(np.float32)
    policy = restore_run(run_dir, verify_dataset=False).agent.policy
    actions = env.to_env_action(policy.act(torch.as_tensor(observations)).numpy())
    return observations, actions


def test_torchscript_acts_like_the_run_without_offrl(run_dir, expected, tmp_path):
    observations, actions = expected
    paths = export_policy(run_dir)
    out = run_dir / "export"
    assert paths == [out / "policy.pt", out / "policy.json"]
    card = json.loads((out / "policy.json").read_text())
    assert card["env_id"] == "Pendulum-v1" and (card["obs_dim"], card["act_dim"]) == (3, 1)
    assert card["action_low"] == [-2.0] and card["action_high"] == [2.0] and card["formats"] == ["torchscript"]
    assert card["files"]["torchscript"]["sha256"] == sha256_file(out / "policy.pt")
    assert not [p for p in out.iterdir() if p.name.startswith(".")]

    policy = torch.jit.load(str(out / "policy.pt"))
    got = policy(torch.as_tensor(observations)).numpy()
    np.testing.assert_allclose(got, actions, atol=1e-6, rtol=0)
    np.testing.assert_allclose(policy(torch.as_tensor(observations[0])).numpy(), actions[0], atol=1e-6, rtol=0)

    # policy.json's three loading lines, in a fresh interpreter that never imports offrl
    np.save(tmp_path / "obs.npy", observations)
    script = "\n".join([f"import numpy as np; obs = np.load({str(tmp_path / 'obs.npy')!r})",
                         *card["load"]["torchscript"],
                         f"np.save({str(tmp_path / 'actions.npy')!r}, action)",
                         f"np.save({str(tmp_path / 'single.npy')!r}, policy(torch.as_tensor(obs[0])).numpy())",
                         "import sys; assert not [m for m in sys.modules if m.startswith('offrl')]"])
    subprocess.run([sys.executable, "-c", script], cwd=out, check=True)
    np.testing.assert_allclose(np.load(tmp_path / "actions.npy"), actions, atol=1e-6, rtol=0)
    np.testing.assert_allclose(np.load(tmp_path / "single.npy"), actions[0], atol=1e-6, rtol=0)


def test_onnx_acts_like_the_run(run_dir, expected, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    observations, actions = expected
    paths = export_policy(run_dir, tmp_path / "both", formats=("torchscript", "onnx"))
    assert [p.name for p in paths] == ["policy.pt", "policy.onnx", "policy.json"]
    card = json.loads((tmp_path / "both" / "policy.json").read_text())
    assert card["files"]["onnx"]["sha256"] == sha256_file(tmp_path / "both" / "policy.onnx")
    session = ort.InferenceSession(str(tmp_path / "both" / "policy.onnx"))
    assert [i.name for i in session.get_inputs()] == [card["input"]["name"]]
    for obs, want in ((observations, actions), (observations[:1], actions[:1])):
        got = session.run(None, {"observation": obs})[0]
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


def test_onnx_without_its_package_says_what_to_install(run_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(OfflineRLError, match=r"pip install 'offrl\[onnx\]'"):
        export_policy(run_dir, tmp_path / "out", formats=("torchscript", "onnx"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("formats", [("tflite",), (), "both"])
def test_an_unknown_format_is_refused(run_dir, tmp_path, formats):
    with pytest.raises(OfflineRLError, match="^formats: "):
        export_policy(run_dir, tmp_path / "out", formats=formats)
    assert not (tmp_path / "out").exists()


def test_a_folder_that_is_not_a_run_is_refused(tmp_path):
    with pytest.raises(OfflineRLError, match="^run_dir: .*run.json is missing"):
        export_policy(tmp_path)
    with pytest.raises(OfflineRLError, match="^run_dir: .*no such run"):
        export_policy(tmp_path / "missing")
