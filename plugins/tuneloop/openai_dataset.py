"""OpenAI's rules for a chat fine-tuning file, checked before anything is uploaded, and what training it will cost.

OpenAI validates a training file only once a job runs (status ``validating_files``) and then fails the job as a
whole; a cost shows up only afterwards (``trained_tokens``). So the file is checked here first, in one streaming
pass (one line in memory at a time, every problem of every line named), and the job's billable tokens are
estimated from the same pass. The rules are those OpenAI documents for supervised fine-tuning of chat models and
those of the cookbook's validator (``examples/Chat_finetuning_data_prep.ipynb``):

* every line is a UTF-8 JSON object holding a non-empty ``messages`` list (and our ``id``, which is not uploaded:
  :func:`write_upload_file` drops it);
* every message is an object with a ``role`` (system, user or assistant) and a string ``content``, optionally a
  ``name`` (OpenAI's pattern) and, on assistant messages only, a ``weight`` of 0 or 1; no other key;
* an assistant message has non-empty content, and an example has at least one assistant message it trains on
  (``weight`` absent or 1): an example that trains nothing is refused;
* an example has at most ``max_example_tokens`` tokens, counted as the cookbook counts them
  (:func:`tuneloop.tokens.count_chat_tokens`, the model's own tiktoken encoding);
* the file has at least ``min_examples`` valid examples (OpenAI's minimum is 10).

Tools and function calling are not supported: the chat export never writes them, and their token cost depends on
undocumented, model-specific formatting. A ``tools`` / ``parallel_tool_calls`` / ``functions`` key, a ``tool`` or
``function`` role, or ``tool_calls`` / ``function_call`` / ``tool_call_id`` on a message is refused as
``tools_not_supported`` rather than passed on unchecked. Content parts (lists, e.g. images) are refused too.

A refusal (:class:`FileProblem`) names its line, the example's id, a stable rule code (:data:`RULES`), the field
(``messages[2].role``) and the reason; a missing system or user message is only a warning (:data:`WARNINGS`).
A file with a million bad lines keeps its first :data:`MAX_KEPT_PROBLEMS` problems and counts every one by rule.
Billing (cookbook, and OpenAI's ``trained_tokens``): every token of every example, once per epoch;
:func:`default_epochs` is OpenAI's "auto".
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

from tuneloop.intake import describe, field_label
from tuneloop.tasks.chat import NAME_PATTERN
from tuneloop.tokens import count_chat_tokens, encoding_for

ROLES = ("system", "user", "assistant")
MESSAGE_KEYS = ("role", "content", "name", "weight")
UPLOAD_KEYS = ("messages",)
LOCAL_KEYS = ("id",)  # ours, never uploaded
TOOL_KEYS = ("tools", "parallel_tool_calls", "functions")
TOOL_ROLES = ("tool", "function")
TOOL_MESSAGE_KEYS = ("tool_calls", "function_call", "tool_call_id")
MIN_EXAMPLES = 10
MAX_EXAMPLE_TOKENS = 65_536
MAX_KEPT_PROBLEMS = 1_000
SHOWN_PROBLEMS = 20
MAX_ID_CHARS = 128
# OpenAI's "auto" epochs (cookbook): 3, more for small files, fewer for big ones.
TARGET_EPOCHS, MIN_DEFAULT_EPOCHS, MAX_DEFAULT_EPOCHS = 3, 1, 25
MIN_TARGET_EXAMPLES, MAX_TARGET_EXAMPLES = 100, 25_000

RULES = {
    "not_utf8": "the line is not UTF-8",
    "empty_line": "the line is empty (one JSON object per line)",
    "not_json": "the line is not JSON (NaN and Infinity are not JSON)",
    "not_an_object": "the line is JSON but not an object",
    "unrecognized_key": "a top-level key other than messages and our own (id)",
    "tools_not_supported": "tools, function calling, a tool/function role or tool calls",
    "missing_messages_list": "messages is missing, not a list, or empty",
    "message_not_object": "a message is not an object",
    "message_missing_key": "a message has no role or no content",
    "message_unrecognized_key": "a message key other than role, content, name, weight",
    "unrecognized_role": "a role other than system, user, assistant",
    "content_not_string": "content is not a string (null and content parts are refused)",
    "invalid_unicode": "content or name holds a lone surrogate",
    "empty_assistant_content": "an assistant message with empty or blank content",
    "invalid_name": "a name that is not 1 to 64 letters, digits, _ or -",
    "weight_not_on_assistant": "a weight on a system or user message",
    "invalid_weight": "a weight other than the integers 0 and 1",
    "missing_assistant_message": "no assistant message",
    "nothing_to_train": "every assistant message has weight 0",
    "too_many_tokens": "the example has more than max_example_tokens tokens",
    "too_few_examples": "the file has fewer than min_examples valid examples",
}
WARNINGS = {
    "missing_system_message": "a valid example without a system message",
    "missing_user_message": "a valid example without a user message",
}


@dataclass(frozen=True)
class FileProblem:
    """A refusal or warning: ``line`` is 1-based (0: the file as a whole), ``example_id`` the line's ``id`` when it
    has one, ``rule`` a key of :data:`RULES` or :data:`WARNINGS`, ``field`` the offending field
    (``messages[2].role``; None for the line or file as a whole), ``message`` all of that in words."""

    line: int
    example_id: str | None
    rule: str
    message: str
    field: str | None = None


@dataclass(frozen=True)
class ChatFileReport:
    """What :func:`check_chat_file` found. Token figures cover the valid examples only; ``refusals`` and
    ``warnings`` are the first :data:`MAX_KEPT_PROBLEMS` of each, ``*_counts`` count all of them by rule."""

    path: Path
    model: str
    encoding: str
    max_example_tokens: int
    lines: int
    examples: int
    refused_lines: int
    refusals: tuple[FileProblem, ...]
    refusal_counts: Mapping[str, int]
    warnings: tuple[FileProblem, ...]
    warning_counts: Mapping[str, int]
    total_tokens: int
    min_tokens: int
    max_tokens: int
    # Σ min(max_example_tokens, tokens): OpenAI's (and the cookbook's) billing per epoch. Equal to total_tokens
    # here, since longer examples are refused, but this is the figure an estimate multiplies.
    billable_tokens_per_epoch: int

    @property
    def ok(self) -> bool:
        """True when nothing is refused: the file may be uploaded."""
        return not self.refusal_counts

    @property
    def mean_tokens(self) -> float:
        return self.total_tokens / self.examples if self.examples else 0.0


class ChatFileRefused(ValueError):
    """A chat file breaks OpenAI's rules (a subclass: another provider's); ``report`` says how. Raised before any
    upload."""

    def __init__(self, report: ChatFileReport) -> None:
        self.report = report
        super().__init__(refusal_summary(report))


class _Finding(NamedTuple):
    rule: str
    field: str | None
    reason: str


class _Tally:
    """Problems of one kind: every one counted by rule, the first :data:`MAX_KEPT_PROBLEMS` kept."""

    def __init__(self) -> None:
        self.kept: list[FileProblem] = []
        self.counts: Counter[str] = Counter()

    def add(self, problem: FileProblem) -> None:
        self.counts[problem.rule] += 1
        if len(self.kept) < MAX_KEPT_PROBLEMS:
            self.kept.append(problem)


class _Tokens:
    """Token figures of the valid examples, one example at a time."""

    def __init__(self) -> None:
        self.examples = self.total = self.billable = self.min = self.max = 0

    def add(self, tokens: int, max_example_tokens: int) -> None:
        self.examples += 1
        self.total += tokens
        self.billable += min(tokens, max_example_tokens)
        self.min = tokens if self.examples == 1 else min(self.min, tokens)
        self.max = max(self.max, tokens)


# ------------------------------------------------------------------------------------------------ the check


def check_chat_file(path: Path, *, model: str, max_example_tokens: int = MAX_EXAMPLE_TOKENS,
                    min_examples: int = MIN_EXAMPLES, local_keys: Collection[str] = LOCAL_KEYS) -> ChatFileReport:
    """Check a chat JSONL file against OpenAI's rules for fine-tuning ``model`` (whose tiktoken encoding counts
    the tokens), streaming it once. ``local_keys`` are top-level keys of ours that :func:`write_upload_file`
    drops (default: ``id``); any other key besides ``messages`` is refused."""
    encoding = encoding_for(model)
    refusals, warnings, tokens = _Tally(), _Tally(), _Tokens()
    lines = refused_lines = 0
    with Path(path).open("rb") as handle:
        for lines, raw in enumerate(handle, start=1):
            row, findings = _parse(raw)
            example_id = _example_id(row)
            findings = findings or list(_check_example(row, local_keys))
            count = 0 if findings else count_chat_tokens(row["messages"], encoding)
            if count > max_example_tokens:
                findings = [_Finding("too_many_tokens", "messages", f"{count} tokens, more than {max_example_tokens} "
                                                                    f"(counted with {encoding.name})")]
            for finding in findings:
                refusals.add(_problem(lines, example_id, finding))
            if findings:
                refused_lines += 1
                continue
            tokens.add(count, max_example_tokens)
            for finding in _warnings(row["messages"]):
                warnings.add(_problem(lines, example_id, finding))
    if tokens.examples < min_examples:
        refusals.add(FileProblem(0, None, "too_few_examples", f"{path}: {tokens.examples} valid examples, fewer "
                                                              f"than {min_examples}"))
    return ChatFileReport(
        path=Path(path), model=model, encoding=encoding.name, max_example_tokens=max_example_tokens, lines=lines,
        examples=tokens.examples, refused_lines=refused_lines, refusals=tuple(refusals.kept),
        refusal_counts=dict(sorted(refusals.counts.items())), warnings=tuple(warnings.kept),
        warning_counts=dict(sorted(warnings.counts.items())), total_tokens=tokens.total,
        min_tokens=tokens.min, max_tokens=tokens.max,
        billable_tokens_per_epoch=tokens.billable)


def _parse(raw: bytes) -> tuple[Any, list[_Finding]]:
    """A line's JSON value, or why it has none."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return None, [_Finding("not_utf8", None, f"not UTF-8 ({error.reason} at byte {error.start})")]
    if not text.strip():
        return None, [_Finding("empty_line", None, "an empty line (one JSON object per line)")]
    try:
        return json.loads(text, parse_constant=_not_json), []
    except (ValueError, RecursionError) as error:
        return None, [_Finding("not_json", None, f"not JSON ({error})")]


