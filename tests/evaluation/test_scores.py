import pytest

from offrl.errors import OfflineRLError
from offrl.evaluation.scores import normalized_return, reference_scores_from_card


def test_normalized_return_formula_and_reference_name():
    card = {"id": "hc/medium-v0", "reference_scores": {"random": {"return_mean": -280.0, "source": "uniform"},
                                                      "expert": {"return_mean": 12120.0, "source": "expert"}}}
    reference = reference_scores_from_card(card)
    assert normalized_return(-280.0, reference) == 0.0
    assert normalized_return(12120.0, reference) == 100.0
    assert normalized_return(5920.0, reference) == pytest.approx(50.0)
    assert "hc/medium-v0" in reference.source and "uniform" in reference.source


def test_a_dataset_without_reference_scores_reports_raw_returns_named_raw():
    reference = reference_scores_from_card({"id": "m/x-v0", "reference_scores": {"note": "Minari dataset x has none"}})
    assert reference.source == "raw" and reference.is_raw
    assert normalized_return(-123.5, reference) == pytest.approx(-123.5)


def test_equal_reference_scores_are_refused():
    with pytest.raises(OfflineRLError, match="random and expert reference scores are equal"):
        reference_scores_from_card({"id": "m/x-v0", "reference_scores": {"random": {"return_mean": 1.0},
                                                                          "expert": {"return_mean": 1.0}}})
