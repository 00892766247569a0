"""tuneloop.vertex_dataset: every Vertex AI rule for a Gemini tuning file, the conversion to Vertex's format, the
estimate of its billable tokens and the Vertex copy. One test per rule, each breaking only that rule, and
properties over random valid and corrupted files."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tuneloop import openai_dataset
from tuneloop.openai_dataset import TOOL_KEYS, TOOL_MESSAGE_KEYS, TOOL_ROLES, ChatFileReport
from tuneloop.tokens import get_encoding
from tuneloop.vertex_dataset import (MESSAGE_KEYS, RULES, WARNINGS, VertexFileRefused, check_vertex_file,
                                     count_example_tokens, estimate_training_tokens, prompt_request,
                                     to_vertex_example, vertex_contents, write_vertex_file)

MODEL = "gemini-2.5-flash"
PLUGINS = Path(__file__).resolve().parents[2] / "plugins"


def example(index: int = 0) -> dict[str, Any]:
    """A valid row for Vertex: system, an earlier turn (no weight), the trained reply (weight 1, dropped)."""
    return {"id": f"case-{index}", "messages": [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": f"Question {index}?"},
        {"role": "assistant", "content": "An earlier reply."},
        {"role": "user", "content": "And now?"},
        {"role": "assistant", "content": f"Answer {index}.", "weight": 1},
    ]}


def write_jsonl(path: Path, lines: Iterable[dict[str, Any] | str | bytes]) -> Path:
    with path.open("wb") as handle:
        for line in lines:
            if isinstance(line, dict):
                line = json.dumps(line)
            handle.write((line.encode("utf-8") if isinstance(line, str) else line) + b"\n")
    return path


def read_jsonl(path: Path) -> list[Any]:
    """JSON Lines split on newlines only (a text may hold U+0085 or U+2028, which str.splitlines splits on)."""
    return [json.loads(line) for line in path.read_bytes().split(b"\n")[:-1]]


def check(path: Path, **kwargs: Any) -> ChatFileReport:
    return check_vertex_file(path, model=MODEL, **{"min_examples": 1, **kwargs})


def encoder_count(texts: Iterable[str]) -> int:
    encoding = get_encoding("o200k_base")
    return sum(len(encoding.encode_ordinary(text)) for text in texts)


# ------------------------------------------------------------------------------------------------ each rule


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def mutate(row: dict[str, Any]) -> dict[str, Any]:
        *parents, last = path
        target = row
        for key in parents:
            target = target[key]
        target[last] = value
        return row
    return mutate


def _delete(path: tuple[Any, ...]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def mutate(row: dict[str, Any]) -> dict[str, Any]:
        *parents, last = path
        target = row
        for key in parents:
            target = target[key]
        del target[last]
        return row
    return mutate


def _insert(index: int, message: dict[str, Any]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def mutate(row: dict[str, Any]) -> dict[str, Any]:
        row["messages"].insert(index, dict(message))
        return row
    return mutate


def _dump(text: str) -> Callable[[dict[str, Any]], str]:
    return lambda row: text


SYSTEM = {"role": "system", "content": "Be kind."}

# (rule, how the row on line 2 is broken, the field named, whether the id is still readable)
RULE_CASES = [
    ("not_utf8", lambda row: json.dumps(row).encode() + b"\xff", None, False),
    ("empty_line", _dump(""), None, False),
    ("empty_line", _dump("   \t"), None, False),
    ("not_json", lambda row: json.dumps(row)[:-1], None, False),
    ("not_json", lambda row: json.dumps({**row, "score": float("nan")}), None, False),
    ("not_an_object", lambda row: json.dumps([row]), None, False),
    ("unrecognized_key", _set(("rating",), 5), "rating", True),
    ("tools_not_supported", _set(("tools",), []), "tools", True),
    ("tools_not_supported", _set(("functions",), []), "functions", True),
    ("missing_messages_list", _delete(("messages",)), "messages", True),
    ("missing_messages_list", _set(("messages",), "hello"), "messages", True),
    ("missing_messages_list", _set(("messages",), []), "messages", True),
    ("message_not_object", _set(("messages", 1), "hello"), "messages[1]", True),
    ("message_missing_key", _delete(("messages", 1, "role")), "messages[1].role", True),
    ("message_missing_key", _delete(("messages", 4, "content")), "messages[4].content", True),
    ("message_unrecognized_key", _set(("messages", 1, "parts"), [{"text": "hi"}]), "messages[1].parts", True),
    ("tools_not_supported", _set(("messages", 4, "tool_calls"), []), "messages[4].tool_calls", True),
    ("tools_not_supported", _set(("messages", 3, "role"), "tool"), "messages[3].role", True),
    ("unrecognized_role", _set(("messages", 1, "role"), "human"), "messages[1].role", True),
    ("unrecognized_role", _set(("messages", 2, "role"), "model"), "messages[2].role", True),  # Vertex's, not ours
    ("unrecognized_role", _set(("messages", 1, "role"), None), "messages[1].role", True),
    ("content_not_string", _set(("messages", 4, "content"), None), "messages[4].content", True),
    ("content_not_string", _set(("messages", 1, "content"), [{"type": "text", "text": "hi"}]), "messages[1].content",
     True),
    ("invalid_unicode", _set(("messages", 1, "content"), "lone \ud800 surrogate"), "messages[1].content", True),
    ("empty_content", _set(("messages", 4, "content"), ""), "messages[4].content", True),
    ("empty_content", _set(("messages", 3, "content"), " \n"), "messages[3].content", True),
    ("empty_content", _set(("messages", 0, "content"), ""), "messages[0].content", True),
    ("weight_not_supported", _set(("messages", 2, "weight"), 0), "messages[2].weight", True),
    ("weight_not_supported", _set(("messages", 4, "weight"), 0), "messages[4].weight", True),
    ("weight_not_on_assistant", _set(("messages", 1, "weight"), 1), "messages[1].weight", True),
    ("weight_not_on_assistant", _set(("messages", 0, "weight"), 0), "messages[0].weight", True),
    ("invalid_weight", _set(("messages", 4, "weight"), 2), "messages[4].weight", True),
    ("invalid_weight", _set(("messages", 4, "weight"), True), "messages[4].weight", True),
    ("invalid_weight", _set(("messages", 4, "weight"), 1.0), "messages[4].weight", True),
    ("invalid_weight", _set(("messages", 4, "weight"), "1"), "messages[4].weight", True),
    ("system_after_turns", _insert(3, SYSTEM), "messages[3].role", True),
    ("system_after_turns", _insert(5, SYSTEM), "messages[5].role", True),
    ("first_turn_not_user", _insert(1, {"role": "assistant", "content": "Hello!"}), "messages[1].role", True),
    ("first_turn_not_user", _delete(("messages", 1)), "messages[1].role", True),
    ("turns_not_alternating", _insert(2, {"role": "user", "content": "More."}), "messages[2].role", True),
    ("turns_not_alternating", _insert(3, {"role": "assistant", "content": "More."}), "messages[3].role", True),
    ("last_turn_not_model", _delete(("messages", 4)), "messages[3].role", True),
    ("last_turn_not_model", _set(("messages",), [SYSTEM]), "messages", True),
]


@pytest.mark.parametrize(("rule", "breaks", "field", "has_id"), RULE_CASES,
                         ids=[f"{case[0]}-{index}" for index, case in enumerate(RULE_CASES)])
def test_each_rule_refuses_the_line_that_breaks_it_and_only_that_line(tmp_path: Path, rule: str, breaks: Callable,
                                                                      field: str | None, has_id: bool):
    path = write_jsonl(tmp_path / "train.jsonl", [example(0), breaks(example(1)), example(2)])
    report = check(path)
    assert (report.ok, report.lines, report.examples, report.refused_lines) == (False, 3, 2, 1)
    assert report.refusal_counts == {rule: 1}
    (problem,) = report.refusals
    assert (problem.line, problem.rule, problem.field) == (2, rule, field)
    assert problem.example_id == ("case-1" if has_id else None)
    assert problem.message.startswith("line 2 (id case-1): " if has_id else "line 2: ")
    if field:
        assert f": {field}: " in problem.message


def test_the_rule_cases_cover_every_rule():
    file_rules = {"too_many_tokens", "too_few_examples", "too_many_examples"}
    assert {case[0] for case in RULE_CASES} | file_rules == set(RULES)


def test_a_line_breaking_several_rules_names_each(tmp_path: Path):
    row = example(1)
    row["extra"] = 1
    row["messages"][1]["role"] = "human"
    row["messages"][2]["weight"] = 0
    report = check(write_jsonl(tmp_path / "train.jsonl", [example(0), row]))
    assert report.refused_lines == 1
    assert [(p.rule, p.field) for p in report.refusals] == [
        ("unrecognized_key", "extra"), ("unrecognized_role", "messages[1].role"),
        ("weight_not_supported", "messages[2].weight")]


def test_every_out_of_turn_message_is_named(tmp_path: Path):
    row = example(1)
    row["messages"] = [SYSTEM, {"role": "assistant", "content": "Hi."}, {"role": "user", "content": "A"},
                       {"role": "user", "content": "B"}, SYSTEM, {"role": "user", "content": "C"}]
    report = check(write_jsonl(tmp_path / "train.jsonl", [example(0), row]))
    assert [(p.rule, p.field) for p in report.refusals] == [
        ("system_after_turns", "messages[4].role"), ("first_turn_not_user", "messages[1].role"),
        ("turns_not_alternating", "messages[3].role"), ("turns_not_alternating", "messages[5].role"),
        ("last_turn_not_model", "messages[5].role")]


def test_names_are_dropped_with_a_warning_and_weight_one_silently(tmp_path: Path):
    row = example(1)
    row["messages"][1]["name"] = "example_user"
    row["messages"][2]["name"] = "has space"  # dropped anyway: OpenAI's pattern does not apply
    report = check(write_jsonl(tmp_path / "train.jsonl", [example(0), row]))
    assert (report.ok, report.examples) == (True, 2)
    assert report.warning_counts == {"name_dropped": 2}
    assert [(w.line, w.example_id, w.rule, w.field) for w in report.warnings] == [
        (2, "case-1", "name_dropped", "messages[1].name"), (2, "case-1", "name_dropped", "messages[2].name")]
    assert set(report.warning_counts) <= set(WARNINGS)
    assert "name" not in json.dumps(to_vertex_example(row["messages"]))


def test_earlier_replies_are_trained_on_only_when_allowed_and_the_turn_rules_still_hold(tmp_path: Path):
    """The chat export marks earlier replies weight 0; Vertex cannot skip them: refused unless allowed, then
    warned about, and every other rule still applies to the row."""
    row = example(1)
    row["messages"][2]["weight"] = 0
    out_of_turn = example(2)
    out_of_turn["messages"][2]["weight"] = 0
    out_of_turn["messages"][3]["role"] = "assistant"  # two model turns in a row
    path = write_jsonl(tmp_path / "train.jsonl", [example(0), row, out_of_turn])
    assert check(path).refusal_counts == {"weight_not_supported": 2}
    allowed = check(path, train_earlier_replies=True)
    assert {(p.line, p.rule) for p in allowed.refusals} == {(3, "turns_not_alternating")}
    assert [(w.line, w.rule, w.field) for w in allowed.warnings] == [(2, "weight_ignored", "messages[2].weight")]
    assert set(allowed.warning_counts) <= set(WARNINGS)
    with pytest.raises(ValueError, match="weight_not_supported"):
        to_vertex_example(row["messages"])
    converted = to_vertex_example(row["messages"], train_earlier_replies=True)
    assert [c["role"] for c in converted["contents"]] == ["user", "model", "user", "model"]
    written = write_vertex_file(write_jsonl(tmp_path / "ok.jsonl", [row]), tmp_path / "vertex.jsonl",
                                train_earlier_replies=True)
    assert written == 1 and read_jsonl(tmp_path / "vertex.jsonl") == [converted]


# ----------------------------------------------------------------------------------- tokens and file limits


def test_a_valid_file_passes_with_the_encoders_token_count(tmp_path: Path):
    rows = [example(index) for index in range(16)]
    report = check_vertex_file(write_jsonl(tmp_path / "train.jsonl", rows), model=MODEL)
    counts = [encoder_count(m["content"] for m in row["messages"]) for row in rows]  # one system message: no join
    assert (report.ok, report.lines, report.examples, report.refused_lines) == (True, 16, 16, 0)
    assert (report.refusals, report.warnings, report.encoding, report.model) == ((), (), "o200k_base", MODEL)
    assert (report.total_tokens, report.min_tokens, report.max_tokens) == (sum(counts), min(counts), max(counts))
    assert report.billable_tokens_per_epoch == sum(counts)


def test_the_token_count_is_the_encoders_over_every_text_sent():
    messages = [SYSTEM, {"role": "system", "content": "Use metric units."}, *example(0)["messages"][1:]]
    texts = ["Be kind.\n\nUse metric units.", *(m["content"] for m in messages[2:])]
    assert count_example_tokens(to_vertex_example(messages)) == encoder_count(texts)
    assert count_example_tokens(to_vertex_example(messages[2:])) == encoder_count(texts[1:])


def test_an_example_over_the_token_limit_is_refused_and_one_at_the_limit_is_not(tmp_path: Path):
    limit = count_example_tokens(to_vertex_example(example(0)["messages"]))
    long = _set(("messages", 1, "content"), "Question 1? Please, at length.")(example(1))
    report = check(write_jsonl(tmp_path / "train.jsonl", [example(0), long]), max_example_tokens=limit)
    assert (report.examples, report.refusal_counts) == (1, {"too_many_tokens": 1})
    (problem,) = report.refusals
    assert (problem.line, problem.example_id, problem.field) == (2, "case-1", "messages")
    assert f"more than {limit}" in problem.message and "o200k_base" in problem.message
    assert report.max_tokens == limit


def test_the_default_token_limit_is_gemini_25s():
    assert check_vertex_file.__kwdefaults__["max_example_tokens"] == 131_072


@pytest.mark.parametrize("valid", [0, 15])
def test_fewer_than_sixteen_examples_refuse_the_file(tmp_path: Path, valid: int):
    report = check_vertex_file(write_jsonl(tmp_path / "train.jsonl", [example(i) for i in range(valid)]),
                               model=MODEL)
    assert (report.ok, report.refusal_counts) == (False, {"too_few_examples": 1})
    (problem,) = report.refusals
    assert (problem.line, problem.example_id, problem.field) == (0, None, None)
    assert f"{valid} valid examples, fewer than 16" in problem.message


def test_min_and_max_examples_are_configurable(tmp_path: Path):
    path = write_jsonl(tmp_path / "eval.jsonl", [example(i) for i in range(3)])
    assert check(path, min_examples=3, max_examples=3).ok
    assert check(path, min_examples=4).refusal_counts == {"too_few_examples": 1}
    report = check(path, max_examples=2)
    assert report.refusal_counts == {"too_many_examples": 1}
    assert "3 valid examples, more than 2" in report.refusals[0].message


def test_local_keys_widen_what_a_row_may_carry(tmp_path: Path):
    row = {**example(0), "created_at": "2025-06-01T12:00:00Z"}
    path = write_jsonl(tmp_path / "train.jsonl", [row])
    assert check(path).refusal_counts == {"unrecognized_key": 1, "too_few_examples": 1}
    assert check(path, local_keys=("id", "created_at")).ok


def test_a_huge_refused_file_keeps_a_bounded_list_and_counts_everything(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(openai_dataset, "MAX_KEPT_PROBLEMS", 5)
    report = check(write_jsonl(tmp_path / "train.jsonl", ["{"] * 40))
    assert len(report.refusals) == 5
    assert (report.refused_lines, report.refusal_counts) == (40, {"not_json": 40, "too_few_examples": 1})


def test_the_refusal_exception_lists_the_first_twenty_and_counts_the_rest(tmp_path: Path):
    report = check_vertex_file(write_jsonl(tmp_path / "train.jsonl", [example(0), *["[]"] * 25]), model=MODEL)
    error = VertexFileRefused(report)
    assert isinstance(error, ValueError) and error.report is report
    first, *listed, rest = str(error).splitlines()
    assert f"refused for Vertex AI tuning of {MODEL}: 26 problem(s) on 25 of 26 line(s), 1 valid example(s)" in first
    assert "not_an_object 25" in first and "too_few_examples 1" in first
    assert len(listed) == 20
    assert listed[0] == "  [not_an_object] line 2: must be a JSON object {messages}, got list []"
    assert rest == "  ... and 6 more"


def test_the_estimate_multiplies_tokens_by_the_jobs_epochs(tmp_path: Path):
    report = check(write_jsonl(tmp_path / "train.jsonl", [example(i) for i in range(3)]))
    assert estimate_training_tokens(report, 1) == report.billable_tokens_per_epoch > 0
    assert estimate_training_tokens(report, 4) == 4 * report.total_tokens
    for epochs in (0, -1, True, 2.0, "auto"):
        with pytest.raises(ValueError):
            estimate_training_tokens(report, epochs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="epoch_count"):
        estimate_training_tokens(report, None)
    empty = check(write_jsonl(tmp_path / "empty.jsonl", []))
    assert estimate_training_tokens(empty, 3) == 0


# ------------------------------------------------------------------------------------------------ conversion


def test_the_conversion_is_exact():
    assert to_vertex_example(example(0)["messages"]) == {
        "systemInstruction": {"role": "system", "parts": [{"text": "You answer briefly."}]},
        "contents": [
            {"role": "user", "parts": [{"text": "Question 0?"}]},
            {"role": "model", "parts": [{"text": "An earlier reply."}]},
            {"role": "user", "parts": [{"text": "And now?"}]},
            {"role": "model", "parts": [{"text": "Answer 0."}]},
        ]}
    assert list(to_vertex_example(example(0)["messages"])) == ["systemInstruction", "contents"]


def test_without_a_system_message_there_is_no_system_instruction():
    messages = example(0)["messages"][1:]
    assert to_vertex_example(messages) == {"contents": vertex_contents(messages)[1]}
    assert vertex_contents(messages)[0] is None


def test_system_messages_join_with_a_blank_line():
    messages = [SYSTEM, {"role": "system", "content": "Use metric units."}, *example(0)["messages"][1:]]
    system, contents = vertex_contents(messages)
    assert system == "Be kind.\n\nUse metric units."
    assert [content["role"] for content in contents] == ["user", "model", "user", "model"]


@pytest.mark.parametrize(("breaks", "expected"), [
    (_set(("messages", 2, "weight"), 0), "messages[2].weight: [weight_not_supported]"),
    (_delete(("messages", 4)), "messages[3].role: [last_turn_not_model]"),
    (_insert(3, SYSTEM), "messages[3].role: [system_after_turns]"),
    (_set(("messages", 1, "content"), ""), "messages[1].content: [empty_content]"),
])
def test_the_conversion_refuses_what_the_check_refuses(breaks: Callable, expected: str):
    with pytest.raises(ValueError, match=re.escape(expected)):
        to_vertex_example(breaks(example(0))["messages"])


def test_vertex_contents_refuses_what_has_no_vertex_form():
    with pytest.raises(ValueError, match=r"messages\[2\]\.role"):
        vertex_contents([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, SYSTEM])
    with pytest.raises(ValueError, match=r"messages\[0\]\.role"):
        vertex_contents([{"role": "tool", "content": "a"}])


def test_an_eval_prompt_is_every_turn_before_the_reply_weights_ignored():
    eval_row = example(0)
    eval_row["messages"][2]["weight"] = 0  # as the chat export writes earlier replies
    request = prompt_request(eval_row["messages"][:-1])
    assert request == {"system_instruction": "You answer briefly.",
                       "contents": to_vertex_example(example(0)["messages"])["contents"][:-1]}
    assert prompt_request([{"role": "user", "content": "Hi"}]) == {
        "contents": [{"role": "user", "parts": [{"text": "Hi"}]}], "system_instruction": None}


@pytest.mark.parametrize(("messages", "expected"), [
    (example(0)["messages"], r"messages\[4\]\.role: \[last_turn_not_user\]"),
    ([SYSTEM], r"messages: \[last_turn_not_user\]"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], r"\[turns_not_alternating\]"),
    ([{"role": "user", "content": " "}], r"messages\[0\]\.content: \[empty_content\]"),
    ([{"role": "user", "content": "a", "name": "x", "extra": 1}],
     r"messages\[0\]\.extra: \[message_unrecognized_key\]"),
])
def test_a_prompt_must_be_a_valid_conversation_ending_with_the_user(messages: list[dict[str, Any]], expected: str):
    with pytest.raises(ValueError, match=expected):
        prompt_request(messages)


# ----------------------------------------------------------------------------------------------- the copy


def test_the_vertex_file_drops_our_keys_and_keeps_the_order(tmp_path: Path):
    rows = [{**example(index), "created_at": "2025-06-01"} for index in range(5)]
    rows[2]["messages"][1]["content"] = "Grüße, 日本語 ✓"
    target = tmp_path / "upload" / "train.vertex.jsonl"
    assert write_vertex_file(write_jsonl(tmp_path / "train.jsonl", rows), target) == 5
    written = read_jsonl(target)
    assert written == [to_vertex_example(row["messages"]) for row in rows]
    assert "Grüße, 日本語 ✓" in target.read_text(encoding="utf-8")
    assert "case-" not in target.read_text(encoding="utf-8") and "created_at" not in target.read_text(encoding="utf-8")
    assert os.listdir(target.parent) == ["train.vertex.jsonl"]


@pytest.mark.parametrize(("line", "message"), [
    ("not json", "line 2 is not JSON"),
    ("[]", "line 2 is not an example"),
    (json.dumps(_set(("messages", 2, "weight"), 0)(example(1))),
     r"line 2: messages\[2\]\.weight: \[weight_not_supported\]"),
])
def test_a_failed_vertex_copy_leaves_nothing_behind(tmp_path: Path, line: str, message: str):
    source = write_jsonl(tmp_path / "train.jsonl", [example(0), line])
    target = tmp_path / "upload" / "train.vertex.jsonl"
    with pytest.raises(ValueError, match=message):
        write_vertex_file(source, target)
    assert os.listdir(target.parent) == []


# ------------------------------------------------------------------------------------ random valid files

TEXT = st.text(min_size=1, max_size=30).filter(str.strip)
NAMES = st.from_regex(r"[A-Za-z0-9_-]{1,12}", fullmatch=True)


@st.composite
def valid_rows(draw: st.DrawFn) -> dict[str, Any]:
    """A valid example: zero to two system messages, one to three user/assistant turns (names, weight 1), maybe a
    local key."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": draw(TEXT)}
                                      for _ in range(draw(st.integers(0, 2)))]
    for _ in range(draw(st.integers(1, 3))):
        for role in ("user", "assistant"):
            message: dict[str, Any] = {"role": role, "content": draw(TEXT)}
            if draw(st.booleans()):
                message["name"] = draw(NAMES)
            if role == "assistant" and draw(st.booleans()):
                message["weight"] = 1
            messages.append(message)
    row = {"id": draw(TEXT), "messages": messages}
    if draw(st.booleans()):
        row["created_at"] = "2025-06-01"
    return row


