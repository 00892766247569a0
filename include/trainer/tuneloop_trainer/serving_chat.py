"""MLflow "models from code" definition of a tuneloop chat model (a causal LM with a chat template).

Logged with ``mlflow.pyfunc.log_model(name="model", python_model=tuneloop_trainer.serving_path("chat"),
artifacts={"model": <HF model dir>}, pip_requirements=tuneloop_trainer.CHAT_SERVING_REQUIREMENTS,
signature=tuneloop_trainer.serving_signature("chat"))``: the signature declares the ``max_new_tokens`` param
(without it MLflow drops params and every reply gets the default). MLflow copies only this file, so it must not
import the rest of tuneloop_trainer: prompt rendering and batched greedy generation are repeated here on purpose
(keep them in step with ``tuneloop_trainer.generation``).

Input: a list of conversations (each a list of ``{"role", "content"}`` dicts), a single conversation, or a pandas
DataFrame with a ``messages`` column. Output: a list of reply strings, one per conversation, in order.
``params={"max_new_tokens": N}`` caps each reply (default 64); ``params={"with_usage": True}`` returns a DataFrame
of ``reply``, ``prompt_tokens`` and ``completion_tokens`` instead (what a server records per request).
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

BATCH_SIZE = 16
MAX_NEW_TOKENS = 64
SINGLE_THREAD_BELOW_HIDDEN_SIZE = 512  # as tuneloop_trainer.generation: small models decode with one CPU thread


def _conversations(model_input: Any) -> list[list[dict[str, Any]]]:
    """Normalise the accepted input shapes to a list of conversations."""
    if isinstance(model_input, pd.DataFrame):
        if "messages" not in model_input.columns:
            raise ValueError(f"expected a DataFrame with a 'messages' column, got columns {list(model_input.columns)}")
        items = model_input["messages"].tolist()
    elif isinstance(model_input, dict) and "messages" in model_input:
        items = list(model_input["messages"])
    else:
        items = list(model_input)
    if items and isinstance(items[0], dict):  # one conversation: a list of messages
        items = [items]
    conversations = []
    for item in items:
        messages = list(item) if isinstance(item, (list, tuple, np.ndarray)) else None
        if not messages or not all(isinstance(m, dict) and "role" in m and "content" in m for m in messages):
            raise ValueError(f"a conversation must be a non-empty list of {{role, content}} dicts, got {item!r}")
        conversations.append([{"role": m["role"], "content": m["content"]} for m in messages])
    return conversations


class ChatModel(mlflow.pyfunc.PythonModel):
    """Greedy replies from the causal LM stored as the ``model`` artifact."""

    def load_context(self, context: Any) -> None:
        model_dir = context.artifacts["model"]
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        self.stops = self._stop_token_ids()

    # model_input is deliberately unannotated: MLflow turns a predict() type hint into a schema and would
    # convert or reject inputs (and warns for Any); the shapes are handled in _conversations.
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        max_new_tokens = int((params or {}).get("max_new_tokens", MAX_NEW_TOKENS))
        prompts = [self._prompt(conversation) for conversation in _conversations(model_input)]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths: less padding
        replies: list[tuple[str, int]] = [("", 0)] * len(prompts)
        for start in range(0, len(order), BATCH_SIZE):
            batch = order[start : start + BATCH_SIZE]
            for index, reply in zip(batch, self._generate([prompts[i] for i in batch], max_new_tokens), strict=True):
                replies[index] = reply
        if (params or {}).get("with_usage"):
            return pd.DataFrame({"reply": [text for text, _ in replies],
                                 "prompt_tokens": [len(prompt) for prompt in prompts],
                                 "completion_tokens": [tokens for _, tokens in replies]})
        return [text for text, _ in replies]

    def _prompt(self, conversation: list[dict[str, Any]]) -> list[int]:
        text = self.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _stop_token_ids(self) -> list[int]:
        stops = {self.tokenizer.eos_token_id}
        configured = self.model.generation_config.eos_token_id
        stops.update(configured if isinstance(configured, list) else [configured])
        im_end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(im_end, int) and im_end != self.tokenizer.unk_token_id:
            stops.add(im_end)
        return sorted(token for token in stops if token is not None)

    @torch.inference_mode()
    def _generate(self, prompts: list[list[int]], max_new_tokens: int) -> list[tuple[str, int]]:
        """Each prompt's reply and the tokens generated for it (its stop token included, as an API bills it)."""
        pad = self.tokenizer.pad_token_id
        width = max(len(prompt) for prompt in prompts)
        input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):  # left padding: every prompt ends where generation starts
            input_ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
            attention_mask[row, width - len(prompt):] = 1
        previous = torch.get_num_threads()
        if getattr(self.model.config, "hidden_size", SINGLE_THREAD_BELOW_HIDDEN_SIZE) < SINGLE_THREAD_BELOW_HIDDEN_SIZE:
            torch.set_num_threads(1)  # faster for small matrices, and the same arithmetic as `evaluate`
        try:
            output = self.model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                         max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                         eos_token_id=self.stops, pad_token_id=pad)
        finally:
            torch.set_num_threads(previous)
        replies = []
        for generated in output[:, width:].tolist():
            length = next((i for i, token in enumerate(generated) if token in self.stops), len(generated))
            replies.append((self.tokenizer.decode(generated[:length], skip_special_tokens=True).strip(),
                            min(length + 1, len(generated))))
        return replies


mlflow.models.set_model(ChatModel())
