"""The canary's online test and the rollout's last move, as tasks (:mod:`tuneloop.strategies`).

While the online test waits, Airflow's *Required actions* offer to end it early: ``online_test`` writes a
human-in-the-loop request (options "Promote now" / "Roll back now", an optional reason) before it defers. An answer
resumes the deferred task at once (Airflow's API hands the response to a deferred task as its event), and the
person's call is the decision, recorded with who made it, why, and the counts of that moment. An answer given in
the instant the test decides by itself loses to it (Airflow records the answer, but the task had resumed already).
``airflow dags test`` runs the wait inline (the task is not deferred in the database), so there an answer is
recorded but the test decides by itself. A retried task returns the decision already recorded for the run.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import Context, Param
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from tuneloop.operators.base import PipelineStepOperator

PROMOTE_NOW, ROLL_BACK_NOW = "Promote now", "Roll back now"
PERSON_ACTIONS = {PROMOTE_NOW: "promote", ROLL_BACK_NOW: "rollback"}


def person_answer(event: dict[str, Any]) -> tuple[str, str, str]:
    """A person's answer to the Required action (Airflow's human-in-the-loop resume payload: ``chosen_options``,
    ``params_input``, ``responded_by_user``) as the action, who answered and why; a choice not offered fails."""
    chosen = list(event.get("chosen_options") or [])
    if len(chosen) != 1 or chosen[0] not in PERSON_ACTIONS:
        raise AirflowFailException(f"chosen_options: expected one of {sorted(PERSON_ACTIONS)}, got {chosen!r}")
    user = event.get("responded_by_user") or {}
    by = str(user.get("name") or user.get("id") or "an unnamed user")
    why = str((event.get("params_input") or {}).get("reason") or "")
    return PERSON_ACTIONS[chosen[0]], by, why


class OnlineTestOperator(PipelineStepOperator):
    """Canary only: wait in the triggerer until the online test decides (promote, roll back, keep production) or
    a person ends it early. Other strategies skip it."""

    ui_color = "#fff4e5"

    def execute(self, context: Context) -> dict[str, Any]:
        from tuneloop.rollout import running_canary
        from tuneloop.strategies import Placement
        from tuneloop.triggers.online_test import OnlineTestTrigger

        placement = Placement.of(self.upstream(context, "deploy"))
        if not placement.strategy.waits:
            raise AirflowSkipException(f"the {placement.strategy.name} strategy has no online test")
        run = self.pipeline(context)
        recorded = run.recorded_online_test()
        if recorded is not None:  # a retry after the decision (a person's answer is not asked for twice)
            self.log.info("online test: decided already (%s -- %s)", recorded["action"], recorded["reason"])
            return recorded
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
        self._offer_early_end(context, canary, str(production), deadline, settings)
        self.defer(trigger=OnlineTestTrigger(dag_id=self.dag_id, canary_version=canary.version,
                                             production_version=str(production), since=started.isoformat(),
                                             deadline=deadline.timestamp(), poll_seconds=settings.poll_seconds),
                   method_name="execute_complete")

    def _offer_early_end(self, context: Context, canary: Any, production: str, deadline: datetime,
                         settings: Any) -> None:
        """The Required action a person answers to end the test now (no timeout: the test's deadline rules)."""
        from airflow.sdk.execution_time.hitl import upsert_hitl_detail

        body = (f"Version {canary.version} answers {canary.traffic_percent:g}% of the requests; production "
                f"{production} the rest. The online test decides by itself -- a worse canary is rolled back as soon "
                f"as the evidence shows it, a better one promoted once both arms have {settings.min_samples} judged "
                f"requests (alpha {settings.alpha:g}), production kept at {deadline:%Y-%m-%d %H:%M} UTC.\n\n"
                f"Answer only to end it now: **{PROMOTE_NOW}** makes version {canary.version} production, "
                f"**{ROLL_BACK_NOW}** takes it out of service. The decision record keeps who ended it, why, and the "
                f"counts of that moment.")
        reason = Param("", type="string", title="Reason", description="Why you end the test now (kept in the "
                                                                      "decision record and the history).")
        upsert_hitl_detail(ti_id=context["task_instance"].id, options=[PROMOTE_NOW, ROLL_BACK_NOW],
                           subject=f"End canary {canary.version}'s online test early? ({context['run_id']})",
                           body=body, defaults=None, multiple=False, params={"reason": reason.serialize()})

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        if "chosen_options" in event:  # a person answered the Required action
            decision, since = self._ended_by_person(context, event)
            self.log.info("online test ended by a person: %s -- %s", decision["action"], decision["reason"])
        elif event["status"] == "error":
            raise RuntimeError(f"the online test could not read the store: {event['message']}")
        else:
            decision, since = event["decision"], datetime.fromisoformat(event["since"])
            self.log.info("online test decided after %d look(s): %s -- %s", event["looks"], decision["action"],
                          decision["reason"])
        return self.pipeline(context).record_online_test(decision, since)

    def _ended_by_person(self, context: Context, event: dict[str, Any]) -> tuple[dict[str, Any], datetime | None]:
        """The person's call with the counts of this moment (the sequential test's earlier looks are not kept:
        the always-valid p-value shown is this look's)."""
        from tuneloop.online_test import ended_by_person, look_at
        from tuneloop.rollout import running_canary
        from tuneloop.strategies import Placement

        action, by, why = person_answer(event)
        run = self.pipeline(context)
        version = Placement.of(self.upstream(context, "deploy")).version
        canary = running_canary(run.registry)
        if canary is None or canary.version != version:
            return {"action": "ended_elsewhere", "look": None, "decided_by": by,
                    "reason": f"{by} chose {action}, but canary {version} was already ended outside the online "
                              "test (tuneloop rollback, the rollback DAG)"}, None
        current = look_at(run.store, str(run.registry.production_version()), canary.version,
                          since=canary.started_at, mixing_sd=run.config.deployment.canary.mixing_sd)
        return ended_by_person(current, action, by=by, why=why).to_dict(), canary.started_at  # type: ignore[arg-type]


class ConcludeRolloutOperator(PipelineStepOperator):
    """The rollout's last move: production moves to the green version (blue_green), the canary ends as the
    online test decided (canary); nothing is left for replace."""

    def execute(self, context: Context) -> dict[str, Any]:
        placed = self.upstream(context, "deploy")
        decision = context["ti"].xcom_pull(task_ids="online_test")
        if decision and decision["action"] == "ended_elsewhere":
            raise AirflowSkipException(decision["reason"])
        actor = self.actor(context, "approve_deploy")
        if decision and decision.get("decided_by"):  # a person ended the online test: the move is theirs
            actor = dataclasses.replace(actor, decided_by=decision["decided_by"])
        event = self.pipeline(context).promote(placed, decision, actor)
        if event is None:
            raise AirflowSkipException(f"the {placed['strategy']} strategy moved production at deploy; nothing left")
        self.log.info("%s: %s -> %s (%s)", event["action"], event["from_version"], event["to_version"],
                      event["reason"])
        return event
