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
        "eval_size", "wer_improvement", "cer_improvement", "significance", "degradation_rate", "major_degradation",
        "slices", "newly_broken",
    ]
    assert len(result.reasons) == 8  # a pass lists why it passed
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


def _with_slice(pairs: list[PairedPrediction], **fields) -> list[PairedPrediction]:
    return [PairedPrediction(p.id, p.reference, p.baseline_hypothesis, p.candidate_hypothesis, slices=dict(fields))
            for p in pairs]


def test_better_overall_but_worse_on_a_declared_slice_is_rejected_naming_the_slice() -> None:
    clean = _with_slice(_pairs((150, 4, 1), prefix="c"), condition="clean")
    noisy = _with_slice(_pairs((40, 2, 3), prefix="n"), condition="noisy")  # every noisy utterance one word worse
    config = _config(slices=[{"field": "condition", "min_n": 30}], max_wer_degradation_rate=0.5,
                     max_newly_broken_rate=None)
    result = gate(clean + noisy, config)
    assert result.wer.improvement > 0.1 and result.wer.bootstrap.p_value < 0.01
    assert result.verdict == "fail"
    assert [c.name for c in result.checks if not c.passed] == ["slices"]
    assert "slice condition=noisy got worse: WER 0.200 → 0.300" in result.reasons[0]
    assert {s.name: (s.n, s.gated, s.passed) for s in result.slices} == {
        "condition=clean": (150, True, True), "condition=noisy": (40, True, False)}
    noisy_result = next(s for s in result.slices if s.value == "noisy")
    assert noisy_result.bootstrap is not None and noisy_result.bootstrap.ci_high < 0


def test_a_small_slice_is_reported_not_gated_and_tolerance_is_respected() -> None:
    clean = _with_slice(_pairs((150, 4, 1), prefix="c"), condition="clean")
    noisy = _with_slice(_pairs((10, 2, 3), prefix="n"), condition="noisy")
    result = gate(clean + noisy, _config(slices=[{"field": "condition", "min_n": 30}], max_newly_broken_rate=None))
    assert result.passed
    assert "1 too small, reported only" in result.reasons[6]
    tolerant = _config(slices=[{"field": "condition", "min_n": 5, "max_wer_increase": 0.1}], max_newly_broken_rate=None)
    assert gate(clean + noisy, tolerant).passed  # +0.1 WER is within a 0.1 tolerance


def test_bucketed_numeric_slice() -> None:
    pairs = [PairedPrediction(p.id, p.reference, p.baseline_hypothesis, p.candidate_hypothesis,
                              slices={"duration_s": 1.0 + i % 7}) for i, p in enumerate(_pairs((70, 3, 1)))]
    result = gate(pairs, _config(slices=[{"field": "duration_s", "buckets": [2, 5], "min_n": 5}]))
    assert {s.value for s in result.slices} == {"<2", "2-5", ">=5"}
    assert sum(s.n for s in result.slices) == 70


def test_fixing_many_but_newly_breaking_more_than_the_cap_is_rejected() -> None:
    # 120 fixed (2 -> 0), 20 newly broken (0 -> 1): overall clearly better, but 10% of utterances newly broken
    pairs = _pairs((120, 2, 0), (20, 0, 1), (60, 1, 1))
    result = gate(pairs, _config(max_wer_degradation_rate=0.5, max_newly_broken_rate=0.05))
    assert result.wer.improvement > 0 and result.wer.bootstrap.p_value < 0.01
    assert result.verdict == "fail"
    assert [c.name for c in result.checks if not c.passed] == ["newly_broken"]
    assert result.reasons[0].startswith("20 utterance(s) newly broken (10.0%; churn: 120 fixed, 20 newly broken")
    assert "above max_newly_broken_rate 5.0%" in result.reasons[0]
    assert (result.churn.fixed, result.churn.newly_broken, result.churn.unchanged) == (120, 20, 60)
    assert result.mcnemar.fixed == 120 and result.mcnemar.broken == 20 and result.mcnemar.p_value < 1e-10
    assert gate(pairs, _config(max_wer_degradation_rate=0.5, max_newly_broken_rate=None, max_newly_broken=25)).passed
    assert not gate(pairs, _config(max_wer_degradation_rate=0.5, max_newly_broken_rate=None,
                                   max_newly_broken=19)).passed


def test_every_statistic_states_alpha_resamples_and_n() -> None:
    result = gate(_pairs((100, 3, 1)), _config(significance_alpha=0.01)).to_dict()
    assert result["alpha"] == 0.01
    for metric in ("wer", "cer"):
        assert (result[metric]["bootstrap"]["alpha"], result[metric]["bootstrap"]["resamples"]) == (0.01, 2000)
        assert result[metric]["bootstrap"]["n"] == 100
    assert result["wilcoxon"]["n"] == result["matched_pairs"]["n"] == result["mcnemar"]["n"] == 100


def test_first_run_absolute_policy_judges_the_candidate_alone() -> None:
    config = _config(first_run_policy="absolute", first_run_max_wer=0.2)
    worse_than_base = _pairs((100, 0, 1))  # 0.1 WER: worse than the base model, but under the ceiling
    result = gate(worse_than_base, config, first_run=True)
    assert result.passed and result.policy == "absolute" and not result.requires_approval
    assert [c.name for c in result.checks] == ["eval_size", "absolute_wer"]
    assert "first_run_policy=absolute" in result.reasons[1]
    too_bad = gate(_pairs((100, 5, 3)), config, first_run=True)
    assert not too_bad.passed and "WER 0.300 above first_run_max_wer 0.2" in too_bad.reasons[0]
    assert not gate(_pairs((5, 0, 0)), config, first_run=True).passed  # min_eval_size still applies


def test_first_run_require_approval_compares_with_the_base_model_and_asks_a_person() -> None:
    config = _config(first_run_policy="require_approval")
    result = gate(_pairs((100, 3, 1)), config, first_run=True)
    assert result.passed and result.requires_approval and result.policy == "require_approval"
    assert not gate(_pairs((100, 3, 1)), config).requires_approval  # not a first run
    assert not gate(_pairs((100, 1, 3)), config, first_run=True).requires_approval  # a failure needs no approval
