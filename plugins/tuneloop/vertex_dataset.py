"""Vertex AI's rules for a Gemini supervised-tuning file, checked before anything is handed to Vertex, the
conversion of tuneloop's chat rows to Vertex's format, and what training it will cost.

The twin of :mod:`tuneloop.openai_dataset`, and it reads the same input: the chat export's ``train.jsonl`` /
``eval.jsonl``, one OpenAI-format row per line (``{"id", "messages": [{"role", "content", "name"?, "weight"?}],
<local keys>}``). Vertex validates a tuning file only once the job runs and then fails or silently drops examples
(``totalTruncatedExampleCount``), so the file is checked here first, in one streaming pass (one line in memory at a
time, every problem of every line named), and the billable tokens are estimated from the same pass. What Vertex
receives (:func:`write_vertex_file`, :func:`to_vertex_example`), one example per line::

    {"systemInstruction": {"role": "system", "parts": [{"text": ...}]},
     "contents": [{"role": "user", "parts": [{"text": ...}]}, {"role": "model", "parts": [{"text": ...}]}, ...]}

The rules, each a stable code of :data:`RULES` (the line-level ones are :mod:`tuneloop.openai_dataset`'s, whose
parsing this module reuses):

* every line is a UTF-8 JSON object (``not_utf8``, ``empty_line``, ``not_json``, ``not_an_object``) holding a
  non-empty ``messages`` list (``missing_messages_list``) and otherwise only our ``local_keys``, which are never
  handed to Vertex (``unrecognized_key``);
* every message is an object (``message_not_object``) with a ``role`` and a ``content`` (``message_missing_key``),
  the role one of system, user, assistant (``unrecognized_role``), the content a string (``content_not_string``:
  content parts such as images are refused) of valid Unicode (``invalid_unicode``) that is not empty or blank
  (``empty_content``: Gemini refuses an empty text part, and a blank turn teaches nothing); no key but role,
  content, name and weight (``message_unrecognized_key``);
* tools and function calling are not supported: a ``tools`` / ``functions`` key, a ``tool`` / ``function`` role or
  tool calls on a message are refused (``tools_not_supported``) rather than passed on unchecked;
* system messages come first, before any user or assistant message (``system_after_turns``): Vertex has one system
  instruction per example, so they become ``systemInstruction``, their texts joined with a blank line;
* the conversation then starts with a user message (``first_turn_not_user``), alternates user / assistant (Gemini's
  ``user`` / ``model``; two of one role in a row are refused as ``turns_not_alternating`` rather than merged, since
  merging would change what the model sees) and ends with the assistant's reply it trains on
  (``last_turn_not_model``);
* Vertex has no per-turn weight and trains on every model turn: ``weight: 1`` on an assistant message is accepted
  and dropped, ``weight: 0`` cannot be honoured and is refused (``weight_not_supported``); a weight on a system or
  user message (``weight_not_on_assistant``) or other than the integers 0 and 1 (``invalid_weight``) is refused as
  in OpenAI's check. The chat export writes ``weight: 0`` on earlier assistant turns (production's replies, which
  nobody corrected), so its multi-turn rows are refused unless ``train_earlier_replies`` accepts training on those
  replies too: then each such weight is dropped with a warning (``weight_ignored``);
* an example has at most ``max_example_tokens`` tokens (``too_many_tokens``; default 131,072, Gemini 2.5's maximum
  input and output tokens per tuning example);
* the file has at least ``min_examples`` valid examples (``too_few_examples``; default 16, a tuneloop floor: Vertex
  recommends 100 or more) and at most ``max_examples`` (``too_many_examples``; Vertex takes 1M text examples in a
  training file, :data:`MAX_VALIDATION_EXAMPLES` in a validation file).

A ``name`` is dropped with a warning (``name_dropped``, :data:`WARNINGS`): Gemini has no participant names.
A refusal (:class:`~tuneloop.openai_dataset.FileProblem`) names its line, the example's id, the rule, the field
(``messages[2].role``) and the reason; a file with a million bad lines keeps the first
:data:`~tuneloop.openai_dataset.MAX_KEPT_PROBLEMS` and counts every one by rule.

Tokens are an estimate. Gemini's tokenizer is not available offline, so every text Vertex receives (the system
instruction as joined, each turn's text) is counted with tiktoken's ``o200k_base``, vendored in the package
(:func:`tuneloop.tokens.get_encoding`); no per-turn overhead is added, since Gemini documents none. Vertex bills
tuning as the dataset's tokens times the epochs; the job's ``tuningDataStats.supervisedTuningDataStats
.totalBillableTokenCount`` is the bill. Vertex's default epoch count is "adjusted to the dataset size" by an
undocumented rule, so :func:`estimate_training_tokens` takes the epochs the job is created with.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

from tuneloop.intake import describe, field_label
from tuneloop.openai_dataset import (LOCAL_KEYS, ROLES, SHOWN_PROBLEMS, TOOL_MESSAGE_KEYS, TOOL_ROLES,
                                     ChatFileRefused, ChatFileReport, FileProblem, _check_top_level_keys, _example_id,
                                     _Finding, _is_unicode, _parse, _problem, _Tally, _Tokens)
from tuneloop.tokens import count_tokens, get_encoding

ENCODING = "o200k_base"
MODEL_LABEL = "Gemini"  # the report's model when the caller names none
MESSAGE_KEYS = ("role", "content", "name", "weight")
VERTEX_ROLES = {"user": "user", "assistant": "model"}
SYSTEM_SEPARATOR = "\n\n"
MIN_EXAMPLES = 16
MAX_EXAMPLE_TOKENS = 131_072  # Gemini 2.5 Flash / Flash-Lite / Pro: input and output tokens per tuning example
MAX_TRAINING_EXAMPLES = 1_000_000  # text-only examples in a training file
MAX_VALIDATION_EXAMPLES = 5_000
WEIGHT_RULES = ("weight_not_supported", "weight_not_on_assistant", "invalid_weight")

RULES = {
    "not_utf8": "the line is not UTF-8",
    "empty_line": "the line is empty (one JSON object per line)",
    "not_json": "the line is not JSON (NaN and Infinity are not JSON)",
    "not_an_object": "the line is JSON but not an object",
    "unrecognized_key": "a top-level key other than messages and our own (local_keys)",
    "tools_not_supported": "tools, function calling, a tool/function role or tool calls",
    "missing_messages_list": "messages is missing, not a list, or empty",
    "message_not_object": "a message is not an object",
    "message_missing_key": "a message has no role or no content",
    "message_unrecognized_key": "a message key other than role, content, name, weight",
    "unrecognized_role": "a role other than system, user, assistant",
    "content_not_string": "content is not a string (null and content parts are refused)",
    "invalid_unicode": "content holds a lone surrogate",
    "empty_content": "a message with empty or blank content",
    "weight_not_supported": "weight 0 on an assistant message: Vertex trains on every model turn",
    "weight_not_on_assistant": "a weight on a system or user message",
    "invalid_weight": "a weight other than the integers 0 and 1",
    "system_after_turns": "a system message after a user or assistant message",
    "first_turn_not_user": "the conversation does not start with a user message",
    "turns_not_alternating": "two user or two assistant messages in a row",
    "last_turn_not_model": "the conversation does not end with an assistant message",
    "too_many_tokens": "the example has more than max_example_tokens tokens (estimated)",
    "too_few_examples": "the file has fewer than min_examples valid examples",
    "too_many_examples": "the file has more than max_examples valid examples",
}
WARNINGS = {
    "name_dropped": "a message name, which Vertex has no field for: dropped",
    "weight_ignored": "weight 0 on an earlier assistant reply, trained on anyway (train_earlier_replies)",
}
# prompt_request's one rule of its own (its ValueError names it); RULES' message and turn rules hold too
PROMPT_RULES = {
    "last_turn_not_user": "the prompt does not end with a user message",
}


class VertexFileRefused(ChatFileRefused):
    """A chat file breaks Vertex AI's rules for Gemini tuning; ``report`` says how. Raised before any upload."""

    def __init__(self, report: ChatFileReport) -> None:
        self.report = report
        ValueError.__init__(self, refusal_summary(report))  # Vertex's summary, not OpenAI's


