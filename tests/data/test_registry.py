import json

import numpy as np
import pytest
from tests_support import make_arrays

from offrl.data.registry import (
    card_path,
    data_path,
    list_cards,
    parse_dataset_id,
    register_dataset,
    verify_dataset,
)
from offrl.errors import OfflineRLError


def test_ids_follow_minaris_convention():
    parsed = parse_dataset_id("d4rl/halfcheetah/medium-v2")
    assert (parsed.namespace, parsed.env, parsed.tier, parsed.version) == ("d4rl", "halfcheetah", "medium", 2)
    assert str(parse_dataset_id("hopper/medium-replay-v0")) == "hopper/medium-replay-v0"
    for bad in ("halfcheetah-medium-v0", "halfcheetah/medium", "HalfCheetah/medium-v0", "a/b/c/d-v0"):
        with pytest.raises(OfflineRLError, match="not of the form"):
            parse_dataset_id(bad)


def test_register_writes_file_and_card_with_statistics():
    card = register_dataset("pendulum/test-v0", make_arrays(), {"env_id": "Pendulum-v1"})
    assert data_path("pendulum/test-v0").is_file() and card_path("pendulum/test-v0").is_file()
    assert card["transitions"] == 10 and card["episodes"] == 2
    expected = make_arrays()["rewards"].astype(np.float64).reshape(2, 5).sum(1)
    assert card["episode_return"]["mean"] == pytest.approx(expected.mean())
    assert card["episode_return"]["max"] == pytest.approx(expected.max())
    assert [c["id"] for c in list_cards()] == ["pendulum/test-v0"]


def test_a_version_once_written_is_immutable():
    register_dataset("pendulum/test-v0", make_arrays(), {"env_id": "Pendulum-v1"})
    before = data_path("pendulum/test-v0").read_bytes()
    with pytest.raises(OfflineRLError, match="already exists.*versions are immutable.*-v1"):
        register_dataset("pendulum/test-v0", make_arrays(seed=1), {"env_id": "Pendulum-v1"})
    assert data_path("pendulum/test-v0").read_bytes() == before


def test_sha256_mismatch_is_refused_naming_both_hashes():
    card = register_dataset("pendulum/test-v0", make_arrays(), {"env_id": "Pendulum-v1"})
    path = data_path("pendulum/test-v0")
    with open(path, "r+b") as f:
        f.seek(len(path.read_bytes()) // 2)
        f.write(b"\xff\xff")
    with pytest.raises(OfflineRLError, match=f"sha256 mismatch(.|\n)*card says: {card['sha256']}(.|\n)*file has:"):
        verify_dataset("pendulum/test-v0")


def test_unknown_id_or_version_names_what_exists():
    register_dataset("pendulum/test-v0", make_arrays(), {"env_id": "Pendulum-v1"})
    with pytest.raises(OfflineRLError, match="unknown dataset 'pendulum/test-v3'.*versions present: pendulum/test-v0"):
        verify_dataset("pendulum/test-v3")
    with pytest.raises(OfflineRLError, match="unknown dataset 'nothing/here-v0'"):
        verify_dataset("nothing/here-v0")


def test_card_without_its_file_says_how_to_recreate_it():
    register_dataset("pendulum/test-v0", make_arrays(), {"env_id": "Pendulum-v1", "command": "offrl collect X"})
    data_path("pendulum/test-v0").unlink()
    with pytest.raises(OfflineRLError, match="data file .* is missing; recreate it .*offrl collect X"):
        verify_dataset("pendulum/test-v0")
    assert json.loads(card_path("pendulum/test-v0").read_text())["id"] == "pendulum/test-v0"
