from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneloop.predictions import (
    Prediction,
    PredictionsError,
    pair_predictions,
    parse_predictions,
    read_predictions,
    write_predictions,
)


def _write_lines(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_round_trip_keeps_slice_fields(tmp_path: Path) -> None:
    rows = [
        Prediction("a", "hello world", "hello word", 12.5, {"voice": "f1", "condition": "noisy", "duration_s": 1.2}),
        Prediction("b", "good morning", "", None, {"source": "app"}),
    ]
    path = write_predictions(tmp_path / "p" / "eval.jsonl", rows)
    assert read_predictions(path) == rows
    assert read_predictions(str(path)) == rows
    assert json.loads(path.read_text().splitlines()[0]) == {
        "id": "a", "reference": "hello world", "hypothesis": "hello word", "latency_ms": 12.5,
        "voice": "f1", "condition": "noisy", "duration_s": 1.2,
    }


def test_integer_ids_become_strings_and_blank_lines_are_skipped() -> None:
    lines = ['{"id": 7, "reference": "a", "hypothesis": "a"}', "", "  "]
    assert parse_predictions(lines) == [Prediction("7", "a", "a")]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "p.jsonl:2: not valid JSON"),
        ('{"id": "x", "reference": "a"}', "p.jsonl:2: missing field(s) hypothesis"),
        ('{"id": "x", "reference": "a", "hypothesis": 3}', "hypothesis must be a string"),
        ('{"id": "", "reference": "a", "hypothesis": "a"}', "id must be a non-empty string"),
        ('{"id": "x", "reference": "a", "hypothesis": "a", "latency_ms": "fast"}', "latency_ms must be a number"),
        ('["x"]', "expected a JSON object"),
        ('{"id": "ok", "reference": "a", "hypothesis": "a"}', "duplicate id 'ok' (first on line 1)"),
    ],
)
def test_contract_violations_name_the_line(line: str, message: str) -> None:
    first = '{"id": "ok", "reference": "a", "hypothesis": "a"}'
    with pytest.raises(PredictionsError, match=rf"{message.replace('(', '[(]').replace(')', '[)]')}"):
        parse_predictions([first, line], "p.jsonl")


def test_missing_file_is_a_predictions_error(tmp_path: Path) -> None:
    with pytest.raises(PredictionsError, match="cannot read predictions file") as info:
        read_predictions(tmp_path / "absent.jsonl")
    assert isinstance(info.value.__cause__, OSError)


def test_pair_aligns_by_id_in_baseline_order() -> None:
    baseline = [Prediction("a", "one two", "one", 1.0, {"voice": "f1"}), Prediction("b", "three", "three", 2.0)]
    candidate = [Prediction("b", "three", "tree", 3.0), Prediction("a", "One, two!", "one two", 4.0, {"extra": 1})]
    paired = pair_predictions(baseline, candidate)
    assert [p.id for p in paired] == ["a", "b"]
    assert paired[0].baseline_hypothesis == "one" and paired[0].candidate_hypothesis == "one two"
    assert paired[0].reference == "one two"  # formatting-only differences pair; the baseline's text is kept
    assert paired[0].slices == {"voice": "f1", "extra": 1}
    assert (paired[1].baseline_latency_ms, paired[1].candidate_latency_ms) == (2.0, 3.0)
    assert paired[1].candidate == Prediction("b", "three", "tree", 3.0)


def test_pair_with_different_ids_names_counts_and_ids() -> None:
    baseline = [Prediction(str(i), "a", "a") for i in range(10)]
    candidate = [Prediction(str(i), "a", "a") for i in range(3, 12)]
    with pytest.raises(PredictionsError) as info:
        pair_predictions(baseline, candidate)
    message = str(info.value)
    assert "baseline has 10, candidate has 9" in message
    assert "3 only in baseline ['0', '1', '2']" in message
    assert "2 only in candidate ['10', '11']" in message


def test_pair_with_different_reference_is_refused() -> None:
    with pytest.raises(PredictionsError, match="1 utterance.* different references .*'a': 'hello' vs 'yellow'"):
        pair_predictions([Prediction("a", "hello", "x")], [Prediction("a", "yellow", "x")])