# ------------------------------------------------------------------------------------------------ the check


def check_vertex_file(path: Path, *, model: str = MODEL_LABEL, max_example_tokens: int = MAX_EXAMPLE_TOKENS,
                      min_examples: int = MIN_EXAMPLES, max_examples: int = MAX_TRAINING_EXAMPLES,
                      local_keys: Collection[str] = LOCAL_KEYS, train_earlier_replies: bool = False) -> ChatFileReport:
    """Check a chat JSONL file against Vertex AI's rules for tuning ``model`` (only named in the report and its
    refusal; the rules and the default token limit are those of the Gemini 2.5 family), streaming it once.
    ``local_keys`` are top-level keys of ours that :func:`write_vertex_file` drops (default: ``id``); any other key
    besides ``messages`` is refused. ``max_examples``: pass :data:`MAX_VALIDATION_EXAMPLES` for a validation file.
    ``train_earlier_replies``: accept ``weight: 0`` on assistant turns (Vertex trains on them all) with a warning."""
    encoding = get_encoding(ENCODING)
    skip = _skipped(train_earlier_replies)
    refusals, warnings, tokens = _Tally(), _Tally(), _Tokens()
    lines = refused_lines = 0
    with Path(path).open("rb") as handle:
        for lines, raw in enumerate(handle, start=1):
            row, findings = _parse(raw)
            example_id = _example_id(row)
            findings = findings or list(_check_example(row, local_keys, skip))
            count = 0 if findings else count_example_tokens(_convert(row["messages"]))
            if count > max_example_tokens:
                findings = [_Finding("too_many_tokens", "messages", f"{count} tokens, more than {max_example_tokens} "
                                                                    f"(estimated with {encoding.name})")]
            for finding in findings:
                refusals.add(_problem(lines, example_id, finding))
            if findings:
                refused_lines += 1
                continue
            tokens.add(count, max_example_tokens)
            for finding in _warnings(row["messages"]):
                warnings.add(_problem(lines, example_id, finding))
            for finding in _ignored_weights(row["messages"]) if train_earlier_replies else ():
                warnings.add(_problem(lines, example_id, finding))
    for problem in _file_problems(Path(path), tokens.examples, min_examples, max_examples):
        refusals.add(problem)
    return ChatFileReport(
        path=Path(path), model=model, encoding=encoding.name, max_example_tokens=max_example_tokens, lines=lines,
        examples=tokens.examples, refused_lines=refused_lines, refusals=tuple(refusals.kept),
        refusal_counts=dict(sorted(refusals.counts.items())), warnings=tuple(warnings.kept),
        warning_counts=dict(sorted(warnings.counts.items())), total_tokens=tokens.total,
        min_tokens=tokens.min, max_tokens=tokens.max, billable_tokens_per_epoch=tokens.billable)


