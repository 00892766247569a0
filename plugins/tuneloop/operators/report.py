from __future__ import annotations

from typing import Any

from airflow.sdk import Context

from tuneloop.operators.base import PipelineStepOperator

STEPS = ("check_trigger", "export_dataset", "train", "evaluate", "validate", "register", "decide", "deploy",
         "reject", "hold", "post_deploy_check", "rollback")


class ReportOperator(PipelineStepOperator):
    """Runs whatever happened: writes the decision record and closes the run in the store."""

    def execute(self, context: Context) -> dict[str, Any]:
        ti = context["ti"]
        found = ti.get_task_states(dag_id=ti.dag_id, task_ids=list(STEPS), run_ids=[ti.run_id])
        outcome = {step: ti.xcom_pull(task_ids=step) for step in STEPS}
        outcome["states"] = {step: str(state) for step, state in found.get(ti.run_id, {}).items()}
        record = self.pipeline(context).report(outcome)
        for line in record["summary"]:
            self.log.info("%s", line)
        return record
