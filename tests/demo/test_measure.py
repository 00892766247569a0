"""The measurement script's statistics (its numbers end up in settings.py and the report)."""

from __future__ import annotations

from tuneloop_demo.measure import corpus_wer, paired_bootstrap


def _rows(hypotheses: list[str]) -> list[dict[str, str]]:
    references = ["turn on the lights", "call anna", "play some jazz music"] * 10
    return [{"id": str(i), "reference": r, "hypothesis": h} for i, (r, h) in enumerate(zip(references, hypotheses,
                                                                                             strict=True))]


def test_identical_models_are_not_significant() -> None:
    rows = _rows(["turn on the light", "call anna", "play jazz music"] * 10)
    result = paired_bootstrap(rows, rows, iterations=2000)
    assert result.delta == 0 and result.p_value == 1.0 and result.worse_share == 0


def test_a_consistently_better_candidate_is_significant() -> None:
    base = _rows(["turn on the light", "call ana", "play jazz music"] * 10)
    cand = _rows(["turn on the lights", "call anna", "play some jazz music"] * 10)
    result = paired_bootstrap(base, cand, iterations=2000)
    assert result.candidate_wer == 0 and result.delta < 0 and result.p_value < 0.01
    assert result.ci_high < 0


def test_corpus_wer_counts_words_over_the_corpus() -> None:
    rows = _rows(["turn on the light", "call anna", "play some jazz music"] * 10)
    assert corpus_wer(rows) == round(10 / 100, 4)  # 10 substitutions over 100 reference words