LOCAL_KEYS = ("id", "created_at")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(valid_rows(), min_size=1, max_size=6))
def test_every_valid_file_passes_and_its_conversion_keeps_every_text_in_order(rows: list[dict[str, Any]]):
    with tempfile.TemporaryDirectory() as folder:
        source = write_jsonl(Path(folder) / "train.jsonl", rows)
        report = check_vertex_file(source, model=MODEL, min_examples=1, local_keys=LOCAL_KEYS)
        assert write_vertex_file(source, Path(folder) / "vertex.jsonl") == len(rows)
        written = read_jsonl(Path(folder) / "vertex.jsonl")
    assert (report.ok, report.examples, report.refused_lines) == (True, len(rows), 0)
    names = sum("name" in message for row in rows for message in row["messages"])
    assert report.warning_counts == ({"name_dropped": names} if names else {})
    for row, vertex in zip(rows, written, strict=True):
        systems = [m["content"] for m in row["messages"] if m["role"] == "system"]
        turns = [m for m in row["messages"] if m["role"] != "system"]
        instruction = vertex.get("systemInstruction")
        assert (instruction["parts"][0]["text"] if instruction else None) == ("\n\n".join(systems) or None)
        assert [(c["role"], [p["text"] for p in c["parts"]]) for c in vertex["contents"]] == [
            ({"user": "user", "assistant": "model"}[m["role"]], [m["content"]]) for m in turns]
        assert set(vertex) <= {"systemInstruction", "contents"}
    assert report.total_tokens == sum(count_example_tokens(vertex) for vertex in written)
    assert report.total_tokens == sum(encoder_count(["\n\n".join(m["content"] for m in row["messages"]
                                                                 if m["role"] == "system")]
                                                    + [m["content"] for m in row["messages"] if m["role"] != "system"])
                                      for row in rows)


