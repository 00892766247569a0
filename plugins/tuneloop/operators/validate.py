from __future__ import annotations

from typing import Any

from airflow.sdk import Context

from tuneloop.operators.links import MlflowRunLink
from tuneloop.operators.base import PipelineStepOperator


class ValidateOperator(PipelineStepOperator):
    """The gate: is the candidate measurably better than production? Pushes the verdict with every reason."""

    operator_extra_links = (MlflowRunLink(),)

    def execute(self, context: Context) -> dict[str, Any]:
        run = self.pipeline(context)
        result = run.validate()
        self.log.info("gate verdict: %s", result["verdict"])
        self.link_mlflow_run(context, run)
        return result
