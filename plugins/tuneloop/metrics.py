"""Per-utterance and corpus WER/CER, kept as error counts so corpus rates and the bootstrap stay exact.

Both sides are normalised with :func:`tuneloop.text.normalize_transcript` first: the gate measures recognition,
not casing or punctuation. Corpus WER is ``sum(word errors) / sum(reference words)`` -- the same number as
``jiwer.wer(references, hypotheses)`` -- never a mean of per-utterance ratios, which would let a one-word
utterance weigh as much as a fifty-word one.

Errors are the word (or character) Levenshtein distance, i.e. substitutions + deletions + insertions of a
minimal alignment, exactly what jiwer counts. They are computed with ``rapidfuzz.distance.Levenshtein`` -- the
library jiwer itself runs on -- called directly, because jiwer's alignment objects cost about 30x more
(100k utterances: jiwer.process_words + process_characters take about 9 s, rapidfuzz about 0.4 s); the tests
check the counts against jiwer on the same data. CER counts characters including the single spaces between
words (jiwer's ``cer`` convention).

Empty references: a reference that normalises to nothing (silence, noise) has 0 words, so every hypothesis word
is an insertion error. Per-utterance rates divide by ``max(reference length, 1)``: an empty hypothesis on an
empty reference scores 0.0, hallucinating ``k`` words on silence scores ``k`` (a major degradation, on purpose).
Corpus rates use the same ``max(total, 1)`` guard, which only matters when every reference is empty.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from rapidfuzz.distance import Levenshtein

from tuneloop.predictions import PairedPrediction, Prediction
from tuneloop.text import normalize_transcript

# Text that normalize_transcript returns unchanged: vocabulary words separated by single spaces. Predictions files
# are written already normalised, so this check (about 6x cheaper than normalising) usually settles it.
_ALREADY_NORMALISED = re.compile(r"(?:[a-z']+(?: [a-z']+)*)?")


def _normalise(text: str) -> str:
    return text if _ALREADY_NORMALISED.fullmatch(text) else normalize_transcript(text)


class MetricsError(ValueError):
    """Scores that cannot be computed or combined (e.g. a pair scored on different references)."""


@dataclass(frozen=True)
class ErrorCounts:
    """Edit errors and reference lengths of one utterance, after normalisation."""

    word_errors: int
    reference_words: int
    char_errors: int
    reference_chars: int

    @property
    def wer(self) -> float:
        return self.word_errors / max(self.reference_words, 1)

    @property
    def cer(self) -> float:
        return self.char_errors / max(self.reference_chars, 1)


def count_errors(reference: str, hypothesis: str) -> ErrorCounts:
    """Word and character errors of one utterance (both sides normalised first)."""
    return _count_normalised(_normalise(reference), _normalise(hypothesis))


def _count_normalised(reference: str, hypothesis: str) -> ErrorCounts:
    ref_words = reference.split()
    return ErrorCounts(
        word_errors=Levenshtein.distance(ref_words, hypothesis.split()),
        reference_words=len(ref_words),
        char_errors=Levenshtein.distance(reference, hypothesis),
        reference_chars=len(reference),
    )


def _readonly(values: Sequence[int] | np.ndarray, dtype: type) -> np.ndarray:
    array = np.asarray(values, dtype=dtype)
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)
class ScoredSet:
    """One model's scores on a test set: per-utterance count arrays (read-only, aligned with ``ids``)."""

    ids: tuple[str, ...]
    word_errors: np.ndarray
    reference_words: np.ndarray
    char_errors: np.ndarray
    reference_chars: np.ndarray
    exact: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.ids)
        for name in ("word_errors", "reference_words", "char_errors", "reference_chars", "exact"):
            if len(getattr(self, name)) != n:
                raise MetricsError(f"ScoredSet.{name} has {len(getattr(self, name))} entries for {n} ids")

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def corpus_wer(self) -> float:
        return _rate(self.word_errors, self.reference_words)

    @property
    def corpus_cer(self) -> float:
        return _rate(self.char_errors, self.reference_chars)

    @property
    def exact_match_rate(self) -> float:
        """Share of utterances transcribed exactly (after normalisation); 0.0 for an empty set."""
        return float(self.exact.mean()) if self.n else 0.0

    @property
    def utterance_wer(self) -> np.ndarray:
        return self.word_errors / np.maximum(self.reference_words, 1)

    @property
    def utterance_cer(self) -> np.ndarray:
        return self.char_errors / np.maximum(self.reference_chars, 1)

    def summary(self) -> dict[str, float | int]:
        return {
            "n": self.n,
            "wer": self.corpus_wer,
            "cer": self.corpus_cer,
            "exact_match_rate": self.exact_match_rate,
            "word_errors": int(self.word_errors.sum()),
            "reference_words": int(self.reference_words.sum()),
            "char_errors": int(self.char_errors.sum()),
            "reference_chars": int(self.reference_chars.sum()),
        }


