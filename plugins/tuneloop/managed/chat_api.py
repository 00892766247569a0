"""Replies of a served chat model to evaluation rows, through an OpenAI-compatible chat completions API.

The managed counterpart of the trainer's chat evaluation: the same rows in (``{"id", "messages", ...}``, the last
message the reference reply), the same prediction rows out (``id``, ``reference``, ``hypothesis``,
``latency_ms``, ``generated_tokens`` and the row's other fields), plus what a paid API adds: ``prompt_tokens``
and ``completion_tokens`` of each request, so the run knows what evaluating cost and what each model costs per
request. Requests run ``concurrency`` at a time; the client retries 408/409/429/5xx and connection errors with
exponential backoff, honouring ``Retry-After``; a request that still fails fails the evaluation, naming the row.
Greedy decoding (temperature 0, fixed seed), as the trainer evaluates.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from openai import OpenAI

NOT_PASSED_THROUGH = ("messages",)
MESSAGE_KEYS = ("role", "content", "name")  # what a chat request's message may carry (no training "weight")


Reply = Callable[[Any, Mapping[str, Any], "ReplySettings"], dict[str, Any]]


class ReplyError(RuntimeError):
    """A request failed after the client's retries; the message names the model and the row."""


@dataclass(frozen=True)
class ReplySettings:
    model: str
    concurrency: int = 8
    max_reply_tokens: int = 512
    seed: int = 0


def prompt_messages(row: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The conversation the model answers: every message but the last (the reference), without training keys."""
    return [{k: m[k] for k in MESSAGE_KEYS if k in m} for m in row["messages"][:-1]]


def reply_rows(client: Any, rows: Sequence[Mapping[str, Any]], settings: ReplySettings,
               log_line: Callable[[str], None] | None = None, reply: Reply | None = None) -> list[dict[str, Any]]:
    """One prediction row per input row, in input order; ``reply`` answers one row (default: OpenAI's chat
    completions; :mod:`tuneloop.managed.gemini_api` passes Vertex's)."""
    answer = reply or _reply

    def one(row: Mapping[str, Any]) -> dict[str, Any]:
        return answer(client, row, settings)

    with ThreadPoolExecutor(max_workers=settings.concurrency, thread_name_prefix="chat-api") as pool:
        results = list(pool.map(one, rows))
    if log_line is not None and results:
        tokens = sum(r["prompt_tokens"] + r["completion_tokens"] for r in results)
        log_line(f"{settings.model}: {len(results)} replies, {tokens:,} tokens, median latency "
                 f"{sorted(r['latency_ms'] for r in results)[len(results) // 2]:.0f} ms")
    return results


def _reply(client: OpenAI, row: Mapping[str, Any], settings: ReplySettings) -> dict[str, Any]:
    import openai

    started = time.perf_counter()
    try:
        response = client.chat.completions.create(
            model=settings.model, messages=prompt_messages(row), temperature=0, seed=settings.seed,
            max_completion_tokens=settings.max_reply_tokens)
    except openai.OpenAIError as error:
        raise ReplyError(f"{settings.model} failed on row {row.get('id')!r} after the client's retries: "
                         f"{type(error).__name__}: {error}") from error
    latency_ms = 1000 * (time.perf_counter() - started)
    text = (response.choices[0].message.content or "") if response.choices else ""
    usage = response.usage
    completion = usage.completion_tokens if usage else 0
    extra = {k: v for k, v in row.items() if k not in NOT_PASSED_THROUGH and k != "id"}
    return {"id": row["id"], "reference": row["messages"][-1]["content"], "hypothesis": text.strip(),
            "latency_ms": round(latency_ms, 3), "generated_tokens": completion,
            "prompt_tokens": usage.prompt_tokens if usage else 0, "completion_tokens": completion, **extra}