# ------------------------------------------------------------------------------------ corrupted files at random


def _message(data: st.DataObject, row: dict[str, Any], *roles: str) -> dict[str, Any]:
    """One of the row's messages (of ``roles``), to corrupt in place."""
    return data.draw(st.sampled_from([m for m in row["messages"] if not roles or m["role"] in roles]))


def _first_turn(row: dict[str, Any]) -> int:
    return next(index for index, message in enumerate(row["messages"]) if message["role"] != "system")


def _unknown(known: Iterable[Any]) -> st.SearchStrategy[str]:
    return st.text(min_size=1, max_size=12).filter(lambda key: key not in set(known))


# Each corruption changes a valid row into a line and names the one rule that must refuse it.
Corrupted = tuple[Any, str]
LIMIT = 2_000  # tokens; a valid row has at most 8 texts of 30 characters


def drop_messages(row: dict[str, Any], data: st.DataObject) -> Corrupted:
    del row["messages"]
    return row, "missing_messages_list"


def messages_of_wrong_type(row: dict[str, Any], data: st.DataObject) -> Corrupted:
    row["messages"] = data.draw(st.sampled_from([None, "hi", {}, [], 3]))
    return row, "missing_messages_list"


def message_of_wrong_type(row: dict[str, Any], data: st.DataObject) -> Corrupted:
    row["messages"].insert(data.draw(st.integers(0, len(row["messages"]))),
                           data.draw(st.sampled_from([None, "hi", [], 3])))
    return row, "message_not_object"


