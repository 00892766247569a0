from __future__ import annotations

import random

import jiwer
import numpy as np
import pytest

from tuneloop.metrics import MetricsError, ScoredPair, count_errors, score, score_pair
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
