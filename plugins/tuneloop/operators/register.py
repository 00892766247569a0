from __future__ import annotations

from typing import Any

from airflow.sdk import Context

from tuneloop.operators.base import PipelineStepOperator


class RegisterCandidateOperator(PipelineStepOperator):
    """Register the candidate in the MLflow registry (alias ``candidate``), whatever the verdict."""

    def execute(self, context: Context) -> dict[str, Any]:
        dataset = self.upstream(context, "export_dataset")
        result = self.pipeline(context).register(dataset["dataset_id"])
        self.log.info("registered version %s (production is %s)", result["version"], result["production_version"])
        return result
