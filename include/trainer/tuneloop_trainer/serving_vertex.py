"""MLflow "models from code" definition of a chat model served by Vertex AI (a Gemini model, or a tuned model's
endpoint).

Logged like every tuneloop model: the ``model`` artifact is the model directory, here holding only
``managed_model.json`` (``{"provider": "vertex", "model": "projects/.../endpoints/..."}``). MLflow copies only this
file, so it imports nothing from tuneloop. Predicting calls ``generateContent`` on that model.

Credentials are never part of the logged model: ``load_context`` takes a short-lived access token, the project,
location and endpoint from the ``model_config`` given when loading (tuneloop passes its Airflow connection's), else
Google's application default credentials, as any Vertex AI client does.

Input: as the other chat models (serving_openai.py): a list of conversations, a single conversation, or a pandas
DataFrame with a ``messages`` column. System messages before the first user turn become the system instruction,
assistant turns the model's. Output: one reply string per conversation, in order. ``params={"max_new_tokens": N}``
caps each reply (default 64); ``params={"with_usage": True}`` returns a DataFrame of ``reply``, ``prompt_tokens`` and
``completion_tokens`` (Gemini's usage metadata; thinking tokens count as output, as they are billed) instead.
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
ROLES = {"user": "user", "assistant": "model"}


def _conversations(model_input: Any) -> list[list[dict[str, Any]]]:
    """Normalise the accepted input shapes to a list of conversations: serving_openai.py's, repeated on purpose
    (MLflow copies only this file; keep them in step)."""
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


def gemini_request(conversation: list[dict[str, Any]]) -> tuple[str | None, list[dict[str, Any]]]:
    """(system instruction, contents) of a conversation, converted as tuneloop's Vertex training files are."""
    system = [m["content"] for m in conversation if m["role"] == "system"]
    contents = [{"role": ROLES[m["role"]], "parts": [{"text": m["content"]}]}
                for m in conversation if m["role"] in ROLES]
    return ("\n\n".join(system) or None), contents


class VertexChatModel(mlflow.pyfunc.PythonModel):
    """Replies from the Vertex AI model named in the ``model`` artifact's managed_model.json."""

    def load_context(self, context: Any) -> None:
        from google import genai
        from google.genai import types

        reference = json.loads((Path(context.artifacts["model"]) / "managed_model.json").read_text())
        if reference.get("provider") != "vertex":
            raise ValueError(f"managed_model.json names provider {reference.get('provider')!r}, not 'vertex'")
        self.model = reference["model"]
        settings = dict(getattr(context, "model_config", None) or {})
        credentials = None
        if settings.get("access_token"):
            from google.oauth2.credentials import Credentials

            credentials = Credentials(token=settings["access_token"])
        options = types.HttpOptions(
            base_url=settings.get("base_url") or None, timeout=int(float(settings.get("timeout", 60)) * 1000),
            retry_options=types.HttpRetryOptions(attempts=int(settings.get("max_retries", 5)) + 1))
        self.client = genai.Client(vertexai=True, project=settings.get("project") or None,
                                   location=settings.get("location") or None, credentials=credentials,
                                   http_options=options)

    # model_input is deliberately unannotated (see tuneloop's chat pyfunc: MLflow would turn a hint into a schema)
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        from google.genai import types

        max_tokens = int((params or {}).get("max_new_tokens", MAX_NEW_TOKENS))

        def reply(conversation: list[dict[str, Any]]) -> tuple[str, int | None, int | None]:
            system, contents = gemini_request(conversation)
            response = self.client.models.generate_content(
                model=self.model, contents=contents,
                config=types.GenerateContentConfig(system_instruction=system, temperature=0,
                                                   max_output_tokens=max_tokens))
            usage = response.usage_metadata
            if usage is None or usage.prompt_token_count is None:
                return (response.text or "").strip(), None, None
            # thinking tokens are billed as output
            output = (usage.candidates_token_count or 0) + (usage.thoughts_token_count or 0)
            return (response.text or "").strip(), usage.prompt_token_count, output

        with ThreadPoolExecutor(max_workers=CONCURRENCY) as pool:
            replies = list(pool.map(reply, _conversations(model_input)))
        if (params or {}).get("with_usage"):
            return pd.DataFrame(replies, columns=["reply", "prompt_tokens", "completion_tokens"])
        return [text for text, _, _ in replies]


mlflow.models.set_model(VertexChatModel())
