"""Regression suites registered through the API, and each suite's results per run."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tuneloop.intake import as_utc
from tuneloop.store.database import StoreBase, _json_value
from tuneloop.store.schema import suite_results_table, suites_table


class SuiteRecords(StoreBase):
    """Register the store's model's regression suites and keep their results."""

    def register_suite(self, spec: Any) -> None:
        """Register (or replace) a regression suite by name: the API twin of ``regression.suites`` in config."""
        from tuneloop.config import SuiteSpec

        spec = SuiteSpec.model_validate(spec)
        value = spec.model_dump(mode="json")
        t = suites_table

        def write(conn: Connection) -> None:
            conn.execute(sa.delete(t).where(t.c.model == self._model, t.c.name == spec.name))
            conn.execute(sa.insert(t).values(model=self._model, name=spec.name, spec=value,
                                             registered_at=self._clock()))

        self._transaction(write)

    def registered_suites(self) -> list[Any]:
        """Suites registered through :meth:`register_suite`, by name."""
        from tuneloop.config import SuiteSpec

        with self._engine.connect() as conn:
            rows = conn.execute(sa.select(suites_table).where(suites_table.c.model == self._model)
                                .order_by(suites_table.c.name))
            return [SuiteSpec.model_validate(row.spec) for row in rows]

    def record_suite_result(self, run_id: str, result: Mapping[str, Any], *, at: datetime | None = None) -> bool:
        """Keep one suite's result for a run (``SuiteResult.to_dict()``: its ``wer`` and ``cer``; a chat suite's
        ``ChatSuiteResult.to_dict()``: its ``metric`` and ``score``); a retried run does not add it twice."""
        t = suite_results_table
        value = _json_value("result", dict(result))
        if result.get("metric") is None:
            numbers = {"wer": result["wer"], "cer": result["cer"]}
        else:
            numbers = {"metric": result["metric"], "score": result["score"]}

        def write(conn: Connection) -> bool:
            if conn.execute(sa.select(t.c.id).where(t.c.model == self._model, t.c.suite == result["name"],
                                                     t.c.run_id == run_id)).first():
                return False
            conn.execute(sa.insert(t).values(
                model=self._model, suite=result["name"], model_version=result.get("model_version"), run_id=run_id,
                at=as_utc(at) if at else self._clock(), n=result["n"], passed=bool(result["passed"]), result=value,
                **numbers))
            return True

        return self._transaction(write)

    def suite_history(self, suite: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Suite results, newest first: {suite, model_version, run_id, at, wer, cer, metric, score, n, passed,
        result} (speech: ``metric`` and ``score`` None; chat: ``wer`` and ``cer`` None)."""
        t = suite_results_table
        query = sa.select(t).where(t.c.model == self._model).order_by(t.c.at.desc(), t.c.id.desc()).limit(limit)
        if suite is not None:
            query = query.where(t.c.suite == suite)
        with self._engine.connect() as conn:
            return [{"suite": r.suite, "model_version": r.model_version, "run_id": r.run_id, "at": r.at,
                     "wer": r.wer, "cer": r.cer, "metric": r.metric, "score": r.score, "n": r.n, "passed": r.passed,
                     "result": dict(r.result)}
                    for r in conn.execute(query)]