def _file_problems(path: Path, examples: int, min_examples: int, max_examples: int) -> Iterator[FileProblem]:
    if examples < min_examples:
        yield FileProblem(0, None, "too_few_examples", f"{path}: {examples} valid examples, fewer than {min_examples}")
    if examples > max_examples:
        yield FileProblem(0, None, "too_many_examples", f"{path}: {examples} valid examples, more than "
                                                        f"{max_examples}")


def _skipped(train_earlier_replies: bool) -> tuple[str, ...]:
    return ("weight_not_supported",) if train_earlier_replies else ()


def _ignored_weights(messages: Sequence[Mapping[str, Any]]) -> Iterator[_Finding]:
    for index, message in enumerate(messages):
        if message.get("weight") == 0:
            yield _Finding("weight_ignored", f"messages[{index}].weight",
                           "weight 0: Vertex trains on this earlier reply too")


def _check_example(row: Any, local_keys: Collection[str], skip: Collection[str] = ()) -> Iterator[_Finding]:
    """Every rule a line's value breaks, short of its token count."""
    if not isinstance(row, dict):
        yield _Finding("not_an_object", None, f"must be a JSON object {{messages}}, got {describe(row)}")
        return
    yield from _check_top_level_keys(row, local_keys)
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        got = describe(messages) if "messages" in row else "nothing"
        yield _Finding("missing_messages_list", "messages", f"must be a non-empty list of messages, got {got}")
        return
    yield from _check_conversation(messages, ends_with="assistant", skip=skip)


