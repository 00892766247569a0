"""Chat models (causal LMs): a case is a conversation, the model's reply, and a person's verdict on it.

A case row (JSONL or the Python API) holds the conversation either as ``messages`` (OpenAI's list of
``{"role": "system" | "user" | "assistant", "content": str, "name"?: str}``) or as ``prompt`` (one user turn)
with an optional ``system``; the model's reply as ``output`` (or ``response``, ``prediction``); the corrected or
ideal reply as ``ideal`` (or ``correction``, ``ideal_response``, ``corrected_response``), null until a person
wrote one; a ``rating`` 1-5 of the output, a ``domain`` and a ``task_type``; and the fields every case has
(:data:`tuneloop.intake.COMMON_KEYS`). When ``messages`` ends with an assistant turn and no output is given, that
turn is the output. Every rule is a rule about a class of input, refused as :class:`~tuneloop.intake.InvalidCase`
naming where it is (``messages[2].role``): at least one user turn, a system message only first, the conversation
ends with a user turn before the reply, contents non-empty and at most ``max_text_chars``, at most
:data:`MAX_MESSAGES` messages, no unknown keys (a typo must not lose a correction), aliases that are both given
agree.

Identities: a case's ``content_hash`` is the SHA-256 of the canonical JSON of what a person judged, exactly as
given (conversation, output, ideal response, rating, domain, task type; not the metadata), so re-ingesting a
batch adds nothing and a re-sent case with a new rating or ideal response is a new case. An export deduplicates
on the *normalised* prompt and training target (:func:`normalize`: NFKC, casefold, whitespace collapsed), so
cases differing only in case or spacing are one example there, the most recent winning.

Export (:meth:`ChatTask.screen`): the training target is the ideal response when there is one, else the model's
own output when a person rated it at least ``dataset.chat.min_rating`` (a reply rated good is a good example),
else the case is not a training example and stays new (``filtered``). The ``dataset.chat`` filters (domains, task
types, metadata minimums, maximum age) leave cases new as well; a prompt (the last user turn) shorter than
``min_prompt_chars`` or a target shorter than ``min_response_chars`` quarantines the case. Rows follow OpenAI's
chat fine-tuning format plus an id and descriptive fields::

    {"id", "messages": [{"role": "system", ...}?, <prompt turns; earlier assistant turns with "weight": 0>,
                        {"role": "assistant", "content": <target>, "weight": 1}],
     "created_at", "model_version", "source", "domain", "task_type", "rating", <dataset.slice_fields>}

Earlier assistant turns weigh 0: they are production's words, not necessarily good ones. Eval rows have the same
shape; their last assistant message is the reference. ``dataset.chat.formats`` adds the splits in other shapes
(:func:`format_rows`: ``openai``, ``alpaca``, ``chatml``, ``raw``), e.g. ``train.alpaca.jsonl``.
"""

from __future__ import annotations

import json
import random
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop.intake import (COMMON_KEYS, MAX_NAME_CHARS, CaseDraft, IngestLimits, InvalidCase, as_utc,
                             check_values, common_fields, describe, refuse_unknown, sha256)
from tuneloop.tasks import ExportItem, Fetcher, Note, Screened, Serving

if TYPE_CHECKING:
    from tuneloop.config import ChatDatasetConfig, DatasetConfig
    from tuneloop.pipeline import PipelineRun
    from tuneloop.store import ErrorCase

MAX_MESSAGES = 256
ROLES = ("system", "user", "assistant")
MESSAGE_KEYS = frozenset(("role", "content", "name"))
# OpenAI's rule for a message's name; a name it refuses would fail the upload of the whole file.
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ALIASES: dict[str, tuple[str, ...]] = {
    "output": ("output", "response", "prediction"),
    "ideal": ("ideal", "correction", "ideal_response", "corrected_response"),
}
KNOWN_KEYS = COMMON_KEYS.union(("messages", "prompt", "system", "rating", "domain", "task_type"),
                               *_ALIASES.values())