def _not_json(constant: str) -> NoReturn:
    raise ValueError(f"{constant} is not a JSON number")


def _example_id(row: Any) -> str | None:
    value = row.get("id") if isinstance(row, dict) else None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    text = field_label(str(value))
    return text if len(text) <= MAX_ID_CHARS else text[: MAX_ID_CHARS - 3] + "..."


def _problem(line: int, example_id: str | None, finding: _Finding) -> FileProblem:
    where = f"line {line}" if example_id is None else f"line {line} (id {example_id})"
    field = f"{finding.field}: " if finding.field else ""
    return FileProblem(line, example_id, finding.rule, f"{where}: {field}{finding.reason}", finding.field)


def _check_example(row: Any, local_keys: Collection[str]) -> Iterator[_Finding]:
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
    findings = [finding for index, message in enumerate(messages)
                for finding in _check_message(message, f"messages[{index}]")]
    yield from findings or _check_trained(messages)


def _check_top_level_keys(row: dict[str, Any], local_keys: Collection[str]) -> Iterator[_Finding]:
    known = ", ".join((*UPLOAD_KEYS, *local_keys))
    for key in row:
        if key in TOOL_KEYS:
            yield _Finding("tools_not_supported", key, "tools and function calling are not supported")
        elif key not in UPLOAD_KEYS and key not in local_keys:
            yield _Finding("unrecognized_key", field_label(key), f"unknown top-level field (known: {known})")


