"""The update profiler (benchmarks/profile_update.py): operator kinds, the per-operator frame, its refusals."""

from benchmarks.profile_update import main, operator_kind, profile_updates


def test_operators_are_grouped_into_the_kinds_the_speed_issue_weighs():
    assert operator_kind("aten::mm") == operator_kind("mkldnn::_linear_pointwise") == "GEMM"
    assert operator_kind("aten::_to_copy") == operator_kind("aten::copy_") == "copies and dtype casts"
    assert operator_kind("aten::threshold_backward") == "ReLU backward"
    assert operator_kind("aten::sum") == "reductions (bias grads, losses)"
    assert operator_kind("aten::_foreach_addcdiv_") == operator_kind("aten::_fused_adam_") == "optimizer (Adam)"
    assert operator_kind("aten::_foreach_lerp_") == "target update (Polyak)"
    assert operator_kind("Optimizer.zero_grad#Adam.zero_grad") == "zero_grad / fill"
    assert operator_kind("aten::tanh") == "other"
    assert operator_kind("aten::to_dense") == "other"  # a prefix of a name is not the name


def test_a_profile_has_every_operator_of_the_update_once_with_its_kind():
    frame = profile_updates((8, 8), "fp32", updates=2, warmup=1)
    assert frame["operator"].is_unique and (frame["self_ms_per_update"] > 0).all()
    gemm = frame[frame["kind"] == "GEMM"]
    # the actor, two critics and their targets each run matrix products forwards and backwards every update
    assert gemm["calls_per_update"].sum() >= 10


def test_bad_arguments_are_refused_with_exit_2_before_any_profiling(tmp_path, capsys):
    assert main(["--precisions", "fp16", "--out", str(tmp_path / "p.md")]) == 2
    assert "--precisions 'fp16'" in capsys.readouterr().err and not (tmp_path / "p.md").exists()
    for out in (tmp_path, tmp_path / "p.csv"):  # a folder; a name whose CSV would overwrite it
        assert main(["--precisions", "fp32", "--out", str(out)]) == 2
        assert "expected a .md file path" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