def drop_role_or_content(row: dict[str, Any], data: st.DataObject) -> Corrupted:
    del _message(data, row)[data.draw(st.sampled_from(["role", "content"]))]
    return row, "message_missing_key"


def content_of_wrong_type(row: dict[str, Any], data: st.DataObject) -> Corrupted:
    _message(data, row)["content"] = data.draw(st.sampled_from([None, 1, True, [], [{"text": "x"}], {"text": "x"}]))
    return row, "content_not_string"


def lone_surrogate(row: dict[str, Any], data: st.DataObject) -> Corrupted:
    _message(data, row)["content"] += "\ud800"
    return row, "invalid_unicode"


def unknown_role(row: dict[str, Any], data: st.DataObject) -> Corrupted:
    roles = _unknown(("system", "user", "assistant", *TOOL_ROLES)) | st.sampled_from([None, 1, "model"])
    _message(data, row)["role"] = data.draw(roles)
    return row, "unrecognized_role"


def tool_role(row: dict[str, Any], data: st.DataObject) -> Corrupted:
    _message(data, row)["role"] = data.draw(st.sampled_from(TOOL_ROLES))
    return row, "tools_not_supported"


def empty_content(row: dict[str, Any], data: st.DataObject) -> Corrupted:
    _message(data, row)["content"] = data.draw(st.sampled_from(["", " ", "\n\t "]))
    return row, "empty_content"


