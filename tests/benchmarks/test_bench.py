"""The benchmark program (benchmarks/bench.py): rows, rounds against d3rlpy, refusals, its command line."""

import pandas as pd
import pytest


def test_bench_rows_carry_rates_and_the_fraction_of_peak(tmp_path):
    from benchmarks.bench import run_bench

    frame = run_bench(tmp_path / "bench.csv", seconds=0.05, include=("updates",), sizes={"tiny 2x8": (8, 8)},
                      peak_size=256)
    cql = frame[frame["benchmark"] == "CQL update tiny 2x8"]
    assert set(cql["precision"]) == {"fp32", "bf16"}
    assert (cql["value"] > 0).all()
    assert (cql["gflops"] / cql["value"]).tolist() == pytest.approx(cql["gflop_per_update"].tolist())
    assert (tmp_path / "bench.csv").is_file()


FAKE_D3RLPY = """
import sys
from pathlib import Path
import pandas as pd
calls = Path(sys.argv[0]).with_name("calls.txt")
call = len(calls.read_text().splitlines()) if calls.exists() else 0
calls.write_text("x\\n" * (call + 1))
rate = [1.0, 4.0, 2.0][call]  # a machine that drifts between rounds
pd.DataFrame([{"benchmark": "CQL update tiny 2x8", "impl": "d3rlpy 2.8.1", "precision": "fp32",
               "value": rate, "unit": "updates/s", "device": "cpu"}]).to_csv(sys.argv[1], index=False)
"""


def test_rounds_against_d3rlpy_keep_median_rates_and_per_round_ratios(tmp_path):
    import sys

    from benchmarks.bench import run_bench_against_d3rlpy

    script = tmp_path / "fake_d3rlpy.py"
    script.write_text(FAKE_D3RLPY)
    out = tmp_path / "bench.csv"
    frame = run_bench_against_d3rlpy(out, sys.executable, seconds=0.05, rounds=3, script=script,
                                     include=("updates",), sizes={"tiny 2x8": (8, 8)}, peak_size=256)
    rounds = pd.read_csv(tmp_path / "bench_rounds.csv")
    offrl = rounds[(rounds["impl"] == "offrl") & (rounds["benchmark"] == "CQL update tiny 2x8")
                   & (rounds["precision"] == "fp32")].sort_values("round")
    assert len(offrl) == 3
    per_round_ratio = offrl["value"].to_numpy() / [1.0, 4.0, 2.0]
    assert offrl["vs_d3rlpy_fp32"].to_numpy() == pytest.approx(per_round_ratio, rel=1e-3)
    written = pd.read_csv(out).set_index(["impl", "benchmark", "precision"])
    row = written.loc[("offrl", "CQL update tiny 2x8", "fp32")]
    assert row["vs_d3rlpy_fp32"] == pytest.approx(sorted(per_round_ratio)[1], rel=1e-3)
    assert (row["vs_d3rlpy_fp32_min"], row["vs_d3rlpy_fp32_max"]) == pytest.approx(
        (min(per_round_ratio), max(per_round_ratio)), rel=1e-3)
    assert row["value"] == pytest.approx(offrl["value"].median(), rel=1e-3) and row["rounds"] == 3
    assert written.loc[("d3rlpy 2.8.1", "CQL update tiny 2x8", "fp32"), "value"] == pytest.approx(2.0)
    assert set(frame["impl"]) == {"offrl", "d3rlpy 2.8.1"}


def test_a_sitting_records_the_commit_it_started_at_in_every_row(tmp_path, monkeypatch):
    """The sitting rewrites the tracked bench.csv before its once-only rows: reading the commit again then would
    call a clean checkout dirty."""
    import sys

    import benchmarks.bench as bench

    script = tmp_path / "fake_d3rlpy.py"
    script.write_text(FAKE_D3RLPY)
    reads = iter(["abc1234", *["abc1234-dirty"] * 20])
    monkeypatch.setattr(bench, "git_commit", lambda: next(reads))
    bench.run_bench_against_d3rlpy(tmp_path / "bench.csv", sys.executable, seconds=0.05, rounds=1, script=script,
                                   include=("updates", "critics"), sizes={"tiny 2x8": (8, 8)}, peak_size=256)
    written = pd.read_csv(tmp_path / "bench.csv")
    offrl = written[written["impl"] == "offrl"]
    assert offrl["benchmark"].str.startswith("critics").any()  # a once-only row, measured after the merge
    assert set(offrl["git_commit"]) == {"abc1234"}


