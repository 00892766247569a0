"""Inference counts: requests served per model version and period (the error-rate denominator), per model: version
"3" of two registered models are different things."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tuneloop.intake import as_utc
from tuneloop.store.database import StoreBase
from tuneloop.store.schema import inferences_table


class InferenceRecords(StoreBase):
    """Record how many requests each version of the store's model served."""

    def record_inferences(self, model_version: str, count: int, *, period_start: datetime | None = None) -> None:
        """Record ``count`` requests served by ``model_version`` in the period starting at ``period_start``.

        Recording the same (model_version, period_start) again replaces the count, so a retried report is
        harmless; give ``period_start`` (e.g. the hour) for that. Without it the period starts now, so every
        call adds a separate row.
        """
        if not isinstance(model_version, str) or not model_version.strip():
            raise ValueError(f"model_version: must be a non-empty string, got {model_version!r}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"count: must be an integer >= 0, got {count!r}")
        start = as_utc(period_start) if period_start else self._clock()
        t = inferences_table

        def write(conn: Connection) -> None:
            match = (t.c.model == self._model) & (t.c.model_version == model_version) & (t.c.period_start == start)
            if conn.execute(sa.update(t).where(match).values(count=count)).rowcount == 0:
                conn.execute(sa.insert(t).values(model=self._model, model_version=model_version, period_start=start,
                                                 count=count))

        self._transaction(write)

    def inferences_since(self, since: datetime, model_version: str | None = None) -> int:
        """Requests served in periods starting at or after ``since``: by every version of the model (its traffic,
        ROI's expected requests), or by ``model_version``."""
        t = inferences_table
        query = sa.select(sa.func.coalesce(sa.func.sum(t.c.count), 0)).where(
            t.c.model == self._model, t.c.period_start >= as_utc(since))
        if model_version is not None:
            query = query.where(t.c.model_version == model_version)
        with self._engine.connect() as conn:
            return int(conn.execute(query).scalar_one())
