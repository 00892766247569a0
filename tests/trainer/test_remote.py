"""The trainer with every URI on gs:// (a GCS emulator), as in a pod or VM: the bucket is the source of truth, and
each run may be on a new machine with an empty scratch disk (``new_machine``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import Wav2Vec2ForCTC, Wav2Vec2Processor

from tuneloop_trainer import cli

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def key(uri: str) -> str:
    return uri.removeprefix("gs://")


@pytest.fixture
def remote_spec(make_spec: Callable[..., dict[str, Any]], remote_inputs: dict[str, str], bucket_dir: str, gcs: Any,
                ) -> Callable[..., str]:
    """Write a spec with every URI on gs:// to the bucket (keyword overrides as make_spec); returns its URI."""

    def write(**overrides: Any) -> str:
        spec = make_spec(**{"base_model_uri": remote_inputs["model"], "dataset_uri": remote_inputs["dataset"],
                            "output_uri": f"{bucket_dir}/training", **overrides})
        gcs.pipe(f"{key(bucket_dir)}/spec.json", json.dumps(spec).encode())
        return f"{bucket_dir}/spec.json"

    return write


def train(spec_uri: str) -> int:
    """The command line in this process; it logs to stderr (``capsys``), as in a pod's log."""
    return cli.main(["train", "--spec", spec_uri])


def checkpoints(gcs: Any, output: str) -> dict[str, list[str]]:
    """{step-N: its file names} under output/checkpoints in the bucket."""
    found: dict[str, list[str]] = {}
    for name in gcs.find(f"{key(output)}/checkpoints"):
        step, file = name.split("/checkpoints/", 1)[1].split("/", 1)
        found.setdefault(step, []).append(file)
    return found


def model_weights(gcs: Any, output: str, into: Path) -> dict[str, torch.Tensor]:
    into.mkdir(parents=True)
    gcs.get(f"{key(output)}/model/model.safetensors", str(into / "model.safetensors"))
    return load_file(str(into / "model.safetensors"))


