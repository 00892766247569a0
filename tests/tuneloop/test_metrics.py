from __future__ import annotations

import random
from collections.abc import Sequence
from unittest.mock import patch

import jiwer
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tuneloop import metrics
from tuneloop.metrics import MetricsError, ScoredPair, ScoredSet, count_errors, score, score_pair
from tuneloop.predictions import PairedPrediction, Prediction
from tuneloop.text import normalize_transcript

WORDS = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far", "away", "café", "wi-fi"]


def _random_predictions(n: int, seed: int) -> list[Prediction]:
    rng = random.Random(seed)
    predictions = []
    for i in range(n):
        reference = [rng.choice(WORDS) for _ in range(rng.randint(1, 12))]
        hypothesis = [w for w in reference if rng.random() > 0.1]
        hypothesis = [rng.choice(WORDS) if rng.random() < 0.15 else w for w in hypothesis]
        if rng.random() < 0.1:
            hypothesis.insert(rng.randint(0, len(hypothesis)), rng.choice(WORDS))
        if rng.random() < 0.05:
            hypothesis = []
        text = " ".join(hypothesis)
        predictions.append(Prediction(f"u{i}", " ".join(reference).upper() + "!", text))
    return predictions


def test_corpus_rates_match_jiwer_on_the_same_data() -> None:
    predictions = _random_predictions(300, seed=1)
    scored = score(predictions)
    references = [normalize_transcript(p.reference) for p in predictions]
    hypotheses = [normalize_transcript(p.hypothesis) for p in predictions]
    assert scored.corpus_wer == pytest.approx(jiwer.wer(references, hypotheses), abs=1e-12)
    assert scored.corpus_cer == pytest.approx(jiwer.cer(references, hypotheses), abs=1e-12)
    words = jiwer.process_words(references, hypotheses)
    assert int(scored.word_errors.sum()) == words.substitutions + words.deletions + words.insertions
    assert int(scored.reference_words.sum()) == words.hits + words.substitutions + words.deletions


def test_per_utterance_counts_match_jiwer() -> None:
    for p in _random_predictions(50, seed=2):
        ref, hyp = normalize_transcript(p.reference), normalize_transcript(p.hypothesis)
        counts = count_errors(p.reference, p.hypothesis)
        words = jiwer.process_words(ref, hyp)
        chars = jiwer.process_characters(ref, hyp)
        assert counts.word_errors == words.substitutions + words.deletions + words.insertions
        assert counts.char_errors == chars.substitutions + chars.deletions + chars.insertions
        assert counts.wer == pytest.approx(words.wer)


def test_corpus_wer_is_pooled_not_a_mean_of_ratios() -> None:
    scored = score([Prediction("short", "yes", "no"), Prediction("long", "a b c d e f g h i j", "a b c d e f g h i j")])
    assert scored.corpus_wer == pytest.approx(1 / 11)
    assert scored.utterance_wer.tolist() == [1.0, 0.0]


@pytest.mark.parametrize(
    "text", ["", "it's fine", " leading", "trailing ", "two  spaces", "Upper", "café", "wi-fi", "tab\there", "x1", "'"]
)
def test_fast_normalisation_path_equals_normalize_transcript(text: str) -> None:
    from tuneloop.metrics import _normalise

    assert _normalise(text) == normalize_transcript(text)


def test_normalisation_ignores_case_and_punctuation() -> None:
    counts = count_errors("Hello, World!", "hello world")
    assert (counts.word_errors, counts.char_errors, counts.reference_words) == (0, 0, 2)


@pytest.mark.parametrize(
    ("reference", "hypothesis", "wer", "word_errors", "reference_words"),
    [
        ("", "", 0.0, 0, 0),  # silence transcribed as silence
        ("", "uh huh", 2.0, 2, 0),  # every hallucinated word counts, over a denominator of 1
        ("good morning", "", 1.0, 2, 2),  # empty hypothesis: all deletions
        ("?!", "...", 0.0, 0, 0),  # normalises to empty on both sides
    ],
)
def test_empty_sides(reference: str, hypothesis: str, wer: float, word_errors: int, reference_words: int) -> None:
    counts = count_errors(reference, hypothesis)
    assert (counts.wer, counts.word_errors, counts.reference_words) == (wer, word_errors, reference_words)


