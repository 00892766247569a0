"""Deployment history: who moved which model version, when, and why.

MLflow aliases say where production is now but keep no past, so every registry move is also written to the
tuneloop store as a ``DeploymentEvent``; rollback targets and ``tuneloop history`` read it from there.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

DeploymentAction = Literal["bootstrap", "register", "deploy", "reject", "rollback", "approval_rejected"]


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