def weight_zero(row: dict[str, Any], data: st.DataObject) -> Corrupted:
    _message(data, row, "assistant")["weight"] = 0
    return row, "weight_not_supported"


def weight_on_user(row: dict[str, Any], data: st.DataObject) -> Corrupted:
    _message(data, row, "user", "system")["weight"] = data.draw(st.sampled_from([0, 1]))
    return row, "weight_not_on_assistant"


def bad_weight(row: dict[str, Any], data: st.DataObject) -> Corrupted:
    _message(data, row, "assistant")["weight"] = data.draw(st.sampled_from([2, -1, True, False, 1.0, 0.0, "1", None]))
    return row, "invalid_weight"


def extra_key(row: dict[str, Any], data: st.DataObject) -> Corrupted:
    row[data.draw(_unknown(("messages", *LOCAL_KEYS, *TOOL_KEYS)))] = 1
    return row, "unrecognized_key"


def extra_message_key(row: dict[str, Any], data: st.DataObject) -> Corrupted:
    _message(data, row)[data.draw(_unknown((*MESSAGE_KEYS, *TOOL_MESSAGE_KEYS)))] = 1
    return row, "message_unrecognized_key"


def tools(row: dict[str, Any], data: st.DataObject) -> Corrupted:
    if data.draw(st.booleans()):
        row[data.draw(st.sampled_from(TOOL_KEYS))] = []
    else:
        _message(data, row)[data.draw(st.sampled_from(TOOL_MESSAGE_KEYS))] = []
    return row, "tools_not_supported"


