"""The chat task through the command line exactly as a backend runs it: ``python -m tuneloop_trainer ...``."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer


def trainer(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tuneloop_trainer", *args], capture_output=True, text=True,
                          timeout=300, check=False)


@pytest.mark.slow  # two fresh interpreters importing torch and transformers: 20-30 s on 2 cores
def test_init_model_then_train_a_chat_model(chat_corpus: Path, chat_dataset: Path, tmp_path: Path,
                                            write_spec: Callable[[dict[str, Any]], Path]) -> None:
    base = tmp_path / "base"
    result = trainer("init-model", "--task", "chat", "--corpus", str(chat_corpus), "--output", str(base),
                     "--vocab-size", "280", "--hidden-size", "32", "--num-hidden-layers", "1",
                     "--max-position-embeddings", "96", "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    tokenizer = AutoTokenizer.from_pretrained(base)
    assert (model.config.hidden_size, model.config.num_hidden_layers, model.config.max_position_embeddings) == \
        (32, 1, 96)
    assert len(tokenizer) == model.config.vocab_size == 280
    assert tokenizer.eos_token == "<|im_end|>" and "{% generation %}" in tokenizer.chat_template

    output = tmp_path / "out"
    spec = {"task": "chat", "base_model_uri": str(base), "dataset_uri": str(chat_dataset), "output_uri": str(output),
            "max_steps": 3, "batch_size": 4, "lora": {"target_modules": ["all-linear"]}}
    result = trainer("train", "--spec", str(write_spec(spec)), "--max-steps", "2", "--max-length", "96",
                     "--logging-steps", "1")
    assert result.returncode == 0, result.stderr
    assert "step 2/2 epoch 1.0 loss " in result.stderr
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["lora"] is True
    assert AutoModelForCausalLM.from_pretrained(output / "model").config.architectures == ["LlamaForCausalLM"]
    assert (output / "adapter" / "adapter_config.json").is_file()


def test_a_bad_chat_spec_exits_2_with_one_clear_line(write_spec: Callable[[dict[str, Any]], Path]) -> None:
    spec = {"task": "chat", "base_model_uri": "/m", "dataset_uri": "/d", "output_uri": "/o", "max_length": 4}
    result = trainer("train", "--spec", str(write_spec(spec)))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "error: max_length must be >= 8, got 4"
    assert "Traceback" not in result.stderr
