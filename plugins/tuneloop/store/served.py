"""Served requests: what a router served (which version, which arm, how fast, what usage) and, once judged, how it
went -- the counts the canary's online test (:mod:`tuneloop.online_test`) decides on.

A router records each request as it answers it (:meth:`ServedRecords.record_served`); its outcome arrives later:
a correction or a thumbs-down is an ``error`` (the correction becomes an error case of the version that served it),
an accepted response a ``success``. Both writes are idempotent, because routers and ingest retry: the same request
id recorded again changes nothing, and an outcome recorded again is the same outcome. A request judged wrong stays
wrong: a later ``success`` (an acceptance before the correction came) does not undo an ``error``, a later
``error`` overrides a ``success``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tuneloop.intake import as_utc
from tuneloop.store.database import NotFound, StoreBase
from tuneloop.store.schema import served_table

ARMS = ("production", "canary")
OUTCOMES = ("success", "error")
MAX_ID_CHARS = 200
Outcome = Literal["success", "error"]


@dataclass(frozen=True)
class ServedRequest:
    """One request a router answered."""

    request_id: str
    model_version: str
    arm: str
    served_at: datetime
    latency_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    outcome: str | None = None
    judged_at: datetime | None = None
    case_id: str | None = None

    def __post_init__(self) -> None:
        for name in ("request_id", "model_version"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip() or len(value) > MAX_ID_CHARS:
                raise ValueError(f"{name}: must be a non-empty string of at most {MAX_ID_CHARS} characters, "
                                 f"got {value!r}")
        if self.arm not in ARMS:
            raise ValueError(f"arm: must be one of {', '.join(ARMS)}, got {self.arm!r}")
        if self.latency_ms is not None and (isinstance(self.latency_ms, bool) or
                                            not isinstance(self.latency_ms, (int, float)) or
                                            not math.isfinite(self.latency_ms) or self.latency_ms < 0):
            raise ValueError(f"latency_ms: must be a finite number >= 0, got {self.latency_ms!r}")
        for name in ("prompt_tokens", "completion_tokens"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"{name}: must be an integer >= 0, got {value!r}")
        if self.outcome is not None and self.outcome not in OUTCOMES:
            raise ValueError(f"outcome: must be one of {', '.join(OUTCOMES)}, got {self.outcome!r}")


class ServedRecords(StoreBase):
    """Record the store's model's served requests and their outcomes; count them per version for the online
    test."""

    def record_served(self, request: ServedRequest) -> bool:
        """Keep ``request`` (its outcome, if it came with one, too); False when its id was recorded already (a
        retry), which changes nothing."""
        t = served_table
        values = {"model": self._model, "request_id": request.request_id, "model_version": request.model_version,
                  "arm": request.arm, "served_at": as_utc(request.served_at), "latency_ms": request.latency_ms,
                  "prompt_tokens": request.prompt_tokens, "completion_tokens": request.completion_tokens,
                  "outcome": request.outcome, "case_id": request.case_id,
                  "judged_at": as_utc(request.judged_at or request.served_at) if request.outcome else None}

        def write(conn: Connection) -> bool:
            if conn.execute(sa.select(t.c.request_id).where(t.c.model == self._model,
                                                            t.c.request_id == request.request_id)).first():
                return False
            conn.execute(sa.insert(t).values(**values))
            return True

        return self._transaction(write)

    def record_outcome(self, request_id: str, outcome: Outcome, *, case_id: str | None = None,
                       at: datetime | None = None) -> ServedRequest:
        """Judge a served request: ``error`` (corrected, thumbs-down; ``case_id``: the error case the correction
        became) or ``success`` (accepted). An ``error`` stands: a ``success`` after it changes nothing. Raises
        :class:`NotFound` for a request id no router recorded (for this model)."""
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome: must be one of {', '.join(OUTCOMES)}, got {outcome!r}")
        t = served_table
        judged_at = as_utc(at) if at else self._clock()
        mine = (t.c.model == self._model) & (t.c.request_id == request_id)

        def write(conn: Connection) -> ServedRequest:
            row = conn.execute(sa.select(t).where(mine)).first()
            if row is None:
                raise NotFound(f"request_id: {request_id!r} was not served (no router recorded it for model "
                               f"{self._model!r})")
            if row.outcome == "error" and outcome == "success":
                return _request(row)
            if row.outcome != outcome or (case_id and row.case_id != case_id):
                conn.execute(sa.update(t).where(mine).values(outcome=outcome, judged_at=judged_at,
                                                            case_id=case_id or row.case_id))
            return _request(conn.execute(sa.select(t).where(mine)).one())

        return self._transaction(write)

    def served_request(self, request_id: str) -> ServedRequest:
        """One served request; :class:`NotFound` when there is none."""
        t = served_table
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(t).where(t.c.model == self._model, t.c.request_id == request_id)).first()
        if row is None:
            raise NotFound(f"request_id: {request_id!r} was not served")
        return _request(row)

    def judged_counts(self, model_version: str, *, since: datetime, until: datetime | None = None
                      ) -> tuple[int, int]:
        """How many requests ``model_version`` served in [since, until) that were judged, and how many of those
        were errors: one arm of the online test."""
        t = served_table
        where = [t.c.model == self._model, t.c.model_version == model_version, t.c.served_at >= as_utc(since),
                 t.c.outcome.is_not(None)]
        if until is not None:
            where.append(t.c.served_at < as_utc(until))
        errors = sa.func.sum(sa.case((t.c.outcome == "error", 1), else_=0))
        with self._engine.connect() as conn:
            judged, wrong = conn.execute(sa.select(sa.func.count(), errors).where(*where)).one()
        return int(judged), int(wrong or 0)


    def mean_latency_ms(self, model_version: str, *, since: datetime) -> float | None:
        """The mean latency of the requests ``model_version`` served since ``since`` (None: none recorded)."""
        t = served_table
        with self._engine.connect() as conn:
            value = conn.execute(sa.select(sa.func.avg(t.c.latency_ms)).where(
                t.c.model == self._model, t.c.model_version == model_version, t.c.served_at >= as_utc(since))).scalar()
        return None if value is None else float(value)


    def mean_usage(self, model_version: str, *, since: datetime) -> tuple[float, float] | None:
        """The mean prompt and completion tokens of the requests ``model_version`` served since ``since`` that
        recorded their usage (None: none did)."""
        t = served_table
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(sa.func.avg(t.c.prompt_tokens), sa.func.avg(t.c.completion_tokens)).where(
                t.c.model == self._model, t.c.model_version == model_version, t.c.served_at >= as_utc(since),
                t.c.prompt_tokens.is_not(None), t.c.completion_tokens.is_not(None))).one()
        return None if row[0] is None else (float(row[0]), float(row[1]))


def _request(row: sa.Row) -> ServedRequest:
    return ServedRequest(request_id=row.request_id, model_version=row.model_version, arm=row.arm,
                         served_at=row.served_at, latency_ms=row.latency_ms, prompt_tokens=row.prompt_tokens,
                         completion_tokens=row.completion_tokens, outcome=row.outcome, judged_at=row.judged_at,
                         case_id=row.case_id)
