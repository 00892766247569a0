"""Real (tiny) training runs: outputs, LoRA vs full, resume, idempotent retries, bad datasets."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import Wav2Vec2ForCTC, Wav2Vec2Processor

from tuneloop_trainer import train
from tuneloop_trainer.arguments import SpecError, from_mapping
from tuneloop_trainer.data import read_rows, shuffle_transcripts
from tuneloop_trainer.spec import TrainingSpec

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

METRIC_FIELDS = {"train_loss", "steps", "epochs", "train_runtime_s", "trainable_params", "total_params",
                 "resumed_from_step", "train_rows", "lora"}


def run(spec: dict[str, Any]) -> dict[str, Any]:
    return train.main(from_mapping(TrainingSpec, spec))


def weights(output: Path) -> dict[str, torch.Tensor]:
    return load_file(str(output / "model" / "model.safetensors"))


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_training_writes_a_loadable_merged_model(make_spec: Callable[..., dict[str, Any]], lora: bool) -> None:
    spec = make_spec(lora={"enabled": lora})
    metrics = run(spec)
    output = Path(spec["output_uri"])

    assert METRIC_FIELDS <= set(metrics)
    assert json.loads((output / "metrics.json").read_text()) == metrics
    assert metrics["steps"] == 3 and metrics["train_rows"] == 6 and metrics["lora"] is lora
    assert metrics["resumed_from_step"] is None
    assert 0 < metrics["trainable_params"] < metrics["total_params"]  # the feature encoder stays frozen
    model = Wav2Vec2ForCTC.from_pretrained(output / "model")
    assert type(model) is Wav2Vec2ForCTC
    assert not any("lora" in name for name in model.state_dict())  # merged, plain model
    assert len(Wav2Vec2Processor.from_pretrained(output / "model").tokenizer) == 30
    assert sorted(p.name for p in (output / "checkpoints").iterdir()) == ["step-2", "step-3"]


def test_lora_trains_only_adapters_and_head(make_spec: Callable[..., dict[str, Any]]) -> None:
    full = run(make_spec(lora={"enabled": False}, output_uri=make_spec()["output_uri"] + "-full"))
    lora = run(make_spec())
    assert lora["trainable_params"] < full["trainable_params"]


def test_retry_after_a_crash_resumes_and_ends_with_the_same_weights(
        make_spec: Callable[..., dict[str, Any]], caplog: pytest.LogCaptureFixture) -> None:
    spec = make_spec(max_steps=4)
    run(spec)
    output = Path(spec["output_uri"])
    uninterrupted = weights(output)
    # What a crash between the step-2 checkpoint and the end leaves behind:
    shutil.rmtree(output / "model")
    (output / "metrics.json").unlink()
    shutil.rmtree(output / "checkpoints" / "step-4")

    with caplog.at_level(logging.INFO, logger="tuneloop_trainer"):
        metrics = run(spec)

    assert "resuming from checkpoint step 2" in caplog.text
    assert metrics["resumed_from_step"] == 2 and metrics["steps"] == 4
    resumed = weights(output)
    assert all(torch.equal(uninterrupted[name], resumed[name]) for name in uninterrupted)


def test_a_longer_run_continues_from_the_shorter_runs_checkpoint(
        make_spec: Callable[..., dict[str, Any]], caplog: pytest.LogCaptureFixture) -> None:
    run(make_spec(max_steps=2))
    with caplog.at_level(logging.INFO, logger="tuneloop_trainer"):
        metrics = run(make_spec(max_steps=5))
    assert "resuming from checkpoint step 2" in caplog.text
    assert metrics["steps"] == 5 and metrics["resumed_from_step"] == 2


def test_finished_run_is_not_repeated(make_spec: Callable[..., dict[str, Any]],
                                      caplog: pytest.LogCaptureFixture) -> None:
    spec = make_spec()
    first = run(spec)
    model_file = Path(spec["output_uri"]) / "model" / "model.safetensors"
    stamp = model_file.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="tuneloop_trainer"):
        second = run(spec)
    assert second == first
    assert model_file.stat().st_mtime_ns == stamp
    assert "nothing to do" in caplog.text


def test_progress_lines_have_the_documented_shape(make_spec: Callable[..., dict[str, Any]],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="tuneloop_trainer"):
        run(make_spec())
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert len(lines) == 3
    assert lines[-1].startswith("step 3/3 epoch 1.0 loss ")
    assert " lr " in lines[-1] and lines[-1].endswith("s/it)")


def test_shuffled_labels_are_a_derangement(speech_dataset: Path) -> None:
    rows = read_rows(speech_dataset / "train.jsonl")
    shuffled = shuffle_transcripts(rows, seed=0)
    assert sorted(r["text"] for r in shuffled) == sorted(r["text"] for r in rows)
    assert all(a["text"] != b["text"] for a, b in zip(rows, shuffled, strict=True))
    assert shuffle_transcripts(rows, seed=0) == shuffled


def test_label_noise_run_trains(make_spec: Callable[..., dict[str, Any]]) -> None:
    assert run(make_spec(label_noise="shuffle"))["steps"] == 3


def test_empty_train_split_is_a_clear_error(make_spec: Callable[..., dict[str, Any]], tmp_path: Path) -> None:
    dataset = tmp_path / "empty"
    dataset.mkdir()
    (dataset / "train.jsonl").write_text("")
    with pytest.raises(SpecError, match="empty train split"):
        run(make_spec(dataset_uri=str(dataset)))


def test_missing_dataset_is_a_clear_error(make_spec: Callable[..., dict[str, Any]], tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="dataset_uri .* does not exist"):
        run(make_spec(dataset_uri=str(tmp_path / "missing")))


def test_base_model_without_config_is_a_clear_error(make_spec: Callable[..., dict[str, Any]],
                                                     tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"base_model_uri .*\(no config.json\)"):
        run(make_spec(base_model_uri=str(tmp_path)))


def test_unknown_lora_target_is_a_clear_error(make_spec: Callable[..., dict[str, Any]]) -> None:
    with pytest.raises(SpecError, match="lora.target_modules"):
        run(make_spec(lora={"target_modules": ["no_such_module"]}))


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is allowed on a GPU")
def test_fp16_on_cpu_is_a_clear_error(make_spec: Callable[..., dict[str, Any]]) -> None:
    with pytest.raises(SpecError, match="fp16.*needs a CUDA GPU"):
        run(make_spec(precision="fp16"))


def test_bf16_autocast_runs_on_cpu(make_spec: Callable[..., dict[str, Any]]) -> None:
    assert run(make_spec(precision="bf16", max_steps=1))["steps"] == 1
