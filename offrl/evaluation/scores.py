"""Normalized returns: 100 · (R − R_random) / (R_expert − R_random), always naming the reference used."""

from __future__ import annotations

from dataclasses import dataclass

from offrl.errors import OfflineRLError

__all__ = ["RAW", "ReferenceScores", "reference_scores_from_card", "normalized_return"]


RAW = "raw"


@dataclass(frozen=True)
class ReferenceScores:
    random: float
    expert: float
    source: str  # e.g. "offrl card halfcheetah/medium-v0 (random: uniform policy, 20 episodes; ...)"

    @classmethod
    def raw(cls) -> ReferenceScores:
        """No reference: 100 · (R − 0) / (100 − 0) = R, so every "normalized" score is the raw return."""
        return cls(random=0.0, expert=100.0, source=RAW)

    @property
    def is_raw(self) -> bool:
        return self.source == RAW


def reference_scores_from_card(card: dict) -> ReferenceScores:
    """The dataset's own reference scores (offrl card, D4RL's table or Minari's metadata); a card without
    them gives the raw reference (scores are raw returns, and every report names the reference `raw`)."""
    refs = card.get("reference_scores") or {}
    random, expert = refs.get("random"), refs.get("expert")
    if not random or not expert or random.get("return_mean") is None or expert.get("return_mean") is None:
        return ReferenceScores.raw()
    if expert["return_mean"] == random["return_mean"]:
        raise OfflineRLError(f"dataset {card.get('id')}: random and expert reference scores are equal")
    source = (f"{card.get('id')} card: random {random['return_mean']:.1f} ({random.get('source', 'unknown source')}), "
              f"expert {expert['return_mean']:.1f} ({expert.get('source', 'unknown source')})")
    return ReferenceScores(random=float(random["return_mean"]), expert=float(expert["return_mean"]), source=source)


def normalized_return(raw_return: float, reference: ReferenceScores) -> float:
    return 100.0 * (raw_return - reference.random) / (reference.expert - reference.random)
