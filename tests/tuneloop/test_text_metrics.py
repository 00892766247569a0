from __future__ import annotations

import re
import string
from collections import Counter

import numpy as np
import pytest

from tuneloop.text_metrics import (
    TextMetricsError,
    TextScores,
    answer_tokens,
    contains_reference,
    exact_match,
    json_equal,
    json_field_match,
    json_valid,
    normalize_answer,
    parse_json,
    score_example,
    token_f1,
)


# The official SQuAD v1.1 evaluation script (evaluate-v1.1.py), verbatim but for names: the definition we follow.
def _squad_normalize(s: str) -> str:
    def remove_articles(text: str) -> str:
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text: str) -> str:
        return " ".join(text.split())

    def remove_punc(text: str) -> str:
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def _squad_f1(prediction: str, ground_truth: str) -> float:
    prediction_tokens = _squad_normalize(prediction).split()
    ground_truth_tokens = _squad_normalize(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Cat!", "cat"),
        ("  An  apple a\tday\n", "apple day"),
        ("the-end", "theend"),  # punctuation goes first, as in SQuAD: no article left to drop
        ("Theater, anthem", "theater anthem"),  # articles only as whole words
        ("A.", ""),
        ("", ""),
        ("Über 5,000 m²", "über 5000 m²"),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected
    assert normalize_answer(text) == _squad_normalize(text)


@pytest.mark.parametrize(
    ("prediction", "references", "expected"),
    [
        ("Paris", "paris", 1.0),
        ("The Paris.", ["London", "paris"], 1.0),  # best over the references
        ("Paris, France", "Paris", 0.0),
        ("", "the", 1.0),  # both normalise to nothing
        ("", "Paris", 0.0),
    ],
)
def test_exact_match(prediction: str, references: str | list[str], expected: float) -> None:
    assert exact_match(prediction, references) == expected


@pytest.mark.parametrize(
    ("prediction", "references", "expected"),
    [
        ("The answer is 4.", "4", 1.0),
        ("The answer is 40.", "4", 0.0),  # whole words only
        ("It was New York City!", "new york", 1.0),
        ("It was York, New", "new york", 0.0),  # a run of words, in order
        ("Nothing", ["zero", "nothing at all", "NOTHING"], 1.0),
        ("Anything at all", "The.", 0.0),  # an empty reference is not in every answer
        ("the", "The.", 1.0),
    ],
)
def test_contains_reference(prediction: str, references: str | list[str], expected: float) -> None:
    assert contains_reference(prediction, references) == expected


@pytest.mark.parametrize(
    ("prediction", "references", "expected"),
    [
        ("the cat sat on the mat", "cat on mat", 6 / 7),  # P 3/4, R 1
        ("dog dog dog", "dog cat", 0.4),  # a repeated word counts once per reference occurrence: P 1/3, R 1/2
        ("mat on cat", "cat on mat", 1.0),  # order does not matter
        ("blue", "red", 0.0),
        ("", "The.", 1.0),  # both empty
        ("", "red", 0.0),
        ("red", "a", 0.0),
        ("red car", ["blue car", "red car"], 1.0),
        ("red car", ["blue car", "car"], 2 / 3),
    ],
)
def test_token_f1(prediction: str, references: str | list[str], expected: float) -> None:
    assert token_f1(prediction, references) == pytest.approx(expected)


def test_token_f1_and_exact_match_agree_with_the_squad_script_on_random_answers() -> None:
    rng = np.random.default_rng(0)
    words = ["The", "a", "an", "cat", "Cat,", "sat", "on", "mat.", "theme", "it's", "x-ray", "A!"]
    for _ in range(500):
        pred = " ".join(rng.choice(words, rng.integers(1, 7)))
        ref = " ".join(rng.choice(words, rng.integers(1, 7)))
        if not answer_tokens(pred) or not answer_tokens(ref):
            continue  # SQuAD v1.1 scores two empty answers 0, we score them 1 (SQuAD v2's rule)
        assert token_f1(pred, ref) == pytest.approx(_squad_f1(pred, ref))
        assert exact_match(pred, ref) == float(_squad_normalize(pred) == _squad_normalize(ref))


def test_no_reference_is_an_error() -> None:
    with pytest.raises(TextMetricsError, match="at least one reference"):
        exact_match("x", [])


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        ('{"a": 1}', True),
        ('  [1, 2]\n', True),
        ("null", True),
        ('"just a string"', True),
        ('```json\n{"a": 1}\n```', False),  # fences break a downstream parser
        ('{"a": 1} and more', False),
        ('{"a": NaN}', False),  # Python's json accepts it, JSON does not
        ("Infinity", False),
        ("{'a': 1}", False),
        ("", False),
    ],
)
def test_json_valid(text: str, valid: bool) -> None:
    assert json_valid(text) is valid
    assert (parse_json(text) is not None) is (valid and text.strip() != "null")


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        (1, 1.0, True),
        (True, 1, False),
        (False, 0, False),
        ({"x": [1, {"y": None}]}, {"x": [1.0, {"y": None}]}, True),
        ({"x": 1, "y": 2}, {"y": 2, "x": 1}, True),
        ([1, 2], [2, 1], False),
        ("1", 1, False),
        (None, None, True),
    ],
)
def test_json_equal(a: object, b: object, equal: bool) -> None:
    assert json_equal(a, b) is equal
    assert json_equal(b, a) is equal