def _check_conversation(messages: Sequence[Any], *, ends_with: str, skip: Collection[str] = ()) -> Iterator[_Finding]:
    """Every message's own problems (but the rules in ``skip``); only when there are none, the order of the
    turns."""
    findings = [finding for index, message in enumerate(messages)
                for finding in _check_message(message, f"messages[{index}]") if finding.rule not in skip]
    yield from findings or _check_turns(messages, ends_with=ends_with)


def _check_message(message: Any, where: str) -> Iterator[_Finding]:
    if not isinstance(message, dict):
        yield _Finding("message_not_object", where, f"must be an object {{role, content}}, got {describe(message)}")
        return
    yield from _check_message_keys(message, where)
    yield from _check_role(message, where)
    yield from _check_content(message, where)
    yield from _check_weight(message, where)


def _check_message_keys(message: dict[str, Any], where: str) -> Iterator[_Finding]:
    for key in message:
        if key in TOOL_MESSAGE_KEYS:
            yield _Finding("tools_not_supported", f"{where}.{key}", "tool calls are not supported")
        elif key not in MESSAGE_KEYS:
            yield _Finding("message_unrecognized_key", f"{where}.{field_label(key)}",
                           f"unknown field of a message (known: {', '.join(MESSAGE_KEYS)})")


def _check_role(message: dict[str, Any], where: str) -> Iterator[_Finding]:
    role = message.get("role")
    if "role" not in message:
        yield _Finding("message_missing_key", f"{where}.role", "missing")
    elif role in TOOL_ROLES:
        yield _Finding("tools_not_supported", f"{where}.role", f"{role} messages (tool results) are not supported")
    elif role not in ROLES:
        yield _Finding("unrecognized_role", f"{where}.role",
                       f"must be one of {', '.join(ROLES)}, got {describe(role)}")


def _check_content(message: dict[str, Any], where: str) -> Iterator[_Finding]:
    if "content" not in message:
        yield _Finding("message_missing_key", f"{where}.content", "missing")
        return
    content = message["content"]
    if not isinstance(content, str):
        yield _Finding("content_not_string", f"{where}.content", f"must be a string, got {describe(content)}")
    elif not _is_unicode(content):
        yield _Finding("invalid_unicode", f"{where}.content", "holds a lone surrogate (not valid Unicode)")
    elif not content.strip():
        yield _Finding("empty_content", f"{where}.content",
                       f"must have text (Gemini refuses an empty text part), got {describe(content)}")


def _check_weight(message: dict[str, Any], where: str) -> Iterator[_Finding]:
    if "weight" not in message:
        return
    weight, role = message["weight"], message.get("role")
    if role in ROLES and role != "assistant":
        yield _Finding("weight_not_on_assistant", f"{where}.weight",
                       f"only assistant messages have a weight, this one is a {role} message")
    elif type(weight) is not int or weight not in (0, 1):
        yield _Finding("invalid_weight", f"{where}.weight", f"must be 0 or 1, got {describe(weight)}")
    elif weight == 0:
        yield _Finding("weight_not_supported", f"{where}.weight",
                       "weight 0 cannot be honoured: Vertex has no per-turn weight and trains on every model turn")


