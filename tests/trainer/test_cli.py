"""The command line exactly as a backend runs it: ``python -m tuneloop_trainer ...`` in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


def trainer(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tuneloop_trainer", *args], capture_output=True, text=True,
                          timeout=300, check=False)


@pytest.mark.slow  # a fresh interpreter importing torch and transformers: 10-20 s on 2 cores
def test_train_with_spec_and_override(make_spec: Callable[..., dict[str, Any]],
                                      write_spec: Callable[[dict[str, Any]], Path]) -> None:
    spec = make_spec(max_steps=3)
    result = trainer("train", "--spec", str(write_spec(spec)), "--max-steps", "1", "--lora-enabled", "false")
    assert result.returncode == 0, result.stderr
    assert "step 1/1 epoch" in result.stderr
    metrics = json.loads((Path(spec["output_uri"]) / "metrics.json").read_text())
    assert metrics["steps"] == 1 and metrics["lora"] is False


def test_bad_input_exits_2_with_one_clear_line(write_spec: Callable[[dict[str, Any]], Path]) -> None:
    spec = {"task": "speech-to-text", "base_model_uri": "/m", "output_uri": "/o"}
    result = trainer("train", "--spec", str(write_spec(spec)))
    assert result.returncode == 2
    assert "error: missing required field 'dataset_uri'" in result.stderr
    assert "Traceback" not in result.stderr