REF = '{"name": "Ada", "age": 36, "tags": ["math"], "active": true}'


@pytest.mark.parametrize(
    ("prediction", "fields", "expected"),
    [
        (REF, None, 1.0),
        ('{"active": true, "tags": ["math"], "age": 36.0, "name": "Ada"}', None, 1.0),  # order, 36 == 36.0
        ('{"name": "Ada", "age": 37, "tags": ["math"], "active": 1}', None, 0.5),  # true is not 1
        ('{"name": "Ada", "extra": 1}', None, 0.25),  # missing keys mismatch, extra keys are ignored
        ('{"name": "Ada", "age": 99}', ["name"], 1.0),
        ('{"name": "Ada", "age": 99}', ["name", "age"], 0.5),
        ('{"name": "Ada"', None, 0.0),  # invalid JSON
        ('["Ada", 36]', None, 0.0),  # not an object
        ('{"name": "Ada"}', [], 1.0),  # nothing to compare
    ],
)
def test_json_field_match(prediction: str, fields: list[str] | None, expected: float) -> None:
    assert json_field_match(prediction, REF, fields) == pytest.approx(expected)


def test_json_field_match_takes_a_parsed_reference_and_empty_objects() -> None:
    assert json_field_match('{"a": [1, 2]}', {"a": [1, 2]}) == 1.0
    assert json_field_match("{}", "{}") == 1.0
    assert json_field_match("[]", "{}") == 0.0


@pytest.mark.parametrize(
    ("reference", "fields", "message"),
    [
        ("[1, 2]", None, "must be an object"),
        ("{not json", None, "must be an object"),
        ('{"a": 1}', ["a", "b"], r"fields \['b'\] are not in the JSON reference"),
    ],
)
def test_json_field_match_rejects_bad_references(reference: str, fields: list[str] | None, message: str) -> None:
    with pytest.raises(TextMetricsError, match=message):
        json_field_match('{"a": 1}', reference, fields)


def test_score_example_plain_and_structured() -> None:
    plain = score_example("The answer is Paris.", ["Paris"], generated_tokens=6, latency_s=0.25)
    assert plain == TextScores(exact_match=0.0, contains=1.0, token_f1=pytest.approx(0.5), generated_tokens=6,
                               latency_s=0.25)
    assert plain.value("contains") == 1.0
    with pytest.raises(TextMetricsError, match="json_field_match was not scored"):
        plain.value("json_field_match")
    with pytest.raises(TextMetricsError, match="unknown text metric"):
        plain.value("bleu")  # type: ignore[arg-type]

    structured = score_example('{"city": "Paris"}', ['{"city": "Paris"}'], json_reference='{"city": "Paris"}')
    assert structured.json_valid is True and structured.json_field_match == 1.0 and structured.exact_match == 1.0
    only_valid = score_example("not json", ["x"], structured=True)
    assert only_valid.json_valid is False and only_valid.json_field_match is None
    assert only_valid.to_dict()["json_valid"] is False


@pytest.mark.parametrize(("tokens", "latency"), [(-1, None), (None, -0.1), (None, float("nan"))])
def test_score_example_rejects_bad_measurements(tokens: int | None, latency: float | None) -> None:
    with pytest.raises(TextMetricsError):
        score_example("x", "x", generated_tokens=tokens, latency_s=latency)
