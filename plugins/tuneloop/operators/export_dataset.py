from __future__ import annotations

from typing import Any

from airflow.sdk import Context

from tuneloop.operators.base import PipelineStepOperator


class ExportDatasetOperator(PipelineStepOperator):
    """Export corrected, unconsumed error cases to an immutable, content-addressed dataset."""

    def execute(self, context: Context) -> dict[str, Any]:
        result = self.pipeline(context).export_dataset()
        self.log.info("dataset %s: %s", result["dataset_id"], result["counts"])
        return result
