"""The chat task: every row rule as a rule (hypothesis generates valid conversations and single corruptions of
them), the export's choice of training target, its filters and length rules, replay, formats and statistics.

No Airflow and no database: store cases are built as ``ErrorCase`` objects directly.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings
from pydantic import ValidationError

from tuneloop.config import ChatDatasetConfig, DatasetConfig
from tuneloop.datasets import REPLAY_CREATED_AT, REPLAY_PREFIX, DatasetError
from tuneloop.intake import IngestLimits, InvalidCase, sha256
from tuneloop.store import ErrorCase
from tuneloop.tasks import task_for
from tuneloop.tasks.chat import MAX_MESSAGES, MESSAGE_KEYS, TASK, TOKEN_METHOD, format_rows, normalize, prompt_text

NOW = datetime(2025, 6, 1, tzinfo=UTC)
LIMITS = IngestLimits(max_text_chars=200)
CONFIG = DatasetConfig(slice_fields=("lang", "source"))
PROPERTY = settings(max_examples=200, deadline=None)


def parse(row: dict):
    return TASK.parse_case(row, base_dir="/nowhere", default_source="tests", now=NOW, limits=LIMITS)


def refusal(row: dict) -> InvalidCase:
    with pytest.raises(InvalidCase) as raised:
        parse(row)
    return raised.value


# ---------------------------------------------------------------------------------------------- strategies

WORDS = st.sampled_from(["Hello", "world", "what", "is", "the", "capital", "of", "France", "?", "Straße", "ﬁle",
                         "naïve", "1,000", "日本"])
TEXT = st.lists(WORDS, min_size=1, max_size=6).map(" ".join)  # never empty, never only whitespace
NAMES = st.none() | st.text(alphabet="abcdefghij_-XYZ0123456789", min_size=1, max_size=12)
LABELS = st.none() | st.sampled_from(["support", "billing", "code", "qa", "summary"])


@st.composite
def conversations(draw) -> list[dict]:
    """A valid prompt: an optional system message, then user/assistant turns ending with a user turn."""
    messages = [{"role": "system", "content": draw(TEXT)}] if draw(st.booleans()) else []
    roles = [*draw(st.lists(st.sampled_from(["user", "assistant"]), max_size=5)), "user"]
    for role in roles:
        message = {"role": role, "content": draw(TEXT)}
        name = draw(NAMES)
        if name is not None:
            message["name"] = name
        messages.append(message)
    return messages


@st.composite
def valid_rows(draw) -> tuple[dict, list[dict]]:
    """(row, the prompt it describes), in one of the accepted shapes."""
    messages = draw(conversations())
    output = draw(TEXT)
    row: dict = {"ideal": draw(st.none() | TEXT), "rating": draw(st.none() | st.integers(1, 5)),
                 "domain": draw(LABELS), "task_type": draw(LABELS)}
    shape = draw(st.sampled_from(["messages", "reply last", "prompt"]))
    simple = [m["role"] for m in messages] in (["user"], ["system", "user"]) and "name" not in messages[-1]
    if shape == "prompt" and simple:
        row |= {"prompt": messages[-1]["content"], "output": output}
        if messages[0]["role"] == "system":
            row["system"] = messages[0]["content"]
    elif shape == "reply last":
        row |= {"messages": [*messages, {"role": "assistant", "content": output}]}
    else:
        row |= {draw(st.sampled_from(["output", "response", "prediction"])): output, "messages": messages}
    return {k: v for k, v in row.items() if v is not None or draw(st.booleans())}, messages


@given(valid_rows())
@PROPERTY
def test_any_valid_case_parses_and_round_trips_through_its_payload(case):
    row, messages = case
    draft = parse(row)
    output = row.get("output", row.get("response", row.get("prediction")))
    if output is None:
        output = row["messages"][-1]["content"]
    assert draft.payload == {"messages": messages, "rating": row.get("rating"), "domain": row.get("domain"),
                             "task_type": row.get("task_type")}
    assert (draft.prediction, draft.correction) == (output, row.get("ideal"))
    assert (draft.audio_uri, draft.audio_hash, draft.source, draft.created_at) == (None, None, "tests", NOW)
    assert draft.id == draft.content_hash[:32] and parse(json.loads(json.dumps(row))) == draft
    # the same case in the other shape is the same case
    other = {k: v for k, v in row.items() if k not in ("messages", "prompt", "system", "output", "response",
                                                       "prediction")}
    assert parse(other | {"messages": [*messages, {"role": "assistant", "content": output}]}) == draft
    assert parse(other | {"messages": messages, "output": output}).content_hash == draft.content_hash


def test_a_new_judgement_of_the_same_conversation_is_a_new_case():
    row = {"prompt": "What is the capital of France?", "output": "Paris."}
    hashes = {parse(row | change).content_hash for change in (
        {}, {"rating": 5}, {"ideal": "Paris is the capital."}, {"domain": "geo"}, {"task_type": "qa"},
        {"output": "paris."})}
    assert len(hashes) == 6
    assert parse(row | {"metadata": {"team": "a"}}).content_hash == parse(row).content_hash  # metadata is not


LONG = "x" * (LIMITS.max_text_chars + 1)
BAD_ROLES = st.sampled_from(["System", "tool", "function", "", "bot"]) | st.integers() | st.none() | st.lists(
    st.just("user"), max_size=1)
BAD_TEXT = st.sampled_from(["", " ", "\n\t ", LONG]) | st.integers() | st.none() | st.lists(TEXT, max_size=2) \
    | st.booleans()
OUTPUT_KEYS = ("output", "response", "prediction")
IDEAL_KEYS = ("ideal", "correction", "ideal_response", "corrected_response")


@st.composite
def corrupted_rows(draw) -> tuple[dict, str]:
    """A valid row (messages, output and ideal apart) with exactly one thing wrong, and the field to blame."""
    messages = draw(conversations())
    row: dict = {"messages": messages, "output": draw(TEXT), "ideal": draw(TEXT)}
    index = draw(st.integers(0, len(messages) - 1))
    kind = draw(st.sampled_from(["role", "system later", "content", "name", "unknown key", "not an object",
                                 "too many", "ends with assistant", "no user turn", "output and prompt", "alias",
                                 "rating", "label", "output type", "no output", "empty ideal", "unknown field",
                                 "system with messages"]))
    where = f"messages[{index}]"
    if kind == "role":
        messages[index]["role"] = draw(BAD_ROLES)
        return row, f"{where}.role"
    if kind == "system later":
        position = draw(st.integers(1, len(messages)))
        messages.insert(position, {"role": "system", "content": draw(TEXT)})
        return row, f"messages[{position}].role"
    if kind == "content":
        messages[index]["content"] = draw(BAD_TEXT)
        return row, f"{where}.content"
    if kind == "name":
        messages[index]["name"] = draw(st.sampled_from(["", "two words", "x" * 65, "é"]) | st.integers())
        return row, f"{where}.name"
    if kind == "unknown key":
        key = draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8).filter(
            lambda k: k not in MESSAGE_KEYS))
        messages[index][key] = draw(TEXT)
        return row, f"{where}.{key}"
    if kind == "not an object":
        messages[index] = draw(TEXT | st.integers() | st.lists(st.just("user")))
        return row, where
    if kind == "too many":
        row["messages"] = [messages[-1]] * (MAX_MESSAGES + 1)
        return row, "messages"
    if kind == "ends with assistant":
        messages.append({"role": "assistant", "content": draw(TEXT)})
        return row, f"messages[{len(messages) - 1}].role"
    if kind == "no user turn":
        row["messages"] = [m for m in messages if m["role"] == "system"]
        return row, "messages[0].role" if row["messages"] else "messages"
    if kind == "output and prompt":
        row["prompt"] = draw(TEXT)
        return row, "prompt"
    if kind == "system with messages":
        row["system"] = draw(TEXT)
        return row, "system"
    if kind == "alias":
        keys = OUTPUT_KEYS if draw(st.booleans()) else IDEAL_KEYS
        first, second = sorted(draw(st.lists(st.sampled_from(keys), min_size=2, max_size=2, unique=True)),
                               key=keys.index)
        value = draw(TEXT)
        row.pop("output" if keys is OUTPUT_KEYS else "ideal")
        row |= {first: value, second: value + " but different"}
        return row, first
    if kind == "rating":
        row["rating"] = draw(st.integers().filter(lambda r: not 1 <= r <= 5) | st.booleans() | st.sampled_from(
            [4.0, 4.5, "5", [5]]))
        return row, "rating"
    if kind == "label":
        field = draw(st.sampled_from(["domain", "task_type"]))
        row[field] = draw(st.sampled_from(["", "  ", "d" * 201]) | st.integers() | st.lists(TEXT, max_size=1))
        return row, field
    if kind == "output type":
        key = draw(st.sampled_from(OUTPUT_KEYS))
        row.pop("output")
        row[key] = draw(st.integers() | st.lists(TEXT, max_size=1) | st.just(LONG) | st.booleans())
        return row, key
    if kind == "no output":
        row.pop("output")
        return row, "output"
    if kind == "empty ideal":
        key = draw(st.sampled_from(IDEAL_KEYS))
        row.pop("ideal")
        row[key] = draw(st.sampled_from(["", " ", "\n", LONG]) | st.integers() | st.lists(TEXT, max_size=1))
        return row, key
    key = draw(st.sampled_from(["colour", "Messages", "reply", "weight", "roles"]))
    row[key] = 1
    return row, key


@given(corrupted_rows())
@PROPERTY
def test_any_single_corruption_is_refused_naming_where_it_is(case):
    row, field = case
    error = refusal(row)
    assert error.field == field, (error, row)
    assert error.reason.strip()


AROUND_THE_LIMIT = st.integers(1, 2 * LIMITS.max_text_chars) | st.integers(-1, 1).map(LIMITS.max_text_chars.__add__)


@given(size=AROUND_THE_LIMIT, where=st.sampled_from(
    ["messages[0].content", "prompt", "system", "output", "response", "ideal", "corrected_response"]))
@PROPERTY
def test_every_text_holds_up_to_max_text_chars(size, where):
    text = "y" * size
    row = {"messages": [{"role": "user", "content": "hi"}], "output": "a"}
    if where == "messages[0].content":
        row["messages"][0]["content"] = text
    elif where in ("prompt", "system"):
        row = {"prompt": "hi", "output": "a", where: text}
    elif where in ("output", "response"):
        row = {"messages": row["messages"], where: text}
    else:
        row[where] = text
    if size <= LIMITS.max_text_chars:
        parse(row)
    else:
        error = refusal(row)
        assert (error.field, error.reason) == (where, f"{size} characters, longer than max_text_chars 200")


@given(rating=st.integers(-10, 10) | st.integers())
@PROPERTY
def test_a_rating_is_an_integer_from_one_to_five(rating):
    row = {"prompt": "hi", "output": "a", "rating": rating}
    if 1 <= rating <= 5:
        assert parse(row).payload["rating"] == rating
    else:
        assert refusal(row).field == "rating"


@pytest.mark.parametrize(("row", "field", "reason"), [
    ({"messages": [{"role": "user", "content": "hi"}], "output": "", "ideal": None}, "output", "empty"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a"}], "response": "a",
      "output": "a"}, "messages[1].role", "the conversation must end with a user turn"),
    ({"messages": [{"role": "user", "content": "\ud800"}], "output": "a"}, "messages[0].content", "text is not"),
    ({"messages": [{"role": "user", "content": "hi"}], "output": "a", "created_at": "2999-01-01"}, "created_at",
     "2999"),
    ({"prompt": "hi", "system": "", "output": "a"}, "system", "empty"),
])
def test_refusals_through_the_common_rules(row, field, reason):
    error = refusal(row)
    assert (error.field, error.reason[: len(reason)]) == (field, reason)


def test_an_empty_output_is_a_case_when_a_person_wrote_the_reply():
    draft = parse({"messages": [{"role": "user", "content": "hi"}], "output": "", "ideal": "Hello!",
                   "id": "c1", "annotator": "ann", "error_types": ["refusal"]})
    assert (draft.id, draft.prediction, draft.correction, draft.error_types) == ("c1", "", "Hello!", ("refusal",))


# ------------------------------------------------------------------------------------------- identities


@pytest.mark.parametrize(("text", "normal"), [("  Hello\n\tWORLD  ", "hello world"), ("ﬁle", "file"),
                                              ("Straße", "strasse"), ("Ｆｕｌｌ width", "full width"), ("", "")])
def test_normalize(text, normal):
    assert normalize(text) == normal


def test_prompt_text_keeps_roles_and_turns_apart():
    user = prompt_text([{"role": "user", "content": "hi"}])
    assert user == "user: hi" != prompt_text([{"role": "assistant", "content": "hi"}])
    assert prompt_text([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]) != prompt_text(
        [{"role": "user", "content": "a user: b"}])


# ------------------------------------------------------------------------------------------------- screen

PROMPT = "What is the capital of France?"
ANSWER = "The capital of France is Paris."


def case(case_id: str = "c1", *, messages: list[dict] | None = None, output: str = "It is Lyon, I believe.",
         correction: str | None = ANSWER, rating: int | None = None, domain: str | None = "geo",
         task_type: str | None = "qa", created_at: datetime = NOW - timedelta(days=1),
         metadata: dict | None = None, payload: object = ...) -> ErrorCase:
    if payload is ...:
        payload = {"messages": messages or [{"role": "user", "content": PROMPT}], "rating": rating,
                   "domain": domain, "task_type": task_type}
    return ErrorCase(id=case_id, created_at=created_at, source="production", model_version="7", audio_uri=None,
                     audio_hash=None, prediction=output, correction=correction, error_types=(), error_score=None,
                     annotator=None, metadata=metadata or {}, content_hash=sha256(case_id), state="new",
                     payload=payload)


def chat_config(**chat) -> DatasetConfig:
    return CONFIG.model_copy(update={"chat": ChatDatasetConfig(**chat)})


def screen(cases, config: DatasetConfig = CONFIG):
    return TASK.screen(cases, config, None, NOW)


@given(correction=st.none() | st.just(ANSWER), rating=st.none() | st.integers(1, 5), min_rating=st.integers(1, 5))
@PROPERTY
def test_the_target_is_the_correction_else_a_well_rated_output(correction, rating, min_rating):
    output = "A reply a person may have rated well."
    result = screen([case(correction=correction, rating=rating, output=output)], chat_config(min_rating=min_rating))
    if correction is not None or (rating is not None and rating >= min_rating):
        [item] = result.items
        assert item.row["messages"][-1] == {"role": "assistant", "content": correction or output, "weight": 1}
        assert not result.filtered and not result.quarantined
    else:
        [note] = result.filtered
        assert note.reason.startswith("no correction and rating below min_rating") and not result.items
        assert f"dataset.chat.min_rating {min_rating}" in note.reason


@pytest.mark.parametrize(("setting", "value", "kept", "left_out"), [
    ("domains", ("geo", "math"), {"domain": "math"}, {"domain": "code"}),
    ("domains", ("geo",), {}, {"domain": None}),
    ("task_types", ("qa",), {"task_type": "qa"}, {"task_type": "chitchat"}),
    ("metadata_min", {"engagement_rate": 0.06}, {"metadata": {"engagement_rate": 0.06}},
     {"metadata": {"engagement_rate": 0.05}}),
    ("metadata_min", {"engagement_rate": 0.06}, {"metadata": {"engagement_rate": 1}},
     {"metadata": {"engagement_rate": "high"}}),
    ("metadata_min", {"engagement_rate": 0.06}, {"metadata": {"engagement_rate": 0.5}}, {"metadata": {}}),
    ("max_age_days", 30, {"created_at": NOW - timedelta(days=29.9)}, {"created_at": NOW - timedelta(days=30.1)}),
])
def test_each_filter_leaves_cases_new_with_a_reason_naming_its_setting(setting, value, kept, left_out):
    result = screen([case("kept", **kept), case("out", **left_out)], chat_config(**{setting: value}))
    assert [item.case.id for item in result.items] == ["kept"] and not result.quarantined
    [note] = result.filtered
    assert note.id == "out" and f"dataset.chat.{setting}" in note.reason, note


@given(prompt=st.integers(1, 30), target=st.integers(1, 40), min_prompt=st.integers(0, 30),
       min_response=st.integers(0, 40), rated=st.booleans())
@PROPERTY
def test_too_short_prompts_and_targets_are_quarantined(prompt, target, min_prompt, min_response, rated):
    reply = " " + "r" * target + " \n"  # surrounding whitespace does not count
    subject = case(messages=[{"role": "user", "content": "\t" + "p" * prompt + "  "}],
                   correction=None if rated else reply, output=reply, rating=5 if rated else None)
    result = screen([subject], chat_config(min_prompt_chars=min_prompt, min_response_chars=min_response))
    if prompt < min_prompt or target < min_response:
        [note] = result.quarantined
        setting = "min_prompt_chars" if prompt < min_prompt else "min_response_chars"
        assert f"dataset.chat.{setting}" in note.reason and not result.items
        assert note.reason.startswith("prompt" if prompt < min_prompt else "rated output" if rated else "correction")
    else:
        assert len(result.items) == 1 and not result.quarantined


@pytest.mark.parametrize(("payload", "reason"), [
    (None, "payload: must be an object"),
    ({"messages": []}, "messages: needs at least one user turn"),
    ({"messages": [{"role": "robot", "content": "hi there, robot"}]}, "messages[0].role: must be one of"),
    ({"messages": [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": ANSWER}]},
     "messages[1].role: the conversation must end with a user turn"),
    ({"messages": [{"role": "user", "content": PROMPT}], "rating": 9}, "rating: must be an integer"),
    ({"messages": [{"role": "user", "content": PROMPT, "weight": 1}]}, "messages[0].weight: unknown"),
])
def test_broken_stored_cases_are_quarantined(payload, reason):
    result = screen([case(payload=payload), case("fine")])
    [note] = result.quarantined
    assert note.id == "c1" and note.reason.startswith(f"stored payload is not a chat case: {reason}"), note.reason
    assert [item.case.id for item in result.items] == ["fine"]


def test_an_empty_stored_correction_is_quarantined():
    [note] = screen([case(correction="  ")]).quarantined
    assert note.reason.startswith("correction is empty")


SPACING = st.sampled_from([" ", "  ", "\n", "\t", " \u00a0"])


@st.composite
def respelled(draw, text: str) -> str:
    """``text`` with each letter's case and each space's kind drawn anew, maybe padded."""
    letters = [draw(st.sampled_from([c.lower(), c.upper()])) for c in text]
    spaced = "".join(draw(SPACING) if c == " " else c for c in letters)
    return draw(st.sampled_from(["", " "])) + spaced + draw(st.sampled_from(["", "\n"]))


@given(prompt=respelled(PROMPT), target=respelled(ANSWER))
@PROPERTY
def test_prompt_and_response_differing_in_case_or_spacing_are_one_example(prompt, target):
    first, second = screen([case(), case("c2", messages=[{"role": "user", "content": prompt}],
                                         correction=target)]).items
    assert (first.key, first.text, first.guard_key) == (second.key, second.text, second.guard_key)
    assert first.text == f"user: {normalize(PROMPT)}" and first.guard_key == sha256(first.text)
    other = screen([case("c3", correction=ANSWER + " Not Lyon.")]).items[0]
    assert other.key != first.key and other.text == first.text  # same prompt: the held-back rule sees it


def test_rows_weigh_only_the_target_and_keep_the_cases_fields():
    conversation = [{"role": "user", "content": "Plan a trip to France.", "name": "ann"},
                    {"role": "assistant", "content": "Where to?"},
                    {"role": "user", "content": "What is the capital?"}]
    subject = case(messages=conversation, rating=2, metadata={"lang": "en", "source": "not this", "other": 1})
    [item] = screen([subject], chat_config(system_prompt="You are a travel agent.")).items
    assert item.row == {
        "id": "c1",
        "messages": [{"role": "system", "content": "You are a travel agent."},
                     {"role": "user", "content": "Plan a trip to France.", "name": "ann"},
                     {"role": "assistant", "content": "Where to?", "weight": 0},
                     {"role": "user", "content": "What is the capital?"},
                     {"role": "assistant", "content": ANSWER, "weight": 1}],
        "created_at": (NOW - timedelta(days=1)).isoformat(), "model_version": "7", "source": "production",
        "domain": "geo", "task_type": "qa", "rating": 2, "lang": "en",
    }
    assert item.case is subject and not item.files
    assert item.text == prompt_text(conversation)  # the case's own conversation: not the configured system prompt
    own = case(messages=[{"role": "system", "content": "Be brief."}, *conversation])
    [item] = screen([own], chat_config(system_prompt="You are a travel agent.")).items
    assert [m["content"] for m in item.row["messages"] if m["role"] == "system"] == ["Be brief."]


def test_the_task_is_found_by_name():
    assert task_for("chat") is TASK and (TASK.name, TASK.trainer_task) == ("chat", "chat")
    assert not TASK.needs_correction  # the export reads uncorrected cases too: a well-rated output trains


# ------------------------------------------------------------------------------------------------- replay


def replay_row(row_id, *, prompt: str = PROMPT, answer: str = ANSWER, **extra) -> dict:
    return {"id": row_id, "messages": [{"role": "user", "content": prompt},
                                       {"role": "assistant", "content": answer, "weight": 1}], **extra}


@pytest.fixture
def replay_file(tmp_path):
    rows = [replay_row(f"good{i}", prompt=f"{PROMPT} ({i})") for i in range(6)] + [
        replay_row("short", answer="Paris."),
        {"id": "user last", "messages": [{"role": "user", "content": PROMPT}]},
        {"id": "bad role", "messages": [{"role": "robot", "content": PROMPT}, {"role": "assistant",
                                                                               "content": ANSWER}]},
        replay_row("unweighted", messages=[{"role": "user", "content": PROMPT},
                                           {"role": "assistant", "content": ANSWER, "weight": 0}]),
        replay_row("rated", rating=7),
        {"id": 42, "messages": [{"role": "system", "content": "Be kind."},
                                {"role": "user", "content": "Say something nice."},
                                {"role": "assistant", "content": "You are doing great.", "weight": 1},
                                {"role": "user", "content": "And once more, please."},
                                {"role": "assistant", "content": "You are doing great, again."}],
         "domain": "smalltalk", "lang": "en", "created_at": "2020-01-01T00:00:00+00:00"},
    ]
    path = tmp_path / "replay.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows) + "\n")
    return path


def test_replay_checks_every_row_like_a_case_and_drops_bad_ones_with_reasons(replay_file):
    items, dropped = TASK.replay(CONFIG.model_copy(update={"replay_path": replay_file}))
    assert [item.case.id for item in items] == sorted([f"{REPLAY_PREFIX}good{i}" for i in range(6)]
                                                      + [f"{REPLAY_PREFIX}42"])
    reasons = {note.id.removeprefix(REPLAY_PREFIX): note.reason for note in dropped}
    assert set(reasons) == {"short", "user last", "bad role", "unweighted", "rated"}
    assert reasons["short"].startswith("reply too short: 6 characters < dataset.chat.min_response_chars 20")
    assert reasons["user last"].startswith("messages[0].role: must end with the assistant's reply")
    assert reasons["bad role"].startswith("messages[0].role: must be one of")
    assert reasons["unweighted"].startswith("messages[1].weight: the final assistant turn has weight 0")
    assert reasons["rated"].startswith("rating: must be an integer")
    nice = next(item for item in items if item.case.id == "replay:42")
    assert (nice.case.state, nice.case.created_at, nice.case.source) == ("consumed", REPLAY_CREATED_AT, "replay")
    assert nice.row["messages"][2] == {"role": "assistant", "content": "You are doing great.", "weight": 1}
    assert nice.row["messages"][-1] == {"role": "assistant", "content": "You are doing great, again.", "weight": 1}
    assert (nice.row["domain"], nice.row["lang"], nice.row["created_at"]) == ("smalltalk", "en",
                                                                            REPLAY_CREATED_AT.isoformat())
    assert nice.text == prompt_text([{"role": "system", "content": "Be kind."},
                                     {"role": "user", "content": "Say something nice."},
                                     {"role": "assistant", "content": "You are doing great."},
                                     {"role": "user", "content": "And once more, please."}])


def test_replay_draws_are_seeded(replay_file):
    def draw(seed: int) -> list[str]:
        items, dropped = TASK.replay(CONFIG.model_copy(update={"replay_path": replay_file, "replay_size": 4,
                                                               "replay_seed": seed}))
        assert len(items) + len(dropped) == 4
        return [item.case.id for item in items] + [note.id for note in dropped]

    assert draw(1) == draw(1) and len({tuple(sorted(draw(seed))) for seed in range(8)}) > 1
    assert TASK.replay(CONFIG) == ([], [])


@pytest.mark.parametrize(("content", "reason"), [
    (None, "does not exist"), ("not json\n", "not valid JSON"), ("[1]\n", "must be a JSON object"),
    ('{"messages": []}\n', "missing or duplicate id"), ('{"id": 1}\n{"id": "1"}\n', "missing or duplicate id"),
    ("\n", "holds no rows"),
])
def test_a_replay_file_that_is_not_one_fails_the_export(tmp_path, content, reason):
    path = tmp_path / "replay.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DatasetError, match=reason):
        TASK.replay(CONFIG.model_copy(update={"replay_path": path}))


# ------------------------------------------------------------------------------------------ formats, stats

ROW = {"id": "c9", "messages": [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "Hi!"},
                                {"role": "assistant", "content": "Hello.", "weight": 0},
                                {"role": "user", "content": "Capital of France?"},
                                {"role": "assistant", "content": "Paris.", "weight": 1}],
       "created_at": "2025-05-31T00:00:00+00:00", "model_version": "7", "source": "production", "domain": "geo",
       "task_type": "qa", "rating": None, "lang": "en"}


def test_formats_of_a_multi_turn_conversation_with_a_system_prompt():
    assert format_rows([ROW], "openai") == [{"id": "c9", "messages": ROW["messages"]}]
    assert format_rows([ROW], "alpaca") == [{"id": "c9", "instruction": "Capital of France?",
                                             "input": "user: Hi!\nassistant: Hello.", "output": "Paris.",
                                             "system": "Be brief."}]
    assert format_rows([ROW], "chatml") == [{"id": "c9", "text": (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nCapital of France?<|im_end|>\n"
        "<|im_start|>assistant\nParis.<|im_end|>\n")}]
    assert format_rows([ROW], "raw") == [ROW]
    single = {"id": "s", "messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}
    assert format_rows([single], "alpaca") == [{"id": "s", "instruction": "Q", "input": "", "output": "A"}]
    with pytest.raises(ValueError, match="unknown chat format 'sharegpt'"):
        format_rows([ROW], "sharegpt")


def test_extra_files_hold_each_split_in_each_configured_format():
    rows = {"train": [ROW], "eval": []}
    extra = TASK.extra_files(rows, chat_config(formats=("alpaca", "chatml")))
    assert sorted(extra) == ["eval.alpaca", "eval.chatml", "train.alpaca", "train.chatml"]
    assert extra["train.alpaca"] == format_rows([ROW], "alpaca") and extra["eval.chatml"] == []
    assert sorted(TASK.extra_files(rows, CONFIG)) == ["eval.openai", "train.openai"]  # the default
    assert TASK.extra_files(rows, chat_config(formats=())) == {}


def test_split_stats_of_a_small_split():
    second = {"id": "d", "messages": [{"role": "user", "content": "Add 2 and 2, please."},
                                      {"role": "assistant", "content": "2 + 2 = 4", "weight": 1}],
              "model_version": "8", "domain": "math", "task_type": "qa", "rating": 5, "lang": "de"}
    third = {**second, "id": "e", "domain": None, "rating": 5, "lang": None}
    stats = TASK.split_stats([ROW, second, third], CONFIG)
    assert stats == {
        "cases": 3,
        "domains": {"geo": 1, "math": 1},
        "task_types": {"qa": 3},
        "ratings": {"1": 0, "2": 0, "3": 0, "4": 0, "5": 2, "unrated": 1},
        # prompts: 9 + 3 + 6 + 18 = 36 characters, then 20 and 20; replies: 6, 9, 9
        "prompt_chars": {"min": 20, "max": 36, "mean": 25.333, "total": 76},
        "response_chars": {"min": 6, "max": 9, "mean": 8.0, "total": 24},
        # prompts: Be brief . | Hi ! | Hello . | Capital of France ? = 11; Add 2 and 2 , please . = 7 (twice)
        # replies: Paris . = 2; 2 + 2 = 4 = 5 (twice)
        "tokens": {"prompt": 25, "response": 12, "method": TOKEN_METHOD},
        "slices": {"lang": {"de": 1, "en": 1}, "source": {"production": 1}, "model_version": {"7": 1, "8": 2}},
    }
    assert json.dumps(stats, sort_keys=True) and TASK.split_stats([], CONFIG)["prompt_chars"] == {
        "min": 0, "max": 0, "mean": 0.0, "total": 0}


# ------------------------------------------------------------------------------------------------- config


def test_the_chat_settings_are_plain_json_and_checked():
    config = DatasetConfig(chat={"formats": ["alpaca", "raw"], "metadata_min": {"engagement_rate": 0.06},
                                 "max_age_days": 30})
    dumped = config.model_dump(mode="json")["chat"]
    assert dumped == {"formats": ["alpaca", "raw"], "min_rating": 4, "domains": [], "task_types": [],
                      "metadata_min": {"engagement_rate": 0.06}, "max_age_days": 30.0, "min_prompt_chars": 10,
                      "min_response_chars": 20, "system_prompt": None}
    assert DatasetConfig.model_validate(config.model_dump(mode="json")) == config
    for bad in ({"formats": ["sharegpt"]}, {"min_rating": 6}, {"max_age_days": 0}, {"min_prompt_chars": -1},
                {"colour": 1}):
        with pytest.raises(ValidationError):
            DatasetConfig(chat=bad)