def late_system(row: dict[str, Any], data: st.DataObject) -> Corrupted:
    index = data.draw(st.integers(_first_turn(row) + 1, len(row["messages"])))
    row["messages"].insert(index, {"role": "system", "content": data.draw(TEXT)})
    return row, "system_after_turns"


def model_first(row: dict[str, Any], data: st.DataObject) -> Corrupted:
    row["messages"].insert(_first_turn(row), {"role": "assistant", "content": data.draw(TEXT)})
    return row, "first_turn_not_user"


def same_role_twice(row: dict[str, Any], data: st.DataObject) -> Corrupted:
    index = data.draw(st.integers(_first_turn(row), len(row["messages"]) - 1))
    row["messages"].insert(index + 1, dict(row["messages"][index]))
    return row, "turns_not_alternating"


def no_final_reply(row: dict[str, Any], data: st.DataObject) -> Corrupted:
    row["messages"].pop()
    if data.draw(st.booleans()):  # no turn at all
        row["messages"] = [m for m in row["messages"] if m["role"] == "system"] or [dict(SYSTEM)]
    return row, "last_turn_not_model"


def too_long(row: dict[str, Any], data: st.DataObject) -> Corrupted:
    _message(data, row)["content"] += " word" * LIMIT
    return row, "too_many_tokens"


