"""Dataset rows (JSONL) and batches for CTC training and evaluation, and the epoch order every task shares.

Row schema (written by the Airflow side's export): ``{"id", "audio", "text", "duration_s", "sample_rate",
"voice", "condition", "source", ...}`` where ``audio`` is relative to the JSONL file's directory or absolute.
Everything here reads local files: a split on object storage is first staged with its audio by
:func:`tuneloop_trainer.staging.stage_split`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tuneloop_trainer.arguments import SpecError
from tuneloop_trainer.audio import SAMPLE_RATE, load_audio
from tuneloop_trainer.text import normalize_text

REQUIRED_ROW_FIELDS = ("id", "audio", "text")


def jsonl_rows(path: str | Path) -> Iterator[tuple[str, Any]]:
    """``(where, row)`` for each non-blank line of a JSONL split (``where`` is ``file:line``, for errors); a
    missing file or a line that is not JSON is a :class:`SpecError`."""
    file = Path(path)
    if not file.is_file():
        raise SpecError(f"data file {file} does not exist")
    for number, line in enumerate(file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield f"{file}:{number}", json.loads(line)
        except json.JSONDecodeError as error:
            raise SpecError(f"{file}:{number}: not valid JSON ({error})") from error


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL split, resolving each ``audio`` to an absolute path; bad rows are errors with line numbers."""
    file = Path(path)
    rows = []
    for where, row in jsonl_rows(file):
        missing = [name for name in REQUIRED_ROW_FIELDS if name not in row]
        if missing:
            raise SpecError(f"{where}: row lacks field(s) {', '.join(missing)}")
        audio = Path(row["audio"])
        row["audio"] = str(audio if audio.is_absolute() else file.parent / audio)
        rows.append(row)
    return rows


def shuffle_transcripts(rows: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """Give every row another row's transcript (a derangement where possible): deliberate label noise."""
    source = derangement(len(rows), seed)
    return [{**row, "text": rows[source[i]]["text"]} for i, row in enumerate(rows)]


def derangement(count: int, seed: int) -> list[int]:
    """``source[i]``: the row whose label row ``i`` gets; no row keeps its own when ``count >= 2``.

    Rotating a random permutation by one gives a derangement; shared by every task's ``label_noise=shuffle`` so the
    same seed pairs the same rows.
    """
    if count < 2:
        return list(range(count))
    order = list(range(count))
    random.Random(seed).shuffle(order)
    source = [0] * count
    for i in range(count):
        source[order[i]] = order[(i + 1) % count]
    return source


@dataclass(frozen=True)
class Batch:
    """Padded model inputs plus the rows they came from."""

    input_values: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None
    rows: list[dict[str, Any]]


def make_batch(rows: list[dict[str, Any]], processor: Any, with_labels: bool) -> Batch:
    """Load audio, pad with the feature extractor (normalising each utterance), tokenise text with -100 padding."""
    audio = [load_audio(row["audio"]) for row in rows]
    features = processor.feature_extractor(
        audio, sampling_rate=SAMPLE_RATE, padding=True, return_attention_mask=True, return_tensors="pt")
    labels = None
    if with_labels:
        ids = [processor.tokenizer(normalize_text(row["text"])).input_ids for row in rows]
        labels = torch.full((len(ids), max(1, max(len(x) for x in ids))), -100, dtype=torch.long)
        for index, sequence in enumerate(ids):
            labels[index, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
    return Batch(features["input_values"], features["attention_mask"], labels, rows)


def epoch_order(lengths: list[float], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Batches of example indices for one epoch: shuffled, then length-grouped to cut padding, deterministic.

    Examples are shuffled with ``(seed, epoch)``, sorted by ``lengths`` (speech: duration in seconds, chat: tokens)
    inside windows of 32 batches, cut into batches, and the batches shuffled again, so every resume of the same
    epoch sees exactly the same batches.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths)).tolist()
    window = batch_size * 32
    grouped: list[int] = []
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        grouped.extend(sorted(chunk, key=lambda i: lengths[i]))
    batches = [grouped[start : start + batch_size] for start in range(0, len(grouped), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches)).tolist()]


def duration(row: dict[str, Any]) -> float:
    """A speech row's length for batching; rows without ``duration_s`` count as 0."""
    return float(row.get("duration_s") or 0.0)


def iter_eval_batches(rows: list[dict[str, Any]], batch_size: int) -> Iterator[list[int]]:
    """Row indices in batches of similar duration (less padding, faster inference)."""
    return batches_by_length([duration(row) for row in rows], batch_size)


def batches_by_length(lengths: list[float], batch_size: int) -> Iterator[list[int]]:
    """Indices sorted by length, in batches: inference batches with little padding (any task's length unit)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]
