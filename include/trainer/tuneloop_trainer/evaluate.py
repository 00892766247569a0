"""``evaluate``: batched greedy CTC transcription of JSONL splits into predictions JSONL files.

One output row per input row, in input order: ``{"id", "reference", "hypothesis", "latency_ms", ...}`` plus
every other input field except ``audio`` and ``text`` (voice, condition, source, duration_s, ...), so the gate
can slice without re-reading the dataset. ``latency_ms`` is the row's share of its batch's wall time.

The model, the splits and the outputs may be remote (``gs://...``): model and splits are staged to local disk
(with the audio the rows reference), and each predictions file is written locally and uploaded as one object,
so that on object storage too a predictions file that exists is complete.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from tuneloop_trainer import staging
from tuneloop_trainer.data import iter_eval_batches, make_batch, read_rows
from tuneloop_trainer.modeling import check_model_dir, load_model, load_processor
from tuneloop_trainer.spec import EvaluateArguments
from tuneloop_trainer.text import normalize_text
from tuneloop_trainer.train import configure_threads

log = logging.getLogger(__name__)

NOT_PASSED_THROUGH = ("audio", "text")


def main(args: EvaluateArguments) -> list[Path]:
    """Transcribe each ``args.data`` file with ``args.model_dir`` into its ``args.output``; returns the local files
    written (for a remote output, the scratch copy that was uploaded)."""
    configure_threads()
    model_dir = staging.stage_dir(args.model_dir, "model_dir")
    check_model_dir(model_dir, "model_dir")
    splits = [read_rows(staging.stage_split(data, "data")) for data in args.data]  # all inputs checked first
    processor, model = load_processor(model_dir), load_model(model_dir).eval()
    written = []
    for rows, output in zip(splits, args.output, strict=True):
        start = time.perf_counter()
        path = write_jsonl_atomic(staging.working_file(output),
                                  transcribe_rows(rows, model, processor, args.batch_size))
        log.info("wrote %d predictions to %s in %.1f s", len(rows), path, time.perf_counter() - start)
        if staging.is_remote(output):
            staging.upload_file(path, output)
        written.append(path)
    return written


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


def write_jsonl_atomic(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write to a hidden temp file next to ``path`` and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    tmp.replace(path)
    return path
