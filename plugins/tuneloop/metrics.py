"""Per-utterance and corpus WER/CER, kept as error counts so corpus rates and the bootstrap stay exact.

Both sides are normalised with :func:`tuneloop.text.normalize_transcript` first: the gate measures recognition,
not casing or punctuation. Corpus WER is ``sum(word errors) / sum(reference words)`` -- the same number as
``jiwer.wer(references, hypotheses)`` -- never a mean of per-utterance ratios, which would let a one-word
utterance weigh as much as a fifty-word one.

Errors are the word (or character) Levenshtein distance, i.e. substitutions + deletions + insertions of a
minimal alignment, exactly what jiwer counts. They are computed with ``rapidfuzz.distance.Levenshtein`` -- the
library jiwer itself runs on -- called directly, because jiwer's alignment objects cost about 30x more
(100k utterances: jiwer.process_words + process_characters take about 9 s, rapidfuzz about 0.4 s); the tests
check the counts against jiwer and against a textbook dynamic programme on random texts. CER counts characters
including the single spaces between words (jiwer's ``cer`` convention).

Scoring 100k pairs is a step of every gate run, so :func:`score_pair` avoids per-text Python work where it can
(about 0.45 s on 2 cores, was 0.9 s): normalised texts are recognised a chunk at a time, character distances
are one multi-threaded rapidfuzz call, identical texts skip the word distance, and word lists are never kept.

Empty references: a reference that normalises to nothing (silence, noise) has 0 words, so every hypothesis word
is an insertion error. Per-utterance rates divide by ``max(reference length, 1)``: an empty hypothesis on an
empty reference scores 0.0, hallucinating ``k`` words on silence scores ``k`` (a major degradation, on purpose).
Corpus rates use the same ``max(total, 1)`` guard, which only matters when every reference is empty.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from rapidfuzz.distance import Levenshtein
from rapidfuzz.process import cpdist

from tuneloop.predictions import PairedPrediction, Prediction
from tuneloop.text import normalize_transcript

# Text that normalize_transcript returns unchanged: vocabulary words separated by single spaces. Predictions files
# are written already normalised, so this check (about 6x cheaper than normalising) usually settles it.
_ALREADY_NORMALISED = re.compile(r"(?:[a-z']+(?: [a-z']+)*)?")
# The characters of normalised text, and how many texts _normalise_all checks at once.
_VOCABULARY = b"abcdefghijklmnopqrstuvwxyz' "
_CHECK_CHUNK = 1024


def _normalise(text: str) -> str:
    return text if _ALREADY_NORMALISED.fullmatch(text) else normalize_transcript(text)


def _normalise_all(texts: list[str]) -> list[str]:
    """``[_normalise(t) for t in texts]``, about 3x faster when the texts are normalised already (the usual case).

    Non-empty texts joined by single spaces make one normalised text exactly when each of them is normalised (an
    empty text is); a few C-level scans of the joined chunk settle that, where the regex, text by text, costs
    almost as much as the word distances. A chunk with an unnormalised text in it goes text by text.
    """
    out: list[str] = []
    for start in range(0, len(texts), _CHECK_CHUNK):
        chunk = texts[start : start + _CHECK_CHUNK]
        joined = " ".join(filter(None, chunk))
        normalised = (
            joined.isascii()
            and not joined.encode("ascii").translate(None, _VOCABULARY)  # nothing outside a-z, ' and space
            and "  " not in joined
            and not joined.startswith(" ")
            and not joined.endswith(" ")
        )
        out.extend(chunk if normalised else map(_normalise, chunk))
    return out


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


def _word_errors(references: Sequence[str], hypotheses: Sequence[str]) -> np.ndarray:
    """Word-level Levenshtein distance of each (normalised) pair; identical texts are 0 without splitting.

    The word lists are split on the fly and dropped at once: keeping 100k lists alive costs more than the
    distances themselves (millions of small objects to allocate, and the garbage collector walks them all).
    """
    distance = Levenshtein.distance
    errors = (0 if ref == hyp else distance(ref.split(), hyp.split()) for ref, hyp in zip(references, hypotheses))
    return np.fromiter(errors, dtype=np.int64, count=len(references))


def _paired_word_errors(
    references: Sequence[str], baseline: Sequence[str], candidate: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_word_errors` of both models in one pass, each reference split once (about 20% faster)."""
    distance = Levenshtein.distance
    base_errors, cand_errors = [], []
    for ref, base, cand in zip(references, baseline, candidate):
        words = ref.split()
        base_errors.append(0 if base == ref else distance(words, base.split()))
        cand_errors.append(0 if cand == ref else distance(words, cand.split()))
    return np.array(base_errors, dtype=np.int64), np.array(cand_errors, dtype=np.int64)


