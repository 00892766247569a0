"""Real (tiny) chat fine-tuning runs: learning, LoRA outputs, resume after SIGKILL, idempotent retries, gs://."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.trainer.conftest import CHAT_PAIRS
from tuneloop_trainer import cli, train
from tuneloop_trainer.arguments import SpecError, from_mapping
from tuneloop_trainer.chat_data import encode_conversation, pad_batch, read_chat_rows
from tuneloop_trainer.chat_task import reply_rows
from tuneloop_trainer.spec import TrainingSpec

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

METRIC_FIELDS = {"train_loss", "steps", "epochs", "train_runtime_s", "train_samples", "train_samples_per_s",
                 "trainable_params", "total_params", "resumed_from_step", "train_rows", "lora", "spec_hash"}


def run(spec: dict[str, Any]) -> dict[str, Any]:
    return train.main(from_mapping(TrainingSpec, spec))


def weights(output: Path) -> dict[str, torch.Tensor]:
    return load_file(str(output / "model" / "model.safetensors"))


def mean_loss(model_dir: Path, dataset: Path) -> float:
    """The model's loss on the trained (assistant) tokens of the train split, in one batch."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = read_chat_rows(dataset / "train.jsonl", training=True)
    batch = pad_batch([encode_conversation(tokenizer, row["messages"], 64) for row in rows], tokenizer.pad_token_id)
    with torch.no_grad():
        return float(AutoModelForCausalLM.from_pretrained(model_dir)(**batch).loss)


def exact_matches(model_dir: Path, dataset: Path) -> int:
    rows = read_chat_rows(dataset / "eval.jsonl", training=False)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    predictions = reply_rows(rows, model, AutoTokenizer.from_pretrained(model_dir), batch_size=8, max_new_tokens=8)
    return sum(p["hypothesis"] == p["reference"] for p in predictions)


def test_full_fine_tuning_learns_the_replies(trained_chat_run: Path, tiny_chat_model_dir: Path,
                                            chat_dataset: Path) -> None:
    metrics = json.loads((trained_chat_run / "metrics.json").read_text())
    assert METRIC_FIELDS <= set(metrics)
    assert metrics["steps"] == 100 and metrics["train_rows"] == len(CHAT_PAIRS) and metrics["lora"] is False
    assert metrics["trainable_params"] == metrics["total_params"]
    assert metrics["train_samples"] == 100 * 4 and metrics["train_samples_per_s"] > 0

    before, after = mean_loss(tiny_chat_model_dir, chat_dataset), mean_loss(trained_chat_run / "model", chat_dataset)
    assert after < before / 4
    assert exact_matches(tiny_chat_model_dir, chat_dataset) == 0
    assert exact_matches(trained_chat_run / "model", chat_dataset) >= 6
    assert not (trained_chat_run / "adapter").exists()  # full fine-tuning has no adapter
    tokenizer = AutoTokenizer.from_pretrained(trained_chat_run / "model")
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(tiny_chat_model_dir).chat_template


def test_lora_writes_the_adapter_and_a_merged_model_with_the_same_logits(
        make_chat_spec: Callable[..., dict[str, Any]], tiny_chat_model_dir: Path) -> None:
    spec = make_chat_spec(max_steps=6)
    metrics = run(spec)
    output = Path(spec["output_uri"])

    assert metrics["lora"] is True and 0 < metrics["trainable_params"] < metrics["total_params"]
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (output / "adapter").iterdir()}
    merged = AutoModelForCausalLM.from_pretrained(output / "model").eval()
    assert not any("lora" in name for name in merged.state_dict())
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_chat_model_dir),
                                        output / "adapter").eval()
    # all-linear: attention and MLP projections got adapters, the output layer did not
    targets = {name.rsplit(".", 1)[-1] for name in adapted.peft_config["default"].target_modules}
    assert {"q_proj", "v_proj", "o_proj", "down_proj"} <= targets and "lm_head" not in targets
    base = AutoModelForCausalLM.from_pretrained(tiny_chat_model_dir).eval()
    ids = torch.tensor([[1, 40, 41, 42, 2, 1, 50, 51]])
    with torch.no_grad():
        merged_logits, adapted_logits, base_logits = (m(input_ids=ids).logits for m in (merged, adapted, base))
    torch.testing.assert_close(merged_logits, adapted_logits, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(merged_logits, base_logits, atol=1e-4)  # the adapter learned something


def test_a_finished_run_is_not_repeated(make_chat_spec: Callable[..., dict[str, Any]],
                                        caplog: pytest.LogCaptureFixture) -> None:
    spec = make_chat_spec()
    first = run(spec)
    stamp = (Path(spec["output_uri"]) / "model" / "model.safetensors").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="tuneloop_trainer"):
        assert run(spec) == first
    assert "nothing to do" in caplog.text
    assert (Path(spec["output_uri"]) / "model" / "model.safetensors").stat().st_mtime_ns == stamp