def _check_message(message: Any, where: str) -> Iterator[_Finding]:
    if not isinstance(message, dict):
        yield _Finding("message_not_object", where, f"must be an object {{role, content}}, got {describe(message)}")
        return
    for key in message:
        if key in TOOL_MESSAGE_KEYS:
            yield _Finding("tools_not_supported", f"{where}.{key}", "tool calls are not supported")
        elif key not in MESSAGE_KEYS:
            yield _Finding("message_unrecognized_key", f"{where}.{field_label(key)}",
                           f"unknown field of a message (known: {', '.join(MESSAGE_KEYS)})")
    role = message.get("role")
    if "role" not in message:
        yield _Finding("message_missing_key", f"{where}.role", "missing")
    elif role in TOOL_ROLES:
        yield _Finding("tools_not_supported", f"{where}.role", f"{role} messages (tool results) are not supported")
    elif role not in ROLES:
        yield _Finding("unrecognized_role", f"{where}.role",
                       f"must be one of {', '.join(ROLES)}, got {describe(role)}")
    yield from _check_content(message, where)
    yield from _check_name_and_weight(message, where)


def _check_content(message: dict[str, Any], where: str) -> Iterator[_Finding]:
    if "content" not in message:
        yield _Finding("message_missing_key", f"{where}.content", "missing")
        return
    content = message["content"]
    if not isinstance(content, str):
        yield _Finding("content_not_string", f"{where}.content", f"must be a string, got {describe(content)}")
    elif not _is_unicode(content):
        yield _Finding("invalid_unicode", f"{where}.content", "holds a lone surrogate (not valid Unicode)")
    elif message.get("role") == "assistant" and not content.strip():
        yield _Finding("empty_assistant_content", f"{where}.content",
                       f"an assistant message must have content to train on, got {describe(content)}")