@dataclass(frozen=True, eq=False)
class ScoredPair:
    """Baseline and candidate scored on the same utterances; reference lengths are shared."""

    baseline: ScoredSet
    candidate: ScoredSet
    pairs: tuple[PairedPrediction, ...]

    def __post_init__(self) -> None:
        if self.baseline.ids != self.candidate.ids:
            raise MetricsError("baseline and candidate scores must cover the same ids in the same order")
        if not (
            np.array_equal(self.baseline.reference_words, self.candidate.reference_words)
            and np.array_equal(self.baseline.reference_chars, self.candidate.reference_chars)
        ):
            raise MetricsError("baseline and candidate were scored against different references")
        if self.pairs and tuple(p.id for p in self.pairs) != self.baseline.ids:
            raise MetricsError("pairs must be aligned with the scored ids")

    @property
    def n(self) -> int:
        return self.baseline.n


def _rate(errors: np.ndarray, lengths: np.ndarray) -> float:
    return float(errors.sum()) / max(int(lengths.sum()), 1)


def _scored_set(
    ids: Sequence[str], references: Sequence[str], reference_words: Sequence[list[str]], hypotheses: Sequence[str]
) -> ScoredSet:
    """Score already-normalised texts (the hot loop: one rapidfuzz call per utterance and level)."""
    word_errors = [Levenshtein.distance(r, h.split()) for r, h in zip(reference_words, hypotheses)]
    char_errors = [Levenshtein.distance(r, h) for r, h in zip(references, hypotheses)]
    return ScoredSet(
        ids=tuple(ids),
        word_errors=_readonly(word_errors, np.int64),
        reference_words=_readonly([len(w) for w in reference_words], np.int64),
        char_errors=_readonly(char_errors, np.int64),
        reference_chars=_readonly([len(r) for r in references], np.int64),
        exact=_readonly([r == h for r, h in zip(references, hypotheses)], np.bool_),
    )


def corpus_wer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Pooled WER of parallel lists of texts (normalised first); for callers without a predictions file."""
    return _score_texts(references, hypotheses).corpus_wer


def corpus_cer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Pooled CER of parallel lists of texts (normalised first)."""
    return _score_texts(references, hypotheses).corpus_cer


def _score_texts(references: Sequence[str], hypotheses: Sequence[str]) -> ScoredSet:
    return score([Prediction(str(i), r, h) for i, (r, h) in enumerate(zip(references, hypotheses, strict=True))])


def score(predictions: Sequence[Prediction]) -> ScoredSet:
    """Score one model's predictions: per-utterance counts plus corpus WER/CER and exact-match rate."""
    references = [_normalise(p.reference) for p in predictions]
    return _scored_set(
        [p.id for p in predictions],
        references,
        [r.split() for r in references],
        [_normalise(p.hypothesis) for p in predictions],
    )


def score_pair(paired: Sequence[PairedPrediction]) -> ScoredPair:
    """Score baseline and candidate on the same utterances (each reference normalised and split once)."""
    ids = [p.id for p in paired]
    references = [_normalise(p.reference) for p in paired]
    words = [r.split() for r in references]
    return ScoredPair(
        baseline=_scored_set(ids, references, words, [_normalise(p.baseline_hypothesis) for p in paired]),
        candidate=_scored_set(ids, references, words, [_normalise(p.candidate_hypothesis) for p in paired]),
        pairs=tuple(paired),
    )
