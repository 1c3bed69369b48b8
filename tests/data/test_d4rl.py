import h5py
import numpy as np
import pytest

from offrl.cli import main
from offrl.data.d4rl import D4RL_REFERENCE_SCORES, import_d4rl, qlearning_transitions
from offrl.data.dataset import load_dataset
from offrl.data.registry import card_path
from offrl.errors import OfflineRLError


def d4rl_rows(n=8, obs_dim=17, act_dim=6):
    """Rows whose observation encodes its index, so pairs can be checked by eye."""
    obs = np.repeat(np.arange(n, dtype=np.float32)[:, None], obs_dim, axis=1)
    return {"observations": obs, "actions": np.zeros((n, act_dim), np.float32),
            "rewards": np.arange(n, dtype=np.float32), "terminals": np.zeros(n, bool), "timeouts": np.zeros(n, bool)}


def test_without_next_observations_timeout_rows_and_the_last_row_are_dropped():
    rows = d4rl_rows()
    rows["timeouts"][3] = True  # episode 0 = rows 0-3, cut by the time limit
    rows["terminals"][5] = True  # episode 1 = rows 4-5, true termination
    out = qlearning_transitions(rows)
    kept = out["observations"][:, 0].tolist()
    assert kept == [0, 1, 2, 4, 5, 6]  # row 3 (timeout) and row 7 (no successor) dropped; terminal row 5 kept
    assert out["next_observations"][:, 0].tolist() == [1, 2, 3, 5, 6, 7]
    assert out["terminals"].tolist() == [False, False, False, False, True, False]
    assert out["timeouts"].tolist() == [False, False, True, False, False, True]


def test_with_next_observations_every_row_is_kept():
    rows = d4rl_rows()
    rows["timeouts"][3] = True
    rows["next_observations"] = rows["observations"] + 0.5
    out = qlearning_transitions(rows)
    assert len(out["rewards"]) == 8
    np.testing.assert_array_equal(out["next_observations"], rows["observations"] + 0.5)
    assert out["timeouts"].tolist() == [False, False, False, True, False, False, False, True]


def test_v0_files_without_timeouts_use_the_step_count(monkeypatch):
    import offrl.data.d4rl as d4rl

    monkeypatch.setattr(d4rl, "D4RL_MAX_EPISODE_STEPS", 3)
    rows = d4rl_rows(n=7)
    del rows["timeouts"]
    out = qlearning_transitions(rows)
    assert out["observations"][:, 0].tolist() == [0, 1, 3, 4]  # rows 2 and 5 hit the limit, row 6 is last


def _qlearning_dataset_rows(rows, max_steps):
    """The row indices D4RL's `qlearning_dataset` keeps (d4rl/__init__.py, terminate_on_end=False), restated as
    its loop: the last row never; a time-limit row (the file's flag, or in v0 files the step count reaching the
    limit) skipped with the count reset to 0; a terminal row kept with the count reset to 0; every kept row then
    counted."""
    n, kept, step = len(rows["rewards"]), [], 0
    for i in range(n - 1):
        at_limit = bool(rows["timeouts"][i]) if "timeouts" in rows else step == max_steps - 1
        if at_limit:
            step = 0
            continue
        if rows["terminals"][i]:
            step = 0
        kept.append(i)
        step += 1
    return kept


@pytest.mark.parametrize("with_timeouts", [True, False])
def test_without_next_observations_the_rows_are_exactly_qlearning_datasets(monkeypatch, with_timeouts):
    import offrl.data.d4rl as d4rl

    monkeypatch.setattr(d4rl, "D4RL_MAX_EPISODE_STEPS", 5)
    rng = np.random.default_rng(0)
    for _ in range(50):
        rows = d4rl_rows(n=40, obs_dim=2, act_dim=1)
        rows["terminals"] = rng.random(40) < 0.1
        rows["timeouts"] = rng.random(40) < 0.15
        both = rng.integers(40, size=2)  # and some rows both terminal and cut by the limit
        rows["terminals"][both] = rows["timeouts"][both] = True
        rows["terminals"][7] = rows["timeouts"][7] = True
        if not with_timeouts:
            del rows["timeouts"]
        out = qlearning_transitions(rows)
        assert out["observations"][:, 0].astype(int).tolist() == _qlearning_dataset_rows(rows, 5)
        np.testing.assert_array_equal(out["next_observations"][:, 0], out["observations"][:, 0] + 1)


