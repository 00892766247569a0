from __future__ import annotations

from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowException

from tuneloop.operators.base import PipelineStepOperator
from tuneloop.strategies import Placement


class PostDeployCheckOperator(PipelineStepOperator):
    """Load the model through the alias the candidate was placed on (``models:/<name>@production``; ``@green``
    or ``@canary`` for a staged rollout) and run a smoke set through it.

    Fails (so that ``rollback`` runs) when the served model is not the validated one or is too inaccurate.
    """

    def execute(self, context: Context) -> dict[str, Any]:
        dataset = self.upstream(context, "export_dataset")
        placement = Placement.of(self.upstream(context, "deploy"))
        result = self.pipeline(context).post_deploy_check(dataset["dataset_id"], placement.version, placement.alias)
        for reason in result["reasons"]:
            self.log.info("post-deploy: %s", reason)
        if not result["passed"]:
            context["ti"].xcom_push(key="return_value", value=result)
            raise AirflowException("post-deploy check failed: " + "; ".join(result["reasons"]))
        return result