def test_scored_set_summary_and_exact_match() -> None:
    scored = score([Prediction("a", "one two", "one two"), Prediction("b", "three", "tree"), Prediction("c", "", "")])
    assert scored.n == 3
    assert scored.exact.tolist() == [True, False, True]
    assert scored.exact_match_rate == pytest.approx(2 / 3)
    assert scored.summary()["reference_words"] == 3
    with pytest.raises(ValueError):
        scored.word_errors[0] = 5  # read-only


def test_empty_set_scores_zero() -> None:
    scored = score([])
    assert (scored.n, scored.corpus_wer, scored.exact_match_rate) == (0, 0.0, 0.0)


def test_score_pair_shares_references() -> None:
    paired = [PairedPrediction("a", "one two three", "one two", "one two three")]
    pair = score_pair(paired)
    assert pair.baseline.word_errors.tolist() == [1] and pair.candidate.word_errors.tolist() == [0]
    assert pair.n == 1 and pair.pairs == tuple(paired)


def test_scored_pair_refuses_different_references() -> None:
    a = score([Prediction("a", "one two", "one")])
    b = score([Prediction("a", "one", "one")])
    with pytest.raises(MetricsError, match="different references"):
        ScoredPair(a, b, ())


def test_scoring_20k_pairs_is_fast() -> None:
    import time

    rng = np.random.default_rng(0)
    vocab = np.array(["w" + str(i) for i in range(500)])
    refs = [" ".join(vocab[rng.integers(0, 500, 12)]) for _ in range(20_000)]
    paired = [PairedPrediction(str(i), r, r, r[:-3]) for i, r in enumerate(refs)]
    start = time.perf_counter()
    pair = score_pair(paired)
    elapsed = time.perf_counter() - start
    assert pair.candidate.corpus_wer > pair.baseline.corpus_wer == 0.0
    assert elapsed < 5.0, f"scoring 20k pairs took {elapsed:.2f} s"


def test_corpus_wer_and_cer_of_text_lists() -> None:
    from tuneloop.metrics import corpus_cer, corpus_wer

    assert corpus_wer(["Turn LEFT", "stop"], ["turn right", "stop"]) == pytest.approx(1 / 3)
    assert corpus_cer(["ab"], ["ac"]) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        corpus_wer(["a"], [])


# --- The fast scoring path against a plain reference, on random texts ------------------------------------------

# Tokens that exercise normalisation: case, accents that fold, letters that vanish, apostrophes, hyphens, digits,
# punctuation-only tokens, repeated words (alignments with several optimal paths) and the empty token.
_TOKENS = ["the", "the", "cat", "sat", "a", "on", "mat", "The", "CAT", "don't", "'", "Café", "naïve", "ÉCOLE",
           "straße", "wi-fi", "U.S.A.", "42", "x1", "!", "...", "—", "日本", "ﬁ", ""]
_SEPARATORS = [" ", "  ", "\t", "\n", " , ", "-"]
# Nearly normalised: vocabulary words and apostrophes, but an empty word makes a double, leading or trailing space.
_CLEAN_LOOKING = st.lists(st.sampled_from(["the", "cat", "don't", "'", ""]), max_size=5).map(" ".join)
_TEXTS = st.one_of(
    st.lists(st.tuples(st.sampled_from(_TOKENS), st.sampled_from(_SEPARATORS)), max_size=8).map(
        lambda parts: "".join(token + separator for token, separator in parts)),
    _CLEAN_LOOKING,
    st.text(max_size=20),
    st.just(""),
)


