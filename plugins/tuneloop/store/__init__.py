"""The error-case store: every production mistake, its correction, and the bookkeeping around training runs.

One SQLAlchemy 2 database (SQLite file by default, PostgreSQL at scale) holds, for every configured model
(``models:`` in the config; ``"default"`` for a single-model installation),

* ``tuneloop_error_cases`` — prediction + human correction per audio clip (or conversation, for chat models), with
  a state: ``new`` (waiting to be trained on), ``consumed`` (a finished run trained on it) or ``quarantined``
  (unusable, with a reason);
* ``tuneloop_ingest_rejections`` — JSONL rows that were refused, with line number, field and reason;
* ``tuneloop_inference_counts`` — requests served per model version and period (the error-rate denominator);
* ``tuneloop_training_runs`` — one row per pipeline run (the cooldown and "in progress" come from here);
* ``tuneloop_deployment_events`` — registry moves (MLflow keeps no alias history);
* ``tuneloop_regression_suites`` and ``tuneloop_suite_results`` — suites registered through the API, and their
  results per run;
* ``tuneloop_served_requests`` — requests a router served (version, arm, latency, usage) and their outcomes, what
  a canary's online test counts;

and ``tuneloop_schema_version``, the version of these tables (:mod:`~tuneloop.store.migrations` upgrades older
stores when they are opened).

An :class:`ErrorCaseStore` is scoped to one model: each row it writes is that model's and each query sees only
that model's rows, so every model has its own cases, cooldown, runs, inference counts, suites and history, and the
code that uses a store does not change with the number of models. :meth:`ErrorCaseStore.for_model` gives the store
of another model over the same connections.

Every write is idempotent because Airflow retries tasks: a case is identified (within its model) by its id, or by
the hash of its content (speech: audio content and normalised text), so storing or ingesting the same case again
returns the existing id. Times are stored as UTC; naive datetimes given to this module are taken to be UTC.

What makes a row a valid case is the model's task (:mod:`tuneloop.tasks`, built on :mod:`tuneloop.intake`); here
rows are written a chunk at a time (a few lookups, one insert), and row by row in savepoints when the database
refuses the chunk, so a row the database refuses costs only itself, and only an unusable database (unreachable,
locked) fails a batch.

One module per concern, combined by :class:`ErrorCaseStore`: :mod:`~tuneloop.store.cases` (cases, ingestion and
rejections), :mod:`~tuneloop.store.training_runs`, :mod:`~tuneloop.store.deployments`,
:mod:`~tuneloop.store.suites`, :mod:`~tuneloop.store.inferences`, :mod:`~tuneloop.store.served` and :mod:`~tuneloop.store.store_statistics`
(the counts of ``tuneloop status``); the tables are in
:mod:`~tuneloop.store.schema`, the engine and write transactions in :mod:`~tuneloop.store.database`, schema versions
and migrations in :mod:`~tuneloop.store.migrations`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Self

import sqlalchemy as sa
from sqlalchemy.pool import StaticPool

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
)
from tuneloop.store.database import _WRITE_OPTION, NotFound, StoreBase, StoreError, _make_engine
from tuneloop.store.deployments import PRODUCTION_ACTIONS, DeploymentRecords
from tuneloop.store.inferences import InferenceRecords
from tuneloop.store.migrations import prepare_schema
from tuneloop.store.schema import (
    DEFAULT_MODEL,
    MAX_MODEL_CHARS,
    MODEL_TABLES,
    SCHEMA_VERSION,
    UTCDateTime,
    cases_table,
    deployments_table,
    inferences_table,
    metadata,
    rejections_table,
    runs_table,
    suite_results_table,
    suites_table,
    version_table,
)
from tuneloop.store.served import ServedRecords, ServedRequest
from tuneloop.store.store_statistics import StatisticsRecords, StoreStatistics
from tuneloop.store.suites import SuiteRecords
from tuneloop.store.training_runs import (
    CONSUMING_STATUSES,
    FINISHED_STATUSES,
    TRAINED_STATUSES,
    RunRecords,
    RunStatus,
    TrainingRun,
)
from tuneloop.tasks import TASK_NAMES
from tuneloop.triggering import TriggerMetrics

if TYPE_CHECKING:
    from tuneloop.tasks import Task

__all__ = [
    "CASE_STATES",
    "CONSUMING_STATUSES",
    "DEFAULT_MODEL",
    "FINISHED_STATUSES",
    "INGEST_CHUNK_ROWS",
    "PRODUCTION_ACTIONS",
    "SCHEMA_VERSION",
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
    "ServedRecords",
    "ServedRequest",
    "StatisticsRecords",
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
    "version_table",
]


class ErrorCaseStore(CaseRecords, StatisticsRecords, RunRecords, DeploymentRecords, SuiteRecords,
                     InferenceRecords, ServedRecords):
    """Facade over the store's tables, scoped to one model. Construct with a SQLAlchemy URL; the tables are created
    if missing, and upgraded if an older tuneloop made them.

    Its methods come from one class per concern (see the module docstring); :meth:`trigger_metrics` reads cases,
    inference counts and runs together.

    :param url: e.g. ``sqlite:////var/tuneloop/store.db`` or ``postgresql+psycopg2://user@host:5432/tuneloop``.
    :param model: the configured model whose rows this store reads and writes (``"default"`` when only one).
    :param task: the model's task (a :class:`tuneloop.tasks.Task` or its name; default ``speech_to_text``): it
        checks every case row. A name is imported when the first case needs it.
    :param clock: returns "now" (aware UTC); injectable so tests are deterministic.
    """

    def __init__(self, url: str, *, model: str = DEFAULT_MODEL, task: Task | str | None = None,
                 clock: Callable[[], datetime] | None = None, limits: IngestLimits | None = None) -> None:
        self._model = _model_name(model)
        self._task = _task(task)
        self._clock = clock or (lambda: datetime.now(UTC))
        self._limits = limits or IngestLimits()
        self._engine = _make_engine(url)
        self._writer = self._engine.execution_options(**{_WRITE_OPTION: True})
        prepare_schema(self._engine, self._writer)

    @classmethod
    def from_config(cls, config: TuneloopConfig) -> ErrorCaseStore:
        """The store of the configured model (``config.model_key``, ``config.task``)."""
        return cls(config.resolved_store_url, model=getattr(config, "model_key", DEFAULT_MODEL),
                   task=getattr(config, "task", "speech_to_text"), limits=IngestLimits.from_config(config))

    def for_model(self, name: str, task: Task | str | None = None) -> ErrorCaseStore:
        """The store of model ``name`` over the same database connections (no new pool, no schema check): for code
        that serves several models, e.g. ``tuneloop status``. Clock and limits are this store's."""
        other = copy.copy(self)  # shares the engines; only the scope differs
        other._model = _model_name(name)
        other._task = _task(task)
        return other

    @property
    def single_connection(self) -> bool:
        """True when every use shares one connection (an in-memory SQLite store): two threads must not read and
        write through it at once."""
        return isinstance(self._engine.pool, StaticPool)

    @property
    def model(self) -> str:
        """The configured model this store reads and writes."""
        return self._model

    def models(self) -> list[str]:
        """Every model with a row in the store (cases, runs, rejections, inference counts, suites, history), sorted:
        the models ``tuneloop status`` can report on, configured or not (any more)."""
        union = sa.union(*(sa.select(table.c.model) for table in MODEL_TABLES)).subquery()
        with self._engine.connect() as conn:
            return sorted(conn.execute(sa.select(union.c.model)).scalars())

    def __repr__(self) -> str:
        return f"ErrorCaseStore({self._engine.url.render_as_string(hide_password=True)!r}, model={self._model!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the pooled connections (shared with the stores of :meth:`for_model`; they reconnect on use)."""
        self._engine.dispose()

    def trigger_metrics(self, now: datetime, window: timedelta, model_version: str | None,
                        *, exclude_run_id: str | None = None, count_limit: int | None = None) -> TriggerMetrics:
        """The numbers ``check_trigger`` decides on; the window is [now - window, now], both ends included.
        ``exclude_run_id``: the caller's own run, which is not "another run in progress". ``count_limit``: count
        new cases only up to this many (the trigger asks "at least the threshold?"), so the check costs what the
        thresholds and the window hold, not what the backlog holds.

        Errors in the window count cases of every state (a consumed or quarantined case was still a mistake of
        the model); inferences are periods that start inside the window. Everything is the store's model's.
        Each count reads one index range (see the cases table's indexes).
        """
        now = as_utc(now)
        start = now - window
        c, i = cases_table.c, inferences_table.c
        case_window = [c.model == self._model, c.created_at >= start, c.created_at <= now]
        inference_window = [i.model == self._model, i.period_start >= start, i.period_start <= now]
        if model_version is not None:
            case_window.append(c.model_version == model_version)
            inference_window.append(i.model_version == model_version)
        if count_limit is not None and count_limit < 1:
            raise ValueError(f"count_limit: must be at least 1, got {count_limit}")
        with self._engine.connect() as conn:
            _one_snapshot(conn)
            new = _count(conn, [c.model == self._model, c.state == "new"], count_limit)
            new_corrected = _count(conn, [c.model == self._model, c.state == "new", c.correction.is_not(None)],
                                   count_limit)
            errors = _count(conn, case_window, None)
            inferences = conn.scalar(sa.select(sa.func.sum(i.count)).where(*inference_window)) or 0
            running = conn.scalar(
                sa.select(runs_table.c.run_id).where(runs_table.c.model == self._model,
                                                     runs_table.c.status == "running",
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
            count_limit=count_limit,
        )


def _one_snapshot(conn: sa.Connection) -> None:
    """Let every read of this connection's transaction see the same moment, so counts taken while cases arrive
    agree with each other (never more new corrected cases than new cases). SQLite in WAL mode already reads from
    one snapshot per transaction; PostgreSQL's default (read committed) takes one per statement."""
    if conn.dialect.name == "postgresql":
        conn.execution_options(isolation_level="REPEATABLE READ")


def _count(conn: sa.Connection, where: list[sa.ColumnElement[bool]], limit: int | None) -> int:
    """How many cases match ``where``, counting at most ``limit`` of them (None: all). ``created_at`` is selected,
    not a constant: every index of new cases holds it, so the one that holds the condition too (the corrected
    cases' partial index for "corrected") answers without reading the table, and the planner sees that."""
    if limit is None:
        return conn.scalar(sa.select(sa.func.count()).select_from(cases_table).where(*where)) or 0
    matching = sa.select(cases_table.c.created_at).where(*where).limit(limit).subquery()
    return conn.scalar(sa.select(sa.func.count()).select_from(matching)) or 0


def _model_name(name: str) -> str:
    """A model name fit for the ``model`` columns: what the config's ``models:`` names are."""
    if not isinstance(name, str) or not name.strip() or name != name.strip() or len(name) > MAX_MODEL_CHARS:
        raise ValueError(f"model: must be a non-empty string of at most {MAX_MODEL_CHARS} characters without "
                         f"surrounding spaces, got {name!r}")
    return name


def _task(task: Task | str | None) -> Task | str:
    """The task, or its name (checked now, imported when a case needs it)."""
    if task is None:
        return "speech_to_text"
    if isinstance(task, str) and task not in TASK_NAMES:
        raise ValueError(f"task: unknown task {task!r}; known: {', '.join(TASK_NAMES)}")
    return task