@pytest.mark.slow  # a fresh interpreter importing torch and transformers: 10-20 s on 2 cores
def test_train_command_with_every_uri_on_gcs(remote_spec: Callable[..., str], gcs: Any, bucket_dir: str,
                                             gcs_emulator: str, new_machine: Callable[[], Path],
                                             tmp_path: Path) -> None:
    spec_uri = remote_spec()
    env = {**os.environ, "STORAGE_EMULATOR_HOST": gcs_emulator, "TUNELOOP_TRAINER_SCRATCH": str(new_machine())}
    result = subprocess.run([sys.executable, "-m", "tuneloop_trainer", "train", "--spec", spec_uri], env=env,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr

    output = f"{bucket_dir}/training"
    assert f"staged {bucket_dir}/base-model -> " in result.stderr
    assert f"staged {bucket_dir}/dataset/train.jsonl -> " in result.stderr
    assert json.loads(gcs.cat(f"{key(output)}/metrics.json"))["steps"] == 3
    assert sorted(checkpoints(gcs, output)) == ["step-2", "step-3"]
    assert all("state.json" in files for files in checkpoints(gcs, output).values())
    gcs.get(f"{key(output)}/model", str(tmp_path / "downloaded"), recursive=True)
    assert type(Wav2Vec2ForCTC.from_pretrained(tmp_path / "downloaded")) is Wav2Vec2ForCTC
    assert len(Wav2Vec2Processor.from_pretrained(tmp_path / "downloaded").tokenizer) == 30


def test_a_finished_run_in_the_bucket_is_not_repeated_on_a_new_machine(
        remote_spec: Callable[..., str], gcs: Any, bucket_dir: str, new_machine: Callable[[], Path],
        capsys: pytest.CaptureFixture[str]) -> None:
    spec_uri = remote_spec(keep_checkpoints=1)
    assert train(spec_uri) == 0
    output = f"{bucket_dir}/training"
    assert {"config.json", "model.safetensors", "vocab.json"} <= {p.rsplit("/", 1)[1] for p in
                                                                  gcs.find(f"{key(output)}/model")}
    assert sorted(checkpoints(gcs, output)) == ["step-3"]  # step-2 pruned locally, then in the bucket
    first = gcs.info(f"{key(output)}/metrics.json")

    scratch = new_machine()
    capsys.readouterr()
    assert train(spec_uri) == 0

    assert f"{output} already holds a finished run of this spec" in capsys.readouterr().err
    assert gcs.info(f"{key(output)}/metrics.json")["generation"] == first["generation"]
    assert not scratch.exists()  # nothing staged, nothing trained


def test_a_new_machine_resumes_from_the_buckets_checkpoint_with_the_same_weights(
        remote_spec: Callable[..., str], gcs: Any, bucket_dir: str, new_machine: Callable[[], Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    spec_uri = remote_spec(max_steps=4)
    assert train(spec_uri) == 0
    output = f"{bucket_dir}/training"
    uninterrupted = model_weights(gcs, output, tmp_path / "uninterrupted")
    # What a pod killed while uploading the step-4 checkpoint leaves in the bucket: step-4 without its state.json
    # (uploaded last), no model, no metrics.
    gcs.rm([f"{key(output)}/checkpoints/step-4/state.json", f"{key(output)}/metrics.json"])
    gcs.rm(f"{key(output)}/model", recursive=True)

    new_machine()
    capsys.readouterr()
    assert train(spec_uri) == 0

    assert "resuming from checkpoint step 2" in capsys.readouterr().err
    assert json.loads(gcs.cat(f"{key(output)}/metrics.json"))["resumed_from_step"] == 2
    resumed = model_weights(gcs, output, tmp_path / "resumed")
    assert all(torch.equal(uninterrupted[name], resumed[name]) for name in uninterrupted)
    assert sorted(checkpoints(gcs, output)) == ["step-2", "step-4"]
    assert "state.json" in checkpoints(gcs, output)["step-4"]


def test_the_bucket_outvotes_checkpoints_left_on_the_local_disk(
        remote_spec: Callable[..., str], gcs: Any, bucket_dir: str, new_machine: Callable[[], Path],
        capsys: pytest.CaptureFixture[str]) -> None:
    spec_uri = remote_spec(max_steps=2)
    assert train(spec_uri) == 0
    gcs.rm(f"{key(bucket_dir)}/training", recursive=True)  # someone deleted the output to have it trained again

    capsys.readouterr()
    assert train(spec_uri) == 0  # same machine: its scratch still holds step-2

    assert "resuming from checkpoint" not in capsys.readouterr().err
    assert json.loads(gcs.cat(f"{key(bucket_dir)}/training/metrics.json"))["resumed_from_step"] is None


def test_evaluate_reads_model_and_data_from_gcs_and_writes_predictions_there(
        remote_inputs: dict[str, str], tiny_model_dir: Path, speech_dataset: Path, gcs: Any, bucket_dir: str,
        new_machine: Callable[[], Path], tmp_path: Path) -> None:
    outputs = [f"{bucket_dir}/predictions/candidate/{split}.jsonl" for split in ("train", "eval")]
    code = cli.main(["evaluate", "--model-dir", remote_inputs["model"],
                     "--data", f"{remote_inputs['dataset']}/train.jsonl", f"{remote_inputs['dataset']}/eval.jsonl",
                     "--output", *outputs, "--batch-size", "3"])
    assert code == 0
    local = tmp_path / "local-eval.jsonl"
    assert cli.main(["evaluate", "--model-dir", str(tiny_model_dir), "--data", str(speech_dataset / "eval.jsonl"),
                     "--output", str(local), "--batch-size", "3"]) == 0

    assert sorted(gcs.ls(f"{key(bucket_dir)}/predictions/candidate")) == sorted(map(key, outputs))  # no temp files
    remote = [json.loads(line) for line in gcs.cat(key(outputs[1])).decode().splitlines()]
    expected = [json.loads(line) for line in local.read_text().splitlines()]
    # the same transcripts as from local files, so every row's audio (relative or absolute gs://) was staged
    assert [(r["id"], r["hypothesis"]) for r in remote] == [(r["id"], r["hypothesis"]) for r in expected]
    assert len(gcs.cat(key(outputs[0])).decode().splitlines()) == 6


@pytest.mark.parametrize("field", ["dataset_uri", "base_model_uri"])
def test_a_missing_remote_input_exits_2_naming_the_field(
        remote_spec: Callable[..., str], bucket_dir: str, new_machine: Callable[[], Path], field: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    spec_uri = remote_spec(**{field: f"{bucket_dir}/nothing-here"})
    assert train(spec_uri) == 2
    assert f"error: {field} {bucket_dir}/nothing-here" in capsys.readouterr().err


def test_a_missing_remote_spec_exits_2(bucket_dir: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert train(f"{bucket_dir}/no-spec.json") == 2
    assert f"error: spec file {bucket_dir}/no-spec.json does not exist" in capsys.readouterr().err
