"""MLflow experiment tracking for one pipeline run.

Each Airflow DAG run owns exactly one MLflow run, found again by its ``airflow_run_id`` tag, so a retried task
logs into the same MLflow run instead of starting a new one. mlflow is imported inside functions: importing this
module stays cheap for DAG parsing.
"""

from __future__ import annotations

import logging
from typing import Any

from tuneloop import storage
from tuneloop.config import TuneloopConfig
from tuneloop.storage import StoragePath

log = logging.getLogger(__name__)

RUN_TAG = "airflow_run_id"


def _client(config: TuneloopConfig):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=config.tracking_uri, registry_uri=config.registry_uri)


def experiment_id(config: TuneloopConfig) -> str:
    """Return the configured experiment's id, creating it (with the configured artifact location) if absent."""
    client = _client(config)
    found = client.get_experiment_by_name(config.mlflow.experiment_name)
    if found is not None:
        return found.experiment_id
    config.home.mkdir(parents=True, exist_ok=True)
    try:
        return client.create_experiment(config.mlflow.experiment_name, artifact_location=config.artifact_location)
    except Exception:  # created concurrently by another task: read it back
        found = client.get_experiment_by_name(config.mlflow.experiment_name)
        if found is None:
            raise
        return found.experiment_id


def ensure_run(config: TuneloopConfig, airflow_run_id: str, *, dag_id: str = "finetune_weekly") -> str:
    """Return the MLflow run id for ``airflow_run_id``, creating the run on first use (idempotent)."""
    client = _client(config)
    exp = experiment_id(config)
    quoted = airflow_run_id.replace("'", "\\'")
    runs = client.search_runs([exp], filter_string=f"tags.{RUN_TAG} = '{quoted}'", max_results=1)
    if runs:
        return runs[0].info.run_id
    run = client.create_run(exp, run_name=airflow_run_id, tags={RUN_TAG: airflow_run_id, "airflow_dag_id": dag_id})
    log.info("created MLflow run %s for %s", run.info.run_id, airflow_run_id)
    return run.info.run_id


def log_params(config: TuneloopConfig, run_id: str, params: dict[str, Any]) -> None:
    """Log params, skipping keys already logged (MLflow refuses to change a logged param; retries re-log)."""
    from mlflow.entities import Param

    client = _client(config)
    existing = client.get_run(run_id).data.params
    fresh = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in existing]
    if fresh:
        client.log_batch(run_id, params=fresh)


def log_metrics(config: TuneloopConfig, run_id: str, metrics: dict[str, float]) -> None:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    values = [Metric(k, float(v), now, 0) for k, v in metrics.items() if v is not None]
    if values:
        _client(config).log_batch(run_id, metrics=values)


def log_metric_history(config: TuneloopConfig, run_id: str, rows: list[dict[str, float]], *,
                       prefix: str = "", step_key: str = "step") -> None:
    """Metrics per step (e.g. a managed job's result file): each row's values at its ``step``, names prefixed."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    values = [Metric(f"{prefix}{key}", float(value), now, int(row[step_key]))
              for row in rows for key, value in row.items() if key != step_key]
    for start in range(0, len(values), 1000):  # MLflow's log_batch takes at most 1000 metrics per call
        _client(config).log_batch(run_id, metrics=values[start:start + 1000])


def set_tags(config: TuneloopConfig, run_id: str, tags: dict[str, Any]) -> None:
    client = _client(config)
    for key, value in tags.items():
        client.set_tag(run_id, key, str(value))


def log_artifact(config: TuneloopConfig, run_id: str, path: StoragePath, artifact_path: str | None = None) -> None:
    """Log a file, local or in object storage (MLflow's client uploads local files)."""
    with storage.local_file(path) as local:
        _client(config).log_artifact(run_id, str(local), artifact_path)


def log_dataset(config: TuneloopConfig, run_id: str, dataset_dir: StoragePath, dataset_id: str, context: str) -> None:
    """Record a dataset split as an MLflow dataset input: name ``<dataset id>-<split>``, source the split's file,
    context tag ``train`` / ``eval``, schema and profile of its rows.

    Values are read as the JSONL holds them (``dtype=False``): pandas would otherwise guess per dataset, logging
    ``model_version: "3"`` as a number and a whole-second ``duration_s`` as an integer.
    """
    import pandas as pd
    import mlflow.data
    from mlflow.entities import DatasetInput, InputTag

    split = dataset_dir / f"{context}.jsonl"
    with storage.local_file(split) as local:
        frame = pd.read_json(local, lines=True, dtype=False) if local.stat().st_size else pd.DataFrame()
    # The target column: a speech row's transcript; a chat row's target is the last of its messages, no column.
    targets = "text" if "text" in frame.columns else None
    dataset = mlflow.data.from_pandas(frame, source=storage.uri(split), name=f"{dataset_id}-{context}",
                                      targets=targets)
    entity = dataset._to_mlflow_entity()
    _client(config).log_inputs(
        run_id, datasets=[DatasetInput(entity, tags=[InputTag("mlflow.data.context", context)])]
    )


def run_url(config: TuneloopConfig, run_id: str, ui_base: str = "http://localhost:5000") -> str:
    """Link to the run in the MLflow UI (used in task logs and decision records)."""
    return f"{ui_base}/#/experiments/{experiment_id(config)}/runs/{run_id}"


def logged_training(config: TuneloopConfig, airflow_run_id: str) -> tuple[int | None, list[Any]] | None:
    """The training's total steps and the steps it logged so far (``train_loss``, every ``logging_steps``), read
    from the DAG run's MLflow run (found by its tag, never created: a page looking must not create runs), for the
    status page's progress bar. None when there is no such run yet."""
    from tuneloop.overview import MetricPoint

    client = _client(config)
    found = client.get_experiment_by_name(config.mlflow.experiment_name)
    if found is None:
        return None
    quoted = airflow_run_id.replace("'", "\\'")
    runs = client.search_runs([found.experiment_id], filter_string=f"tags.{RUN_TAG} = '{quoted}'", max_results=1)
    if not runs:
        return None
    total = runs[0].data.params.get("total_steps")
    history = client.get_metric_history(runs[0].info.run_id, "train_loss")
    return (int(total) if total and total.isdigit() else None,
            [MetricPoint(step=m.step, timestamp=m.timestamp / 1000) for m in history])
