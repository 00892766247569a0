"""Human approvals: Airflow's own human-in-the-loop ``ApprovalOperator``, asked only when the policy says so.

``approve_training`` waits when the trigger conditions hold but ``trigger.auto_approve_finetuning`` is false;
``approve_budget`` when the training's estimated cost is over ``costs.max_run_usd`` or this month's
``costs.monthly_budget_usd`` (with ``costs.over_budget: refuse`` it refuses at once, as a Reject by policy);
``approve_deploy`` waits when ``auto_deploy`` is off for the run or a first run's policy requires a person. When
no approval is needed they succeed at once, so the DAG has one shape whatever the configuration. A step that
starts waiting tells the model's notification channels (``waiting_for_approval``; ``budget_exceeded`` for the
budget), with the link to answer it.

People answer in the Airflow UI (Required actions) or through the REST API
(``PATCH /api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/-1/hitlDetails`` with
``{"chosen_options": ["Approve"]}``). Reject, or no answer within the timeout (the default option is Reject),
skips what follows (production untouched) and is written to the deployment history. The answer is pushed under
the XCom key ``approval`` before any skipping, so the report can tell what happened.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Context

from tuneloop.config import load_model_config
from tuneloop.operators.base import APPROVAL_KEY as XCOM_KEY
from tuneloop.operators.notify import ApprovalNotifier
from tuneloop.pipeline import PipelineRun, RunParams


class _PolicyApprovalOperator(ApprovalOperator):
    """An ApprovalOperator that asks only when :meth:`approval_reason` says a person must decide."""

    stage = ""
    ui_color = "#fde7c4"

    def __init__(self, *, subject: str, body: str, response_timeout: timedelta, **kwargs: Any) -> None:
        super().__init__(subject=subject, body=body, defaults=self.REJECT, response_timeout=response_timeout,
                         notifiers=[ApprovalNotifier(self.stage)], **kwargs)

    def pipeline(self, context: Context) -> PipelineRun:
        return PipelineRun(load_model_config(self.dag_id), context["run_id"],
                           RunParams.from_mapping(dict(context["params"])))

    def approval_reason(self, context: Context, run: PipelineRun) -> str | None:
        raise NotImplementedError

    def refused_by_policy(self, run: PipelineRun) -> bool:
        """True when the policy answers Reject itself instead of asking a person."""
        return False

    def execute(self, context: Context) -> Any:
        run = self.pipeline(context)
        reason = self.approval_reason(context, run)
        if reason is None:
            result = {"approved": True, "by": "policy", "auto": True, "summary": "no approval needed by policy"}
            context["ti"].xcom_push(key=XCOM_KEY, value=result)
            self.log.info("%s approval: not needed", self.stage)
            return result
        if self.refused_by_policy(run):
            return self._refuse(context, run, reason)
        self.log.info("%s approval: waiting for a person (%s)", self.stage, reason)
        return super().execute(context)

    def _refuse(self, context: Context, run: PipelineRun, reason: str) -> dict[str, Any]:
        """Reject by policy: recorded like a person's Reject, and what follows is skipped."""
        result = {"approved": False, "by": "policy", "auto": True, "summary": f"refused by policy: {reason}"}
        context["ti"].xcom_push(key=XCOM_KEY, value=result)
        self.log.info("%s approval: %s", self.stage, result["summary"])
        run.record_approval_rejected(self.stage, result)
        self.skip(ti=context["ti"], tasks=[t for t in context["task"].get_direct_relatives(upstream=False)
                                            if not t.is_teardown])
        return result

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        chosen = list(event.get("chosen_options") or [])
        user = event.get("responded_by_user") or {}
        approved = chosen == [self.APPROVE] and "error" not in event
        by = user.get("name") or user.get("id")
        if approved:
            summary = f"approved by {by}"
        elif by:
            summary = f"rejected by {by}"
        else:
            summary = f"no answer within {self.response_timeout}: the default, Reject, applies"
        result = {"approved": approved, "by": by, "auto": False, "summary": summary,
                  "responded_at": str(event.get("responded_at")), **self.details(context)}
        context["ti"].xcom_push(key=XCOM_KEY, value=result)
        self.log.info("%s approval: %s", self.stage, summary)
        if not approved:
            self.pipeline(context).record_approval_rejected(self.stage, result)
        super().execute_complete(context, event)  # on Reject: skips the downstream tasks (and raises to do so)
        return result

    def details(self, context: Context) -> dict[str, Any]:
        return {}


class ApproveTrainingOperator(_PolicyApprovalOperator):
    """``approve_training``: a person approves the training that the trigger conditions call for."""

    stage = "training"

    def approval_reason(self, context: Context, run: PipelineRun) -> str | None:
        trigger = context["ti"].xcom_pull(task_ids="check_trigger") or {}
        return trigger.get("approval_reason")


class ApproveBudgetOperator(_PolicyApprovalOperator):
    """``approve_budget``: the training's estimated cost is checked against the budgets before anything is
    uploaded or started; over budget, a person approves (``costs.over_budget: approve``) or the run is refused."""

    stage = "budget"

    def approval_reason(self, context: Context, run: PipelineRun) -> str | None:
        return run.budget_needs_approval(context["ti"].xcom_pull(task_ids="check_budget"))

    def refused_by_policy(self, run: PipelineRun) -> bool:
        return run.config.costs.over_budget == "refuse"


class ApproveDeployOperator(_PolicyApprovalOperator):
    """``approve_deploy``: a person approves promoting a candidate that passed the gate and the suites."""

    stage = "deployment"

    def approval_reason(self, context: Context, run: PipelineRun) -> str | None:
        return run.deploy_needs_approval()

    def details(self, context: Context) -> dict[str, Any]:
        registered = context["ti"].xcom_pull(task_ids="register") or {}
        return {"version": registered.get("version")}
