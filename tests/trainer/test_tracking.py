"""Training logs its parameters and loss curve to the MLflow run named in the spec."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from tuneloop_trainer import train
from tuneloop_trainer.arguments import SpecError, from_mapping
from tuneloop_trainer.spec import TrainingSpec

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def test_params_and_metrics_reach_the_existing_run(tracking: str, make_spec: Callable[..., dict[str, Any]]) -> None:
    run_id = mlflow.start_run().info.run_id
    mlflow.end_run()
    spec = make_spec(mlflow={"tracking_uri": tracking, "run_id": run_id})

    train.main(from_mapping(TrainingSpec, spec))

    run = MlflowClient(tracking).get_run(run_id)
    assert run.data.params["lora.r"] == "4" and run.data.params["learning_rate"] == "0.001"
    assert run.data.params["train_rows"] == "6"
    assert len(MlflowClient(tracking).get_metric_history(run_id, "train_loss")) == 3
    assert run.data.metrics["train_steps"] == 3
    assert {"train_loss_mean", "train_runtime_s", "trainable_params", "total_params"} <= set(run.data.metrics)


def test_unknown_run_is_a_clear_error(tracking: str, make_spec: Callable[..., dict[str, Any]]) -> None:
    spec = make_spec(mlflow={"tracking_uri": tracking, "run_id": "0" * 32})
    with pytest.raises(SpecError, match="mlflow.run_id .* not found"):
        train.main(from_mapping(TrainingSpec, spec))
