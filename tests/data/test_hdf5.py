import h5py
import numpy as np
import pytest
from tests_support import make_arrays

from offrl.data.hdf5 import FORMAT_VERSION, read_transitions, write_transitions
from offrl.errors import OfflineRLError


def test_round_trip_keeps_values_and_writes_format_attributes(tmp_path):
    arrays = make_arrays()
    arrays["infos/qpos"] = np.ones((10, 4))
    write_transitions(tmp_path / "d.hdf5", arrays, {"env_id": "Pendulum-v1"})
    read, attrs = read_transitions(tmp_path / "d.hdf5")
    assert attrs["format"] == "offrl-transitions" and attrs["format_version"] == FORMAT_VERSION
    for key, value in arrays.items():
        np.testing.assert_array_equal(read[key], value)
    with h5py.File(tmp_path / "d.hdf5") as f:
        assert f["observations"].dtype == np.float32 and f["observations"].compression == "gzip"
        assert f["observations"].chunks is not None


def test_same_data_gives_same_bytes(tmp_path):
    write_transitions(tmp_path / "a.hdf5", make_arrays())
    write_transitions(tmp_path / "b.hdf5", make_arrays())
    assert (tmp_path / "a.hdf5").read_bytes() == (tmp_path / "b.hdf5").read_bytes()


@pytest.mark.parametrize("mutate, message", [
    (lambda a: a.pop("rewards"), "missing required key"),
    (lambda a: a.update(actions=a["actions"][:-1]), "actions has 9 rows"),
    (lambda a: a["observations"].__setitem__((3, 1), np.nan), "observations holds NaN or inf .first at row 3"),
    (lambda a: a["rewards"].__setitem__(2, np.inf), "rewards holds NaN or inf"),
    (lambda a: a.update(observations=a["observations"].astype(np.int64)), "must be floating point"),
    (lambda a: a.update(rewards=a["rewards"].reshape(10, 1)), "rewards must be 1-D"),
    (lambda a: a["terminals"].__setitem__(4, True), "both terminal and timeout"),
    (lambda a: a["timeouts"].__setitem__(9, False), "last row ends no episode"),
])
def test_bad_arrays_are_refused_and_nothing_is_written(tmp_path, mutate, message):
    arrays = make_arrays()
    mutate(arrays)
    with pytest.raises(OfflineRLError, match=message):
        write_transitions(tmp_path / "d.hdf5", arrays)
    assert list(tmp_path.iterdir()) == []


def test_truncated_or_corrupt_files_are_named_in_the_error(tmp_path):
    path = tmp_path / "d.hdf5"
    write_transitions(path, make_arrays(n=2000, episode_len=100))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(OfflineRLError, match=f"{path}.*(truncated or corrupt|cannot)"):
        read_transitions(path)
    path.write_bytes(b"garbage" * 100)
    with pytest.raises(OfflineRLError, match="not a readable HDF5 file"):
        read_transitions(path)


def test_a_file_that_is_not_offrl_format_is_refused(tmp_path):
    with h5py.File(tmp_path / "x.hdf5", "w") as f:
        f["observations"] = np.zeros((3, 2))
    with pytest.raises(OfflineRLError, match="not an offrl dataset"):
        read_transitions(tmp_path / "x.hdf5")
