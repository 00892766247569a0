"""Per-example scores of a text model's output against reference answers (the text task's ``metrics.py``).

Answer metrics follow the SQuAD v1.1 evaluation script (``evaluate-v1.1.py``), the de facto standard for short
answers, so our numbers mean what readers expect: both sides are normalised (lower case, punctuation removed,
the articles a/an/the dropped, whitespace collapsed) before they are compared, and with several acceptable
references an example takes the best score over them. Normalising first means the gate measures whether the
answer is right, not whether the model kept the reference's casing or full stop.

- :func:`exact_match`: the normalised prediction equals a normalised reference.
- :func:`contains_reference`: a normalised reference occurs in the normalised prediction as whole words (chat
  models wrap a right answer in a sentence; "4" must not count as contained in "40").
- :func:`token_f1`: SQuAD's bag-of-tokens F1, partial credit for partly right answers.
- :func:`json_valid` / :func:`json_field_match`: for structured outputs, whether the output parses as strict JSON
  and which share of the reference object's fields it reproduces.

Generated tokens and latency are measured by whoever ran the model; :func:`score_example` only carries them so
that one :class:`TextScores` holds everything the report shows about an example. Pure functions, no I/O.
"""

from __future__ import annotations

import json
import math
import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

TextMetric = Literal["exact_match", "contains", "token_f1", "json_valid", "json_field_match"]
# Right/wrong per example: McNemar's exact test applies. The others are graded in [0, 1]: the paired bootstrap.
BINARY_METRICS: frozenset[str] = frozenset({"exact_match", "contains", "json_valid"})
GRADED_METRICS: frozenset[str] = frozenset({"token_f1", "json_field_match"})
TEXT_METRICS: tuple[TextMetric, ...] = ("exact_match", "contains", "token_f1", "json_valid", "json_field_match")

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")

References = str | Sequence[str]


