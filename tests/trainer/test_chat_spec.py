"""The chat task on the shared spec: task name, max_length, LoRA all-linear, evaluate and init-model arguments."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tuneloop_trainer import cli
from tuneloop_trainer.arguments import SpecError, from_mapping
from tuneloop_trainer.spec import ChatModelSize, EvaluateArguments, TrainingSpec

MINIMAL = {"task": "chat", "base_model_uri": "/m", "dataset_uri": "/d", "output_uri": "/o"}


def test_chat_is_a_task_with_the_shared_defaults() -> None:
    spec = from_mapping(TrainingSpec, MINIMAL)
    assert spec.task == "chat" and spec.max_length == 512
    assert (spec.seed, spec.batch_size, spec.precision, spec.label_noise) == (0, 8, "fp32", "none")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"max_length": 7}, "max_length must be >= 8"),
        ({"max_length": "64"}, "'max_length' must be a number"),
        ({"lora": {"target_modules": ["all-linear", "q_proj"]}}, "'all-linear' stands alone"),
        ({"task": "chat-completion"}, "task must be one of speech-to-text, chat"),
    ],
)
def test_invalid_chat_values_are_named(override: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        from_mapping(TrainingSpec, {**MINIMAL, **override})


def test_all_linear_is_passed_to_peft_as_its_string() -> None:
    spec = from_mapping(TrainingSpec, {**MINIMAL, "lora": {"target_modules": ["all-linear"]}})
    assert spec.lora.peft_target_modules() == "all-linear"
    named = from_mapping(TrainingSpec, {**MINIMAL, "lora": {"target_modules": ["q_proj", "v_proj"]}})
    assert named.lora.peft_target_modules() == ["q_proj", "v_proj"]


def test_max_length_is_part_of_the_spec_hash() -> None:
    short = from_mapping(TrainingSpec, {**MINIMAL, "max_length": 64})
    long = from_mapping(TrainingSpec, {**MINIMAL, "max_length": 128})
    assert short.spec_hash() != long.spec_hash() and short.resume_key() != long.resume_key()


def test_max_length_is_a_command_line_option(tmp_path: Path) -> None:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(MINIMAL))
    spec = cli.load_spec(cli.build_parser().parse_args(["train", "--spec", str(path), "--max-length", "96"]))
    assert spec.max_length == 96


def test_evaluate_arguments_take_max_new_tokens() -> None:
    args = from_mapping(EvaluateArguments, {"model_dir": "/m", "data": ["a"], "output": ["b"]})
    assert args.max_new_tokens == 64
    with pytest.raises(SpecError, match="max_new_tokens must be >= 1"):
        from_mapping(EvaluateArguments, {"model_dir": "/m", "data": ["a"], "output": ["b"], "max_new_tokens": 0})


def test_a_jobs_file_shares_max_new_tokens_with_every_job(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.json"
    jobs.write_text(json.dumps({"batch_size": 4, "max_new_tokens": 12, "jobs": [
        {"model_dir": "/a", "data": ["x"], "output": ["y"]},
        {"model_dir": "/b", "data": ["x"], "output": ["z"], "max_new_tokens": 3}]}))
    requests = cli.load_jobs(str(jobs))
    assert [(r.batch_size, r.max_new_tokens) for r in requests] == [(4, 12), (4, 3)]


def test_chat_model_size_is_validated() -> None:
    assert ChatModelSize().hidden_size == 64 and ChatModelSize().vocab_size == 512
    with pytest.raises(SpecError, match="must divide hidden_size"):
        ChatModelSize(hidden_size=30, num_attention_heads=4)
    with pytest.raises(SpecError, match="vocab_size must be >= 260"):
        ChatModelSize(vocab_size=100)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--task", "chat"], "needs --corpus FILE"),
        (["--task", "chat", "--corpus", "c.txt", "--conv-dim", "8", "8"], "--conv-dim: only for --task speech-to-text"),
        (["--vocab-size", "300"], "--vocab-size: only for --task chat"),
        (["--corpus", "c.txt"], "--corpus is for --task chat"),
    ],
)
def test_init_model_options_of_the_other_task_are_refused(argv: list[str], message: str, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["init-model", "--output", str(tmp_path / "m"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
