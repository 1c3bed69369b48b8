import pytest

from offrl.errors import OfflineRLError
from offrl.runs import TrainingReport, append_report

RECORD = {"dataset_id": "pendulum/random-v0", "dataset_version": 0, "dataset_sha256": "0" * 64,
          "config_name": "fast", "config_hash": "abc", "seed": 0, "device": "cpu", "git_commit": "x"}


def test_a_row_with_a_non_finite_number_is_never_written(tmp_path):
    leaderboard = tmp_path / "lb.csv"
    report = TrainingReport(run_id="r", run_dir=None, dataset_id="pendulum/random-v0", algorithm="CQL-SAC",
                            updates=10, reference="raw", final_normalized_return=float("nan"))
    with pytest.raises(OfflineRLError, match="non-finite final_normalized_return; no leaderboard row"):
        append_report(leaderboard, RECORD, report, phase="offline")
    assert not leaderboard.exists()
    report.final_normalized_return = 1.5
    append_report(leaderboard, RECORD, report, phase="offline")
    assert len(leaderboard.read_text().splitlines()) == 2
