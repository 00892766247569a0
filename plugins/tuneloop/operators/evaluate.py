from __future__ import annotations

from typing import Any

from airflow.sdk import Context

from tuneloop.operators.base import PipelineStepOperator


class EvaluateOperator(PipelineStepOperator):
    """Transcribe the eval split and the regression suites with the candidate and the production model (on the
    training backend)."""

    def execute(self, context: Context) -> dict[str, Any]:
        dataset = self.upstream(context, "export_dataset")
        return self.pipeline(context).evaluate(dataset["dataset_dir"], log_line=self.log.info)
