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
    assert "| hc/medium-v0 | CQL-SAC | fast | offline | 3 | 2000 | 21.0 ± 1.0 |" in out  # sample std
    assert (path.parent / "leaderboard_summary.csv").is_file() and (path.parent / "leaderboard_summary.md").is_file()
    assert (path.parent / "leaderboard_hc_medium-v0.png").stat().st_size > 1000


def test_version_prints_the_package_version(capsys):
    import pytest

    import offrl

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"offrl {offrl.__version__}"


def test_bad_offrl_threads_is_one_line_and_exit_2(monkeypatch, capsys):
    for bad in ("abc", "-2", "0"):
        monkeypatch.setenv("OFFRL_THREADS", bad)
        assert main(["datasets", "list"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"OFFRL_THREADS={bad!r}" in err


def test_every_option_has_help():
    import argparse

    from offrl.cli import build_parser

    def parsers(parser):
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for child in action.choices.values():
                    yield from parsers(child)

    missing = [f"{p.prog} {a.option_strings or a.dest}" for p in parsers(build_parser()) for a in p._actions
               if not a.help and not isinstance(a, argparse._SubParsersAction)]
    assert missing == []


def test_train_cql_set_overrides_are_checked_and_recorded(tmp_path, capsys):
    from offrl.data.collect import rollout_transitions

    arrays, _ = rollout_transitions("Pendulum-v1", None, 400, seed=0, num_envs=2)
    register_dataset("pendulum/random-v0", arrays, {"env_id": "Pendulum-v1"})
    base = ["train-cql", "--dataset", "pendulum/random-v0", "--steps", "4", "--quiet", "--log-every", "2",
            "--final-eval-episodes", "1", "--set", "actor_hidden=[8]", "--set", "critic_hidden=[8]",
            "--set", "batch_size=16", "--set", "n_actions=2"]
    assert main([*base, "--set", "cql_alpha=abc", "--out", str(tmp_path / "a")]) == 2
    assert "cql_alpha must be a number, found 'abc'" in capsys.readouterr().err
    assert main([*base, "--set", "nonsense", "--out", str(tmp_path / "a")]) == 2
    assert "expected FIELD=VALUE" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    assert main([*base, "--set", "cql_alpha=5", "--out", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "return (final)" in out and "reference" in out and "raw" in out  # no reference scores: raw returns
    record = json.loads((tmp_path / "b" / "run.json").read_text())
    assert record["config"]["cql_alpha"] == 5.0 and record["reference"] == "raw"
