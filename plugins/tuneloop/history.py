"""Deployment history: who moved which model version, when, and why.

MLflow aliases say where production is now but keep no past, so every registry move is also written to the
tuneloop store as a ``DeploymentEvent``; rollback targets and ``tuneloop history`` read it from there. Decisions
that leave production as it is but that someone answers for (an approval rejected, a run failed by hand) are
recorded too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

DeploymentAction = Literal["bootstrap", "register", "deploy", "reject", "rollback", "approval_rejected",
                           "run_failed", "canary_start", "canary_end", "green"]


def version_label(version: str | int | None) -> str:
    """``v3`` for a model version, ``none`` where there was none (before the first production model): every text
    that shows a version goes through here, so a missing one never reads ``vNone``."""
    return "none" if version is None or version == "" else f"v{version}"


@dataclass(frozen=True)
class DeploymentEvent:
    """One registry move. ``from_version``/``to_version`` are the production versions before and after."""

    action: DeploymentAction
    model_name: str
    from_version: str | None
    to_version: str | None
    reason: str
    actor: str = "tuneloop"
    run_id: str | None = None
    at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["at"] = self.at.isoformat()
        return data


@dataclass(frozen=True)
class RunActor:
    """Who answers for a registry move made by a DAG run, as the deployment history names it.

    The person who made the call in Airflow -- ended a canary's online test by hand, else approved the step (the
    human-in-the-loop responders) -- else the user who started the run by hand (Airflow's
    ``triggering_user_name``), else the DAG itself: a scheduled run nobody touched.
    """

    approved_by: str | None = None
    triggered_by: str | None = None
    dag_id: str = "finetune_weekly"
    decided_by: str | None = None

    @classmethod
    def of_run(cls, dag_id: str, triggered_by: str | None, approval: Mapping[str, Any] | None = None) -> RunActor:
        """From an approval step's result (``approve_*`` XCom ``approval``): only a person's answer counts."""
        person = approval.get("by") if approval and approval.get("approved") and not approval.get("auto") else None
        return cls(approved_by=str(person) if person else None, triggered_by=triggered_by or None, dag_id=dag_id)

    @property
    def name(self) -> str:
        return self.decided_by or self.approved_by or self.triggered_by or self.dag_id

    def details(self) -> dict[str, str]:
        """What the event's details keep besides the actor: every person, and the DAG."""
        people = {"decided_by": self.decided_by, "approved_by": self.approved_by, "triggered_by": self.triggered_by}
        return {"dag_id": self.dag_id, **{key: value for key, value in people.items() if value}}
