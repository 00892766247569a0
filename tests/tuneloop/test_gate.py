"""Gate decisions on constructed predictions whose right answer is known.

Every reference has ten four-letter words; errors are whole-word deletions, so one word error is also exactly
five character errors and WER and CER move together.
"""

from __future__ import annotations

import json

import pytest

from tuneloop.config import ValidationConfig
from tuneloop.gate import gate
from tuneloop.metrics import score_pair
from tuneloop.predictions import PairedPrediction

WORDS = [f"{c}{c}{c}{c}" for c in "abcdefghij"]
REFERENCE = " ".join(WORDS)


def _drop(k: int) -> str:
    """The reference with its last ``k`` words deleted (k word errors)."""
    return " ".join(WORDS[: len(WORDS) - k])


def _pairs(*groups: tuple[int, int, int], prefix: str = "u") -> list[PairedPrediction]:
    """``(count, baseline errors, candidate errors)`` groups of utterances."""
    out = []
    for count, base, cand in groups:
        for _ in range(count):
            out.append(PairedPrediction(f"{prefix}{len(out):04d}", REFERENCE, _drop(base), _drop(cand)))
    return out


def _config(**overrides) -> ValidationConfig:
    return ValidationConfig(**{"bootstrap_resamples": 2000, **overrides})


def test_clear_improvement_passes_with_its_reasons() -> None:
    result = gate(_pairs((200, 3, 1)), _config())
    assert result.passed and result.verdict == "pass"
    assert result.baseline_wer == pytest.approx(0.3) and result.candidate_wer == pytest.approx(0.1)
    assert result.wer_improvement == pytest.approx(0.2)
    assert result.wer.relative_improvement == pytest.approx(2 / 3)
    assert result.p_value == pytest.approx(1 / 2001)
    assert result.wer.bootstrap.ci_low == pytest.approx(0.2) and result.wer.bootstrap.n == 200
    assert result.cer.improvement > 0 and result.cer.bootstrap is not None
    assert (result.degraded_count, result.improved_count, result.major_degradation_count) == (0, 200, 0)
    assert [c.name for c in result.checks] == [
        "eval_size", "wer_improvement", "cer_improvement", "significance", "degradation_rate", "major_degradation"
    ]
    assert len(result.reasons) == 6  # a pass lists why it passed
    assert result.reasons[1].startswith("WER improved: 0.300 → 0.100 (−0.200, −66.7% relative, 95% CI")
    assert "p=0.0004998 < alpha 0.05" in result.reasons[3]


def test_candidate_equal_to_production_fails() -> None:
    result = gate(_pairs((100, 2, 2)), _config())
    assert not result.passed and result.verdict == "fail"
    assert result.wer_improvement == 0.0 and result.p_value == 1.0
    assert any(r.startswith("WER did not change: 0.200 → 0.200 (±0.000") for r in result.reasons)
    assert any("not significant: p=1 >= alpha 0.05" in r for r in result.reasons)


def test_equal_candidate_fails_even_without_significance() -> None:
    result = gate(_pairs((100, 2, 2)), _config(require_significance=False))
    assert [c.name for c in result.checks if not c.passed] == ["wer_improvement"]


def test_worse_candidate_fails_on_wer_cer_and_degradation() -> None:
    result = gate(_pairs((100, 1, 2)), _config())
    failed = {c.name for c in result.checks if not c.passed}
    assert failed == {"wer_improvement", "cer_improvement", "significance", "degradation_rate"}
    assert len(result.reasons) == 4  # every failure, and only failures
    assert any(r.startswith("CER got worse") for r in result.reasons)


# 6 utterances one word better, 5 one word worse, 49 unchanged: a real but tiny improvement.
NOT_SIGNIFICANT = ((6, 2, 1), (5, 1, 2), (49, 1, 1))


