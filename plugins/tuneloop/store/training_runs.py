"""Training runs: one row per pipeline run (the cooldown and "in progress" come from here).

A run is identified by its model and its Airflow run id: two models' DAGs get the same run ids
(``scheduled__<same date>``), and each model has its own cooldown.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tuneloop.intake import as_utc
from tuneloop.store.database import NotFound, StoreBase, StoreError, _json_value
from tuneloop.store.schema import runs_table

log = logging.getLogger(__name__)

RunStatus = Literal["running", "deployed", "rejected", "declined", "rolled_back", "insufficient_evidence",
                    "not_approved", "over_budget", "failed", "skipped"]
FINISHED_STATUSES: tuple[RunStatus, ...] = ("deployed", "rejected", "declined", "rolled_back",
                                            "insufficient_evidence", "not_approved", "over_budget", "failed",
                                            "skipped")
# Runs whose data was judged (a verdict was reached): only these consume their cases. A failed run leaves them
# new for the next run; a skipped or not-approved run never trained; an insufficient-evidence run keeps them so
# that the next run, with more cases, has a bigger eval split.
CONSUMING_STATUSES: tuple[RunStatus, ...] = ("deployed", "rejected", "declined", "rolled_back")
# Runs that used training compute start the cooldown; so does a run refused over budget (by policy: starting it
# again every poke would only be refused again, until the month's budget or the prices change).
TRAINED_STATUSES: tuple[RunStatus, ...] = (*CONSUMING_STATUSES, "insufficient_evidence", "failed", "over_budget")


@dataclass(frozen=True)
class TrainingRun:
    run_id: str
    status: RunStatus
    started_at: datetime
    finished_at: datetime | None = None
    dataset_id: str | None = None
    candidate_version: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["started_at"] = self.started_at.isoformat()
        data["finished_at"] = self.finished_at.isoformat() if self.finished_at else None
        return data


class RunRecords(StoreBase):
    """Start, fail and finish the store's model's training runs, and read them back."""

    def _run(self, run_id: str) -> sa.ColumnElement[bool]:
        return (runs_table.c.model == self._model) & (runs_table.c.run_id == run_id)

    def start_training_run(self, run_id: str, *, at: datetime | None = None,
                           claimed_by: Mapping[str, str] | None = None) -> TrainingRun:
        """Record that ``run_id`` is running. Idempotent; a failed or skipped run may start again (a retry, with a
        new start time: its deadline starts over), one that reached a verdict may not (its cases may be consumed
        already: use a new run id).

        ``claimed_by`` (``{"dag_id", "run_id"}``): the sensor records the run it is about to create, so that nothing
        else starts meanwhile. Such a row says ``started: false`` until the run's own first step starts it, so a
        claim that never started can be told apart (:mod:`tuneloop.runs`; it does not start the cooldown).
        """
        t = runs_table
        now = as_utc(at) if at else self._clock()
        summary: dict[str, Any] = {"started": claimed_by is None}
        if claimed_by is not None:
            summary["claimed_by"] = dict(claimed_by)

        def write(conn: Connection) -> None:
            row = conn.execute(sa.select(t).where(self._run(run_id))).first()
            if row is None:
                conn.execute(sa.insert(t).values(model=self._model, run_id=run_id, started_at=now, status="running",
                                                 summary=summary))
            elif row.status in CONSUMING_STATUSES:
                raise StoreError(f"training run {run_id!r} already finished {row.status}; use a new run id")
            elif row.status != "running":
                log.info("%s: training run %s restarts after %s", self._model, run_id, row.status)
                conn.execute(sa.update(t).where(self._run(run_id)).values(
                    status="running", started_at=now, finished_at=None, summary=summary))
            elif claimed_by is None and not (row.summary or {}).get("started", True):
                log.info("%s: claimed training run %s started", self._model, run_id)
                conn.execute(sa.update(t).where(self._run(run_id)).values(
                    summary={**row.summary, "started": True}))

        self._transaction(write)
        return self.training_run(run_id)

    def fail_training_run(self, run_id: str, reason: str, *, at: datetime | None = None) -> bool:
        """End a ``running`` run as ``failed`` with ``reason`` (reconciliation, or a person); its cases stay new.

        Such a run ended without a result (``no_result`` in its summary): it does not start the cooldown, so the
        cases it never judged are taken up by the next check instead of waiting another ``cooldown_hours``.
        Returns False, changing nothing, when the run is no longer running (its report closed it meanwhile: the
        check and the write are one statement). An unknown run is an error.
        """
        if not reason or not reason.strip():
            raise ValueError("reason: failing a training run needs a reason")
        run = self.training_run(run_id)
        now = as_utc(at) if at else self._clock()
        summary = _json_value("summary", {**run.summary, "reason": reason, "no_result": True})
        t = runs_table

        def write(conn: Connection) -> int:
            return conn.execute(sa.update(t).where(self._run(run_id), t.c.status == "running").values(
                status="failed", finished_at=now, summary=summary)).rowcount

        changed = self._transaction(write) > 0
        if changed:
            log.info("%s: training run %s failed: %s", self._model, run_id, reason)
        return changed

    def running_training_runs(self) -> list[TrainingRun]:
        """Rows still marked ``running``, oldest first (reconciled by :mod:`tuneloop.runs`)."""
        t = runs_table
        query = (sa.select(t).where(t.c.model == self._model, t.c.status == "running")
                 .order_by(t.c.started_at, t.c.run_id))
        with self._engine.connect() as conn:
            return [_run_from_row(row) for row in conn.execute(query)]

    def finish_training_run(
        self,
        run_id: str,
        status: RunStatus,
        *,
        dataset_id: str | None = None,
        candidate_version: str | None = None,
        summary: Mapping[str, Any] | None = None,
        at: datetime | None = None,
    ) -> TrainingRun:
        """Record how ``run_id`` ended (creating the row for runs that never started, e.g. skipped).

        Idempotent: finishing again with the same status keeps the first finish time; fields given as None
        keep their stored values, and ``summary`` is merged into the stored one (the bookkeeping of a claimed run,
        ``started`` and ``claimed_by``, must survive its report).
        """
        if status not in FINISHED_STATUSES:
            raise ValueError(f"status: must be one of {', '.join(FINISHED_STATUSES)}, got {status!r}")
        summary_value = _json_value("summary", dict(summary)) if summary is not None else None
        now = as_utc(at) if at else self._clock()
        t = runs_table

        def write(conn: Connection) -> None:
            row = conn.execute(sa.select(t).where(self._run(run_id))).first()
            changes: dict[str, Any] = {"status": status}
            if row is None or row.status != status or row.finished_at is None:
                changes["finished_at"] = now
            for name, value in (("dataset_id", dataset_id), ("candidate_version", candidate_version),
                                ("summary", summary_value)):
                if value is not None:
                    changes[name] = value
            if row is not None and summary_value is not None:
                changes["summary"] = {**(row.summary or {}), **summary_value}
            if row is None:
                conn.execute(sa.insert(t).values(
                    {"model": self._model, "run_id": run_id, "started_at": now, "summary": {}} | changes))
            else:
                conn.execute(sa.update(t).where(self._run(run_id)).values(changes))

        self._transaction(write)
        log.info("%s: training run %s finished: %s", self._model, run_id, status)
        return self.training_run(run_id)

    def training_run(self, run_id: str) -> TrainingRun:
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(runs_table).where(self._run(run_id))).first()
        if row is None:
            raise NotFound(f"training run {run_id!r} does not exist (model {self._model!r})")
        return _run_from_row(row)

    def training_runs(self, limit: int = 20) -> list[TrainingRun]:
        """Most recent first."""
        t = runs_table
        query = (sa.select(t).where(t.c.model == self._model)
                 .order_by(t.c.started_at.desc(), t.c.run_id.desc()).limit(limit))
        with self._engine.connect() as conn:
            return [_run_from_row(row) for row in conn.execute(query)]

    def decided_runs(self, limit: int = 10) -> list[TrainingRun]:
        """The most recent finished runs that did something (all but ``skipped``: a skipped run is a trigger check
        that found nothing to do), newest first: the status page's "last decisions"."""
        t = runs_table
        query = (sa.select(t).where(t.c.model == self._model, t.c.status != "running", t.c.status != "skipped")
                 .order_by(t.c.finished_at.desc(), t.c.run_id.desc()).limit(limit))
        with self._engine.connect() as conn:
            return [_run_from_row(row) for row in conn.execute(query)]

    def runs_with_candidates(self, limit: int = 100) -> list[TrainingRun]:
        """The most recent runs that registered a candidate version, newest first (a version is registered by one
        run: its retries register no other): what the trend chart and version comparisons are drawn from."""
        t = runs_table
        query = (sa.select(t).where(t.c.model == self._model, t.c.candidate_version.is_not(None))
                 .order_by(t.c.started_at.desc(), t.c.run_id.desc()).limit(limit))
        with self._engine.connect() as conn:
            return [_run_from_row(row) for row in conn.execute(query)]

    def finished_runs_since(self, since: datetime) -> list[TrainingRun]:
        """Runs that finished at or after ``since``, oldest first (what a month's costs are summed over)."""
        t = runs_table
        query = (sa.select(t).where(t.c.model == self._model, t.c.finished_at >= as_utc(since))
                 .order_by(t.c.finished_at, t.c.run_id))
        with self._engine.connect() as conn:
            return [_run_from_row(row) for row in conn.execute(query)]

    def last_finished_training(self) -> TrainingRun | None:
        """The run that finished last among those that trained (any finished status but skipped; not a claimed
        run that failed before it started, nor one ended without a result by :meth:`fail_training_run`)."""
        t = runs_table
        query = (sa.select(t).where(t.c.model == self._model, t.c.status.in_(TRAINED_STATUSES),
                                    t.c.finished_at.is_not(None))
                 .order_by(t.c.finished_at.desc(), t.c.run_id.desc()))
        with self._engine.connect() as conn:
            for row in conn.execute(query):
                summary = row.summary or {}
                if summary.get("started", True) and not summary.get("no_result"):
                    return _run_from_row(row)
        return None


def _run_from_row(row: sa.Row[Any]) -> TrainingRun:
    return TrainingRun(run_id=row.run_id, status=row.status, started_at=row.started_at, finished_at=row.finished_at,
                       dataset_id=row.dataset_id, candidate_version=row.candidate_version,
                       summary=dict(row.summary or {}))