def test_a_row_both_terminal_and_timed_out_is_dropped_without_and_terminal_with_next_observations():
    rows = d4rl_rows()
    rows["terminals"][3] = rows["timeouts"][3] = True
    assert 3 not in qlearning_transitions(rows)["observations"][:, 0].tolist()  # as qlearning_dataset
    rows["next_observations"] = rows["observations"] + 0.5
    out = qlearning_transitions(rows)
    assert out["terminals"][3] and not out["timeouts"][3]


def test_a_v0_episode_after_a_terminal_one_is_cut_a_step_early_as_in_qlearning_dataset(monkeypatch):
    import offrl.data.d4rl as d4rl

    monkeypatch.setattr(d4rl, "D4RL_MAX_EPISODE_STEPS", 3)
    rows = d4rl_rows(n=8)
    del rows["timeouts"]
    rows["terminals"][1] = True  # episode 0 = rows 0-1; the count is then 1 at row 2, so row 3 "hits" the limit
    assert qlearning_transitions(rows)["observations"][:, 0].tolist() == [0, 1, 2, 4, 5]  # 3 and 6 cut, 7 last


def _write_d4rl(path, rows):
    with h5py.File(path, "w") as f:
        for key, value in rows.items():
            f[key] = value


def test_import_registers_with_d4rls_reference_scores(tmp_path):
    rows = d4rl_rows(n=50)
    rows["timeouts"][24] = True
    _write_d4rl(tmp_path / "hc.hdf5", rows)
    assert main(["datasets", "import-d4rl", str(tmp_path / "hc.hdf5"), "--id", "d4rl/halfcheetah/medium-v2"]) == 0
    dataset = load_dataset("d4rl/halfcheetah/medium-v2")
    assert len(dataset) == 48 and dataset.card["env_id"] == "HalfCheetah-v5"
    refs = dataset.card["reference_scores"]
    assert (refs["random"]["return_mean"], refs["expert"]["return_mean"]) == D4RL_REFERENCE_SCORES["halfcheetah"]
    assert D4RL_REFERENCE_SCORES["hopper"] == (-20.272305, 3234.3)
    source = dataset.card["source"]
    assert source["rows_kept_beyond_qlearning_dataset"] == 0 and "qlearning_dataset: s' = observations" in \
        source["semantics"]


def test_the_card_names_what_next_observations_change_against_qlearning_dataset(tmp_path):
    rows = d4rl_rows(n=50)
    rows["timeouts"][[24, 49]] = True
    rows["next_observations"] = rows["observations"] + 0.5
    _write_d4rl(tmp_path / "hc.hdf5", rows)
    card = import_d4rl(tmp_path / "hc.hdf5", "d4rl/halfcheetah/medium-v2")
    assert card["transitions"] == 50
    # qlearning_dataset would drop the two time-limit rows (24, 49); row 49 is also the file's last
    assert card["source"]["rows_kept_beyond_qlearning_dataset"] == 2
    assert "kept as timeouts" in card["source"]["semantics"]


def test_import_refuses_bad_files_without_registering(tmp_path, capsys):
    rows = d4rl_rows()
    rows["actions"] = rows["actions"][:-1]
    _write_d4rl(tmp_path / "short.hdf5", rows)
    with pytest.raises(OfflineRLError, match="actions has 7 rows, rewards has 8"):
        import_d4rl(tmp_path / "short.hdf5", "d4rl/halfcheetah/medium-v2")
    _write_d4rl(tmp_path / "narrow.hdf5", d4rl_rows(obs_dim=5))
    with pytest.raises(OfflineRLError, match="obs/act dims 5/6 do not match env HalfCheetah-v5 .17/6."):
        import_d4rl(tmp_path / "narrow.hdf5", "d4rl/halfcheetah/medium-v2")
    rows = d4rl_rows()
    del rows["rewards"]
    _write_d4rl(tmp_path / "norew.hdf5", rows)
    with pytest.raises(OfflineRLError, match="missing key.s. rewards"):
        import_d4rl(tmp_path / "norew.hdf5", "d4rl/halfcheetah/medium-v2")
    (tmp_path / "junk.hdf5").write_bytes(b"not hdf5")
    assert main(["datasets", "import-d4rl", str(tmp_path / "junk.hdf5"), "--id", "d4rl/halfcheetah/medium-v2"]) == 2
    assert "junk.hdf5: not a readable HDF5 file" in capsys.readouterr().err
    assert not card_path("d4rl/halfcheetah/medium-v2").exists()