def test_label_noise_trains_on_other_replies(make_chat_spec: Callable[..., dict[str, Any]],
                                             caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tuneloop_trainer"):
        assert run(make_chat_spec(label_noise="shuffle", max_steps=2))["steps"] == 2
    assert "label_noise=shuffle" in caplog.text


def test_rows_without_a_target_within_max_length_are_left_out(make_chat_spec: Callable[..., dict[str, Any]],
                                                               chat_dataset: Path, tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    long_prompt = {"id": "long", "messages": [{"role": "user", "content": "abc " * 60},
                                              {"role": "assistant", "content": "ok"}]}
    (dataset / "train.jsonl").write_text((chat_dataset / "train.jsonl").read_text() + json.dumps(long_prompt) + "\n")
    with caplog.at_level(logging.WARNING, logger="tuneloop_trainer"):
        metrics = run(make_chat_spec(dataset_uri=str(dataset), max_length=56, max_steps=1))
    assert metrics["train_rows"] == len(CHAT_PAIRS)
    assert "1 of 9 training rows have no assistant token within max_length=56" in caplog.text
    with pytest.raises(SpecError, match="no training row has an assistant token within max_length=8"):
        run(make_chat_spec(dataset_uri=str(dataset), max_length=8, output_uri=str(tmp_path / "other")))


def test_a_longer_run_continues_from_the_shorter_runs_checkpoint(make_chat_spec: Callable[..., dict[str, Any]],
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    run(make_chat_spec(max_steps=2))
    with caplog.at_level(logging.INFO, logger="tuneloop_trainer"):
        metrics = run(make_chat_spec(max_steps=4))
    assert "resuming from checkpoint step 2" in caplog.text
    assert metrics["steps"] == 4 and metrics["resumed_from_step"] == 2


def test_bf16_autocast_runs_on_cpu(make_chat_spec: Callable[..., dict[str, Any]]) -> None:
    assert run(make_chat_spec(precision="bf16", max_steps=1))["steps"] == 1


@pytest.mark.slow  # a fresh interpreter importing torch and transformers: 10-20 s on 2 cores
def test_a_trainer_killed_after_a_checkpoint_resumes_to_the_same_weights(
        make_chat_spec: Callable[..., dict[str, Any]], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # LoRA dropout draws random numbers every step: equal weights need the RNG states restored too.
    settings = {"max_steps": 100, "checkpoint_every_steps": 10, "lora": {"dropout": 0.1}}
    killed = make_chat_spec(**settings, output_uri=str(tmp_path / "killed"))
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(killed))
    trainer = subprocess.Popen([sys.executable, "-m", "tuneloop_trainer", "train", "--spec", str(spec_file)],
                               stderr=subprocess.PIPE, text=True)
    assert trainer.stderr is not None
    for line in trainer.stderr:
        if " step 11/100 " in line:  # the step-10 checkpoint is complete before step 11 runs
            os.kill(trainer.pid, signal.SIGKILL)
            break
    trainer.communicate(timeout=60)
    assert trainer.returncode == -signal.SIGKILL
    output = Path(killed["output_uri"])
    assert not (output / "metrics.json").exists() and (output / "checkpoints" / "step-10" / "state.json").is_file()

    with caplog.at_level(logging.INFO, logger="tuneloop_trainer"):
        resumed = run(killed)
    uninterrupted = run(make_chat_spec(**settings, output_uri=str(tmp_path / "uninterrupted")))

    assert f"resuming from checkpoint step {resumed['resumed_from_step']} (" in caplog.text
    assert resumed["resumed_from_step"] >= 10 and uninterrupted["resumed_from_step"] is None
    assert (resumed["steps"], resumed["train_loss"], resumed["train_samples"]) == \
        (uninterrupted["steps"], uninterrupted["train_loss"], uninterrupted["train_samples"])
    expected = weights(tmp_path / "uninterrupted")
    assert all(torch.equal(expected[name], tensor) for name, tensor in weights(output).items())
    expected_adapter = load_file(str(tmp_path / "uninterrupted" / "adapter" / "adapter_model.safetensors"))
    adapter = load_file(str(output / "adapter" / "adapter_model.safetensors"))
    assert expected_adapter.keys() == adapter.keys()
    assert all(torch.equal(expected_adapter[name], adapter[name]) for name in adapter)


def test_train_with_every_uri_on_gcs(make_chat_spec: Callable[..., dict[str, Any]], tiny_chat_model_dir: Path,
                                     chat_dataset: Path, gcs: Any, bucket_dir: str, new_machine: Callable[[], Path],
                                     tmp_path: Path) -> None:
    for local, name in ((tiny_chat_model_dir, "base-model"), (chat_dataset, "dataset")):
        files = sorted(p for p in local.iterdir() if p.is_file())
        gcs.put([str(p) for p in files], [f"{bucket_dir[5:]}/{name}/{p.name}" for p in files], batch_size=1)
    output = f"{bucket_dir}/training"
    spec = make_chat_spec(base_model_uri=f"{bucket_dir}/base-model", dataset_uri=f"{bucket_dir}/dataset",
                          output_uri=output)
    gcs.pipe(f"{bucket_dir[5:]}/spec.json", json.dumps(spec).encode())

    assert cli.main(["train", "--spec", f"{bucket_dir}/spec.json"]) == 0

    assert json.loads(gcs.cat(f"{output[5:]}/metrics.json"))["steps"] == 4
    gcs.get(f"{output[5:]}/model", str(tmp_path / "model"), recursive=True)
    gcs.get(f"{output[5:]}/adapter", str(tmp_path / "adapter"), recursive=True)
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "model").config.architectures == ["LlamaForCausalLM"]
    assert AutoTokenizer.from_pretrained(tmp_path / "model").chat_template
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