def _check_turns(messages: Sequence[Mapping[str, Any]], *, ends_with: str) -> Iterator[_Finding]:
    """The order of well-formed messages: system first, then user / assistant alternating from a user message,
    the last one ``ends_with``'s (assistant for a training example, user for a prompt)."""
    turns = [(index, message["role"]) for index, message in enumerate(messages) if message["role"] != "system"]
    first = turns[0][0] if turns else len(messages)
    for index in range(first, len(messages)):
        if messages[index]["role"] == "system":
            yield _Finding("system_after_turns", f"messages[{index}].role",
                           "a system message after the conversation began (Vertex has one system instruction, "
                           "before the turns)")
    last_rule = "last_turn_not_model" if ends_with == "assistant" else "last_turn_not_user"
    if not turns:
        yield _Finding(last_rule, "messages", "no user or assistant message")
        return
    if turns[0][1] != "user":
        yield _Finding("first_turn_not_user", f"messages[{first}].role",
                       f"the conversation must start with a user message, got {turns[0][1]}")
    for (before, previous), (index, role) in pairwise(turns):
        if role == previous:
            yield _Finding("turns_not_alternating", f"messages[{index}].role",
                           f"a second {role} message in a row (after messages[{before}]): Gemini needs user and "
                           f"model turns to alternate")
    if turns[-1][1] != ends_with:
        yield _Finding(last_rule, f"messages[{turns[-1][0]}].role",
                       f"the last turn must be the {ends_with}'s, got the {turns[-1][1]}'s")


def _warnings(messages: list[dict[str, Any]]) -> Iterator[_Finding]:
    for index, message in enumerate(messages):
        if "name" in message:
            yield _Finding("name_dropped", f"messages[{index}].name", "Vertex has no participant names: dropped")


def refusal_summary(report: ChatFileReport) -> str:
    """The refusals of ``report`` in words: counts by rule, then the first :data:`SHOWN_PROBLEMS`."""
    total = sum(report.refusal_counts.values())
    by_rule = ", ".join(f"{rule} {count}" for rule, count in report.refusal_counts.items())
    shown = report.refusals[:SHOWN_PROBLEMS]
    lines = [(f"{report.path}: refused for Vertex AI tuning of {report.model}: {total} problem(s) on "
              f"{report.refused_lines} of {report.lines} line(s), {report.examples} valid example(s) ({by_rule})")]
    lines += [f"  [{problem.rule}] {problem.message}" for problem in shown]
    if total > len(shown):
        lines.append(f"  ... and {total - len(shown)} more")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- tokens, cost


def count_example_tokens(example: Mapping[str, Any]) -> int:
    """Estimated tokens of a Vertex example (:func:`to_vertex_example`): every text part of its system instruction
    and turns, counted with o200k_base (Gemini's own tokenizer is not available offline)."""
    encoding = get_encoding(ENCODING)
    contents = [example.get("systemInstruction") or {"parts": []}, *example["contents"]]
    return sum(count_tokens(part["text"], encoding) for content in contents for part in content["parts"])


def estimate_training_tokens(report: ChatFileReport, epochs: int | None) -> int:
    """Billable tokens of a tuning job on the report's file: epochs times tokens per epoch. ``epochs`` is the job's;
    None is refused: Vertex's default depends on the dataset size by a rule it does not publish, so there is no
    "auto" to estimate with."""
    if epochs is None:
        raise ValueError("epochs: Vertex adjusts its default epoch count to the dataset size by an unpublished "
                         "rule, so an estimate needs the epochs the job is created with (set epoch_count)")
    if type(epochs) is not int or epochs < 1:
        raise ValueError(f"epochs: an integer, at least 1, got {epochs!r}")
    return epochs * report.billable_tokens_per_epoch


# -------------------------------------------------------------------------------------------- conversion


