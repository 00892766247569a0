"""The training-backend interface: run the trainer's ``train`` and ``evaluate`` commands somewhere.

Every backend runs the same trainer command line (``python -m tuneloop_trainer ...``); only where it runs and how
files get there differ. Steps exchange files (spec, model dir, predictions), never Python objects.
"""

from __future__ import annotations

from pathlib import Path
from collections.abc import Sequence
from typing import Callable, Protocol

LogLine = Callable[[str], None]


class TrainerFailed(RuntimeError):
    """The trainer exited with an error; the message carries the exit status and the end of its log."""


class TrainingBackend(Protocol):
    name: str

    def train(self, spec_path: Path, *, log_line: LogLine) -> None:
        """Run ``train --spec spec_path``; outputs land in the spec's output_uri. Raise TrainerFailed."""

    def evaluate(
        self, model_dir: Path, jobs: Sequence[tuple[Path, Path]], *, batch_size: int, log_line: LogLine
    ) -> None:
        """Transcribe each ``(data_path, output_path)`` of ``jobs`` with the model in ``model_dir`` (predictions
        JSONL), loading the model once."""