def _char_errors(references: Sequence[str], hypotheses: Sequence[str]) -> np.ndarray:
    """Character-level Levenshtein distance of each (normalised) pair: ``Levenshtein.distance(ref, hyp)``, in one
    rapidfuzz call that runs on all cores instead of a Python call per pair."""
    return cpdist(references, hypotheses, scorer=Levenshtein.distance, dtype=np.int64, workers=-1)


def _reference_lengths(references: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Words and characters of each normalised reference. Normalised text has single spaces and none at either
    end, so its words are its spaces + 1 (0 for an empty text): ``len(text.split())`` without the lists."""
    n = len(references)
    chars = np.fromiter(map(len, references), dtype=np.int64, count=n)
    words = np.fromiter(map(str.count, references, itertools.repeat(" ")), dtype=np.int64, count=n) + (chars > 0)
    return words, chars


def _scored_set(
    ids: tuple[str, ...],
    references: Sequence[str],
    hypotheses: Sequence[str],
    errors: tuple[np.ndarray, np.ndarray],
    lengths: tuple[np.ndarray, np.ndarray],
) -> ScoredSet:
    """Score already-normalised texts, given their (word, char) errors and :func:`_reference_lengths`."""
    exact = np.fromiter(map(str.__eq__, references, hypotheses), dtype=np.bool_, count=len(references))
    return ScoredSet(
        ids=ids,
        word_errors=_readonly(errors[0], np.int64),
        reference_words=_readonly(lengths[0], np.int64),
        char_errors=_readonly(errors[1], np.int64),
        reference_chars=_readonly(lengths[1], np.int64),
        exact=_readonly(exact, np.bool_),
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
    references = _normalise_all([p.reference for p in predictions])
    hypotheses = _normalise_all([p.hypothesis for p in predictions])
    errors = (_word_errors(references, hypotheses), _char_errors(references, hypotheses))
    return _scored_set(tuple(p.id for p in predictions), references, hypotheses, errors, _reference_lengths(references))


def score_pair(paired: Sequence[PairedPrediction]) -> ScoredPair:
    """Score baseline and candidate on the same utterances (each reference normalised, measured and split once)."""
    n = len(paired)
    ids = tuple(p.id for p in paired)
    references = _normalise_all([p.reference for p in paired])
    baseline = _normalise_all([p.baseline_hypothesis for p in paired])
    candidate = _normalise_all([p.candidate_hypothesis for p in paired])
    lengths = _reference_lengths(references)
    # Both models' character distances in one rapidfuzz call, which releases the GIL: it runs on the other cores
    # while this thread computes the word distances (10-15% of the scoring time saved on 2 cores).
    with ThreadPoolExecutor(max_workers=1) as background:
        chars = background.submit(_char_errors, references + references, baseline + candidate)
        base_words, cand_words = _paired_word_errors(references, baseline, candidate)
    char_errors = chars.result()
    return ScoredPair(
        baseline=_scored_set(ids, references, baseline, (base_words, char_errors[:n]), lengths),
        candidate=_scored_set(ids, references, candidate, (cand_words, char_errors[n:]), lengths),
        pairs=tuple(paired),
    )
