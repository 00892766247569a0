"""The error-case store: every production mistake, its correction, and the bookkeeping around training runs.

One SQLAlchemy 2 database (SQLite file by default, PostgreSQL at scale) holds

* ``tuneloop_error_cases`` — prediction + human correction per audio clip, with a state: ``new`` (waiting to be
  trained on), ``consumed`` (a finished run trained on it) or ``quarantined`` (unusable, with a reason);
* ``tuneloop_ingest_rejections`` — JSONL rows that were refused, with line number, field and reason;
* ``tuneloop_inference_counts`` — requests served per model version and period (the error-rate denominator);
* ``tuneloop_training_runs`` — one row per pipeline run (the cooldown and "in progress" come from here);
* ``tuneloop_deployment_events`` — registry moves (MLflow keeps no alias history);
* ``tuneloop_regression_suites`` and ``tuneloop_suite_results`` — suites registered through the API, and their
  results per run.

Every write is idempotent because Airflow retries tasks: a case is identified by its id, or by the hash of its
audio content and its normalised text, so storing or ingesting the same case again returns the existing id.
Times are stored as UTC; naive datetimes given to this module are taken to be UTC.

What makes a row a valid case is :mod:`tuneloop.intake`; here each row is written in its own savepoint, so a row
the database refuses costs only itself, and only an unusable database (unreachable, locked) fails a batch.

One module per concern, combined by :class:`ErrorCaseStore`: :mod:`~tuneloop.store.cases` (cases, ingestion and
rejections), :mod:`~tuneloop.store.training_runs`, :mod:`~tuneloop.store.deployments`,
:mod:`~tuneloop.store.suites` and :mod:`~tuneloop.store.inferences`; the tables are in
:mod:`~tuneloop.store.schema`, the engine and write transactions in :mod:`~tuneloop.store.database`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Self

import sqlalchemy as sa

from tuneloop.config import TuneloopConfig
from tuneloop.intake import IngestLimits, InvalidCase, as_utc
from tuneloop.store.cases import (
    CASE_STATES,
    INGEST_CHUNK_ROWS,
    CaseRecords,
    CaseState,
    DuplicateRow,
    ErrorCase,
    IngestRejection,
    IngestReport,
    RejectedRow,
    StoreStatistics,
)
from tuneloop.store.database import _WRITE_OPTION, NotFound, StoreBase, StoreError, _create_tables, _make_engine
from tuneloop.store.deployments import PRODUCTION_ACTIONS, DeploymentRecords
from tuneloop.store.inferences import InferenceRecords
from tuneloop.store.schema import (
    UTCDateTime,
    cases_table,
    deployments_table,
    inferences_table,
    metadata,
    rejections_table,
    runs_table,
    suite_results_table,
    suites_table,
)
from tuneloop.store.suites import SuiteRecords
from tuneloop.store.training_runs import (
    CONSUMING_STATUSES,
    FINISHED_STATUSES,
    TRAINED_STATUSES,
    RunRecords,
    RunStatus,
    TrainingRun,
)
from tuneloop.triggering import TriggerMetrics

__all__ = [
    "CASE_STATES",
    "CONSUMING_STATUSES",
    "FINISHED_STATUSES",
    "INGEST_CHUNK_ROWS",
    "PRODUCTION_ACTIONS",
    "TRAINED_STATUSES",
    "CaseRecords",
    "CaseState",
    "DeploymentRecords",
    "DuplicateRow",
    "ErrorCase",
    "ErrorCaseStore",
    "InferenceRecords",
    "IngestRejection",
    "IngestReport",
    "InvalidCase",
    "NotFound",
    "RejectedRow",
    "RunRecords",
    "RunStatus",
    "StoreBase",
    "StoreError",
    "StoreStatistics",
    "SuiteRecords",
    "TrainingRun",
    "UTCDateTime",
    "cases_table",
    "deployments_table",
    "inferences_table",
    "metadata",
    "rejections_table",
    "runs_table",
    "suite_results_table",
    "suites_table",
]


class ErrorCaseStore(CaseRecords, RunRecords, DeploymentRecords, SuiteRecords, InferenceRecords):
    """Facade over the store's tables. Construct with a SQLAlchemy URL; tables are created if missing.

    Its methods come from one class per concern (see the module docstring); :meth:`trigger_metrics` reads cases,
    inference counts and runs together.

    :param url: e.g. ``sqlite:////var/tuneloop/store.db`` or ``postgresql+psycopg2://user@host:5432/tuneloop``.
    :param clock: returns "now" (aware UTC); injectable so tests are deterministic.
    """

    def __init__(self, url: str, *, clock: Callable[[], datetime] | None = None,
                 limits: IngestLimits | None = None) -> None:
        self._clock = clock or (lambda: datetime.now(UTC))
        self._limits = limits or IngestLimits()
        self._engine = _make_engine(url)
        self._writer = self._engine.execution_options(**{_WRITE_OPTION: True})
        _create_tables(self._engine)

    @classmethod
    def from_config(cls, config: TuneloopConfig) -> ErrorCaseStore:
        return cls(config.resolved_store_url, limits=IngestLimits.from_config(config))

    def __repr__(self) -> str:
        return f"ErrorCaseStore({self._engine.url.render_as_string(hide_password=True)!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._engine.dispose()

    def trigger_metrics(self, now: datetime, window: timedelta, model_version: str | None,
                        *, exclude_run_id: str | None = None) -> TriggerMetrics:
        """The numbers ``check_trigger`` decides on; the window is [now - window, now], both ends included.
        ``exclude_run_id``: the caller's own run, which is not "another run in progress".

        Errors in the window count cases of every state (a consumed or quarantined case was still a mistake of
        the model); inferences are periods that start inside the window.
        """
        now = as_utc(now)
        start = now - window
        c, i = cases_table.c, inferences_table.c
        case_window = [c.created_at >= start, c.created_at <= now]
        inference_window = [i.period_start >= start, i.period_start <= now]
        if model_version is not None:
            case_window.append(c.model_version == model_version)
            inference_window.append(i.model_version == model_version)
        with self._engine.connect() as conn:
            new = conn.scalar(sa.select(sa.func.count()).where(c.state == "new")) or 0
            new_corrected = conn.scalar(
                sa.select(sa.func.count()).where(c.state == "new", c.correction.is_not(None))) or 0
            errors = conn.scalar(sa.select(sa.func.count()).select_from(cases_table).where(*case_window)) or 0
            inferences = conn.scalar(sa.select(sa.func.sum(i.count)).where(*inference_window)) or 0
            running = conn.scalar(
                sa.select(runs_table.c.run_id).where(runs_table.c.status == "running",
                                                     runs_table.c.run_id != (exclude_run_id or ""))
                .order_by(runs_table.c.started_at.desc()).limit(1))
        last = self.last_finished_training()
        return TriggerMetrics(
            new_cases=new,
            new_corrected_cases=new_corrected,
            window_errors=errors,
            window_inferences=int(inferences),
            window_start=start,
            window_end=now,
            model_version=model_version,
            last_training_finished_at=last.finished_at if last else None,
            running_training_run=running,
        )
