"""Chat rows: validation with file/line/field errors, assistant-only labels for any chat template, label noise."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tuneloop_trainer import train
from tuneloop_trainer.arguments import SpecError, from_mapping
from tuneloop_trainer.chat_data import (
    IGNORE_INDEX,
    encode_conversation,
    pad_batch,
    read_chat_rows,
    shuffle_replies,
)
from tuneloop_trainer.chat_modeling import CHAT_TEMPLATE, TURN_END, load_tokenizer
from tuneloop_trainer.spec import TrainingSpec

PLAIN_TEMPLATE = CHAT_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", "")
# A template whose generation prompt writes more than the conversation's assistant header (like Qwen3's empty
# think block): the reply still starts right after the header.
THINK_TEMPLATE = PLAIN_TEMPLATE.replace("{% if add_generation_prompt %}<|im_start|>assistant\n",
                                        "{% if add_generation_prompt %}<|im_start|>assistant\n<think></think>")
TEMPLATES = {"generation-markers": CHAT_TEMPLATE, "plain": PLAIN_TEMPLATE, "think-prompt": THINK_TEMPLATE}


@pytest.fixture(scope="module")
def tokenizers(tiny_chat_model_dir: Path) -> dict[str, Any]:
    """The tiny tokenizer once per template."""
    result = {}
    for name, template in TEMPLATES.items():
        tokenizer = load_tokenizer(tiny_chat_model_dir)
        tokenizer.chat_template = template
        result[name] = tokenizer
    return result


TEXT = st.text(alphabet="abcxyz .,?!\n\té\u00fc\u2192", max_size=16)


@st.composite
def conversations(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Optional system message, then 1-3 user/assistant turns; assistant weights absent, 0 or 1."""
    messages: list[dict[str, Any]] = []
    if draw(st.booleans()):
        messages.append({"role": "system", "content": draw(TEXT)})
    for _ in range(draw(st.integers(1, 3))):
        messages.append({"role": "user", "content": draw(TEXT)})
        reply = {"role": "assistant", "content": draw(TEXT)}
        weight = draw(st.sampled_from([None, 0, 1]))
        if weight is not None:
            reply["weight"] = weight
        messages.append(reply)
    return messages


def labelled_runs(labels: list[int]) -> list[list[int]]:
    """Maximal runs of consecutive labelled tokens, as the labels (= token ids) they hold."""
    runs: list[list[int]] = []
    previous = IGNORE_INDEX
    for label in labels:
        if label != IGNORE_INDEX:
            if previous == IGNORE_INDEX:
                runs.append([])
            runs[-1].append(label)
        previous = label
    return runs


@pytest.mark.parametrize("template", list(TEMPLATES))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=conversations())
def test_only_trained_assistant_replies_and_their_end_of_turn_are_labelled(
        tokenizers: dict[str, Any], template: str, messages: list[dict[str, Any]]) -> None:
    tokenizer = tokenizers[template]
    example = encode_conversation(tokenizer, messages, max_length=10_000)

    expected_ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    assert example.input_ids == list(expected_ids)
    assert all(label in (IGNORE_INDEX, token) for label, token in zip(example.labels, example.input_ids, strict=True))
    trained = [m["content"] for m in messages if m["role"] == "assistant" and m.get("weight", 1) == 1]
    runs = labelled_runs(example.labels)
    assert len(runs) == len(trained)
    for run, content in zip(runs, trained, strict=True):
        text = tokenizer.decode(run)
        assert text.endswith(content + TURN_END)
        # A token may straddle the reply's first character (the header's newline merged with leading whitespace).
        assert text[: len(text) - len(content + TURN_END)].strip() == ""


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=conversations())
def test_labels_match_the_templates_own_assistant_mask(tokenizers: dict[str, Any],
                                                       messages: list[dict[str, Any]]) -> None:
    tokenizer = tokenizers["generation-markers"]
    unweighted = [{k: v for k, v in m.items() if k != "weight"} for m in messages]
    example = encode_conversation(tokenizer, unweighted, max_length=10_000)
    mask = tokenizer.apply_chat_template(unweighted, tokenize=True, return_dict=True,
                                         return_assistant_tokens_mask=True)["assistant_masks"]
    assert [int(label != IGNORE_INDEX) for label in example.labels] == list(mask)


def test_truncation_keeps_the_start(tokenizers: dict[str, Any]) -> None:
    tokenizer = tokenizers["plain"]
    messages = [{"role": "user", "content": "abc " * 10}, {"role": "assistant", "content": "xyz " * 10}]
    full = encode_conversation(tokenizer, messages, max_length=10_000)
    short = encode_conversation(tokenizer, messages, max_length=12)
    assert len(full.input_ids) > 12
    assert short.input_ids == full.input_ids[:12] and short.labels == full.labels[:12]
    assert not short.has_target()  # the reply starts after the first 12 tokens


