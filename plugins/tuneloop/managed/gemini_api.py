"""Replies of a Gemini model (a base model, or a tuned model's endpoint) to evaluation rows, through Vertex AI's
``generateContent``.

The Vertex counterpart of :mod:`tuneloop.managed.chat_api`: the same rows in, the same prediction rows out
(``id``, ``reference``, ``hypothesis``, ``latency_ms``, ``generated_tokens``, ``prompt_tokens``,
``completion_tokens`` and the row's other fields). The conversation is converted as the training file is
(:func:`tuneloop.vertex_dataset.prompt_request`: system messages become the system instruction, assistant turns the
model's). Requests run ``concurrency`` at a time; the client retries 408/429/5xx with exponential backoff
(:func:`tuneloop.hooks.vertex_connection.http_options`); a request that still fails fails the evaluation, naming
the row. Greedy decoding (temperature 0, fixed seed), as the trainer evaluates.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from tuneloop.managed import chat_api
from tuneloop.managed.chat_api import NOT_PASSED_THROUGH, ReplyError, ReplySettings

if TYPE_CHECKING:
    from google.genai import Client


def reply_rows(client: Client, rows: Sequence[Mapping[str, Any]], settings: ReplySettings,
               log_line: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """One prediction row per input row, in input order (:func:`tuneloop.managed.chat_api.reply_rows`)."""
    return chat_api.reply_rows(client, rows, settings, log_line, reply=reply)


def generate(client: Client, model: str, messages: Sequence[Mapping[str, Any]], *, max_reply_tokens: int,
             seed: int) -> tuple[str, int, int]:
    """The model's reply to a conversation ending in a user turn: (text, prompt tokens, reply tokens)."""
    from google.genai import types

    from tuneloop.vertex_dataset import prompt_request

    request = prompt_request(list(messages))
    response = client.models.generate_content(
        model=model, contents=request["contents"],
        config=types.GenerateContentConfig(system_instruction=request["system_instruction"], temperature=0,
                                           seed=seed, max_output_tokens=max_reply_tokens))
    usage = response.usage_metadata
    prompt = (usage.prompt_token_count or 0) if usage else 0
    # thinking tokens are billed as output
    completion = ((usage.candidates_token_count or 0) + (usage.thoughts_token_count or 0)) if usage else 0
    return (response.text or "").strip(), prompt, completion


def reply(client: Client, row: Mapping[str, Any], settings: ReplySettings) -> dict[str, Any]:
    from google.genai import errors

    started = time.perf_counter()
    try:
        text, prompt, completion = generate(client, settings.model, row["messages"][:-1],
                                            max_reply_tokens=settings.max_reply_tokens, seed=settings.seed)
    except errors.APIError as error:
        raise ReplyError(f"{settings.model} failed on row {row.get('id')!r} after the client's retries: "
                         f"{type(error).__name__}: {error}") from error
    latency_ms = 1000 * (time.perf_counter() - started)
    extra = {k: v for k, v in row.items() if k not in NOT_PASSED_THROUGH and k != "id"}
    return {"id": row["id"], "reference": row["messages"][-1]["content"], "hypothesis": text,
            "latency_ms": round(latency_ms, 3), "generated_tokens": completion, "prompt_tokens": prompt,
            "completion_tokens": completion, **extra}
