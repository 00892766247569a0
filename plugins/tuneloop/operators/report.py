from __future__ import annotations

from typing import Any

from airflow.sdk import Context

from tuneloop.operators.links import MlflowRunLink
from tuneloop.operators.approve import XCOM_KEY as APPROVAL_KEY
from tuneloop.operators.base import PipelineStepOperator

STEPS = ("check_trigger", "approve_training", "export_dataset", "train", "evaluate", "validate", "regression_suite",
         "register", "decide", "approve_deploy", "deploy", "reject", "post_deploy_check", "rollback")
APPROVALS = ("approve_training", "approve_deploy")


class ReportOperator(PipelineStepOperator):
    """Runs whatever happened: writes the decision record, prints it, closes the run in the store."""

    operator_extra_links = (MlflowRunLink(),)

    def execute(self, context: Context) -> dict[str, Any]:
        ti = context["ti"]
        found = ti.get_task_states(dag_id=ti.dag_id, task_ids=list(STEPS), run_ids=[ti.run_id])
        outcome = {step: ti.xcom_pull(task_ids=step) for step in STEPS if step not in APPROVALS}
        outcome |= {step: ti.xcom_pull(task_ids=step, key=APPROVAL_KEY) for step in APPROVALS}
        outcome["states"] = {step: str(state) for step, state in found.get(ti.run_id, {}).items()}
        run = self.pipeline(context)
        record = run.report(outcome)
        for line in record["summary"]:
            self.log.info("%s", line)
        self.log.info("decision record: %s", record["record"])
        self.link_mlflow_run(context, run)
        return record
