"""Operator extra links: a button on a tuneloop task in the Airflow UI that opens the run's MLflow run."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperatorLink
from airflow.sdk.execution_time.xcom import XCom

MLFLOW_URL_KEY = "mlflow_run_url"


class MlflowRunLink(BaseOperatorLink):
    """Reads the URL the task pushed under ``mlflow_run_url`` (empty until the task has one)."""

    name = "MLflow run"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        return XCom.get_value(ti_key=ti_key, key=MLFLOW_URL_KEY) or ""
