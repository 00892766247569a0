"""The canary's online test and the rollout's last move, as tasks (:mod:`tuneloop.strategies`)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from tuneloop.operators.base import PipelineStepOperator


class OnlineTestOperator(PipelineStepOperator):
    """Canary only: wait in the triggerer until the online test decides (promote, roll back, keep production).
    Other strategies skip it."""

    ui_color = "#fff4e5"

    def execute(self, context: Context) -> None:
        from tuneloop.rollout import running_canary
        from tuneloop.strategies import Placement
        from tuneloop.triggers.online_test import OnlineTestTrigger

        placement = Placement.of(self.upstream(context, "deploy"))
        if not placement.strategy.waits:
            raise AirflowSkipException(f"the {placement.strategy.name} strategy has no online test")
        run = self.pipeline(context)
        canary = running_canary(run.registry)
        if canary is None or canary.version != placement.version:
            raise AirflowFailException(f"the canary of version {placement.version} is no longer running "
                                       f"(ended by hand or by a rollback); nothing to test")
        settings = run.config.deployment.canary
        started = canary.started_at
        deadline = started + timedelta(hours=settings.max_duration_hours)
        production = run.registry.production_version()
        self.log.info("online test of canary %s (%g%% of the traffic) against production %s until %s: looking "
                      "every %gs", canary.version, canary.traffic_percent, production, deadline.isoformat(),
                      settings.poll_seconds)
        self.defer(trigger=OnlineTestTrigger(dag_id=self.dag_id, canary_version=canary.version,
                                             production_version=str(production), since=started.isoformat(),
                                             deadline=deadline.timestamp(), poll_seconds=settings.poll_seconds),
                   method_name="execute_complete")

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        if event["status"] == "error":
            raise RuntimeError(f"the online test could not read the store: {event['message']}")
        decision = self.pipeline(context).record_online_test(event["decision"], datetime.fromisoformat(event["since"]))
        self.log.info("online test decided after %d look(s): %s -- %s", event["looks"], decision["action"],
                      decision["reason"])
        return decision


class ConcludeRolloutOperator(PipelineStepOperator):
    """The rollout's last move: production moves to the green version (blue_green), the canary ends as the
    online test decided (canary); nothing is left for replace."""

    def execute(self, context: Context) -> dict[str, Any]:
        placed = self.upstream(context, "deploy")
        decision = context["ti"].xcom_pull(task_ids="online_test")
        if decision and decision["action"] == "ended_elsewhere":
            raise AirflowSkipException(decision["reason"])
        event = self.pipeline(context).promote(placed, decision, self.actor(context, "approve_deploy"))
        if event is None:
            raise AirflowSkipException(f"the {placed['strategy']} strategy moved production at deploy; nothing left")
        self.log.info("%s: %s -> %s (%s)", event["action"], event["from_version"], event["to_version"],
                      event["reason"])
        return event