@st.composite
def _triples(draw: st.DrawFn) -> tuple[str, str, str]:
    """A reference and two hypotheses, each the reference itself, the reference restyled (same words once
    normalised), the reference with one word replaced by 0-2 tokens (near misses share a prefix), or any text."""
    reference = draw(_TEXTS)

    def hypothesis() -> str:
        kind = draw(st.sampled_from(["same", "restyled", "edited", "other"]))
        if kind == "same":
            return reference
        if kind == "restyled":
            return reference.upper() + " ?!"
        if kind == "edited":
            words = reference.split()
            i = draw(st.integers(0, len(words)))
            return " ".join(words[:i] + draw(st.lists(st.sampled_from(_TOKENS), max_size=2)) + words[i + 1:])
        return draw(_TEXTS)

    return reference, hypothesis(), hypothesis()


def _edit_distance(a: Sequence[object], b: Sequence[object]) -> int:
    """Textbook Levenshtein distance (unit costs), one row of the dynamic programme at a time."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        current = [i]
        for j, y in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def _expected(reference: str, hypothesis: str) -> tuple[int, int, int, int, bool]:
    """Word errors, reference words, char errors, reference chars, exact -- the slow, obvious way."""
    ref, hyp = normalize_transcript(reference), normalize_transcript(hypothesis)
    return _edit_distance(ref.split(), hyp.split()), len(ref.split()), _edit_distance(ref, hyp), len(ref), ref == hyp


def _counts(scored: ScoredSet, i: int) -> tuple[int, int, int, int, bool]:
    return (int(scored.word_errors[i]), int(scored.reference_words[i]), int(scored.char_errors[i]),
            int(scored.reference_chars[i]), bool(scored.exact[i]))


@settings(max_examples=300, deadline=None)
@given(st.lists(_triples(), max_size=10), st.integers(1, 4))
def test_score_pair_equals_a_plain_edit_distance(triples: list[tuple[str, str, str]], chunk: int) -> None:
    """Every count of the fast path (chunked normalisation, rapidfuzz, shortcuts) equals the textbook one; small
    normalisation chunks so that chunks of clean texts, dirty texts and empty texts all occur."""
    paired = [PairedPrediction(f"u{i}", *triple) for i, triple in enumerate(triples)]
    with patch.object(metrics, "_CHECK_CHUNK", chunk):
        pair = score_pair(paired)
        single = score([p.candidate for p in paired])
    for i, p in enumerate(paired):
        assert _counts(pair.baseline, i) == _expected(p.reference, p.baseline_hypothesis)
        assert _counts(pair.candidate, i) == _expected(p.reference, p.candidate_hypothesis)
        assert _counts(single, i) == _counts(pair.candidate, i)
        one = count_errors(p.reference, p.candidate_hypothesis)
        assert (one.word_errors, one.reference_words, one.char_errors, one.reference_chars, one.char_errors == 0) == (
            _counts(pair.candidate, i))


@settings(max_examples=300, deadline=None)
@given(st.lists(_TEXTS, max_size=12), st.integers(1, 5))
def test_chunked_normalisation_equals_normalize_transcript(texts: list[str], chunk: int) -> None:
    """Clean-looking texts with a stray space among normalised ones: the whole-chunk check must not pass them."""
    with patch.object(metrics, "_CHECK_CHUNK", chunk):
        assert metrics._normalise_all(texts) == [normalize_transcript(t) for t in texts]


@settings(max_examples=200, deadline=None)
@given(_TEXTS, _TEXTS)
def test_word_counts_match_jiwer(reference: str, hypothesis: str) -> None:
    """jiwer itself (it refuses an empty reference) on the same normalised texts."""
    ref, hyp = normalize_transcript(reference), normalize_transcript(hypothesis)
    assume(ref)
    scored = score([Prediction("a", reference, hypothesis)])
    words, chars = jiwer.process_words(ref, hyp), jiwer.process_characters(ref, hyp)
    assert int(scored.word_errors[0]) == words.substitutions + words.deletions + words.insertions
    assert int(scored.char_errors[0]) == chars.substitutions + chars.deletions + chars.insertions
