from __future__ import annotations

from airflow.sdk import BaseBranchOperator, Context

from tuneloop.config import load_model_config
from tuneloop.pipeline import PipelineRun, RunParams


class DecideOperator(BaseBranchOperator):
    """Branch on the verdicts: ``reject``, or ``approve_deploy`` when the gate and the regression suites passed.

    Pushes ``summary`` (Markdown): the decision as the approver sees it in the approval form.
    """

    def choose_branch(self, context: Context) -> str:
        run = PipelineRun(load_model_config(self.dag_id), context["run_id"],
                          RunParams.from_mapping(dict(context["params"])))
        outcome = run.decide()
        if outcome == "approve_deploy":
            version = context["ti"].xcom_pull(task_ids="register")["version"]
            context["ti"].xcom_push(key="summary", value=run.deployment_summary(version))
        self.log.info("decision: %s", outcome)
        return outcome
