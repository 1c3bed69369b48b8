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


def test_a_dataset_without_reference_scores_says_how_to_add_them():
    with pytest.raises(OfflineRLError, match="no reference scores.*Minari dataset x has none.*reference_scores:"):
        reference_scores_from_card({"id": "m/x-v0", "reference_scores": {"note": "Minari dataset x has none"}})
