"""``evaluate``: batched predictions of JSONL splits into predictions JSONL files, for every task.

The task comes from the model directory's config.json (:func:`tuneloop_trainer.tasks.task_for_model_dir`):
speech-to-text models transcribe (greedy CTC), chat models reply to each conversation (greedy generation). One
output row per input row, in input order, ``{"id", "reference", "hypothesis", "latency_ms", ...}`` plus the task's
extra fields and every other input field (see :mod:`tuneloop_trainer.speech_task` and
:mod:`tuneloop_trainer.chat_task`), so the gate can slice without re-reading the dataset.

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

from tuneloop_trainer import staging
from tuneloop_trainer.modeling import check_model_dir
from tuneloop_trainer.spec import EvaluateArguments
from tuneloop_trainer.speech_task import transcribe_rows  # noqa: F401  (callers import it from here)
from tuneloop_trainer.tasks import task_for_model_dir
from tuneloop_trainer.train import configure_threads

log = logging.getLogger(__name__)


def main(args: EvaluateArguments) -> list[Path]:
    """Predict each ``args.data`` file with ``args.model_dir`` into its ``args.output``; returns the local files
    written (for a remote output, the scratch copy that was uploaded)."""
    configure_threads()
    model_dir = staging.stage_dir(args.model_dir, "model_dir")
    check_model_dir(model_dir, "model_dir")
    task = task_for_model_dir(model_dir)
    splits = [task.read_rows(staging.stage_split(data, "data"), training=False) for data in args.data]  # all first
    processor, model = task.load_processor(model_dir), task.load_inference_model(model_dir)
    written = []
    for rows, output in zip(splits, args.output, strict=True):
        start = time.perf_counter()
        path = write_jsonl_atomic(staging.working_file(output), task.predict_rows(rows, model, processor, args))
        log.info("wrote %d %s predictions to %s in %.1f s", len(rows), task.name, path, time.perf_counter() - start)
        if staging.is_remote(output):
            staging.upload_file(path, output)
        written.append(path)
    return written


def write_jsonl_atomic(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write to a hidden temp file next to ``path`` and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    tmp.replace(path)
    return path
