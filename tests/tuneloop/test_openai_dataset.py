"""tuneloop.openai_dataset: every OpenAI rule for a chat fine-tuning file, the estimate of its billable tokens, and
the upload copy. One test per rule, each breaking only that rule, and a property over random corruptions."""

from __future__ import annotations

import copy
import json
import os
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
from tuneloop.openai_dataset import (MESSAGE_KEYS, RULES, TOOL_KEYS, TOOL_MESSAGE_KEYS, TOOL_ROLES, ChatFileRefused,
                                     check_chat_file, default_epochs, estimate_training_tokens,
                                     write_upload_file)
from tuneloop.tokens import count_chat_tokens, encoding_for

MODEL = "gpt-4.1-mini-2025-04-14"
PLUGINS = Path(__file__).resolve().parents[2] / "plugins"


def example(index: int = 0) -> dict[str, Any]:
    """A valid row as the chat export writes it (format openai): system, an earlier turn, the trained reply."""
    return {"id": f"case-{index}", "messages": [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": f"Question {index}?"},
        {"role": "assistant", "content": "An earlier reply.", "weight": 0},
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


def check(path: Path, **kwargs: Any) -> openai_dataset.ChatFileReport:
    return check_chat_file(path, model=MODEL, **{"min_examples": 1, **kwargs})


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


def _dump(text: str) -> Callable[[dict[str, Any]], str]:
    return lambda row: text


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
    ("tools_not_supported", _set(("parallel_tool_calls",), False), "parallel_tool_calls", True),
    ("missing_messages_list", _delete(("messages",)), "messages", True),
    ("missing_messages_list", _set(("messages",), "hello"), "messages", True),
    ("missing_messages_list", _set(("messages",), []), "messages", True),
    ("message_not_object", _set(("messages", 1), "hello"), "messages[1]", True),
    ("message_missing_key", _delete(("messages", 1, "role")), "messages[1].role", True),
    ("message_missing_key", _delete(("messages", 4, "content")), "messages[4].content", True),
    ("message_unrecognized_key", _set(("messages", 1, "rating"), 5), "messages[1].rating", True),
    ("tools_not_supported", _set(("messages", 4, "tool_calls"), []), "messages[4].tool_calls", True),
    ("tools_not_supported", _set(("messages", 3, "role"), "tool"), "messages[3].role", True),
    ("unrecognized_role", _set(("messages", 1, "role"), "human"), "messages[1].role", True),
    ("unrecognized_role", _set(("messages", 1, "role"), None), "messages[1].role", True),
    ("content_not_string", _set(("messages", 4, "content"), None), "messages[4].content", True),
    ("content_not_string", _set(("messages", 1, "content"), [{"type": "text", "text": "hi"}]), "messages[1].content",
     True),
    ("invalid_unicode", _set(("messages", 1, "content"), "lone \ud800 surrogate"), "messages[1].content", True),
    ("empty_assistant_content", _set(("messages", 4, "content"), ""), "messages[4].content", True),
    ("empty_assistant_content", _set(("messages", 2, "content"), " \n"), "messages[2].content", True),
    ("invalid_name", _set(("messages", 1, "name"), "has space"), "messages[1].name", True),
    ("invalid_name", _set(("messages", 1, "name"), "x" * 65), "messages[1].name", True),
    ("weight_not_on_assistant", _set(("messages", 1, "weight"), 1), "messages[1].weight", True),
    ("weight_not_on_assistant", _set(("messages", 0, "weight"), 0), "messages[0].weight", True),
    ("invalid_weight", _set(("messages", 4, "weight"), 2), "messages[4].weight", True),
    ("invalid_weight", _set(("messages", 4, "weight"), True), "messages[4].weight", True),
    ("invalid_weight", _set(("messages", 4, "weight"), 1.0), "messages[4].weight", True),
    ("invalid_weight", _set(("messages", 4, "weight"), "1"), "messages[4].weight", True),
    ("missing_assistant_message", _set(("messages",), example()["messages"][:2]), "messages", True),
    ("nothing_to_train", _set(("messages", 4, "weight"), 0), "messages", True),
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
    assert {case[0] for case in RULE_CASES} | {"too_many_tokens", "too_few_examples"} == set(RULES)


def test_an_example_over_the_token_limit_is_refused_and_one_at_the_limit_is_not(tmp_path: Path):
    limit = count_chat_tokens(example(0)["messages"], encoding_for(MODEL))
    long = _set(("messages", 1, "content"), "Question 1? Please.")(example(1))
    report = check(write_jsonl(tmp_path / "train.jsonl", [example(0), long]), max_example_tokens=limit)
    assert (report.examples, report.refusal_counts) == (1, {"too_many_tokens": 1})
    (problem,) = report.refusals
    assert (problem.line, problem.example_id, problem.field) == (2, "case-1", "messages")
    assert f"more than {limit}" in problem.message
    assert report.max_tokens == limit


def test_a_line_breaking_several_rules_names_each(tmp_path: Path):
    row = example(1)
    row["extra"] = 1
    row["messages"][1]["role"] = "human"
    row["messages"][3]["weight"] = 1
    report = check(write_jsonl(tmp_path / "train.jsonl", [example(0), row]))
    assert report.refused_lines == 1
    assert [(p.rule, p.field) for p in report.refusals] == [
        ("unrecognized_key", "extra"), ("unrecognized_role", "messages[1].role"),
        ("weight_not_on_assistant", "messages[3].weight")]


def test_warnings_do_not_refuse(tmp_path: Path):
    no_system, no_user = example(1), example(2)
    del no_system["messages"][0]
    no_user["messages"] = [no_user["messages"][0], no_user["messages"][4]]
    report = check(write_jsonl(tmp_path / "train.jsonl", [example(0), no_system, no_user]))
    assert (report.ok, report.examples) == (True, 3)
    assert report.warning_counts == {"missing_system_message": 1, "missing_user_message": 1}
    assert [(w.line, w.example_id, w.rule) for w in report.warnings] == [
        (2, "case-1", "missing_system_message"), (3, "case-2", "missing_user_message")]


def test_a_valid_file_passes_with_its_token_figures(tmp_path: Path):
    rows = [example(index) for index in range(12)]
    rows[3]["messages"][1]["name"] = "example_user"
    report = check_chat_file(write_jsonl(tmp_path / "train.jsonl", rows), model=MODEL)
    counts = [count_chat_tokens(row["messages"], encoding_for(MODEL)) for row in rows]
    assert (report.ok, report.lines, report.examples, report.refused_lines) == (True, 12, 12, 0)
    assert (report.refusals, report.warnings, report.encoding) == ((), (), "o200k_base")
    assert (report.total_tokens, report.min_tokens, report.max_tokens) == (sum(counts), min(counts), max(counts))
    assert report.billable_tokens_per_epoch == sum(counts)
    assert report.mean_tokens == pytest.approx(sum(counts) / 12)


@pytest.mark.parametrize("valid", [0, 9])
def test_too_few_examples_refuse_the_file(tmp_path: Path, valid: int):
    report = check_chat_file(write_jsonl(tmp_path / "train.jsonl", [example(i) for i in range(valid)]), model=MODEL)
    assert (report.ok, report.refusal_counts) == (False, {"too_few_examples": 1})
    (problem,) = report.refusals
    assert (problem.line, problem.example_id, problem.field) == (0, None, None)
    assert f"{valid} valid examples, fewer than 10" in problem.message


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
    report = check_chat_file(write_jsonl(tmp_path / "train.jsonl", [example(0), *["[]"] * 25]), model=MODEL)
    text = str(ChatFileRefused(report))
    assert ChatFileRefused(report).report is report
    first, *listed, rest = text.splitlines()
    assert "26 problem(s) on 25 of 26 line(s), 1 valid example(s)" in first
    assert "not_an_object 25" in first and "too_few_examples 1" in first
    assert len(listed) == 20
    assert listed[0] == "  [not_an_object] line 2: must be a JSON object {messages}, got list []"
    assert rest == "  ... and 6 more"


# ------------------------------------------------------------------------------------------- epochs, cost


@pytest.mark.parametrize(("n", "epochs"), [
    (1, 25), (3, 25), (4, 25), (5, 20), (10, 10), (20, 5), (33, 3), (34, 3), (1_000, 3), (8_333, 3), (8_334, 2),
    (12_500, 2), (12_501, 1), (100_000, 1),
])
def test_default_epochs_follow_openais_auto(n: int, epochs: int):
    assert default_epochs(n) == epochs


def test_default_epochs_need_an_example():
    with pytest.raises(ValueError):
        default_epochs(0)


def test_the_estimate_multiplies_billable_tokens_by_epochs(tmp_path: Path):
    report = check_chat_file(write_jsonl(tmp_path / "train.jsonl", [example(i) for i in range(12)]), model=MODEL)
    assert estimate_training_tokens(report, None) == 8 * report.billable_tokens_per_epoch  # 100 // 12 epochs
    assert estimate_training_tokens(report, 2) == 2 * report.billable_tokens_per_epoch
    with pytest.raises(ValueError):
        estimate_training_tokens(report, 0)
    empty = check_chat_file(write_jsonl(tmp_path / "empty.jsonl", []), model=MODEL)
    assert estimate_training_tokens(empty, None) == 0


# ------------------------------------------------------------------------------------------------- upload


def test_the_upload_file_drops_our_keys_and_keeps_the_order(tmp_path: Path):
    rows = [{**example(index), "created_at": "2025-06-01"} for index in range(5)]
    rows[2]["messages"][1]["content"] = "Grüße, 日本語 ✓"
    target = tmp_path / "upload" / "train.upload.jsonl"
    assert write_upload_file(write_jsonl(tmp_path / "train.jsonl", rows), target) == 5
    uploaded = [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines()]
    assert uploaded == [{"messages": row["messages"]} for row in rows]
    assert "Grüße, 日本語 ✓" in target.read_text(encoding="utf-8")
    assert os.listdir(target.parent) == ["train.upload.jsonl"]


def test_a_failed_upload_copy_leaves_nothing_behind(tmp_path: Path):
    source = write_jsonl(tmp_path / "train.jsonl", [example(0), "not json"])
    target = tmp_path / "upload" / "train.upload.jsonl"
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        write_upload_file(source, target)
    assert os.listdir(target.parent) == []


# ------------------------------------------------------------------------------------ corrupted files at random

TEXT = st.text(max_size=30)
REPLY = st.text(min_size=1, max_size=30).filter(str.strip)
NAMES = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)


@st.composite
def valid_rows(draw: st.DrawFn) -> dict[str, Any]:
    """A valid example: maybe a system message, one to three user/assistant turns (names, weights), the last
    reply trained."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": draw(TEXT)}] if draw(st.booleans()) else []
    turns = draw(st.integers(1, 3))
    for turn in range(turns):
        user = {"role": "user", "content": draw(TEXT)}
        if draw(st.booleans()):
            user["name"] = draw(NAMES)
        reply = {"role": "assistant", "content": draw(REPLY)}
        weight = draw(st.sampled_from((None, 1) if turn == turns - 1 else (None, 0, 1)))
        if weight is not None:
            reply["weight"] = weight
        messages += [user, reply]
    return {"id": draw(TEXT), "messages": messages}


def _message(data: st.DataObject, row: dict[str, Any], role: str | None = None) -> dict[str, Any]:
    """One of the row's messages (of ``role``), to corrupt in place."""
    return data.draw(st.sampled_from([m for m in row["messages"] if role is None or m["role"] == role]))


def _unknown(known: Iterable[Any]) -> st.SearchStrategy[str]:
    return st.text(min_size=1, max_size=12).filter(lambda key: key not in set(known))


# Each corruption changes a valid row into a line and names the rules any of which must refuse it.
Corrupted = tuple[Any, set[str]]


def drop_messages(row: dict[str, Any], data: st.DataObject) -> Corrupted:
    del row["messages"]
    return row, {"missing_messages_list"}


def messages_of_wrong_type(row: dict[str, Any], data: st.DataObject) -> Corrupted:
    row["messages"] = data.draw(st.sampled_from([None, "hi", {}, [], 3]))
    return row, {"missing_messages_list"}


def message_of_wrong_type(row: dict[str, Any], data: st.DataObject) -> Corrupted:
    row["messages"].insert(data.draw(st.integers(0, len(row["messages"]))),
                           data.draw(st.sampled_from([None, "hi", [], 3])))
    return row, {"message_not_object"}


def drop_role_or_content(row: dict[str, Any], data: st.DataObject) -> Corrupted:
    del _message(data, row)[data.draw(st.sampled_from(["role", "content"]))]
    return row, {"message_missing_key"}


def content_of_wrong_type(row: dict[str, Any], data: st.DataObject) -> Corrupted:
    _message(data, row)["content"] = data.draw(st.sampled_from([None, 1, True, [], {"text": "x"}]))
    return row, {"content_not_string"}


def unknown_role(row: dict[str, Any], data: st.DataObject) -> Corrupted:
    roles = _unknown(("system", "user", "assistant", *TOOL_ROLES)) | st.sampled_from([None, 1])
    _message(data, row)["role"] = data.draw(roles)
    return row, {"unrecognized_role"}


def tool_role(row: dict[str, Any], data: st.DataObject) -> Corrupted:
    _message(data, row)["role"] = data.draw(st.sampled_from(TOOL_ROLES))
    return row, {"tools_not_supported"}


def weight_on_user(row: dict[str, Any], data: st.DataObject) -> Corrupted:
    _message(data, row, "user")["weight"] = data.draw(st.sampled_from([0, 1]))
    return row, {"weight_not_on_assistant"}


def bad_weight(row: dict[str, Any], data: st.DataObject) -> Corrupted:
    _message(data, row, "assistant")["weight"] = data.draw(st.sampled_from([2, -1, True, False, 1.0, 0.0, "1", None]))
    return row, {"invalid_weight"}


def empty_reply(row: dict[str, Any], data: st.DataObject) -> Corrupted:
    _message(data, row, "assistant")["content"] = data.draw(st.sampled_from(["", " ", "\n\t "]))
    return row, {"empty_assistant_content"}


def bad_name(row: dict[str, Any], data: st.DataObject) -> Corrupted:
    _message(data, row)["name"] = data.draw(st.sampled_from(["", "has space", "x" * 65, "é", None, 3]))
    return row, {"invalid_name"}


def extra_key(row: dict[str, Any], data: st.DataObject) -> Corrupted:
    row[data.draw(_unknown(("messages", "id", *TOOL_KEYS)))] = 1
    return row, {"unrecognized_key"}


def extra_message_key(row: dict[str, Any], data: st.DataObject) -> Corrupted:
    _message(data, row)[data.draw(_unknown((*MESSAGE_KEYS, *TOOL_MESSAGE_KEYS)))] = 1
    return row, {"message_unrecognized_key"}


def tools(row: dict[str, Any], data: st.DataObject) -> Corrupted:
    row[data.draw(st.sampled_from(TOOL_KEYS))] = []
    return row, {"tools_not_supported"}


def trains_nothing(row: dict[str, Any], data: st.DataObject) -> Corrupted:
    for message in row["messages"]:
        if message["role"] == "assistant":
            message["weight"] = 0
    return row, {"nothing_to_train"}


def no_assistant(row: dict[str, Any], data: st.DataObject) -> Corrupted:
    row["messages"] = [message for message in row["messages"] if message["role"] != "assistant"]
    return row, {"missing_assistant_message"}


def not_an_object(row: dict[str, Any], data: st.DataObject) -> Corrupted:
    return json.dumps(data.draw(st.sampled_from([[], 1, "text", None, [row]]))), {"not_an_object"}


def truncated(row: dict[str, Any], data: st.DataObject) -> Corrupted:
    text = json.dumps(row)
    return text[:data.draw(st.integers(0, len(text) - 1))], {"not_json", "empty_line"}


def not_utf8(row: dict[str, Any], data: st.DataObject) -> Corrupted:
    return json.dumps(row).encode() + b"\xff", {"not_utf8"}


CORRUPTIONS = (drop_messages, messages_of_wrong_type, message_of_wrong_type, drop_role_or_content,
               content_of_wrong_type, unknown_role, tool_role, weight_on_user, bad_weight, empty_reply, bad_name,
               extra_key, extra_message_key, tools, trains_nothing, no_assistant, not_an_object, truncated, not_utf8)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(valid_rows(), min_size=1, max_size=12), data=st.data())
