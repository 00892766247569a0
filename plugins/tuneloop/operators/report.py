from __future__ import annotations

from typing import Any

from airflow.sdk import Context

from tuneloop.operators.links import MlflowRunLink
from tuneloop.operators.approve import XCOM_KEY as APPROVAL_KEY
from tuneloop.operators.base import PipelineStepOperator
from tuneloop.operators.notify import notify_run, notify_unreported

STEPS = ("check_trigger", "approve_training", "export_dataset", "check_budget", "approve_budget", "train", "evaluate",
         "validate", "regression_suite", "register", "decide", "approve_deploy", "deploy", "reject",
         "post_deploy_check", "online_test", "conclude", "rollback")
APPROVALS = ("approve_training", "approve_budget", "approve_deploy")
GROUPS = ("train", "evaluate")  # task groups: their result is <group>.result, their state the worst of their tasks


class ReportOperator(PipelineStepOperator):
    """Runs whatever happened: writes the decision record, prints it, closes the run in the store, and tells the
    model's notification channels how the run ended."""

    operator_extra_links = (MlflowRunLink(),)

    def execute(self, context: Context) -> dict[str, Any]:
        ti = context["ti"]
        task_ids = [t for t in self.dag.task_ids if t != self.task_id]
        found = ti.get_task_states(dag_id=ti.dag_id, task_ids=task_ids, run_ids=[ti.run_id])
        states = {task: str(state) for task, state in found.get(ti.run_id, {}).items()}
        outcome = {step: ti.xcom_pull(task_ids=f"{step}.result" if step in GROUPS else step)
                   for step in STEPS if step not in APPROVALS}
        outcome |= {step: ti.xcom_pull(task_ids=step, key=APPROVAL_KEY) for step in APPROVALS}
        outcome["states"] = states | {group: group_state(states, group) for group in GROUPS}
        run = self.pipeline(context)
        try:
            record = run.report(outcome)
        except Exception as error:
            if last_attempt(ti):  # a retry may still write the record and announce the outcome itself
                notify_unreported(run.config, context, error, stored_status(run))
            raise
        for line in record["summary"]:
            self.log.info("%s", line)
        self.log.info("decision record: %s", record["record"])
        mlflow_url = self.link_mlflow_run(context, run)
        notify_run(run.config, context, record, mlflow_url)
        return record


def last_attempt(ti: Any) -> bool:
    """Whether this try of the task has no retry left after it."""
    return ti.try_number > ti.max_tries


def stored_status(run: Any) -> str | None:
    """The run's status in the store (``report`` closes the run there before it writes to MLflow), None when the
    store cannot say."""
    try:
        return run.store.training_run(run.run_id).status
    except Exception:  # noqa: BLE001 - the message says the store could not be read
        return None


def group_state(states: dict[str, str], group: str) -> str:
    """A task group's state for the decision record: failed if any of its tasks failed, else its result's."""
    members = {task: state for task, state in states.items() if task.startswith(group + ".")}
    if any(state == "failed" for state in members.values()):
        return "failed"
    return members.get(f"{group}.result", "none")
