"""The shared adapter: turn an Airflow task context into a ``PipelineRun``."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator, Context

from tuneloop.config import load_model_config
from tuneloop.history import RunActor
from tuneloop.operators.links import MLFLOW_URL_KEY
from tuneloop.pipeline import PipelineRun, RunParams

APPROVAL_KEY = "approval"  # the XCom key under which the approve_* steps push their answer


class PipelineStepOperator(BaseOperator):
    """Base for the ``finetune_weekly`` steps. Reads the config in ``execute`` (never at parse time)."""

    ui_color = "#e8f0fe"

    def pipeline(self, context: Context) -> PipelineRun:
        params: dict[str, Any] = dict(context.get("params") or {})
        return PipelineRun(load_model_config(self.dag_id), context["run_id"], RunParams.from_mapping(params))

    def actor(self, context: Context, approval_task: str | None = None) -> RunActor:
        """Who answers for this step's registry move: the person who answered ``approval_task`` in Airflow, else
        the user who triggered the run, else the DAG."""
        approval = context["ti"].xcom_pull(task_ids=approval_task, key=APPROVAL_KEY) if approval_task else None
        triggered_by = getattr(context.get("dag_run"), "triggering_user_name", None)
        return RunActor.of_run(self.dag_id, triggered_by, approval)

    def upstream(self, context: Context, task_id: str, key: str = "return_value") -> Any:
        """The result an upstream step pushed; a missing one is an error, not a silent None."""
        value = context["ti"].xcom_pull(task_ids=task_id, key=key)
        if value is None:
            raise RuntimeError(f"{self.task_id}: no result from upstream task {task_id!r}")
        return value

    def link_mlflow_run(self, context: Context, run: PipelineRun) -> str:
        """Push the MLflow run's URL for the task's "MLflow run" button (operators that call this declare
        ``operator_extra_links = (MlflowRunLink(),)``), and log it."""
        from tuneloop import tracking

        url = tracking.run_url(run.config, run.mlflow_run_id(), run.config.mlflow.ui_url)
        context["ti"].xcom_push(key=MLFLOW_URL_KEY, value=url)
        self.log.info("MLflow run: %s", url)
        return url
