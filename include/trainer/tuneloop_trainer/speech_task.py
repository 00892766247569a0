"""The speech-to-text task: wav2vec2 CTC fine-tuning on ``{"id", "audio", "text"}`` rows, greedy CTC decoding.

Evaluation rows: ``{"id", "reference", "hypothesis", "latency_ms", ...}`` plus every other input field except
``audio`` and ``text`` (voice, condition, source, duration_s, ...), so the gate can slice without re-reading the
dataset. ``latency_ms`` is the row's share of its batch's wall time.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from tuneloop_trainer.data import duration, iter_eval_batches, make_batch, read_rows, shuffle_transcripts
from tuneloop_trainer.modeling import load_model, load_processor, prepare_for_training
from tuneloop_trainer.spec import EvaluateArguments, TrainingSpec
from tuneloop_trainer.text import normalize_text

NOT_PASSED_THROUGH = ("audio", "text")


class SpeechToTextTask:
    """Examples are the rows themselves: audio is read per batch (a dataset's audio need not fit in memory)."""

    name = "speech-to-text"
    architecture_suffix = "ForCTC"

    def read_rows(self, path: Path, training: bool) -> list[dict[str, Any]]:
        return read_rows(path)

    def shuffle_labels(self, rows: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
        return shuffle_transcripts(rows, seed)

    def load_processor(self, model_dir: Path) -> Any:
        return load_processor(model_dir)

    def prepare_examples(self, rows: list[dict[str, Any]], processor: Any, spec: TrainingSpec) -> list[Any]:
        return rows

    def example_length(self, example: dict[str, Any]) -> float:
        return duration(example)

    def load_model(self, model_dir: Path, spec: TrainingSpec) -> torch.nn.Module:
        return prepare_for_training(model_dir, spec.lora, spec.freeze_feature_encoder)

    def make_batch(self, examples: list[dict[str, Any]], processor: Any) -> dict[str, torch.Tensor]:
        batch = make_batch(examples, processor, with_labels=True)
        return {"input_values": batch.input_values, "attention_mask": batch.attention_mask, "labels": batch.labels}

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(**batch).loss

    def load_inference_model(self, model_dir: Path) -> torch.nn.Module:
        return load_model(model_dir).eval()

    def predict_rows(self, rows: list[dict[str, Any]], model: torch.nn.Module, processor: Any,
                     args: EvaluateArguments) -> list[dict[str, Any]]:
        return transcribe_rows(rows, model, processor, args.batch_size)


@torch.inference_mode()
def transcribe_rows(rows: list[dict[str, Any]], model: torch.nn.Module, processor: Any,
                    batch_size: int) -> list[dict[str, Any]]:
    """Prediction rows in input order; batches group similar durations to limit padding."""
    results: list[dict[str, Any] | None] = [None] * len(rows)
    for indices in iter_eval_batches(rows, batch_size):
        batch_rows = [rows[i] for i in indices]
        started = time.perf_counter()
        hypotheses = transcribe_batch(model, processor, batch_rows)
        latency_ms = 1000 * (time.perf_counter() - started) / len(indices)
        for index, row, hypothesis in zip(indices, batch_rows, hypotheses, strict=True):
            results[index] = prediction_row(row, hypothesis, latency_ms)
    return [row for row in results if row is not None]


def transcribe_batch(model: torch.nn.Module, processor: Any, rows: list[dict[str, Any]]) -> list[str]:
    """Greedy CTC decoding, cut at each utterance's own frame count so padding never emits text."""
    batch = make_batch(rows, processor, with_labels=False)
    logits = model(input_values=batch.input_values, attention_mask=batch.attention_mask).logits
    frames = model._get_feat_extract_output_lengths(batch.attention_mask.sum(-1)).tolist()
    ids = logits.argmax(dim=-1)
    return [normalize_text(processor.decode(ids[i, : int(n)].tolist())) for i, n in enumerate(frames)]


def prediction_row(row: dict[str, Any], hypothesis: str, latency_ms: float) -> dict[str, Any]:
    extra = {k: v for k, v in row.items() if k not in NOT_PASSED_THROUGH and k != "id"}
    return {"id": row["id"], "reference": normalize_text(row["text"]), "hypothesis": hypothesis,
            "latency_ms": round(latency_ms, 3), **extra}