class TextMetricsError(ValueError):
    """Scores that cannot be computed: no reference, a reference that is not a JSON object, a bad field list."""


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normalisation: lower case, drop ``string.punctuation``, drop a/an/the, collapse whitespace.

    The steps run in the official script's order (punctuation before articles), so ``"the-end"`` becomes
    ``"theend"``, not ``"end"``, exactly as there.
    """
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def answer_tokens(text: str) -> list[str]:
    """The normalised answer split on whitespace: the tokens F1 counts (words, not model tokens)."""
    return normalize_answer(text).split()


def _references(references: References) -> tuple[str, ...]:
    refs = (references,) if isinstance(references, str) else tuple(references)
    if not refs:
        raise TextMetricsError("at least one reference answer is needed to score a prediction")
    return refs


def exact_match(prediction: str, references: References) -> float:
    """1.0 when the normalised prediction equals any normalised reference, else 0.0."""
    pred = normalize_answer(prediction)
    return 1.0 if any(pred == normalize_answer(ref) for ref in _references(references)) else 0.0


def contains_reference(prediction: str, references: References) -> float:
    """1.0 when any normalised reference occurs in the normalised prediction as a run of whole words.

    A reference that normalises to nothing ("The.") is only "contained" in a prediction that normalises to
    nothing too: otherwise every output would trivially contain it.
    """
    pred = normalize_answer(prediction)
    for ref in _references(references):
        norm = normalize_answer(ref)
        if (not norm and not pred) or (norm and f" {norm} " in f" {pred} "):
            return 1.0
    return 0.0


def _f1(pred_tokens: list[str], ref_tokens: list[str]) -> float:
    if not pred_tokens or not ref_tokens:
        # Both empty: the model rightly said nothing (1.0); one empty: nothing right (0.0). SQuAD v2 convention.
        return 1.0 if pred_tokens == ref_tokens else 0.0
    same = sum((Counter(pred_tokens) & Counter(ref_tokens)).values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, references: References) -> float:
    """SQuAD token F1, the best over the references.

    Tokens are compared as multisets (``Counter`` intersection), so word order does not matter and a repeated
    word only counts as often as the reference has it. Precision punishes padding, recall missing words.
    """
    pred = answer_tokens(prediction)
    return max(_f1(pred, answer_tokens(ref)) for ref in _references(references))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(text: str) -> Any | None:
    """The parsed value of strict JSON text, or None when it is not valid JSON.

    Strict on purpose: a downstream parser takes the raw output, so Markdown code fences or trailing prose make
    it invalid, and so do ``NaN``/``Infinity`` (Python's ``json`` accepts them, the JSON standard does not).
    Surrounding whitespace is allowed.
    """
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
        return None


def json_valid(text: str) -> bool:
    """Whether ``text`` is one strict JSON value (see :func:`parse_json`); ``null`` counts as valid JSON."""
    try:
        json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return False
    return True


def json_equal(a: Any, b: Any) -> bool:
    """Equality of parsed JSON values as JSON sees it.

    Python's ``==`` says ``True == 1`` and ``1 == 1.0``: JSON has one number type, so 1 and 1.0 are equal here,
    but a boolean is never equal to a number. Objects compare key by key (order ignored), arrays in order.
    """
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def json_field_match(prediction: str, reference: str | Mapping[str, Any], fields: Sequence[str] | None = None) -> float:
    """Share of the compared fields whose value in the prediction equals the reference's (:func:`json_equal`).

    ``fields``: the top-level keys that matter (e.g. the ones a downstream system reads); by default every key
    of the reference. A prediction that is not valid JSON, or not an object, scores 0.0; a missing key is a
    mismatch. With nothing to compare (an empty reference object, no fields) a valid object scores 1.0, the same
    convention as :func:`token_f1` for two empty answers.

    The reference is ours, not the model's, so a reference that is not a JSON object, or a field it lacks, is a
    data error and raises instead of scoring.
    """
    ref = parse_json(reference) if isinstance(reference, str) else reference
    if not isinstance(ref, Mapping):
        raise TextMetricsError(f"the JSON reference must be an object, got {type(ref).__name__}: {reference!r:.80}")
    keys = tuple(ref) if fields is None else tuple(fields)
    missing = [k for k in keys if k not in ref]
    if missing:
        raise TextMetricsError(f"fields {missing} are not in the JSON reference (it has {sorted(ref)})")
    pred = parse_json(prediction)
    if not isinstance(pred, dict):
        return 0.0
    if not keys:
        return 1.0
    return sum(1 for k in keys if k in pred and json_equal(pred[k], ref[k])) / len(keys)


@dataclass(frozen=True)
class TextScores:
    """Every score of one example. JSON scores are None unless the example is structured.

    ``generated_tokens``/``latency_s``: as measured by the serving side (None when it did not report them).
    """

    exact_match: float
    contains: float
    token_f1: float
    json_valid: bool | None = None
    json_field_match: float | None = None
    generated_tokens: int | None = None
    latency_s: float | None = None

    def value(self, metric: TextMetric) -> float:
        """The named metric as a number in [0, 1] (the gate's primary metric); raises when it was not scored."""
        if metric not in TEXT_METRICS:
            raise TextMetricsError(f"unknown text metric {metric!r}; known: {', '.join(TEXT_METRICS)}")
        score = getattr(self, metric)
        if score is None:
            raise TextMetricsError(f"{metric} was not scored for this example (no JSON reference / not structured)")
        return float(score)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def score_example(
    prediction: str,
    references: References,
    *,
    structured: bool = False,
    json_reference: str | Mapping[str, Any] | None = None,
    json_fields: Sequence[str] | None = None,
    generated_tokens: int | None = None,
    latency_s: float | None = None,
) -> TextScores:
    """All scores of one example.

    ``structured``: the output must be JSON, so ``json_valid`` is scored; a ``json_reference`` implies it and
    adds ``json_field_match`` (over ``json_fields``, default all of the reference's keys).
    """
    if generated_tokens is not None and generated_tokens < 0:
        raise TextMetricsError(f"generated_tokens must be >= 0, got {generated_tokens}")
    if latency_s is not None and not (math.isfinite(latency_s) and latency_s >= 0):
        raise TextMetricsError(f"latency_s must be a finite number >= 0, got {latency_s}")
    structured = structured or json_reference is not None
    return TextScores(
        exact_match=exact_match(prediction, references),
        contains=contains_reference(prediction, references),
        token_f1=token_f1(prediction, references),
        json_valid=json_valid(prediction) if structured else None,
        json_field_match=json_field_match(prediction, json_reference, json_fields) if json_reference is not None
        else None,
        generated_tokens=generated_tokens,
        latency_s=latency_s,
    )
