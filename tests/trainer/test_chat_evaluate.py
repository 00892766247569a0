"""Evaluating a chat model: one reply row per input row, in order, greedy and independent of batching."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoModelForCausalLM

from tuneloop_trainer import cli
from tuneloop_trainer.chat_data import read_chat_rows
from tuneloop_trainer.chat_modeling import load_tokenizer
from tuneloop_trainer.chat_task import reply_rows

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def eval_split(chat_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The memorised conversations plus a multi-turn one and one whose prompt is much longer, shuffled in order."""
    rows = read_jsonl(chat_dataset / "eval.jsonl")
    rows.insert(3, {"id": "multi", "messages": [
        {"role": "user", "content": "say hello"}, {"role": "assistant", "content": "hello there"},
        {"role": "user", "content": "count to three"}, {"role": "assistant", "content": "one two three"}],
        "domain": "chitchat"})
    rows.insert(1, {"id": "long", "messages": [{"role": "user", "content": "what is two plus two " * 4},
                                               {"role": "assistant", "content": "four"}], "domain": "math"})
    path = tmp_path_factory.mktemp("chat-eval") / "eval.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_evaluate_writes_one_reply_row_per_input_row(trained_chat_run: Path, eval_split: Path,
                                                     tmp_path: Path) -> None:
    output = tmp_path / "predictions" / "eval.jsonl"
    assert cli.main(["evaluate", "--model-dir", str(trained_chat_run / "model"), "--data", str(eval_split),
                     "--output", str(output), "--batch-size", "3", "--max-new-tokens", "8"]) == 0
    predictions, rows = read_jsonl(output), read_jsonl(eval_split)

    assert [p["id"] for p in predictions] == [r["id"] for r in rows]
    for prediction, row in zip(predictions, rows, strict=True):
        assert prediction["reference"] == row["messages"][-1]["content"]
        assert isinstance(prediction["hypothesis"], str)
        assert prediction["hypothesis"] == prediction["hypothesis"].strip()
        assert 1 <= prediction["generated_tokens"] <= 8 and prediction["latency_ms"] > 0
        assert "messages" not in prediction
        assert {k: v for k, v in row.items() if k not in ("id", "messages")} == \
            {k: prediction[k] for k in row if k not in ("id", "messages")}
    assert sum(p["hypothesis"] == p["reference"] for p in predictions) >= 6  # the memorised replies come back
    assert [p.name for p in output.parent.iterdir()] == ["eval.jsonl"]  # no temp file left behind


def test_generated_tokens_counts_the_reply_without_its_end_of_turn(trained_chat_run: Path, eval_split: Path) -> None:
    model_dir = trained_chat_run / "model"
    rows = read_chat_rows(eval_split, training=False)
    model, tokenizer = AutoModelForCausalLM.from_pretrained(model_dir).eval(), load_tokenizer(model_dir)
    finished = reply_rows(rows, model, tokenizer, batch_size=4, max_new_tokens=8)
    cut = reply_rows(rows, model, tokenizer, batch_size=4, max_new_tokens=1)

    for row in finished:
        if row["generated_tokens"] < 8:  # stopped at the end-of-turn token
            assert row["generated_tokens"] == len(tokenizer(row["hypothesis"], add_special_tokens=False).input_ids)
    assert [row["generated_tokens"] for row in cut] == [1] * len(rows)
    assert all(full["hypothesis"].startswith(short["hypothesis"]) for full, short in zip(finished, cut, strict=True))


def test_batched_replies_equal_one_at_a_time_replies(trained_chat_run: Path, eval_split: Path) -> None:
    model_dir = trained_chat_run / "model"
    rows = read_chat_rows(eval_split, training=False)
    model, tokenizer = AutoModelForCausalLM.from_pretrained(model_dir).eval(), load_tokenizer(model_dir)
    batched = reply_rows(rows, model, tokenizer, batch_size=5, max_new_tokens=8)
    single = reply_rows(rows, model, tokenizer, batch_size=1, max_new_tokens=8)
    assert [(r["hypothesis"], r["generated_tokens"]) for r in batched] == \
        [(r["hypothesis"], r["generated_tokens"]) for r in single]


def test_a_jobs_file_evaluates_speech_and_chat_models_together(trained_chat_run: Path, eval_split: Path,
                                                              tiny_model_dir: Path, speech_dataset: Path,
                                                              tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.json"
    jobs.write_text(json.dumps({"batch_size": 4, "max_new_tokens": 2, "jobs": [
        {"model_dir": str(trained_chat_run / "model"), "data": [str(eval_split)], "output": [str(tmp_path / "c")]},
        {"model_dir": str(tiny_model_dir), "data": [str(speech_dataset / "eval.jsonl")],
         "output": [str(tmp_path / "s")]}]}))
    assert cli.main(["evaluate-jobs", "--jobs", str(jobs)]) == 0
    chat, speech = read_jsonl(tmp_path / "c"), read_jsonl(tmp_path / "s")
    assert len(chat) == 10 and max(p["generated_tokens"] for p in chat) <= 2
    assert len(speech) == 4 and "generated_tokens" not in speech[0] and "voice" in speech[0]


def test_a_model_of_another_architecture_is_refused(trained_chat_run: Path, eval_split: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for item in (trained_chat_run / "model").iterdir():
        (model_dir / item.name).write_bytes(item.read_bytes())
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "architectures": ["LlamaForSequenceClassification"]}))
    assert cli.main(["evaluate", "--model-dir", str(model_dir), "--data", str(eval_split),
                     "--output", str(tmp_path / "p.jsonl")]) == 2
    assert "neither a *ForCTC (speech-to-text) nor a *ForCausalLM (chat) model" in capsys.readouterr().err


def test_a_chat_split_that_is_not_chat_rows_is_a_clear_error(trained_chat_run: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    split = tmp_path / "eval.jsonl"
    split.write_text(json.dumps({"id": "u1", "audio": "a.wav", "text": "hello"}) + "\n")
    assert cli.main(["evaluate", "--model-dir", str(trained_chat_run / "model"), "--data", str(split),
                     "--output", str(tmp_path / "p.jsonl")]) == 2
    assert f"{split}:1: field 'messages' must be a non-empty list" in capsys.readouterr().err