# Row keys set from the case itself; a slice field with one of these names never overrides them.
FIXED_ROW_KEYS = ("id", "messages", "created_at", "model_version", "source", "domain", "task_type", "rating")
FORMATS = ("openai", "alpaca", "chatml", "raw")
TOKEN_METHOD = "words and punctuation marks (tokenizer-free estimate)"
_TOKENS = re.compile(r"\w+|[^\w\s]")
_RATINGS = ("1", "2", "3", "4", "5")


# --------------------------------------------------------------------------------------------- identities


def normalize(text: str) -> str:
    """``text`` as an identity: Unicode NFKC, casefolded, whitespace collapsed to single spaces, stripped."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def prompt_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """The normalised conversation as one string, one ``role: content`` line per message (roles included, so
    ``user: hi`` and ``assistant: hi`` differ); what the leakage guard and the held-back rule compare."""
    return "\n".join(f"{message['role']}: {normalize(message['content'])}" for message in messages)


# ------------------------------------------------------------------------------------------------ the task


class ChatTask:
    """The chat task (``TASK``)."""

    name = "chat"
    trainer_task = "chat"
    example_noun = "example"  # ExportItem.key: the normalised prompt and training target
    text_noun = "prompt"  # ExportItem.text: the normalised conversation before the reply
    needs_correction = False  # a well-rated output trains too (dataset.chat.min_rating)

    def parse_case(self, row: Mapping[str, Any], *, base_dir: Path | str, default_source: str, now: datetime,
                   limits: IngestLimits) -> CaseDraft:
        """Check one chat case row (JSONL or the Python API) and return the case to store; raise ``InvalidCase``.

        ``base_dir`` is unused: a chat case refers to no file.
        """
        check_values(row, limits)
        refuse_unknown(row, KNOWN_KEYS)
        output_key, output = _aliased(row, "output")
        messages, output_key, output = _conversation(row, output_key, output, limits)
        output, ideal = _replies(row, output_key, output, limits)
        rating = check_rating(row.get("rating"), "rating")
        domain = check_name(row.get("domain"), "domain")
        task_type = check_name(row.get("task_type"), "task_type")
        fields = common_fields(row, default_source=default_source, now=now, limits=limits)
        case_id = fields.pop("id")
        payload = {"messages": messages, "rating": rating, "domain": domain, "task_type": task_type}
        content_hash = sha256(_canonical({**payload, "output": output, "ideal": ideal}))
        return CaseDraft(id=case_id or content_hash[:32], audio_uri=None, audio_hash=None, prediction=output,
                         correction=ideal, payload=payload, content_hash=content_hash, **fields)

    def screen(self, cases: Iterable[ErrorCase], config: DatasetConfig, fetch: Fetcher | None,
               now: datetime | None = None) -> Screened:
        """The store's new cases as export items (``fetch`` is unused: nothing to fetch).

        In order: a broken payload or an empty correction quarantines; no ideal response and no rating of at
        least ``min_rating`` filters; a too-short prompt or target quarantines; the ``dataset.chat`` filters
        (domains, task types, metadata minimums, maximum age as of ``now``) filter.
        """
        now = as_utc(now or datetime.now(UTC))
        settings = config.chat
        screened = Screened(items=[])
        for case in cases:
            try:
                messages, rating, domain, task_type = stored_conversation(case.payload)
            except InvalidCase as error:
                screened.quarantined.append(Note(case.id, f"stored payload is not a chat case: {error}"))
                continue
            if case.correction is not None and not case.correction.strip():
                screened.quarantined.append(Note(case.id, f"correction is empty: {case.correction[:40]!r}"))
                continue
            target, which = _target(case, rating, settings)
            if target is None:
                rated = "unrated" if rating is None else f"rating {rating}"
                screened.filtered.append(Note(case.id, f"no correction and rating below min_rating ({rated}, "
                                                       f"dataset.chat.min_rating {settings.min_rating})"))
                continue
            problem = length_problem(messages, target, which, settings)
            if problem:
                screened.quarantined.append(Note(case.id, problem))
                continue
            reason = _filter_reason(case, domain, task_type, settings, now)
            if reason:
                screened.filtered.append(Note(case.id, reason))
                continue
            screened.items.append(_item(case, messages, target, config))
        return screened

    def replay(self, config: DatasetConfig) -> tuple[list[ExportItem], list[Note]]:
        """A seeded draw of ``replay_size`` rows of ``replay_path`` (training rows: ``{"id", "messages": [...,
        final assistant turn], ...}``), each checked like a case; a bad one is dropped with its reason. The
        neutral export then applies the leakage guard and the overlap rules. A file that is missing, or a line
        that is not a JSON object with a unique id, fails the export (``DatasetError``, naming file and line), as
        for speech: the file is wrong, not one example."""
        from tuneloop.datasets import REPLAY_CREATED_AT, REPLAY_PREFIX  # datasets imports tuneloop.tasks

        if config.replay_path is None:
            return [], []
        rows = _read_replay(Path(config.replay_path))
        random.Random(config.replay_seed).shuffle(rows)
        kept: list[ExportItem] = []
        dropped: list[Note] = []
        for row in rows[: config.replay_size]:
            case_id = f"{REPLAY_PREFIX}{row['id']}"
            try:
                example = _replay_example(row, case_id, REPLAY_CREATED_AT)
            except InvalidCase as error:
                dropped.append(Note(case_id, str(error)))
                continue
            case, messages, target = example
            problem = length_problem(messages, target, "reply", config.chat)
            if problem:
                dropped.append(Note(case_id, problem))
                continue
            kept.append(_item(case, messages, target, config))
        kept.sort(key=lambda item: item.case.id)  # the draw decides which rows, not their order in the file
        return kept, dropped

    def write_files(self, source: dict[str, Any], folder: Path, config: DatasetConfig) -> None:
        """Nothing to write: a chat example is its row."""

    def split_stats(self, rows: Iterable[dict[str, Any]], config: DatasetConfig) -> dict[str, Any]:
        return split_stats(rows, config)

    def extra_files(self, rows: dict[str, list[dict[str, Any]]],
                    config: DatasetConfig) -> dict[str, list[dict[str, Any]]]:
        """Each split in each of ``dataset.chat.formats``: ``{"train.alpaca": [...], "eval.alpaca": [...]}``,
        written as ``train.alpaca.jsonl`` and ``eval.alpaca.jsonl``."""
        return {f"{split}.{fmt}": format_rows(split_rows, fmt)
                for fmt in config.chat.formats for split, split_rows in rows.items()}


# ------------------------------------------------------------------------------------------- case rows


    # -- judging a candidate (tuneloop.tasks.chat_evaluation) ------------------------------------------------
    def validate(self, run: PipelineRun) -> dict[str, Any]:
        from tuneloop.tasks import chat_evaluation

        return chat_evaluation.validate(run)

    def regression(self, run: PipelineRun) -> dict[str, Any]:
        from tuneloop.tasks import chat_evaluation

        return chat_evaluation.regression(run)

    def suite_metrics(self, report: dict[str, Any]) -> dict[str, float]:
        from tuneloop.tasks import chat_evaluation

        return chat_evaluation.suite_metrics(report)

    def serving(self) -> Serving:
        """The chat pyfunc (conversations -> replies), its pip requirements and its params (``max_new_tokens``;
        ``with_usage``, which a server asks for to record each request's tokens)."""
        from tuneloop_trainer import CHAT_SERVING_REQUIREMENTS, serving_path, serving_signature

        return Serving(serving_path(self.trainer_task), list(CHAT_SERVING_REQUIREMENTS),
                       serving_signature(self.trainer_task), request_params={"with_usage": True})

    def request_input(self, value: Any) -> list[list[dict[str, Any]]]:
        """A conversation to answer (its messages, or ``{"messages": [...]}``), checked like a case's prompt: it
        ends with a user turn."""
        messages = value.get("messages") if isinstance(value, Mapping) else value
        checked = check_messages(messages, "input.messages")
        check_prompt_ends(checked, "input.messages")
        return [checked]

    def post_deploy_check(self, run: PipelineRun, dataset_id: str, deployed_version: str,
                          alias: str = "production") -> dict[str, Any]:
        from tuneloop.tasks import chat_evaluation

        return chat_evaluation.post_deploy_check(run, dataset_id, deployed_version, alias)

    def headline(self, gate_result: dict[str, Any]) -> str:
        from tuneloop.tasks import chat_evaluation

        return chat_evaluation.headline(gate_result)

    def flat_metrics(self, gate_result: dict[str, Any]) -> dict[str, float]:
        from tuneloop.tasks import chat_evaluation

        return chat_evaluation.flat_metrics(gate_result)

    def record_sections(self, record: dict[str, Any]) -> list[str]:
        from tuneloop.tasks import chat_evaluation

        return chat_evaluation.record_sections(record)

    def scoreboard(self, gate_result: dict[str, Any]) -> dict[str, Any]:
        from tuneloop.tasks import chat_evaluation

        return chat_evaluation.scoreboard(gate_result)

def _aliased(row: Mapping[str, Any], name: str) -> tuple[str, Any]:
    """(key used, value) of a field with several accepted names; two given that differ are refused."""
    present = [(key, row[key]) for key in _ALIASES[name] if row.get(key) is not None]
    for key, value in present[1:]:
        if value != present[0][1]:
            raise InvalidCase(present[0][0], f"{present[0][0]} and {key} are both given and differ")
    return present[0] if present else (_ALIASES[name][0], None)


def _conversation(row: Mapping[str, Any], output_key: str, output: Any,
                  limits: IngestLimits) -> tuple[list[dict[str, str]], str, Any]:
    """The prompt's messages, and the output (taken off the end of ``messages`` when not given apart)."""
    if row.get("messages") is not None and row.get("prompt") is not None:
        raise InvalidCase("prompt", "messages and prompt are both given: give the conversation once")
    if row.get("prompt") is None:
        if row.get("system") is not None:
            raise InvalidCase("system", "only with prompt; with messages, make the system message the first one")
        if row.get("messages") is None:
            raise InvalidCase("messages", "missing: give messages (or prompt)")
        messages = check_messages(row["messages"], "messages", max_chars=limits.max_text_chars)
        if output is None and messages and messages[-1]["role"] == "assistant":
            output_key, output = f"messages[{len(messages) - 1}].content", messages.pop()["content"]
        check_prompt_ends(messages, "messages")
        return messages, output_key, output
    messages = [{"role": "user", "content": _text(row["prompt"], "prompt", limits.max_text_chars)}]
    if row.get("system") is not None:
        messages.insert(0, {"role": "system", "content": _text(row["system"], "system", limits.max_text_chars)})
    return messages, output_key, output


def check_messages(value: Any, field: str, *, max_chars: int | None = None,
                   allow_weight: bool = False) -> list[dict[str, Any]]:
    """A conversation's messages, checked and copied (only ``role``, ``content`` and, when given, ``name``;
    ``weight`` 0 or 1 on assistant turns only with ``allow_weight``). Raises ``InvalidCase`` naming the message
    and its key, e.g. ``messages[2].role``."""
    if not isinstance(value, (list, tuple)):
        raise InvalidCase(field, f"must be a list of messages {{role, content}}, got {describe(value)}")
    if len(value) > MAX_MESSAGES:
        raise InvalidCase(field, f"{len(value)} messages, more than {MAX_MESSAGES}")
    known = MESSAGE_KEYS | {"weight"} if allow_weight else MESSAGE_KEYS
    messages: list[dict[str, Any]] = []
    for index, message in enumerate(value):
        where = f"{field}[{index}]"
        if not isinstance(message, Mapping):
            raise InvalidCase(where, f"must be an object {{role, content}}, got {describe(message)}")
        unknown = sorted(set(message) - known, key=str)
        if unknown:
            raise InvalidCase(f"{where}.{unknown[0]}",
                              f"unknown field of a message (known: {', '.join(sorted(known))})")
        role = message.get("role")
        if role not in ROLES:
            raise InvalidCase(f"{where}.role", f"must be one of {', '.join(ROLES)}, got {describe(role)}")
        if role == "system" and index > 0:
            raise InvalidCase(f"{where}.role", "a system message may only come first")
        checked = {"role": role, "content": _text(message.get("content"), f"{where}.content", max_chars)}
        if message.get("name") is not None:
            name = message["name"]
            if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
                raise InvalidCase(f"{where}.name", f"must be 1 to 64 letters, digits, _ or - (OpenAI's rule), got "
                                                   f"{describe(name)}")
            checked["name"] = name
        if "weight" in message:
            weight = message["weight"]
            if role != "assistant" or isinstance(weight, bool) or weight not in (0, 1):
                raise InvalidCase(f"{where}.weight", f"must be 0 or 1, on an assistant message only, got "
                                                     f"{describe(weight)}")
            checked["weight"] = int(weight)
        messages.append(checked)
    return messages


def check_prompt_ends(messages: list[dict[str, Any]], field: str) -> None:
    """A prompt holds a user turn and ends with one (the reply answers it)."""
    if not messages:
        raise InvalidCase(field, "needs at least one user turn before the reply")
    if messages[-1]["role"] != "user":
        raise InvalidCase(f"{field}[{len(messages) - 1}].role",
                          f"the conversation must end with a user turn before the reply, got {messages[-1]['role']} "
                          "(the reply goes in output, or last in messages when output is not given)")


def _text(value: Any, field: str, max_chars: int | None) -> str:
    if not isinstance(value, str):
        raise InvalidCase(field, f"must be a string, got {describe(value)}")
    if not value.strip():
        raise InvalidCase(field, f"empty ({value[:40]!r})")
    if max_chars is not None and len(value) > max_chars:
        raise InvalidCase(field, f"{len(value)} characters, longer than max_text_chars {max_chars}")
    return value


def _replies(row: Mapping[str, Any], output_key: str, output: Any, limits: IngestLimits) -> tuple[str, str | None]:
    """The output must be a string (empty only with an ideal response: the model said nothing); the ideal
    response, when given, must hold some text (use null for "not corrected yet")."""
    ideal_key, ideal = _aliased(row, "ideal")
    if output is None:
        raise InvalidCase("output", "missing: give output (or response, prediction), or end messages with the "
                                    "model's reply")
    if not isinstance(output, str):
        raise InvalidCase(output_key, f"must be a string, got {describe(output)}")
    if len(output) > limits.max_text_chars:
        raise InvalidCase(output_key, f"{len(output)} characters, longer than max_text_chars {limits.max_text_chars}")
    if ideal is not None:
        if not isinstance(ideal, str):
            raise InvalidCase(ideal_key, f"must be a string or null, got {describe(ideal)}")
        if not ideal.strip():
            raise InvalidCase(ideal_key, f"empty ({ideal[:40]!r}); use null for a case without an ideal response")
        if len(ideal) > limits.max_text_chars:
            raise InvalidCase(ideal_key, f"{len(ideal)} characters, longer than max_text_chars "
                                         f"{limits.max_text_chars}")
    elif not output.strip():
        raise InvalidCase(output_key, f"empty ({output[:40]!r}) and no ideal response given")
    return output, ideal


def check_rating(value: Any, field: str) -> int | None:
    """An integer 1 (bad) to 5 (good), or None (unrated)."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 5):
        return value
    raise InvalidCase(field, f"must be an integer from 1 to 5 or null, got {describe(value)}")


def check_name(value: Any, field: str) -> str | None:
    """A domain or task type: a non-empty string of at most ``MAX_NAME_CHARS`` characters, or None."""
    if value is None or (isinstance(value, str) and value.strip() and len(value) <= MAX_NAME_CHARS):
        return value
    raise InvalidCase(field, f"must be a non-empty string of at most {MAX_NAME_CHARS} characters or null, got "
                             f"{describe(value)}")


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


# ------------------------------------------------------------------------------------------------- export


def stored_conversation(payload: Any) -> tuple[list[dict[str, Any]], int | None, str | None, str | None]:
    """(prompt messages, rating, domain, task type) of a stored case's payload; ``InvalidCase`` when it is not
    what :meth:`ChatTask.parse_case` stores (e.g. a row stored before chat cases existed)."""
    if not isinstance(payload, Mapping):
        raise InvalidCase("payload", f"must be an object with messages, got {describe(payload)}")
    messages = check_messages(payload.get("messages"), "messages")
    check_prompt_ends(messages, "messages")
    return (messages, check_rating(payload.get("rating"), "rating"), check_name(payload.get("domain"), "domain"),
            check_name(payload.get("task_type"), "task_type"))


def _target(case: ErrorCase, rating: int | None, settings: ChatDatasetConfig) -> tuple[str | None, str]:
    """(training target, which it is): the correction, else the output a person rated at least ``min_rating``,
    else (None, "") - not a training example."""
    if case.correction is not None:
        return case.correction, "correction"
    if rating is not None and rating >= settings.min_rating:
        return case.prediction, "rated output"
    return None, ""


def length_problem(messages: list[dict[str, Any]], target: str, which: str,
                   settings: ChatDatasetConfig) -> str | None:
    """Why a prompt (its last user turn) or a target is too short to train on, or None (seed 004's rule)."""
    prompt = len(messages[-1]["content"].strip())
    if prompt < settings.min_prompt_chars:
        return (f"prompt too short: the last user turn has {prompt} characters < dataset.chat.min_prompt_chars "
                f"{settings.min_prompt_chars}")
    response = len(target.strip())
    if response < settings.min_response_chars:
        return (f"{which} too short: {response} characters < dataset.chat.min_response_chars "
                f"{settings.min_response_chars}")
    return None


def _filter_reason(case: ErrorCase, domain: str | None, task_type: str | None, settings: ChatDatasetConfig,
                   now: datetime) -> str | None:
    """Why the export's filters leave a case out (it stays new: a filter may change), or None."""
    for name, value, allowed in (("domain", domain, settings.domains), ("task_type", task_type, settings.task_types)):
        if allowed and value not in allowed:
            what = f"{name} {value!r}" if value is not None else f"no {name}"
            return f"{what} not in dataset.chat.{name}s {list(allowed)}"
    for field, minimum in sorted(settings.metadata_min.items()):
        value = case.metadata.get(field)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return (f"metadata {field!r} is {'missing' if value is None else 'not a number'}; "
                    f"dataset.chat.metadata_min asks for at least {minimum:g}")
        if value < minimum:
            return f"metadata {field!r} is {value:g}, below dataset.chat.metadata_min {minimum:g}"
    if settings.max_age_days is not None:
        age_days = (now - as_utc(case.created_at)).total_seconds() / 86400
        if age_days > settings.max_age_days:
            return (f"created {age_days:.1f} days before the export, more than dataset.chat.max_age_days "
                    f"{settings.max_age_days:g}")
    return None


def _item(case: ErrorCase, messages: list[dict[str, Any]], target: str, config: DatasetConfig) -> ExportItem:
    text = prompt_text(messages)
    system = [] if messages[0]["role"] == "system" or not config.chat.system_prompt else [
        {"role": "system", "content": config.chat.system_prompt}]
    turns = [{**m, "weight": m.get("weight", 0)} if m["role"] == "assistant" else dict(m) for m in messages]
    payload = case.payload or {}
    row: dict[str, Any] = {
        "id": case.id,
        "messages": [*system, *turns, {"role": "assistant", "content": target, "weight": 1}],
        "created_at": case.created_at.isoformat(),
        "model_version": case.model_version,
        "source": case.source,
        "domain": payload.get("domain"),
        "task_type": payload.get("task_type"),
        "rating": payload.get("rating"),
    }
    for name in config.slice_fields:
        if name not in FIXED_ROW_KEYS and name in case.metadata:
            row[name] = case.metadata[name]
    return ExportItem(case=case, key=sha256(f"{text}\n{normalize(target)}"), text=text, guard_key=sha256(text),
                      row=row)


# ------------------------------------------------------------------------------------------------- replay


def _read_replay(path: Path) -> list[dict[str, Any]]:
    """The replay file's rows: JSON objects with a unique id (a string or an integer)."""
    from tuneloop.datasets import DatasetError

    if not path.is_file():
        raise DatasetError(f"replay: dataset.replay_path {path} does not exist")
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"replay ({path}:{number})"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DatasetError(f"{where}: not valid JSON ({error.msg})") from error
        if not isinstance(row, dict):
            raise DatasetError(f"{where}: a row must be a JSON object {{id, messages}}")
        case_id = row.get("id")
        if isinstance(case_id, bool) or not isinstance(case_id, (str, int)) or str(case_id) in seen or (
                isinstance(case_id, str) and not case_id.strip()):
            raise DatasetError(f"{where}: missing or duplicate id {case_id!r}")
        seen.add(str(case_id))
        rows.append({**row, "id": str(case_id)})
    if not rows:
        raise DatasetError(f"replay: {path} holds no rows")
    return rows


def _replay_example(row: dict[str, Any], case_id: str,
                    created_at: datetime) -> tuple[ErrorCase, list[dict[str, Any]], str]:
    """A replay row as (synthetic consumed case, prompt messages, target); ``InvalidCase`` when it is not one.
    Earlier assistant turns keep a ``weight`` the row gives them (known-good words may be trained on)."""
    from tuneloop.store import ErrorCase

    messages = check_messages(row.get("messages"), "messages", allow_weight=True)
    if not messages or messages[-1]["role"] != "assistant":
        raise InvalidCase(f"messages[{len(messages) - 1}].role" if messages else "messages",
                          "must end with the assistant's reply (the training target)")
    final = messages.pop()
    if final.get("weight", 1) == 0:
        raise InvalidCase(f"messages[{len(messages)}].weight", "the final assistant turn has weight 0: nothing to "
                                                               "train on")
    check_prompt_ends(messages, "messages")
    rating = check_rating(row.get("rating"), "rating")
    domain = check_name(row.get("domain"), "domain")
    task_type = check_name(row.get("task_type"), "task_type")
    target = final["content"]
    payload = {"messages": messages, "rating": rating, "domain": domain, "task_type": task_type}
    metadata = {k: v for k, v in row.items() if k not in ("id", "messages", "rating", "domain", "task_type")}
    case = ErrorCase(id=case_id, created_at=created_at, source="replay", model_version=None, audio_uri=None,
                     audio_hash=None, prediction=target, correction=target, error_types=(), error_score=None,
                     annotator=None, metadata=metadata, content_hash=sha256(_canonical({**payload, "output": target})),
                     state="consumed", payload=payload)
    return case, messages, target


# ------------------------------------------------------------------------------------------ formats, stats


def format_rows(rows: Iterable[Mapping[str, Any]], fmt: str) -> list[dict[str, Any]]:
    """Training rows in another shape:

    - ``openai``: ``{"id", "messages"}``, OpenAI's fine-tuning upload shape (weights kept) plus the id;
    - ``alpaca``: ``{"id", "instruction": <last user turn>, "input": <earlier turns as "role: content" lines, or
      "">, "output": <target>, "system"?: <system message>}``;
    - ``chatml``: ``{"id", "text": "<|im_start|>role\\ncontent<|im_end|>\\n" per message, the target included}``;
    - ``raw``: the rows unchanged.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown chat format {fmt!r}; known: {', '.join(FORMATS)}")
    shape = {"openai": _openai, "alpaca": _alpaca, "chatml": _chatml, "raw": dict}[fmt]
    return [shape(row) for row in rows]


def _openai(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "messages": row["messages"]}


def _alpaca(row: Mapping[str, Any]) -> dict[str, Any]:
    system = [m["content"] for m in row["messages"] if m["role"] == "system"]
    *prompt, target = [m for m in row["messages"] if m["role"] != "system"]
    *earlier, instruction = prompt
    shaped = {"id": row["id"], "instruction": instruction["content"],
              "input": "\n".join(f"{m['role']}: {m['content']}" for m in earlier), "output": target["content"]}
    if system:
        shaped["system"] = system[0]
    return shaped


def _chatml(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": row["id"],
            "text": "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in row["messages"])}


def split_stats(rows: Iterable[dict[str, Any]], config: DatasetConfig) -> dict[str, Any]:
    """What the manifest reports about one split, in one pass: cases; counts per domain, task type and rating
    (``unrated`` too); characters of the prompts (every message before the final reply, system included) and of
    the replies; a tokenizer-free token estimate; rows per slice field and model version."""
    cases = 0
    counters: dict[str, Counter[str]] = {name: Counter() for name in ("domain", "task_type")}
    slices: dict[str, Counter[str]] = {name: Counter() for name in (*config.slice_fields, "model_version")}
    ratings: Counter[str] = Counter()
    prompt_chars, response_chars = _Lengths(), _Lengths()
    tokens = {"prompt": 0, "response": 0}
    for row in rows:
        cases += 1
        *prompt, reply = row["messages"]
        prompt_chars.add(sum(len(m["content"]) for m in prompt))
        response_chars.add(len(reply["content"]))
        tokens["prompt"] += sum(_token_count(m["content"]) for m in prompt)
        tokens["response"] += _token_count(reply["content"])
        ratings[str(row["rating"]) if row.get("rating") is not None else "unrated"] += 1
        for name, counter in (*counters.items(), *slices.items()):
            if row.get(name) is not None:
                counter[str(row[name])] += 1
    return {
        "cases": cases,
        "domains": dict(sorted(counters["domain"].items())),
        "task_types": dict(sorted(counters["task_type"].items())),
        "ratings": {key: ratings.get(key, 0) for key in (*_RATINGS, "unrated")},
        "prompt_chars": prompt_chars.summary(),
        "response_chars": response_chars.summary(),
        "tokens": {**tokens, "method": TOKEN_METHOD},
        "slices": {name: dict(sorted(counter.items())) for name, counter in slices.items()},
    }


class _Lengths:
    """Min, max, total and mean of sizes seen one at a time."""

    def __init__(self) -> None:
        self.count, self.total, self.low, self.high = 0, 0, 0, 0

    def add(self, size: int) -> None:
        self.low = size if self.count == 0 else min(self.low, size)
        self.high = max(self.high, size)
        self.count, self.total = self.count + 1, self.total + size

    def summary(self) -> dict[str, float | int]:
        return {"min": self.low, "max": self.high, "total": self.total,
                "mean": round(self.total / self.count, 3) if self.count else 0.0}


def _token_count(text: str) -> int:
    return len(_TOKENS.findall(text))


TASK = ChatTask()