def _check_name_and_weight(message: dict[str, Any], where: str) -> Iterator[_Finding]:
    if "name" in message:
        name = message["name"]
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            yield _Finding("invalid_name", f"{where}.name",
                           f"must be 1 to 64 letters, digits, _ or - (OpenAI's rule), got {describe(name)}")
    if "weight" in message:
        weight, role = message["weight"], message.get("role")
        if role in ROLES and role != "assistant":
            yield _Finding("weight_not_on_assistant", f"{where}.weight",
                           f"only assistant messages have a weight, this one is a {role} message")
        elif type(weight) is not int or weight not in (0, 1):
            yield _Finding("invalid_weight", f"{where}.weight", f"must be 0 or 1, got {describe(weight)}")


def _check_trained(messages: list[dict[str, Any]]) -> Iterator[_Finding]:
    assistants = [message for message in messages if message["role"] == "assistant"]
    if not assistants:
        yield _Finding("missing_assistant_message", "messages", "no assistant message: the example trains nothing")
    elif all(message.get("weight", 1) == 0 for message in assistants):
        yield _Finding("nothing_to_train", "messages",
                       "every assistant message has weight 0: the example trains nothing")


def _warnings(messages: list[dict[str, Any]]) -> Iterator[_Finding]:
    roles = {message["role"] for message in messages}
    if "system" not in roles:
        yield _Finding("missing_system_message", "messages", "no system message")
    if "user" not in roles:
        yield _Finding("missing_user_message", "messages", "no user message")


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def refusal_summary(report: ChatFileReport) -> str:
    """The refusals of ``report`` in words: counts by rule, then the first :data:`SHOWN_PROBLEMS`."""
    total = sum(report.refusal_counts.values())
    by_rule = ", ".join(f"{rule} {count}" for rule, count in report.refusal_counts.items())
    shown = report.refusals[:SHOWN_PROBLEMS]
    lines = [f"{report.path}: refused for OpenAI fine-tuning of {report.model}: {total} problem(s) on "
             f"{report.refused_lines} of {report.lines} line(s), {report.examples} valid example(s) ({by_rule})"]
    lines += [f"  [{problem.rule}] {problem.message}" for problem in shown]
    if total > len(shown):
        lines.append(f"  ... and {total - len(shown)} more")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- epochs, cost


def default_epochs(n_examples: int) -> int:
    """OpenAI's ``n_epochs: "auto"``: 3, raised to ``min(25, 100 // n)`` when ``3 n < 100``, lowered to
    ``max(1, 25000 // n)`` when ``3 n > 25000``."""
    if n_examples < 1:
        raise ValueError(f"n_examples: at least 1, got {n_examples}")
    if n_examples * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(MAX_DEFAULT_EPOCHS, MIN_TARGET_EXAMPLES // n_examples)
    if n_examples * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(MIN_DEFAULT_EPOCHS, MAX_TARGET_EXAMPLES // n_examples)
    return TARGET_EPOCHS


def estimate_training_tokens(report: ChatFileReport, n_epochs: int | None) -> int:
    """Billable tokens of a job on the report's file: epochs × billable tokens per epoch (``None``: "auto")."""
    if n_epochs is not None and n_epochs < 1:
        raise ValueError(f"n_epochs: at least 1 (or None for auto), got {n_epochs}")
    if report.examples == 0:
        return 0
    return (n_epochs or default_epochs(report.examples)) * report.billable_tokens_per_epoch


# ------------------------------------------------------------------------------------------------- upload


def write_upload_file(source: Path, target: Path) -> int:
    """Write the upload-ready copy of a checked file: each line keeps only what OpenAI accepts (``messages``; our
    ``id`` and any other key dropped), in the same order, so line N of the upload is line N of ``source``.
    Streams; atomic (a temporary file renamed into place). Returns the number of lines written."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="\n") as out, Path(source).open("rb") as lines:
            written = 0
            for written, raw in enumerate(lines, start=1):
                out.write(json.dumps(_upload_row(raw, source, written), ensure_ascii=False,
                                     separators=(",", ":")) + "\n")
        os.chmod(temp, 0o644)  # mkstemp makes it private; the uploader may run as another user
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return written


def _upload_row(raw: bytes, source: Path, line: int) -> dict[str, Any]:
    try:
        row = json.loads(raw)
    except ValueError as error:
        raise ValueError(f"{source}: line {line} is not JSON ({error}); check_chat_file refuses it") from error
    if not isinstance(row, dict) or "messages" not in row:
        raise ValueError(f"{source}: line {line} is not an example {{messages}}; check_chat_file refuses it")
    return {key: row[key] for key in UPLOAD_KEYS if key in row}
