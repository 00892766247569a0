"""The ``local`` backend: the trainer as a subprocess on this machine (CPU or a local GPU).

The subprocess keeps torch out of the Airflow worker's memory and gives the trainer the same command line it has
in a pod or VM. Its output is streamed line by line into the task log.
"""

from __future__ import annotations

import collections
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tuneloop.backends.base import LogLine, TrainerFailed
from tuneloop.backends.command import ENTRYPOINT, evaluate_args, train_args


class LocalBackend:
    name = "local"

    def __init__(self, *, timeout_s: float = 7200, python: str = sys.executable) -> None:
        self.timeout_s = timeout_s
        self.python = python

    def train(self, spec_path: Path, *, log_line: LogLine) -> None:
        self.run(train_args(str(spec_path)), log_line=log_line)

    def evaluate(
        self, model_dir: Path, jobs: Sequence[tuple[Path, Path]], *, batch_size: int, log_line: LogLine
    ) -> None:
        self.run(evaluate_args(str(model_dir), [(str(d), str(o)) for d, o in jobs], batch_size), log_line=log_line)

    def run(self, args: list[str], *, log_line: LogLine) -> None:
        """Run ``python -m tuneloop_trainer <args>``; raise TrainerFailed with the log's tail on a non-zero exit."""
        command = [self.python, *ENTRYPOINT[1:], *args]  # this venv's python instead of "python"
        log_line("running: " + " ".join(command))
        tail: collections.deque[str] = collections.deque(maxlen=30)
        deadline = time.monotonic() + self.timeout_s
        with subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        ) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip()
                tail.append(line)
                log_line(line)
                if time.monotonic() > deadline:
                    proc.kill()
                    raise TrainerFailed(f"trainer exceeded {self.timeout_s:.0f} s and was killed: {command}")
            code = proc.wait()
        if code != 0:
            raise TrainerFailed(f"trainer exited with status {code}: {' '.join(args[:1])}\n" + "\n".join(tail))
