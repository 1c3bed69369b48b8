import json

from tests_support import make_arrays

from offrl.cli import main
from offrl.data.registry import data_path, register_dataset
from offrl.evaluation.leaderboard import append_row


def test_datasets_list_info_and_verify_print_readable_tables(capsys):
    register_dataset("pendulum/a-v0", make_arrays(), {"env_id": "Pendulum-v1"})
    register_dataset("pendulum/b-v0", make_arrays(seed=1), {"env_id": "Pendulum-v1"})
    assert main(["datasets", "list"]) == 0
    out = capsys.readouterr().out
    assert "pendulum/a-v0" in out and "pendulum/b-v0" in out and out.count("verified") == 2
    assert main(["datasets", "info", "pendulum/a-v0"]) == 0
    assert json.loads(capsys.readouterr().out)["transitions"] == 10
    assert main(["datasets", "verify"]) == 0
    assert capsys.readouterr().out.count(" ok") == 2
    with open(data_path("pendulum/b-v0"), "ab") as f:
        f.write(b"x")
    assert main(["datasets", "list"]) == 0
    assert "SHA256 MISMATCH" in capsys.readouterr().out
    assert main(["datasets", "verify"]) == 2
    assert "sha256 mismatch" in capsys.readouterr().out
    assert main(["datasets", "verify", "pendulum/b-v0"]) == 2
    assert "card says" in capsys.readouterr().err
    assert main(["datasets", "info", "pendulum/zzz-v0"]) == 2


def test_leaderboard_command_writes_summary_and_plots(tmp_path, capsys):
    path = tmp_path / "evaluation" / "leaderboard.csv"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "evaluations.csv").write_text("step,normalized_return\n1000,10\n2000,20\n")
    (run_dir / "q_bias_curve.csv").write_text("t,count,q,mc_return,bias\n0,2,1,1,0\n1,2,2,1,1\n")
    for seed in range(3):
        append_row(path, {"run_id": f"r{seed}", "phase": "offline", "online_steps": 0, "dataset_id": "hc/medium-v0",
                          "algorithm": "CQL-SAC", "config_name": "fast", "seed": seed, "steps": 2000,
                          "final_normalized_return": 20.0 + seed, "best_normalized_return": 25.0,
                          "q_bias_normalized_mean": 0.1, "updates_per_s": 10.0, "run_dir": str(run_dir)})
    assert main(["leaderboard", "--leaderboard", str(path)]) == 0
    out = capsys.readouterr().out
    assert "| hc/medium-v0 | CQL-SAC | fast | offline | 3 | 2000 | 21.0 ± 0.8 |" in out
    assert (path.parent / "leaderboard_summary.csv").is_file() and (path.parent / "leaderboard_summary.md").is_file()
    assert (path.parent / "leaderboard_hc_medium-v0.png").stat().st_size > 1000