def test_improvement_that_is_not_significant_fails_when_significance_is_required() -> None:
    result = gate(_pairs(*NOT_SIGNIFICANT), _config())
    assert result.wer_improvement > 0 and result.degradation_rate == pytest.approx(5 / 60)
    assert not result.passed and result.verdict == "fail"
    assert [c.name for c in result.checks if not c.passed] == ["significance"]
    assert result.p_value > 0.05
    assert result.reasons[0].startswith(f"WER improvement is not significant: p={result.p_value:.4g} >= alpha 0.05")


def test_same_improvement_passes_when_significance_is_not_required() -> None:
    result = gate(_pairs(*NOT_SIGNIFICANT), _config(require_significance=False))
    assert result.passed
    assert any(r.startswith("significance not required (require_significance=false)") for r in result.reasons)


def test_degradation_rate_over_the_cap_fails_naming_rate_and_cap() -> None:
    result = gate(_pairs((60, 3, 1), (15, 1, 2), (25, 1, 1)), _config())
    assert result.wer_improvement > 0 and result.p_value < 0.05
    assert not result.passed
    assert result.reasons == (
        "15.0% of utterances got a higher WER (15 of 100), above max_wer_degradation_rate 10.0%",
    )
    assert len(result.worst_degradations) == 5 and result.worst_degradations[0].increase == pytest.approx(0.1)


def test_one_major_degradation_fails_with_its_id() -> None:
    pairs = _pairs((100, 2, 1))
    pairs.append(PairedPrediction("utt-broken", "turn left", "turn left", ""))
    result = gate(pairs, _config())
    assert not result.passed and result.major_degradation_count == 1
    assert result.major_degradation_ids == ("utt-broken",)
    assert result.reasons == ("1 utterance(s) got worse by more than 0.5 WER: 'utt-broken' (0.00 → 1.00)",)
    worst = result.worst_degradations[0]
    assert (worst.id, worst.reference, worst.baseline_hypothesis, worst.candidate_hypothesis) == (
        "utt-broken", "turn left", "turn left", ""
    )
    assert gate(pairs, _config(require_no_major_degradation=False)).passed


def test_an_increase_of_exactly_the_threshold_is_not_major() -> None:
    """3 -> 8 errors of 10 words is +0.5 exactly (0.8 - 0.3 in floats is 0.5000000000000001)."""
    pairs = _pairs((100, 2, 1))
    pairs.append(PairedPrediction("edge", REFERENCE, _drop(3), _drop(8)))
    result = gate(pairs, _config())
    assert result.major_degradation_count == 0 and result.worst_degradations[0].increase == 0.5


def test_below_min_eval_size_is_insufficient_evidence() -> None:
    result = gate(_pairs((10, 3, 1)), _config(min_eval_size=20))
    assert not result.passed and result.verdict == "insufficient_evidence"
    assert result.reasons[0] == (
        "only 10 paired eval utterances, fewer than min_eval_size 20: not enough evidence to judge the candidate"
    )


def test_no_utterances_at_all_is_insufficient_evidence() -> None:
    result = gate([], _config())
    assert result.verdict == "insufficient_evidence" and result.wer.bootstrap is None
    json.dumps(result.to_dict())


def test_min_wer_improvement_is_absolute() -> None:
    result = gate(_pairs((200, 3, 2)), _config(min_wer_improvement=0.15))
    assert [c.name for c in result.checks if not c.passed] == ["wer_improvement"]
    assert "improved by only 0.100" in result.reasons[0] and "below min_wer_improvement 0.150" in result.reasons[0]


def test_gate_accepts_a_scored_pair_and_to_dict_is_json() -> None:
    pairs = _pairs((150, 3, 1), (5, 1, 2))
    result = gate(score_pair(pairs), _config())
    assert result == gate(pairs, _config())  # same numbers either way, deterministic by seed
    data = json.loads(json.dumps(result.to_dict()))
    assert data["verdict"] == "pass" and data["wer"]["bootstrap"]["resamples"] == 2000
    assert data["thresholds"]["max_wer_degradation_rate"] == 0.1
    assert data["worst_degradations"][0]["reference"] == REFERENCE
    assert isinstance(data["reasons"], list) and data["wilcoxon"]["p_value"] < 0.05
