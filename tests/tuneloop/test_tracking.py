"""What one run logs to MLflow when it exports its dataset, against a real local MLflow (sqlite)."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tuneloop.config import TuneloopConfig, load_config
from tuneloop.pipeline import PipelineRun, RunParams
from tuneloop.store import ErrorCaseStore

T0 = datetime(2026, 11, 19, tzinfo=timezone.utc)
COLOURS = ("red", "blue", "green", "gold", "pink", "grey")


@pytest.fixture
def config(tmp_path: Path, mlflow_template: Path) -> TuneloopConfig:
    shutil.copyfile(mlflow_template, tmp_path / "mlflow.db")
    file = tmp_path / "tuneloop.yaml"
    file.write_text("dataset: {min_eval_cases: 2}\n")
    return load_config(file, env={"TUNELOOP_HOME": str(tmp_path / "home"),
                                  "TUNELOOP__MLFLOW__TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"})


@pytest.fixture
def exported(config: TuneloopConfig, wav_factory) -> tuple[PipelineRun, dict]:
    """Six corrected cases (two voices, half without a model version) exported by one run."""
    store = ErrorCaseStore.from_config(config)
    for i, colour in enumerate(COLOURS):
        store.store_failed_case(wav_factory(f"{colour}.wav", seconds=1.25), "turn the light on",
                                f"turn the {colour} light on", metadata={"voice": f"v{i % 2}"},
                                model_version="3" if i % 2 else None, created_at=T0 + timedelta(hours=i))
    run = PipelineRun(config, "manual__tracking", RunParams(reason="enough errors"), now=lambda: T0 + timedelta(1))
    return run, run.export_dataset()


def test_each_split_is_logged_as_an_mlflow_dataset_input(config: TuneloopConfig, exported) -> None:
    run, result = exported
    dataset_id, dataset_dir = result["dataset_id"], Path(result["dataset_dir"])
    logged = MlflowClient(config.tracking_uri).get_run(run.mlflow_run_id())

    inputs = {i.dataset.name: i for i in logged.inputs.dataset_inputs}
    assert sorted(inputs) == [f"{dataset_id}-eval", f"{dataset_id}-train"]
    for split, rows in (("train", 4), ("eval", 2)):
        entry = inputs[f"{dataset_id}-{split}"]
        assert {t.key: t.value for t in entry.tags} == {"mlflow.data.context": split}
        dataset = entry.dataset
        assert dataset.source_type == "local"
        assert json.loads(dataset.source) == {"uri": str(dataset_dir / f"{split}.jsonl")}
        assert json.loads(dataset.profile)["num_rows"] == rows == result["counts"][split]
        assert len(dataset.digest) == 8
        # the schema is the JSONL contract's, whatever values this dataset happens to hold
        columns = {c["name"]: (c["type"], c.get("required", True))
                   for c in json.loads(dataset.schema)["mlflow_colspec"]}
        assert columns == {
            "id": ("string", True), "audio": ("string", True), "text": ("string", True),
            "duration_s": ("double", True), "sample_rate": ("long", True), "created_at": ("string", True),
            "model_version": ("string", False), "source": ("string", True), "voice": ("string", True),
        }
    assert inputs[f"{dataset_id}-train"].dataset.digest != inputs[f"{dataset_id}-eval"].dataset.digest


def test_the_run_records_the_dataset_id_counts_and_manifest(config: TuneloopConfig, exported) -> None:
    run, result = exported
    client = MlflowClient(config.tracking_uri)
    logged = client.get_run(run.mlflow_run_id())

    assert logged.data.params == {"dataset_id": result["dataset_id"], "reason": "enough errors"}
    assert logged.data.metrics == {"dataset_train_rows": 4, "dataset_eval_rows": 2, "dataset_quarantined": 0,
                                   "dataset_excluded_suite_items": 0}
    assert logged.data.tags["airflow_run_id"] == "manual__tracking"
    manifest = Path(client.download_artifacts(logged.info.run_id, "dataset/manifest.json", str(run.config.home)))
    assert json.loads(manifest.read_text())["dataset_id"] == result["dataset_id"]


def test_a_retried_export_logs_the_same_dataset_once(config: TuneloopConfig, exported) -> None:
    run, first = exported
    client = MlflowClient(config.tracking_uri)
    before = client.get_run(run.mlflow_run_id()).inputs.dataset_inputs

    assert run.export_dataset()["dataset_id"] == first["dataset_id"]  # a task retry in the same Airflow run
    after = client.get_run(run.mlflow_run_id()).inputs.dataset_inputs
    assert [(i.dataset.name, i.dataset.digest) for i in after] == [(i.dataset.name, i.dataset.digest) for i in before]
    assert len(client.search_runs([client.get_experiment_by_name("tuneloop").experiment_id])) == 1