def test_rounds_against_d3rlpy_stop_with_the_script_named_when_it_fails(tmp_path):
    import sys

    from benchmarks.bench import run_bench_against_d3rlpy
    from offrl.errors import OfflineRLError

    script = tmp_path / "broken.py"
    script.write_text("raise SystemExit(3)\n")
    with pytest.raises(OfflineRLError, match="broken.py failed"):
        run_bench_against_d3rlpy(tmp_path / "bench.csv", sys.executable, seconds=0.05, rounds=1, script=script,
                                 include=("updates",), sizes={"tiny 2x8": (8, 8)})
    assert not (tmp_path / "bench.csv").exists()


def test_fusion_rows_time_the_fast_path_against_the_plain_operators(tmp_path):
    from benchmarks.bench import run_bench

    frame = run_bench(tmp_path / "bench.csv", seconds=0.01, include=("fusion",))
    assert sorted(zip(frame["benchmark"], frame["precision"], strict=True)) == [
        ("CQL update d3rlpy 2x256, fused CPU kernels", "bf16"), ("CQL update d3rlpy 2x256, fused CPU kernels", "fp32"),
        ("CQL update d3rlpy 2x256, plain operators", "bf16"), ("CQL update d3rlpy 2x256, plain operators", "fp32")]
    assert (frame["value"] > 0).all()


def test_unknown_benchmark_names_are_refused_before_anything_runs(tmp_path):
    from benchmarks.bench import run_bench
    from offrl.errors import OfflineRLError

    with pytest.raises(OfflineRLError, match="--only: unknown benchmark.*matmull"):
        run_bench(tmp_path / "bench.csv", include=("matmull",))
    assert not (tmp_path / "bench.csv").exists()


def test_rounds_refuse_unknown_benchmark_names_before_running_d3rlpy(tmp_path):
    import sys

    from benchmarks.bench import run_bench_against_d3rlpy
    from offrl.errors import OfflineRLError

    script = tmp_path / "marks.py"
    script.write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\n")
    with pytest.raises(OfflineRLError, match="--only: unknown benchmark"):
        run_bench_against_d3rlpy(tmp_path / "bench.csv", sys.executable, rounds=1, script=script,
                                 include=("updates", "matmull"))
    assert not (tmp_path / "ran").exists()


def test_the_command_line_writes_the_rows_and_prints_them(tmp_path, capsys):
    from benchmarks.bench import main

    out = tmp_path / "bench.csv"
    assert main(["--only", "critics", "--seconds", "0.01", "--out", str(out)]) == 0
    assert "two plain MLPs" in capsys.readouterr().out
    written = pd.read_csv(out)
    assert set(written["command"]) == {f"python -m benchmarks.bench --only critics --seconds 0.01 --out {out}"}


@pytest.mark.parametrize("argv", [["--only", "matmull"], ["--against-d3rlpy", "python", "--only", "matmul"],
                                  ["--cuda-graph", "--only", "updates"]])
def test_the_command_line_turns_refusals_into_exit_code_2(tmp_path, capsys, argv):
    from benchmarks.bench import main

    assert main([*argv, "--out", str(tmp_path / "bench.csv")]) == 2
    assert "error: --" in capsys.readouterr().err
    assert not (tmp_path / "bench.csv").exists()


def test_cuda_graph_refuses_the_cpu_and_compile(tmp_path):
    from benchmarks.bench import run_bench
    from offrl.errors import OfflineRLError

    with pytest.raises(OfflineRLError, match="--cuda-graph: needs --device cuda"):
        run_bench(tmp_path / "bench.csv", include=("updates",), cuda_graph=True)
    assert not (tmp_path / "bench.csv").exists()
