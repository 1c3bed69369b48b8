import pytest
import torch

# Tests run beside other jobs on a 2-core machine; one intra-op thread keeps them predictable.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_dataset_store(tmp_path, monkeypatch):
    """No test reads or writes the user's dataset store."""
    monkeypatch.setenv("OFFRL_DATASETS_PATH", str(tmp_path / "store"))
    monkeypatch.setenv("OFFRL_LEADERBOARD", str(tmp_path / "leaderboard.csv"))
    monkeypatch.setenv("OFFRL_HOME", str(tmp_path / "offrl-home"))


@pytest.fixture
def tiny_policies(tmp_path, monkeypatch):
    """Untrained Pendulum-v1 medium/expert policies with cards, standing in for the shipped ones."""
    import json

    from offrl.nets import TanhGaussianActor
    from offrl.policies import save_policy

    root = tmp_path / "policies"
    for number, tier in enumerate(("medium", "expert")):
        torch.manual_seed(number)
        actor = TanhGaussianActor(3, 1, (8,))
        path = root / "Pendulum-v1" / f"{tier}.pt"
        sha = save_policy(actor, "Pendulum-v1", path)
        card = {"env_id": "Pendulum-v1", "tier": tier, "sha256": sha, "return_mean": -1000.0 + 500 * number,
                "return_std": 1.0, "eval_episodes": 20, "training_steps": 1000 * (number + 1), "seed": 0,
                "command": "test fixture"}
        path.with_suffix(".json").write_text(json.dumps(card))
    monkeypatch.setenv("OFFRL_POLICIES_PATH", str(root))
    return root
