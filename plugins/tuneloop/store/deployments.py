"""Deployment history: registry moves (MLflow keeps no alias history)."""

from __future__ import annotations

import json

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tuneloop.history import DeploymentEvent
from tuneloop.intake import as_utc, sha256
from tuneloop.store.database import StoreBase, _json_value
from tuneloop.store.schema import deployments_table

PRODUCTION_ACTIONS = ("bootstrap", "deploy", "rollback")


class DeploymentRecords(StoreBase):
    """Append the store's model's registry moves and read them back (``tuneloop.deployment.DeploymentHistory``).

    ``model_name`` is the registered model (MLflow); the store's model is the configured one. Each is filtered by:
    two configured models never see each other's history, even if they share a registered model."""

    def record_deployment(self, event: DeploymentEvent) -> bool:
        """Append a registry move; return False when it was already recorded.

        An event with a run id is recorded once per (action, model, from, to, run id) and configured model, so a
        retried task does not write it twice even though its ``at`` differs; without a run id the time is part of
        the identity.
        """
        identity = [event.action, event.model_name, event.from_version, event.to_version, event.run_id]
        if event.run_id is None:
            identity.append(as_utc(event.at).isoformat())
        key = sha256(json.dumps(identity))
        details = _json_value("details", dict(event.details))
        t = deployments_table

        def write(conn: Connection) -> bool:
            if conn.execute(sa.select(t.c.id).where(t.c.model == self._model, t.c.event_key == key)).first():
                return False
            conn.execute(sa.insert(t).values(
                model=self._model, event_key=key, action=event.action, model_name=event.model_name,
                from_version=event.from_version, to_version=event.to_version, reason=event.reason, actor=event.actor,
                run_id=event.run_id, at=event.at, details=details))
            return True

        return self._transaction(write)

    def deployment_history(self, model_name: str | None = None, limit: int = 50) -> list[DeploymentEvent]:
        """Newest first."""
        t = deployments_table
        query = sa.select(t).where(t.c.model == self._model).order_by(t.c.at.desc(), t.c.id.desc()).limit(limit)
        if model_name is not None:
            query = query.where(t.c.model_name == model_name)
        with self._engine.connect() as conn:
            return [_event(row) for row in conn.execute(query)]

    def production_move(self, model_name: str) -> DeploymentEvent | None:
        """The latest bootstrap, deploy or rollback of ``model_name``: the move that made today's production
        version (however many registrations and rejections came after it)."""
        t = deployments_table
        query = (sa.select(t)
                 .where(t.c.model == self._model, t.c.model_name == model_name, t.c.action.in_(PRODUCTION_ACTIONS))
                 .order_by(t.c.at.desc(), t.c.id.desc()).limit(1))
        with self._engine.connect() as conn:
            row = conn.execute(query).first()
        return None if row is None else _event(row)

    def deployed_versions(self, model_name: str) -> list[str]:
        """Versions that have been production (bootstrap, deploy, rollback), newest first, each once.

        The first entry is the current production version; the rest are rollback targets in order of preference.
        """
        t = deployments_table
        query = (sa.select(t.c.to_version)
                 .where(t.c.model == self._model, t.c.model_name == model_name, t.c.action.in_(PRODUCTION_ACTIONS),
                        t.c.to_version.is_not(None))
                 .order_by(t.c.at.desc(), t.c.id.desc()))
        with self._engine.connect() as conn:
            return list(dict.fromkeys(conn.execute(query).scalars()))


def _event(row: sa.Row) -> DeploymentEvent:
    return DeploymentEvent(action=row.action, model_name=row.model_name, from_version=row.from_version,
                           to_version=row.to_version, reason=row.reason, actor=row.actor, run_id=row.run_id,
                           at=row.at, details=dict(row.details or {}))
