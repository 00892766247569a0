"""Registry moves as tasks: deploy, reject, auto-rollback and the manual rollback DAG's task."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator, Context

from tuneloop.config import load_model_config
from tuneloop.history import RunActor
from tuneloop.operators.base import PipelineStepOperator
from tuneloop.strategies import Placement


class DeployOperator(PipelineStepOperator):
    """Place the candidate as the run's strategy says: production moves to it (replace; the old production
    becomes ``previous``), or it goes to the ``green`` alias (blue_green) or the ``canary`` alias (canary)."""

    def execute(self, context: Context) -> dict[str, Any]:
        version = self.upstream(context, "register")["version"]
        event = self.pipeline(context).deploy(version, self.actor(context, "approve_deploy"))
        self.log.info("%s: version %s on the %s alias (production %s -> %s) by %s", event["strategy"], version,
                      event["alias"], event["from_version"], event["to_version"], event["actor"])
        return event


class RejectOperator(PipelineStepOperator):
    """Reject the candidate: production is untouched; the version is tagged ``verdict=rejected``."""

    def execute(self, context: Context) -> dict[str, Any]:
        version = self.upstream(context, "register")["version"]
        event = self.pipeline(context).reject(version, self.actor(context))
        self.log.info("rejected version %s; production stays %s", version, event["from_version"])
        return event


class RollbackOperator(PipelineStepOperator):
    """Runs only when the post-deploy check, the online test or the rollout's last move failed: undo this run's
    placement (production back, green dropped, the canary ended), if it is still where the run put it."""

    def execute(self, context: Context) -> dict[str, Any] | None:
        run = self.pipeline(context)
        deployed = context["ti"].xcom_pull(task_ids="deploy")
        # a green version or a canary is always taken out: production never moved, nothing is rolled back
        staged = bool(deployed) and Placement.of(deployed).staged
        if not run.config.deployment.enable_auto_rollback and not staged:
            self.log.warning("a step after deploy failed but deployment.enable_auto_rollback is false")
            return None
        check = context["ti"].xcom_pull(task_ids="post_deploy_check") or {}
        if not check.get("passed", True):
            why = "; ".join(check.get("reasons", [])) or "post-deploy check failed"
        else:
            why = "a step after the post-deploy check failed (the online test, or the rollout's last move)"
        return run.auto_rollback(deployed, why, self.actor(context))


class ManualRollbackOperator(BaseOperator):
    """The ``finetune_rollback`` DAG's step: roll back to ``params.target_version`` or ``previous``; while a canary
    runs, end it (and roll production back only when a target version is given)."""

    def execute(self, context: Context) -> dict[str, Any]:
        from tuneloop.pipeline import PipelineRun

        params = context["params"]
        run = PipelineRun(load_model_config(self.dag_id), context["run_id"])
        from tuneloop.deployment import rollback

        dag_run = context["dag_run"]
        owner = dag_run.conf.get("actor") if dag_run.conf else None
        actor = RunActor.of_run(self.dag_id, owner or getattr(dag_run, "triggering_user_name", None))
        event = rollback(run.registry, run.store, to_version=params.get("target_version") or None,
                         reason=params["reason"], actor=actor.name, run_id=context["run_id"],
                         details=actor.details())
        if event.action == "canary_end":
            self.log.info("ended canary %s: all traffic back to production %s", event.details.get("version"),
                          event.to_version)
        else:
            self.log.info("rolled back production %s -> %s", event.from_version, event.to_version)
        return event.to_dict()
