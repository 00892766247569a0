from __future__ import annotations

from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowException

from tuneloop.operators.base import PipelineStepOperator


class PostDeployCheckOperator(PipelineStepOperator):
    """Load the model through ``models:/<name>@production`` and transcribe a smoke set.

    Fails (so that ``rollback`` runs) when the served model is not the validated one or is too inaccurate.
    """

    def execute(self, context: Context) -> dict[str, Any]:
        dataset = self.upstream(context, "export_dataset")
        deployed = self.upstream(context, "deploy")["to_version"]
        result = self.pipeline(context).post_deploy_check(dataset["dataset_id"], deployed)
        for reason in result["reasons"]:
            self.log.info("post-deploy: %s", reason)
        if not result["passed"]:
            context["ti"].xcom_push(key="return_value", value=result)
            raise AirflowException("post-deploy check failed: " + "; ".join(result["reasons"]))
        return result
