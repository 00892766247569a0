from __future__ import annotations

import random

from tuneloop_demo.corpus import sentence, sentences, vocabulary_words
from tuneloop_trainer.text import normalize_text


def test_same_seed_same_sentences() -> None:
    assert sentences(200, seed=7) == sentences(200, seed=7)
    assert sentences(200, seed=7) != sentences(200, seed=8)


def test_sentences_are_distinct_normalised_and_short() -> None:
    texts = sentences(2000, seed=0)
    assert len(set(texts)) == 2000
    assert all(normalize_text(text) == text for text in texts)
    assert all(1 <= len(text.split()) <= 14 for text in texts)


def test_exclude_keeps_splits_apart() -> None:
    first = sentences(100, seed=1)
    second = sentences(100, seed=1, exclude=first)
    assert not set(first) & set(second)


def test_vocabulary_is_a_few_hundred_words() -> None:
    words = vocabulary_words()
    assert 200 <= len(words) <= 500
    rng = random.Random(0)
    assert all(set(sentence(rng).split()) <= words for _ in range(500))