def vertex_contents(messages: Iterable[Mapping[str, Any]]) -> tuple[str | None, list[dict[str, Any]]]:
    """The system instruction (the leading system messages' texts joined with a blank line; None without one) and
    Gemini's ``contents`` (assistant becomes ``model``; ``name`` and ``weight`` are dropped). Converts only; the
    rules are :func:`to_vertex_example`'s and :func:`prompt_request`'s. A system message after the turns or an
    unknown role has no Vertex form: ValueError."""
    system: list[str] = []
    contents: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        role = message["role"]
        if role == "system" and not contents:
            system.append(message["content"])
        elif role in VERTEX_ROLES:
            contents.append({"role": VERTEX_ROLES[role], "parts": [{"text": message["content"]}]})
        else:
            raise ValueError(f"messages[{index}].role: {describe(role)} has no place in Gemini's contents")
    return (SYSTEM_SEPARATOR.join(system) if system else None), contents


def to_vertex_example(messages: Sequence[Mapping[str, Any]], *, train_earlier_replies: bool = False) -> dict[str, Any]:
    """One line of a Vertex tuning file: ``{"systemInstruction"?, "contents"}``. Refuses (ValueError naming each
    rule and field) a conversation that :func:`check_vertex_file` would refuse, short of its token count."""
    _raise_on(_check_conversation(messages, ends_with="assistant", skip=_skipped(train_earlier_replies)))
    return _convert(messages)


def prompt_request(messages: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What generateContent is given for a conversation that ends in a user turn (an eval row without its final
    reply): ``{"contents", "system_instruction": str | None}``, converted as for tuning so that the tuned model is
    asked what it was trained on. Weights are ignored (a prompt trains nothing); any other rule of
    :func:`to_vertex_example` holds, and the last turn must be the user's (``last_turn_not_user``): ValueError
    naming each rule and field otherwise."""
    findings = [finding for index, message in enumerate(messages)
                for finding in _check_message(message, f"messages[{index}]") if finding.rule not in WEIGHT_RULES]
    _raise_on(findings or _check_turns(messages, ends_with="user"))
    system, contents = vertex_contents(messages)
    return {"contents": contents, "system_instruction": system}


def _convert(messages: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    system, contents = vertex_contents(messages)
    if system is None:
        return {"contents": contents}
    return {"systemInstruction": {"role": "system", "parts": [{"text": system}]}, "contents": contents}


def _raise_on(findings: Iterable[_Finding]) -> None:
    reasons = [f"{finding.field}: [{finding.rule}] {finding.reason}" for finding in findings]
    if reasons:
        raise ValueError("; ".join(reasons))


# ------------------------------------------------------------------------------------------------- upload


def write_vertex_file(source: Path, target: Path, *, train_earlier_replies: bool = False) -> int:
    """Write the Vertex copy of a checked file: line N of ``target`` is line N of ``source`` as
    :func:`to_vertex_example` converts it (our ``id`` and every other local key dropped). Streams; atomic (a
    temporary file renamed into place, nothing left behind on failure). Returns the number of examples written."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="\n") as out, Path(source).open("rb") as lines:
            written = 0
            for written, raw in enumerate(lines, start=1):
                out.write(json.dumps(_vertex_row(raw, source, written, train_earlier_replies), ensure_ascii=False,
                                     separators=(",", ":")) + "\n")
        os.chmod(temp, 0o644)  # mkstemp makes it private; the uploader may run as another user
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return written


def _vertex_row(raw: bytes, source: Path, line: int, train_earlier_replies: bool) -> dict[str, Any]:
    try:
        row = json.loads(raw)
    except ValueError as error:
        raise ValueError(f"{source}: line {line} is not JSON ({error}); check_vertex_file refuses it") from error
    if not isinstance(row, dict) or not isinstance(row.get("messages"), list) or not row["messages"]:
        raise ValueError(f"{source}: line {line} is not an example {{messages}}; check_vertex_file refuses it")
    try:
        return to_vertex_example(row["messages"], train_earlier_replies=train_earlier_replies)
    except ValueError as error:
        raise ValueError(f"{source}: line {line}: {error}; check_vertex_file refuses it") from error
