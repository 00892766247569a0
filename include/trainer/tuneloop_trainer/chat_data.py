"""Chat rows (JSONL) and their tokenisation with assistant-only labels, for training and evaluation.

Row schema (an OpenAI chat fine-tuning row plus an id and free extra fields, written by the Airflow side's
export): ``{"id", "messages": [{"role": "system"|"user"|"assistant", "content": str, "weight": 0|1}, ...],
"domain", ...}``. ``weight`` is optional and only allowed on assistant messages (absent = 1). The last message is
the assistant's reply: the training target, or the reference when evaluating.

Labels: the loss covers exactly the tokens of assistant messages whose weight is not 0, each with the end-of-turn
token that closes it (so the model learns to stop); every other token is labelled -100. The spans come from the
model's own chat template by rendering prefixes of the conversation: the reply in message ``i`` starts where
``messages[:i]`` with the generation prompt ends and stops where ``messages[:i + 1]`` ends (trailing whitespace
dropped). That works for templates with and without ``{% generation %}`` markers; tokens are then mapped to the
spans through the fast tokenizer's character offsets (a token that overlaps a span is labelled, as
``return_assistant_tokens_mask`` does).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tuneloop_trainer.arguments import SpecError
from tuneloop_trainer.data import derangement, jsonl_rows

ROLES = ("system", "user", "assistant")
IGNORE_INDEX = -100  # the label cross-entropy skips
UNSTABLE_TEMPLATE = ("the chat template renders a conversation's first messages differently from the whole "
                     "conversation, so assistant replies cannot be located; use a prefix-stable template")


def read_chat_rows(path: str | Path, training: bool) -> list[dict[str, Any]]:
    """Read and validate a chat JSONL split; a bad row is a :class:`SpecError` naming file, line and field.

    :param training: also require an assistant message with weight 1 (evaluation only needs the final reply).
    """
    rows = []
    for where, row in jsonl_rows(path):
        problem = row_problem(row, training)
        if problem:
            raise SpecError(f"{where}: {problem}")
        rows.append(row)
    return rows


def row_problem(row: Any, training: bool) -> str | None:
    """Why ``row`` is not a usable chat row, or None."""
    if not isinstance(row, dict):
        return "a row must be a JSON object with id and messages"
    if "id" not in row:
        return "row lacks field id"
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        return "field 'messages' must be a non-empty list of {role, content} objects"
    for index, message in enumerate(messages):
        problem = message_problem(message)
        if problem:
            return f"messages[{index}]: {problem}"
    if messages[-1]["role"] != "assistant":
        return f"the last message must be the assistant's reply, got role {messages[-1]['role']!r}"
    if training and not any(is_trained(message) for message in messages):
        return "no assistant message has weight 1: nothing to train on"
    return None


def message_problem(message: Any) -> str | None:
    if not isinstance(message, dict):
        return "must be an object with role and content"
    role = message.get("role")
    if role not in ROLES:
        return f"role must be one of {', '.join(ROLES)}, got {role!r}"
    if not isinstance(message.get("content"), str):
        return f"content must be a string, got {message.get('content')!r}"
    if "weight" in message:
        if role != "assistant":
            return "weight is only allowed on assistant messages"
        if isinstance(message["weight"], bool) or message["weight"] not in (0, 1):
            return f"weight must be 0 or 1, got {message['weight']!r}"
    return None


def is_trained(message: dict[str, Any]) -> bool:
    return message["role"] == "assistant" and message.get("weight", 1) != 0


def shuffle_replies(rows: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """Give every conversation another one's final assistant reply (deliberate label noise, as for speech)."""
    source = derangement(len(rows), seed)
    shuffled = []
    for i, row in enumerate(rows):
        *prompt, reply = row["messages"]
        other = rows[source[i]]["messages"][-1]["content"]
        shuffled.append({**row, "messages": [*prompt, {**reply, "content": other}]})
    return shuffled


@dataclass(frozen=True)
class Example:
    """One tokenised conversation: ids and labels of the same length (labels not shifted; the model shifts)."""

    input_ids: list[int]
    labels: list[int]

    def has_target(self) -> bool:
        """Whether any token is predicted (the first position never is: nothing comes before it)."""
        return any(label != IGNORE_INDEX for label in self.labels[1:])


def encode_conversation(tokenizer: Any, messages: list[dict[str, Any]], max_length: int) -> Example:
    """Token ids of the rendered conversation and labels that keep only trained assistant tokens; the first
    ``max_length`` tokens of each (truncation keeps the start)."""
    text = render(tokenizer, messages)
    spans = trained_spans(tokenizer, messages, text)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = [token if any(start < span_end and end > span_start for span_start, span_end in spans) else IGNORE_INDEX
              for token, (start, end) in zip(encoding["input_ids"], encoding["offset_mapping"], strict=True)]
    return Example(list(encoding["input_ids"][:max_length]), labels[:max_length])


def render(tokenizer: Any, messages: list[dict[str, Any]], add_generation_prompt: bool = False) -> str:
    """The conversation as the chat template writes it (special tokens as text, tokenised without adding more)."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def trained_spans(tokenizer: Any, messages: list[dict[str, Any]], text: str) -> list[tuple[int, int]]:
    """Character spans of ``text`` holding each trained assistant reply with its end-of-turn token."""
    spans = []
    for index, message in enumerate(messages):
        if not is_trained(message):
            continue
        start = reply_start(tokenizer, messages[:index], text)
        through = render(tokenizer, messages[: index + 1])
        if not text.startswith(through):
            raise SpecError(UNSTABLE_TEMPLATE)
        spans.append((start, max(start, len(through.rstrip()))))
    return spans


def reply_start(tokenizer: Any, before: list[dict[str, Any]], text: str) -> int:
    """Where the reply after ``before`` starts in ``text``: after the generation prompt (the assistant header).

    Some templates' generation prompt adds more than the header they write in conversations (e.g. an empty
    ``<think></think>`` block); then the reply starts where prompt and conversation part ways, which is still
    after everything ``before`` renders to.
    """
    plain = render(tokenizer, before)
    start = len(os.path.commonprefix([render(tokenizer, before, add_generation_prompt=True), text]))
    if not text.startswith(plain) or start < len(plain):
        raise SpecError(UNSTABLE_TEMPLATE)
    return start


def pad_batch(examples: list[Example], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 on padding)."""
    width = max(len(example.input_ids) for example in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for row, example in enumerate(examples):
        length = len(example.input_ids)
        input_ids[row, :length] = torch.tensor(example.input_ids, dtype=torch.long)
        attention_mask[row, :length] = 1
        labels[row, :length] = torch.tensor(example.labels, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