def test_every_corrupted_line_is_refused_and_every_valid_line_counts(rows: list[dict[str, Any]],
                                                                   data: st.DataObject):
    """The rule: a corrupted line is refused under a rule code that names its corruption, never with an exception;
    an untouched line is a valid example; the count of valid examples is exact."""
    lines, expected = [], {}
    for number, row in enumerate(rows, start=1):
        corrupt = data.draw(st.sampled_from([None, *CORRUPTIONS]), label=f"line {number}")
        if corrupt is None:
            lines.append(row)
            continue
        line, rules = corrupt(copy.deepcopy(row), data)
        lines.append(line)
        expected[number] = rules
    with tempfile.TemporaryDirectory() as folder:
        report = check_chat_file(write_jsonl(Path(folder) / "train.jsonl", lines), model=MODEL, min_examples=0)
    found: dict[int, set[str]] = defaultdict(set)
    for problem in report.refusals:
        found[problem.line].add(problem.rule)
    assert set(found) == set(expected)
    for number, rules in expected.items():
        assert found[number] & rules, (number, found[number], rules)
        assert found[number] <= set(RULES)
    assert report.examples == len(rows) - len(expected)
    assert report.refused_lines == len(expected)
    assert report.ok == (not expected)


# ------------------------------------------------------------------------------------------------ imports


def test_the_modules_import_neither_airflow_nor_mlflow_nor_torch():
    code = ("import json, sys, tuneloop.openai_dataset, tuneloop.tokens; "
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'airflow', 'mlflow', 'torch', 'transformers'})))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(PLUGINS)})
    assert json.loads(result.stdout) == []
