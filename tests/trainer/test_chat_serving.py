"""The chat MLflow serving model: log from code, load back, reply exactly like ``evaluate``."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
from transformers import AutoModelForCausalLM

from tuneloop_trainer import CHAT_SERVING_REQUIREMENTS, serving_path, serving_signature
from tuneloop_trainer.chat_data import read_chat_rows
from tuneloop_trainer.chat_modeling import load_tokenizer
from tuneloop_trainer.chat_task import reply_rows

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


def test_serving_path_picks_the_tasks_file_without_importing_torch() -> None:
    code = ("import sys, tuneloop_trainer as t; assert t.serving_path().endswith('/serving.py'); "
            "assert t.serving_path('speech-to-text').endswith('/serving.py'); "
            "assert t.serving_path('chat').endswith('/serving_chat.py'); assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": ":".join(sys.path)})
    with pytest.raises(ValueError, match="task must be one of"):
        serving_path("translation")


def test_serving_chat_imports_nothing_else_from_the_trainer() -> None:
    tree = ast.parse(Path(serving_path("chat")).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert not any(name.startswith("tuneloop") for name in imported), imported  # MLflow copies this file alone


def log_and_load(model_dir: Path, with_signature: bool = True) -> Any:
    """Log the chat serving model into the test's tracking store and load it back as serving does."""
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="model", python_model=serving_path("chat"),
                                       artifacts={"model": str(model_dir)}, pip_requirements=CHAT_SERVING_REQUIREMENTS,
                                       signature=serving_signature("chat") if with_signature else None)
    return mlflow.pyfunc.load_model(info.model_uri)


def conversations(dataset: Path) -> tuple[list[dict[str, Any]], list[list[dict[str, str]]]]:
    rows = read_chat_rows(dataset / "eval.jsonl", training=False)
    return rows, [[{"role": m["role"], "content": m["content"]} for m in row["messages"][:-1]] for row in rows]


def test_round_trip_through_mlflow(tracking: str, trained_chat_run: Path, chat_dataset: Path) -> None:
    model_dir = trained_chat_run / "model"
    served = log_and_load(model_dir)
    rows, prompts = conversations(chat_dataset)
    model, tokenizer = AutoModelForCausalLM.from_pretrained(model_dir).eval(), load_tokenizer(model_dir)

    replies = served.predict(prompts, params={"max_new_tokens": 8})
    assert isinstance(replies, list) and len(replies) == len(rows) and all(isinstance(r, str) for r in replies)
    # The served model replies exactly like `evaluate`.
    evaluated = reply_rows(rows, model, tokenizer, batch_size=16, max_new_tokens=8)
    assert replies == [p["hypothesis"] for p in evaluated]
    assert served.predict(pd.DataFrame({"messages": prompts}), params={"max_new_tokens": 8}) == replies
    assert served.predict(prompts[2], params={"max_new_tokens": 8}) == replies[2:3]  # one conversation
    first_tokens = served.predict(prompts, params={"max_new_tokens": 1})
    assert first_tokens == [p["hypothesis"] for p in reply_rows(rows, model, tokenizer, 16, max_new_tokens=1)]
    assert first_tokens != replies  # the param reached predict
    # a server's request: the replies with their token counts (the prompt as templated; the reply's stop included)
    usage = served.predict(prompts, params={"max_new_tokens": 8, "with_usage": True})
    assert list(usage.columns) == ["reply", "prompt_tokens", "completion_tokens"] and usage["reply"].tolist() == replies
    templated = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    assert usage["prompt_tokens"].tolist() == [len(tokenizer(t, add_special_tokens=False)["input_ids"])
                                               for t in templated]
    # evaluate counts a reply's tokens without its end-of-turn token; billing counts it, unless the reply was cut off
    assert usage["completion_tokens"].tolist() == [min(p["generated_tokens"] + 1, 8) for p in evaluated]


def test_without_the_signature_params_are_dropped_and_the_default_applies(
        tracking: str, trained_chat_run: Path, chat_dataset: Path) -> None:
    served = log_and_load(trained_chat_run / "model", with_signature=False)
    _, prompts = conversations(chat_dataset)
    assert served.predict(prompts, params={"max_new_tokens": 1}) == served.predict(prompts)
    assert serving_signature() is None and serving_signature("speech-to-text") is None


def test_a_malformed_conversation_is_a_clear_error(tracking: str, trained_chat_run: Path) -> None:
    served = log_and_load(trained_chat_run / "model")
    with pytest.raises(ValueError, match=r"a conversation must be a non-empty list of \{role, content\} dicts"):
        served.predict([["hello"]])
    with pytest.raises(ValueError, match="expected a DataFrame with a 'messages' column"):
        served.predict(pd.DataFrame({"text": ["hi"]}))
