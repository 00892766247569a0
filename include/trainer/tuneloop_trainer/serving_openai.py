"""MLflow "models from code" definition of a chat model served by OpenAI (a base or fine-tuned model id).

Logged like every tuneloop model: the ``model`` artifact is the model directory, here holding only
``managed_model.json`` (``{"provider": "openai", "model": "ft:..."}``). MLflow copies only this file, so it
imports nothing from tuneloop. Predicting calls chat completions with that model id.

Credentials are never part of the logged model: ``load_context`` takes them from the ``model_config`` given
when loading (``mlflow.pyfunc.load_model(uri, model_config={"api_key": ..., "base_url": ...})``: tuneloop passes
its Airflow connection's), else from ``OPENAI_API_KEY`` / ``OPENAI_BASE_URL``, as any OpenAI client does.

Input: a list of conversations (each a list of ``{"role", "content"}`` dicts), a single conversation, or a pandas
DataFrame with a ``messages`` column. Output: one reply string per conversation, in order.
``params={"max_new_tokens": N}`` caps each reply (default 64), as for tuneloop's own chat models;
``params={"with_usage": True}`` returns a DataFrame of ``reply``, ``prompt_tokens`` and ``completion_tokens`` (the
API's usage) instead.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

MAX_NEW_TOKENS = 64
CONCURRENCY = 8


def _conversations(model_input: Any) -> list[list[dict[str, Any]]]:
    """Normalise the accepted input shapes to a list of conversations: serving_chat.py's, repeated on purpose
    (MLflow copies only this file; keep the two in step)."""
    if isinstance(model_input, pd.DataFrame):
        if "messages" not in model_input.columns:
            raise ValueError(f"expected a DataFrame with a 'messages' column, got columns {list(model_input.columns)}")
        items = model_input["messages"].tolist()
    elif isinstance(model_input, dict) and "messages" in model_input:
        items = list(model_input["messages"])
    else:
        items = list(model_input)
    if items and isinstance(items[0], dict):
        items = [items]
    conversations = []
    for item in items:
        messages = list(item) if isinstance(item, (list, tuple, np.ndarray)) else None
        if not messages or not all(isinstance(m, dict) and "role" in m and "content" in m for m in messages):
            raise ValueError(f"a conversation must be a non-empty list of {{role, content}} dicts, got {item!r}")
        conversations.append([{"role": m["role"], "content": m["content"]} for m in messages])
    return conversations


class OpenAIChatModel(mlflow.pyfunc.PythonModel):
    """Replies from the OpenAI model named in the ``model`` artifact's managed_model.json."""

    def load_context(self, context: Any) -> None:
        from openai import OpenAI

        reference = json.loads((Path(context.artifacts["model"]) / "managed_model.json").read_text())
        if reference.get("provider") != "openai":
            raise ValueError(f"managed_model.json names provider {reference.get('provider')!r}, not 'openai'")
        self.model = reference["model"]
        settings = dict(getattr(context, "model_config", None) or {})
        # empty (the logged defaults): the client's own OPENAI_API_KEY / OPENAI_BASE_URL
        self.client = OpenAI(api_key=settings.get("api_key") or None, base_url=settings.get("base_url") or None,
                             max_retries=int(settings.get("max_retries", 5)),
                             timeout=float(settings.get("timeout", 60)))

    # model_input is deliberately unannotated (see tuneloop's chat pyfunc: MLflow would turn a hint into a schema)
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        max_tokens = int((params or {}).get("max_new_tokens", MAX_NEW_TOKENS))

        def reply(conversation: list[dict[str, Any]]) -> tuple[str, int | None, int | None]:
            response = self.client.chat.completions.create(model=self.model, messages=conversation, temperature=0,
                                                           max_completion_tokens=max_tokens)
            text = (response.choices[0].message.content or "").strip() if response.choices else ""
            usage = response.usage
            return text, usage.prompt_tokens if usage else None, usage.completion_tokens if usage else None

        with ThreadPoolExecutor(max_workers=CONCURRENCY) as pool:
            replies = list(pool.map(reply, _conversations(model_input)))
        if (params or {}).get("with_usage"):
            return pd.DataFrame(replies, columns=["reply", "prompt_tokens", "completion_tokens"])
        return [text for text, _, _ in replies]


mlflow.models.set_model(OpenAIChatModel())
