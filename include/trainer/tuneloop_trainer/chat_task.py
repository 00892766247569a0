"""The chat task: supervised fine-tuning of a causal LM on chat rows, greedy batched replies for evaluation.

Training examples are tokenised once, before the model loads (:mod:`tuneloop_trainer.chat_data`: assistant-only
labels, truncated to the spec's ``max_length``), so a step only pads and runs the model.

Evaluation rows: ``{"id", "reference" (the last assistant message), "hypothesis" (the generated reply, special
tokens skipped, stripped), "latency_ms" (the row's share of its batch's wall time), "generated_tokens"}`` plus
every other input field except ``messages``, in input order. The model replies to ``messages[:-1]``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from tuneloop_trainer.arguments import SpecError
from tuneloop_trainer.chat_data import Example, encode_conversation, pad_batch, read_chat_rows, shuffle_replies
from tuneloop_trainer.chat_modeling import load_model, load_tokenizer, prepare_for_training
from tuneloop_trainer.data import batches_by_length
from tuneloop_trainer.generation import Reply, generate_replies, prompt_ids
from tuneloop_trainer.spec import EvaluateArguments, TrainingSpec

log = logging.getLogger(__name__)

NOT_PASSED_THROUGH = ("messages",)


class ChatTask:
    """Causal LMs (any ``*ForCausalLM`` directory whose tokenizer has a chat template)."""

    name = "chat"
    architecture_suffix = "ForCausalLM"

    def read_rows(self, path: Path, training: bool) -> list[dict[str, Any]]:
        return read_chat_rows(path, training)

    def shuffle_labels(self, rows: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
        return shuffle_replies(rows, seed)

    def load_processor(self, model_dir: Path) -> Any:
        return load_tokenizer(model_dir)

    def prepare_examples(self, rows: list[dict[str, Any]], processor: Any, spec: TrainingSpec) -> list[Any]:
        return encode_rows(rows, processor, spec.max_length)

    def example_length(self, example: Example) -> float:
        return len(example.input_ids)

    def load_model(self, model_dir: Path, spec: TrainingSpec) -> torch.nn.Module:
        return prepare_for_training(model_dir, spec.lora)

    def make_batch(self, examples: list[Example], processor: Any) -> dict[str, torch.Tensor]:
        return pad_batch(examples, processor.pad_token_id)

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(**batch, use_cache=False).loss

    def load_inference_model(self, model_dir: Path) -> torch.nn.Module:
        # On the CPU like speech evaluation and like serving_chat.py, so that the served model's replies are the
        # ones the gate validated, bit for bit.
        return load_model(model_dir).eval()

    def predict_rows(self, rows: list[dict[str, Any]], model: torch.nn.Module, processor: Any,
                     args: EvaluateArguments) -> list[dict[str, Any]]:
        return reply_rows(rows, model, processor, args.batch_size, args.max_new_tokens)


def encode_rows(rows: list[dict[str, Any]], tokenizer: Any, max_length: int) -> list[Example]:
    """Tokenised training examples; rows whose trained tokens all lie beyond ``max_length`` are left out (with a
    warning) rather than failing the run, as long as some row remains."""
    examples = []
    for row in rows:
        try:
            examples.append(encode_conversation(tokenizer, row["messages"], max_length))
        except SpecError as error:
            raise SpecError(f"row {row['id']}: {error}") from error
    kept = [example for example in examples if example.has_target()]
    if not kept:
        raise SpecError(f"no training row has an assistant token within max_length={max_length} tokens; "
                        "raise max_length")
    if len(kept) < len(examples):
        log.warning("%d of %d training rows have no assistant token within max_length=%d tokens; left out",
                    len(examples) - len(kept), len(examples), max_length)
    return kept


def reply_rows(rows: list[dict[str, Any]], model: torch.nn.Module, tokenizer: Any, batch_size: int,
               max_new_tokens: int) -> list[dict[str, Any]]:
    """Prediction rows in input order; batches group prompts of similar length to limit padding."""
    prompts = prompt_ids(tokenizer, [row["messages"][:-1] for row in rows])
    results: list[dict[str, Any] | None] = [None] * len(rows)
    for indices in batches_by_length([len(prompt) for prompt in prompts], batch_size):
        started = time.perf_counter()
        replies = generate_replies(model, tokenizer, [prompts[i] for i in indices], max_new_tokens)
        latency_ms = 1000 * (time.perf_counter() - started) / len(indices)
        for index, reply in zip(indices, replies, strict=True):
            results[index] = prediction_row(rows[index], reply, latency_ms)
    return [row for row in results if row is not None]


def prediction_row(row: dict[str, Any], reply: Reply, latency_ms: float) -> dict[str, Any]:
    extra = {k: v for k, v in row.items() if k not in NOT_PASSED_THROUGH and k != "id"}
    return {"id": row["id"], "reference": row["messages"][-1]["content"], "hypothesis": reply.text,
            "latency_ms": round(latency_ms, 3), "generated_tokens": reply.tokens, **extra}