def not_an_object(row: dict[str, Any], data: st.DataObject) -> Corrupted:
    return json.dumps(data.draw(st.sampled_from([[], 1, "text", None, [row]]))), "not_an_object"


def truncated(row: dict[str, Any], data: st.DataObject) -> Corrupted:
    text = json.dumps(row)
    cut = data.draw(st.integers(0, len(text) - 1))
    return text[:cut], "not_json" if cut else "empty_line"


def not_utf8(row: dict[str, Any], data: st.DataObject) -> Corrupted:
    return json.dumps(row).encode() + b"\xff", "not_utf8"


CORRUPTIONS = (drop_messages, messages_of_wrong_type, message_of_wrong_type, drop_role_or_content,
               content_of_wrong_type, lone_surrogate, unknown_role, tool_role, empty_content, weight_zero,
               weight_on_user, bad_weight, extra_key, extra_message_key, tools, late_system, model_first,
               same_role_twice, no_final_reply, too_long, not_an_object, truncated, not_utf8)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(valid_rows(), min_size=1, max_size=8), data=st.data())
def test_every_corrupted_line_is_refused_by_its_rule_and_every_valid_line_counts(rows: list[dict[str, Any]],
                                                                               data: st.DataObject):
    """A corrupted line is refused under exactly the rule its corruption breaks, never with an exception; an
    untouched line is a valid example; the count of valid examples is exact."""
    lines, expected = [], {}
    for number, row in enumerate(rows, start=1):
        corrupt = data.draw(st.sampled_from([None, *CORRUPTIONS]), label=f"line {number}")
        if corrupt is None:
            lines.append(row)
            continue
        line, rule = corrupt(copy.deepcopy(row), data)
        lines.append(line)
        expected[number] = rule
    with tempfile.TemporaryDirectory() as folder:
        report = check_vertex_file(write_jsonl(Path(folder) / "train.jsonl", lines), model=MODEL, min_examples=0,
                                   max_example_tokens=LIMIT, local_keys=LOCAL_KEYS)
    found: dict[int, set[str]] = defaultdict(set)
    for problem in report.refusals:
        found[problem.line].add(problem.rule)
    assert dict(found) == {number: {rule} for number, rule in expected.items()}
    assert report.examples == len(rows) - len(expected)
    assert report.refused_lines == len(expected)
    assert report.ok == (not expected)


# ------------------------------------------------------------------------------------------------ imports


def test_the_module_imports_neither_airflow_nor_mlflow_nor_torch():
    code = ("import json, sys, tuneloop.vertex_dataset; "
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'airflow', 'mlflow', 'torch', 'transformers'})))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(PLUGINS)})
    assert json.loads(result.stdout) == []