def test_a_batch_is_right_padded_with_masked_padding(tokenizers: dict[str, Any]) -> None:
    tokenizer = tokenizers["plain"]
    examples = [encode_conversation(tokenizer, [{"role": "user", "content": text}, {"role": "assistant",
                                                                                    "content": "ok"}], 64)
                for text in ("a", "a longer question")]
    batch = pad_batch(examples, tokenizer.pad_token_id)
    short = len(examples[0].input_ids)
    assert batch["input_ids"].shape == batch["labels"].shape == (2, len(examples[1].input_ids))
    assert batch["input_ids"][0, :short].tolist() == examples[0].input_ids
    assert batch["attention_mask"][0].tolist() == [1] * short + [0] * (batch["input_ids"].shape[1] - short)
    assert set(batch["labels"][0, short:].tolist()) == {IGNORE_INDEX}
    assert set(batch["input_ids"][0, short:].tolist()) == {tokenizer.pad_token_id}


GOOD = {"id": "g", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def bad(path: str, value: Any) -> dict[str, Any]:
    """GOOD with one field replaced (``messages.1.role``-style path) or removed (value ``...``)."""
    row = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    target: Any = row
    for part in parents:
        target = target[int(part) if part.isdigit() else part]
    key = int(last) if last.isdigit() else last
    if value is ...:
        del target[key]
    else:
        target[key] = value
    return row


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        (bad("messages.1.role", "user"), "the last message must be the assistant's reply, got role 'user'"),
        (bad("messages.1.weight", 0), "no assistant message has weight 1: nothing to train on"),
        (bad("messages.0.role", "tool"), "messages[0]: role must be one of system, user, assistant, got 'tool'"),
        (bad("messages.0.weight", 1), "messages[0]: weight is only allowed on assistant messages"),
        (bad("messages.1.weight", 2), "messages[1]: weight must be 0 or 1, got 2"),
        (bad("messages.1.content", ["hello"]), "messages[1]: content must be a string"),
        (bad("messages", []), "field 'messages' must be a non-empty list"),
        (bad("id", ...), "row lacks field id"),
    ],
    ids=["last-not-assistant", "nothing-trained", "role", "weight-on-user", "weight-value", "content", "empty",
         "no-id"],
)
def test_a_bad_row_names_file_line_and_reason(tmp_path: Path, row: dict[str, Any], reason: str) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + json.dumps(row) + "\n")
    with pytest.raises(SpecError) as raised:
        read_chat_rows(path, training=True)
    assert str(raised.value).startswith(f"{path}:3: ")
    assert reason in str(raised.value)


def test_evaluation_rows_need_only_a_final_reply(tmp_path: Path) -> None:
    path = tmp_path / "eval.jsonl"
    path.write_text(json.dumps(bad("messages.1.weight", 0)) + "\n")
    assert read_chat_rows(path, training=False)[0]["id"] == "g"
    path.write_text("{not json\n")
    with pytest.raises(SpecError, match=f"{path}:1: not valid JSON"):
        read_chat_rows(path, training=False)


def test_a_bad_row_fails_the_run_before_the_model_loads(chat_dataset: Path, tmp_path: Path) -> None:
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    rows = (chat_dataset / "train.jsonl").read_text().splitlines()
    (dataset / "train.jsonl").write_text("\n".join([*rows[:2], json.dumps(bad("messages.1.role", "user"))]) + "\n")
    spec = from_mapping(TrainingSpec, {"task": "chat", "base_model_uri": str(tmp_path / "no-model"),
                                       "dataset_uri": str(dataset), "output_uri": str(tmp_path / "out")})
    with pytest.raises(SpecError, match=r"train.jsonl:3: the last message must be the assistant's reply"):
        train.main(spec)


def test_shuffled_replies_are_a_derangement_of_the_final_replies(chat_dataset: Path) -> None:
    rows = read_chat_rows(chat_dataset / "train.jsonl", training=True)
    shuffled = shuffle_replies(rows, seed=0)
    assert shuffle_replies(rows, seed=0) == shuffled
    assert sorted(r["messages"][-1]["content"] for r in shuffled) == sorted(r["messages"][-1]["content"] for r in rows)
    for original, noisy in zip(rows, shuffled, strict=True):
        assert noisy["messages"][:-1] == original["messages"][:-1]  # the prompt stays
        assert noisy["messages"][-1]["content"] != original["messages"][-1]["content"]
