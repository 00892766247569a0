from __future__ import annotations

from typing import Any

from airflow.sdk import Context

from tuneloop.operators.base import PipelineStepOperator


class TrainOperator(PipelineStepOperator):
    """Fine-tune from the production model on the exported dataset, on the configured training backend.

    The trainer checkpoints as it goes, so a retried attempt resumes instead of starting over.
    """

    def execute(self, context: Context) -> dict[str, Any]:
        dataset = self.upstream(context, "export_dataset")
        result = self.pipeline(context).train(dataset["dataset_dir"], log_line=self.log.info)
        self.log.info("training metrics: %s", result["metrics"])
        return result
