"""The error-case store: every production mistake, its correction, and the bookkeeping around training runs.

One SQLAlchemy 2 database (SQLite file by default, PostgreSQL at scale) holds

* ``tuneloop_error_cases`` — prediction + human correction per audio clip, with a state: ``new`` (waiting to be
  trained on), ``consumed`` (a finished run trained on it) or ``quarantined`` (unusable, with a reason);
* ``tuneloop_ingest_rejections`` — JSONL rows that were refused, with line number, field and reason;
* ``tuneloop_inference_counts`` — requests served per model version and period (the error-rate denominator);
* ``tuneloop_training_runs`` — one row per pipeline run (the cooldown and "in progress" come from here);
* ``tuneloop_deployment_events`` — registry moves (MLflow keeps no alias history).

Every write is idempotent because Airflow retries tasks: a case is identified by its id, or by the hash of its
audio content and its normalised text, so storing or ingesting the same case again returns the existing id.
Times are stored as UTC; naive datetimes given to this module are taken to be UTC.

What makes a row a valid case is :mod:`tuneloop.intake`; here each row is written in its own savepoint, so a row
the database refuses costs only itself, and only an unusable database (unreachable, locked) fails a batch.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Self, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError
from sqlalchemy.pool import StaticPool

from tuneloop.config import TuneloopConfig
from tuneloop.history import DeploymentEvent
from tuneloop.intake import (
    CaseDraft,
    IngestLimits,
    InvalidCase,
    Line,
    as_utc,
    decode_row,
    parse_case,
    read_lines,
    sha256,
    storable,
)
from tuneloop.triggering import TriggerMetrics

log = logging.getLogger(__name__)

CaseState = Literal["new", "consumed", "quarantined"]
RunStatus = Literal["running", "deployed", "rejected", "declined", "rolled_back", "insufficient_evidence",
                    "not_approved", "failed", "skipped"]
CASE_STATES: tuple[CaseState, ...] = ("new", "consumed", "quarantined")
FINISHED_STATUSES: tuple[RunStatus, ...] = ("deployed", "rejected", "declined", "rolled_back",
                                            "insufficient_evidence", "not_approved", "failed", "skipped")
# Runs whose data was judged (a verdict was reached): only these consume their cases. A failed run leaves them
# new for the next run; a skipped or not-approved run never trained; an insufficient-evidence run keeps them so
# that the next run, with more cases, has a bigger eval split.
CONSUMING_STATUSES: tuple[RunStatus, ...] = ("deployed", "rejected", "declined", "rolled_back")
# Runs that used training compute: they start the cooldown.
TRAINED_STATUSES: tuple[RunStatus, ...] = (*CONSUMING_STATUSES, "insufficient_evidence", "failed")
PRODUCTION_ACTIONS = ("bootstrap", "deploy", "rollback")
INGEST_CHUNK_ROWS = 500  # rows parsed, then written, per transaction: memory follows the chunk, not the file
_WRITE_OPTION = "tuneloop_write"  # marks write transactions (SQLite takes its write lock when they begin)
_T = TypeVar("_T")


class StoreError(RuntimeError):
    """The store cannot do what was asked (bad URL, unreachable database, an illegal state change)."""


class NotFound(StoreError, LookupError):
    """A case or training run named by id does not exist."""


# --------------------------------------------------------------------------------------------------- entities


@dataclass(frozen=True)
class ErrorCase:
    """One stored error case. ``audio_hash`` is None for remote audio not yet fetched (checked at export)."""

    id: str
    created_at: datetime
    source: str
    model_version: str | None
    audio_uri: str
    audio_hash: str | None
    prediction: str
    correction: str | None
    error_types: tuple[str, ...]
    error_score: float | None
    annotator: str | None
    metadata: dict[str, Any]
    content_hash: str
    state: CaseState
    state_reason: str | None = None
    consumed_by_run: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["created_at"] = self.created_at.isoformat()
        data["error_types"] = list(self.error_types)
        return data


@dataclass(frozen=True)
class RejectedRow:
    """A JSONL row that was refused: where it was, which field, why, and the start of the raw line."""

    line: int
    field: str
    reason: str
    snippet: str


@dataclass(frozen=True)
class DuplicateRow:
    line: int
    case_id: str


@dataclass(frozen=True)
class IngestReport:
    """Outcome of one JSONL batch: ids newly stored, rows that were already stored, rows refused."""

    batch: str
    rows: int
    accepted: tuple[str, ...]
    duplicates: tuple[DuplicateRow, ...]
    rejected: tuple[RejectedRow, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "rows": self.rows,
            "accepted": list(self.accepted),
            "duplicates": [asdict(d) for d in self.duplicates],
            "rejected": [asdict(r) for r in self.rejected],
        }


@dataclass(frozen=True)
class IngestRejection:
    """A stored rejection (``ErrorCaseStore.ingest_rejections``)."""

    batch: str
    line: int
    field: str
    reason: str
    snippet: str
    at: datetime


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


@dataclass(frozen=True)
class StoreStatistics:
    """Counts for ``tuneloop status`` and the seed's ``get_statistics``."""

    total_cases: int
    by_state: dict[str, int]
    corrected_cases: int
    new_corrected_cases: int
    by_model_version: dict[str, int]
    by_error_type: dict[str, int]
    rejected_rows: int
    inferences_total: int
    inferences_by_model_version: dict[str, int]
    training_runs_by_status: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------------------------------- schema


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Stores naive UTC (portable across SQLite and PostgreSQL) and hands back aware UTC datetimes."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        return None if value is None else as_utc(value).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


metadata = sa.MetaData()

cases_table = sa.Table(
    "tuneloop_error_cases",
    metadata,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("created_at", UTCDateTime, nullable=False, index=True),
    sa.Column("ingested_at", UTCDateTime, nullable=False),
    sa.Column("source", sa.String(200), nullable=False),
    sa.Column("model_version", sa.String(200), index=True),
    sa.Column("audio_uri", sa.Text, nullable=False),
    sa.Column("audio_hash", sa.String(64), index=True),
    sa.Column("prediction", sa.Text, nullable=False),
    sa.Column("correction", sa.Text),
    sa.Column("error_types", sa.JSON, nullable=False),
    sa.Column("error_score", sa.Float),
    sa.Column("annotator", sa.String(200)),
    sa.Column("metadata", sa.JSON, nullable=False, key="meta"),
    sa.Column("content_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("state_reason", sa.Text),
    sa.Column("state_changed_at", UTCDateTime),
    sa.Column("consumed_by_run", sa.String(250)),
)

rejections_table = sa.Table(
    "tuneloop_ingest_rejections",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("rejection_key", sa.String(64), nullable=False, unique=True),
    sa.Column("batch", sa.Text, nullable=False),
    sa.Column("line", sa.Integer, nullable=False),
    sa.Column("field", sa.String(100), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("snippet", sa.Text, nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
)

inferences_table = sa.Table(
    "tuneloop_inference_counts",
    metadata,
    sa.Column("model_version", sa.String(200), primary_key=True),
    sa.Column("period_start", UTCDateTime, primary_key=True),
    sa.Column("count", sa.BigInteger, nullable=False),
)

runs_table = sa.Table(
    "tuneloop_training_runs",
    metadata,
    sa.Column("run_id", sa.String(250), primary_key=True),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("finished_at", UTCDateTime, index=True),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("dataset_id", sa.String(100)),
    sa.Column("candidate_version", sa.String(200)),
    sa.Column("summary", sa.JSON, nullable=False),
)

deployments_table = sa.Table(
    "tuneloop_deployment_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("event_key", sa.String(64), nullable=False, unique=True),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("model_name", sa.String(200), nullable=False, index=True),
    sa.Column("from_version", sa.String(200)),
    sa.Column("to_version", sa.String(200)),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("run_id", sa.String(250)),
    sa.Column("at", UTCDateTime, nullable=False, index=True),
    sa.Column("details", sa.JSON, nullable=False),
)

suites_table = sa.Table(
    "tuneloop_regression_suites",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("registered_at", UTCDateTime, nullable=False),
)

suite_results_table = sa.Table(
    "tuneloop_suite_results",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("suite", sa.String(200), nullable=False, index=True),
    sa.Column("model_version", sa.String(200)),
    sa.Column("run_id", sa.String(250), nullable=False),
    sa.Column("at", UTCDateTime, nullable=False, index=True),
    sa.Column("wer", sa.Float, nullable=False),
    sa.Column("cer", sa.Float, nullable=False),
    sa.Column("n", sa.Integer, nullable=False),
    sa.Column("passed", sa.Boolean, nullable=False),
    sa.Column("result", sa.JSON, nullable=False),
    sa.UniqueConstraint("suite", "run_id", name="uq_tuneloop_suite_results_suite_run"),
)


# ------------------------------------------------------------------------------------------------------ store


class ErrorCaseStore:
    """Facade over the store's tables. Construct with a SQLAlchemy URL; tables are created if missing.

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

    # ------------------------------------------------------------------------------------------ writing cases

    def store_failed_case(
        self,
        audio_path: str | Path,
        original_transcript: str,
        corrected_transcript: str | None,
        error_types: list[str] | None = None,
        error_score: float | None = None,
        metadata: dict[str, Any] | None = None,
        *,
        source: str = "api",
        model_version: str | None = None,
        annotator: str | None = None,
        created_at: datetime | str | None = None,
        case_id: str | None = None,
    ) -> str:
        """Store one error case (the seed's call) and return its id; the same case again returns the same id.

        Relative audio paths are taken from the current directory and stored absolute. Raises ``InvalidCase``.
        """
        row = {
            "id": case_id,
            "audio_path": os.fspath(audio_path) if isinstance(audio_path, os.PathLike) else audio_path,
            "prediction": original_transcript,
            "correction": corrected_transcript,
            "error_types": error_types,
            "error_score": error_score,
            "metadata": metadata,
            "source": source,
            "model_version": model_version,
            "annotator": annotator,
            "created_at": created_at,
        }
        draft = parse_case(row, base_dir=Path.cwd(), default_source=source, now=self._clock(), limits=self._limits)
        case_id, is_new = self._transaction(lambda conn: self._insert_isolated(conn, draft))
        log.info("%s error case %s", "stored" if is_new else "already had", case_id)
        return case_id

    def ingest_jsonl(self, path: str | Path, *, source: str | None = None, batch_name: str | None = None,
                     base_dir: Path | str | None = None) -> IngestReport:
        """Store every valid row of a JSONL batch; refuse the others with line, field and reason.

        No row can cost another: each is parsed on its own (bounded by the ``ingest`` limits) and written in its
        own savepoint, so a row the database refuses is refused alone. Rows are written in chunks of
        ``INGEST_CHUNK_ROWS``, one transaction each; a database that is unreachable raises (the whole batch can
        be ingested again later: re-ingesting the same file stores nothing new, rows come back as duplicates and
        rejections are not recorded twice). Relative audio paths are relative to the JSONL file, or to
        ``base_dir`` (a folder, or a ``gs://`` prefix for a batch read from a bucket). ``source`` is the default
        for rows without one (default ``"jsonl"``); ``batch_name`` is how the batch is recorded (default its
        path).
        """
        file = Path(path).absolute()
        if not file.is_file():
            raise FileNotFoundError(f"{file}: JSONL batch does not exist")
        batch = storable(batch_name or str(file))
        base = file.parent if base_dir is None else base_dir
        accepted: list[str] = []
        duplicates: list[DuplicateRow] = []
        refused: list[RejectedRow] = []
        rows = 0
        with file.open("rb") as handle:
            for chunk in _batched(read_lines(handle, self._limits.max_line_bytes), INGEST_CHUNK_ROWS):
                rows += len(chunk)
                drafts, rejected = self._parse_lines(chunk, base, source or "jsonl")
                stored, again, refused_here = self._transaction(
                    lambda conn: self._write_rows(conn, batch, drafts, rejected))  # noqa: B023 (called at once)
                accepted += stored
                duplicates += again
                refused += refused_here
        report = IngestReport(batch, rows, tuple(accepted), tuple(duplicates), tuple(refused))
        log.info("ingested %s: %d rows, %d stored, %d duplicates, %d rejected", batch, report.rows,
                 len(report.accepted), len(report.duplicates), len(report.rejected))
        for row in report.rejected:
            log.warning("%s:%d rejected: %s: %s", batch, row.line, row.field, row.reason)
        return report

    def _parse_lines(self, lines: list[Line], base: Path | str,
                     default_source: str) -> tuple[list[tuple[Line, CaseDraft]], list[RejectedRow]]:
        """Decode and check each line (audio probing included) before any database work."""
        drafts: list[tuple[Line, CaseDraft]] = []
        rejected: list[RejectedRow] = []
        now = self._clock()
        for line in lines:
            try:
                row = decode_row(line, self._limits)
                drafts.append((line, parse_case(row, base_dir=base, default_source=default_source, now=now,
                                                limits=self._limits)))
            except InvalidCase as error:
                rejected.append(RejectedRow(line.number, error.field, error.reason, line.snippet))
            except Exception as error:  # a rule we lack must still cost only this row; logged as the bug it is
                log.exception("line %d: unexpected error while checking the row", line.number)
                rejected.append(RejectedRow(line.number, "row", storable(
                    f"could not be checked ({type(error).__name__}: {str(error)[:200]})"), line.snippet))
        return drafts, rejected

    def _write_rows(self, conn: Connection, batch: str, drafts: list[tuple[Line, CaseDraft]],
                    rejected: list[RejectedRow]) -> tuple[list[str], list[DuplicateRow], list[RejectedRow]]:
        accepted: list[str] = []
        duplicates: list[DuplicateRow] = []
        refused = list(rejected)
        for line, draft in drafts:
            try:
                case_id, is_new = self._insert_isolated(conn, draft)
            except InvalidCase as error:
                refused.append(RejectedRow(line.number, error.field, error.reason, line.snippet))
                continue
            if is_new:
                accepted.append(case_id)
            else:
                duplicates.append(DuplicateRow(line.number, case_id))
        refused.sort(key=lambda r: r.line)
        self._record_rejections(conn, batch, refused)
        return accepted, duplicates, refused

    def _insert_isolated(self, conn: Connection, draft: CaseDraft) -> tuple[str, bool]:
        """Insert one case in a savepoint: a row the database refuses becomes ``InvalidCase`` and costs only
        itself. A database that cannot be used at all (connection lost, locked) raises: that is no fault of the
        row, and the batch is ingested again later."""
        for attempt in (1, 2):
            try:
                with conn.begin_nested():
                    return self._insert_case(conn, draft)
            except DBAPIError as error:
                if _is_transient(error):
                    raise
                if isinstance(error, IntegrityError) and attempt == 1:
                    continue  # a concurrent writer stored the same case between our lookup and insert: look again
                raise InvalidCase("row", f"the database refused it: {str(error.orig)[:300]}") from error
        raise AssertionError("unreachable")

    def _insert_case(self, conn: Connection, draft: CaseDraft) -> tuple[str, bool]:
        """Insert unless the same id or the same content is stored; return (id, inserted)."""
        t = cases_table
        same = sa.or_(t.c.id == draft.id, t.c.content_hash == draft.content_hash)
        existing = conn.execute(sa.select(t.c.id, t.c.content_hash).where(same)).all()
        for row in existing:
            if row.id == draft.id and row.content_hash != draft.content_hash:
                raise InvalidCase("id", f"{draft.id!r} is already used by a case with different audio or text")
        if existing:
            return existing[0].id, False
        conn.execute(sa.insert(t).values(**draft.values(), ingested_at=self._clock(), state="new"))
        return draft.id, True

    def _record_rejections(self, conn: Connection, batch: str, rows: Iterable[RejectedRow]) -> None:
        """Record rejections once: a key over (batch, line, field, reason, snippet) makes re-ingestion silent."""
        t = rejections_table
        for row in rows:
            key = sha256(json.dumps([batch, row.line, row.field, row.reason, row.snippet]))
            if conn.execute(sa.select(t.c.id).where(t.c.rejection_key == key)).first() is None:
                conn.execute(sa.insert(t).values(rejection_key=key, batch=batch, line=row.line, field=row.field,
                                                 reason=row.reason, snippet=row.snippet, at=self._clock()))

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
            match = (t.c.model_version == model_version) & (t.c.period_start == start)
            if conn.execute(sa.update(t).where(match).values(count=count)).rowcount == 0:
                conn.execute(sa.insert(t).values(model_version=model_version, period_start=start, count=count))

        self._transaction(write)

    # ------------------------------------------------------------------------------------------ reading cases

    def get_case(self, case_id: str) -> ErrorCase:
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(cases_table).where(cases_table.c.id == case_id)).first()
        if row is None:
            raise NotFound(f"error case {case_id!r} does not exist")
        return _case_from_row(row)

    def cases_for_export(self, limit: int | None = None) -> list[ErrorCase]:
        """New cases that carry a correction, oldest first (ties by id, so the order is deterministic)."""
        t = cases_table
        query = (sa.select(t).where(t.c.state == "new", t.c.correction.is_not(None))
                 .order_by(t.c.created_at, t.c.id).limit(limit))
        with self._engine.connect() as conn:
            return [_case_from_row(row) for row in conn.execute(query)]

    def statistics(self) -> StoreStatistics:
        """Totals by state, model version and error type, plus rejections, inferences and runs."""
        c, i, r = cases_table.c, inferences_table.c, runs_table.c
        with self._engine.connect() as conn:
            by_state = {state: 0 for state in CASE_STATES} | _grouped(conn, c.state, sa.func.count())
            corrected = conn.scalar(sa.select(sa.func.count()).where(c.correction.is_not(None))) or 0
            new_corrected = conn.scalar(
                sa.select(sa.func.count()).where(c.correction.is_not(None), c.state == "new")) or 0
            by_version = {str(k or "unknown"): v for k, v in _grouped(conn, c.model_version, sa.func.count()).items()}
            error_types: Counter[str] = Counter()
            for types in conn.execute(sa.select(c.error_types)).scalars():
                error_types.update(types or [])
            rejected = conn.scalar(sa.select(sa.func.count()).select_from(rejections_table)) or 0
            inferences = _grouped(conn, i.model_version, sa.func.sum(i.count))
            runs = _grouped(conn, r.status, sa.func.count())
        return StoreStatistics(
            total_cases=sum(by_state.values()),
            by_state=by_state,
            corrected_cases=corrected,
            new_corrected_cases=new_corrected,
            by_model_version=by_version,
            by_error_type=dict(error_types.most_common()),
            rejected_rows=rejected,
            inferences_total=int(sum(inferences.values())),
            inferences_by_model_version={k: int(v) for k, v in inferences.items()},
            training_runs_by_status=runs,
        )

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

    # ------------------------------------------------------------------------------------------ case states

    def quarantine(self, case_id: str, reason: str) -> None:
        """Take a case out of training for good, with the reason (shown by status and the dataset manifest)."""
        if not reason or not reason.strip():
            raise ValueError("reason: a quarantine needs a reason")
        t = cases_table

        def write(conn: Connection) -> int:
            return conn.execute(sa.update(t).where(t.c.id == case_id).values(
                state="quarantined", state_reason=reason, state_changed_at=self._clock())).rowcount

        if self._transaction(write) == 0:
            raise NotFound(f"error case {case_id!r} does not exist")
        log.info("quarantined error case %s: %s", case_id, reason)

    def mark_consumed(self, case_ids: Iterable[str], run_id: str) -> int:
        """Mark new cases as trained on by ``run_id``; return how many changed state.

        Only a run that reached a verdict (deployed, rejected, held, rolled_back) consumes its cases; after a
        ``failed`` or ``skipped`` run nothing changes and the cases stay new for the next run. Calling
        this for an unknown run, or one still running, is an error: finish the run first. Cases that are not
        new (already consumed, quarantined) are left as they are, so calling again is harmless.
        """
        ids = sorted(set(case_ids))
        run = self.training_run(run_id)
        if run.status == "running":
            raise StoreError(f"training run {run_id!r} is still running; finish it before marking cases consumed")
        if run.status not in CONSUMING_STATUSES:
            log.info("training run %s finished %s: its %d cases stay new", run_id, run.status, len(ids))
            return 0
        t = cases_table

        def write(conn: Connection) -> int:
            changed = 0
            for chunk in _chunks(ids, 500):
                changed += conn.execute(sa.update(t).where(t.c.id.in_(chunk), t.c.state == "new").values(
                    state="consumed", consumed_by_run=run_id, state_changed_at=self._clock())).rowcount
            return changed

        changed = self._transaction(write)
        log.info("training run %s consumed %d of %d cases", run_id, changed, len(ids))
        return changed

    # ---------------------------------------------------------------------------------------- training runs

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
            row = conn.execute(sa.select(t).where(t.c.run_id == run_id)).first()
            if row is None:
                conn.execute(sa.insert(t).values(run_id=run_id, started_at=now, status="running", summary=summary))
            elif row.status in CONSUMING_STATUSES:
                raise StoreError(f"training run {run_id!r} already finished {row.status}; use a new run id")
            elif row.status != "running":
                log.info("training run %s restarts after %s", run_id, row.status)
                conn.execute(sa.update(t).where(t.c.run_id == run_id).values(
                    status="running", started_at=now, finished_at=None, summary=summary))
            elif claimed_by is None and not (row.summary or {}).get("started", True):
                log.info("claimed training run %s started", run_id)
                conn.execute(sa.update(t).where(t.c.run_id == run_id).values(
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
            return conn.execute(sa.update(t).where(t.c.run_id == run_id, t.c.status == "running").values(
                status="failed", finished_at=now, summary=summary)).rowcount

        changed = self._transaction(write) > 0
        if changed:
            log.info("training run %s failed: %s", run_id, reason)
        return changed

    def running_training_runs(self) -> list[TrainingRun]:
        """Rows still marked ``running``, oldest first (reconciled by :mod:`tuneloop.runs`)."""
        t = runs_table
        query = sa.select(t).where(t.c.status == "running").order_by(t.c.started_at, t.c.run_id)
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
            row = conn.execute(sa.select(t).where(t.c.run_id == run_id)).first()
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
                conn.execute(sa.insert(t).values({"run_id": run_id, "started_at": now, "summary": {}} | changes))
            else:
                conn.execute(sa.update(t).where(t.c.run_id == run_id).values(changes))

        self._transaction(write)
        log.info("training run %s finished: %s", run_id, status)
        return self.training_run(run_id)

    def training_run(self, run_id: str) -> TrainingRun:
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(runs_table).where(runs_table.c.run_id == run_id)).first()
        if row is None:
            raise NotFound(f"training run {run_id!r} does not exist")
        return _run_from_row(row)

    def training_runs(self, limit: int = 20) -> list[TrainingRun]:
        """Most recent first."""
        t = runs_table
        query = sa.select(t).order_by(t.c.started_at.desc(), t.c.run_id.desc()).limit(limit)
        with self._engine.connect() as conn:
            return [_run_from_row(row) for row in conn.execute(query)]

    def last_finished_training(self) -> TrainingRun | None:
        """The run that finished last among those that trained (any finished status but skipped; not a claimed
        run that failed before it started, nor one ended without a result by :meth:`fail_training_run`)."""
        t = runs_table
        query = (sa.select(t).where(t.c.status.in_(TRAINED_STATUSES), t.c.finished_at.is_not(None))
                 .order_by(t.c.finished_at.desc(), t.c.run_id.desc()))
        with self._engine.connect() as conn:
            for row in conn.execute(query):
                summary = row.summary or {}
                if summary.get("started", True) and not summary.get("no_result"):
                    return _run_from_row(row)
        return None

    # ----------------------------------------------------------------------------------------- deployments

    def record_deployment(self, event: DeploymentEvent) -> bool:
        """Append a registry move; return False when it was already recorded.

        An event with a run id is recorded once per (action, model, from, to, run id), so a retried task does not
        write it twice even though its ``at`` differs; without a run id the time is part of the identity.
        """
        identity = [event.action, event.model_name, event.from_version, event.to_version, event.run_id]
        if event.run_id is None:
            identity.append(as_utc(event.at).isoformat())
        key = sha256(json.dumps(identity))
        details = _json_value("details", dict(event.details))
        t = deployments_table

        def write(conn: Connection) -> bool:
            if conn.execute(sa.select(t.c.id).where(t.c.event_key == key)).first() is not None:
                return False
            conn.execute(sa.insert(t).values(
                event_key=key, action=event.action, model_name=event.model_name, from_version=event.from_version,
                to_version=event.to_version, reason=event.reason, actor=event.actor, run_id=event.run_id,
                at=event.at, details=details))
            return True

        return self._transaction(write)

    def deployment_history(self, model_name: str | None = None, limit: int = 50) -> list[DeploymentEvent]:
        """Newest first."""
        t = deployments_table
        query = sa.select(t).order_by(t.c.at.desc(), t.c.id.desc()).limit(limit)
        if model_name is not None:
            query = query.where(t.c.model_name == model_name)
        with self._engine.connect() as conn:
            return [
                DeploymentEvent(action=row.action, model_name=row.model_name, from_version=row.from_version,
                                to_version=row.to_version, reason=row.reason, actor=row.actor, run_id=row.run_id,
                                at=row.at, details=dict(row.details or {}))
                for row in conn.execute(query)
            ]

    def deployed_versions(self, model_name: str) -> list[str]:
        """Versions that have been production (bootstrap, deploy, rollback), newest first, each once.

        The first entry is the current production version; the rest are rollback targets in order of preference.
        """
        t = deployments_table
        query = (sa.select(t.c.to_version)
                 .where(t.c.model_name == model_name, t.c.action.in_(PRODUCTION_ACTIONS), t.c.to_version.is_not(None))
                 .order_by(t.c.at.desc(), t.c.id.desc()))
        with self._engine.connect() as conn:
            return list(dict.fromkeys(conn.execute(query).scalars()))

    def ingest_rejections(self, limit: int = 100) -> list[IngestRejection]:
        """Most recent first."""
        t = rejections_table
        query = sa.select(t).order_by(t.c.at.desc(), t.c.id.desc()).limit(limit)
        with self._engine.connect() as conn:
            return [IngestRejection(row.batch, row.line, row.field, row.reason, row.snippet, row.at)
                    for row in conn.execute(query)]

    # ------------------------------------------------------------------------------------- regression suites

    def register_suite(self, spec: Any) -> None:
        """Register (or replace) a regression suite by name: the API twin of ``regression.suites`` in config."""
        from tuneloop.config import SuiteSpec

        spec = SuiteSpec.model_validate(spec)
        value = spec.model_dump(mode="json")
        t = suites_table

        def write(conn: Connection) -> None:
            conn.execute(sa.delete(t).where(t.c.name == spec.name))
            conn.execute(sa.insert(t).values(name=spec.name, spec=value, registered_at=self._clock()))

        self._transaction(write)

    def registered_suites(self) -> list[Any]:
        """Suites registered through :meth:`register_suite`, by name."""
        from tuneloop.config import SuiteSpec

        with self._engine.connect() as conn:
            rows = conn.execute(sa.select(suites_table).order_by(suites_table.c.name))
            return [SuiteSpec.model_validate(row.spec) for row in rows]

    def record_suite_result(self, run_id: str, result: Mapping[str, Any], *, at: datetime | None = None) -> bool:
        """Keep one suite's result for a run (``SuiteResult.to_dict()``); a retried run does not add it twice."""
        t = suite_results_table
        value = _json_value("result", dict(result))

        def write(conn: Connection) -> bool:
            if conn.execute(sa.select(t.c.id).where(t.c.suite == result["name"], t.c.run_id == run_id)).first():
                return False
            conn.execute(sa.insert(t).values(
                suite=result["name"], model_version=result.get("model_version"), run_id=run_id,
                at=as_utc(at) if at else self._clock(), wer=result["wer"], cer=result["cer"], n=result["n"],
                passed=bool(result["passed"]), result=value))
            return True

        return self._transaction(write)

    def suite_history(self, suite: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Suite results, newest first: {suite, model_version, run_id, at, wer, cer, n, passed, result}."""
        t = suite_results_table
        query = sa.select(t).order_by(t.c.at.desc(), t.c.id.desc()).limit(limit)
        if suite is not None:
            query = query.where(t.c.suite == suite)
        with self._engine.connect() as conn:
            return [{"suite": r.suite, "model_version": r.model_version, "run_id": r.run_id, "at": r.at,
                     "wer": r.wer, "cer": r.cer, "n": r.n, "passed": r.passed, "result": dict(r.result)}
                    for r in conn.execute(query)]

    # ------------------------------------------------------------------------------------------- plumbing

    def _transaction(self, work: Callable[[Connection], _T]) -> _T:
        """Run ``work`` in one write transaction; retry once when a concurrent writer won a unique-key race."""
        try:
            with self._writer.begin() as conn:
                return work(conn)
        except IntegrityError:
            log.info("concurrent write to the store; retrying once")
        with self._writer.begin() as conn:
            return work(conn)


# ----------------------------------------------------------------------------------------------- helpers


def _json_value(name: str, value: dict[str, Any]) -> dict[str, Any]:
    """Check that ``value`` is plain JSON (no NaN, no datetimes) so every database stores it the same way."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name}: must be plain JSON ({error})") from error


def _is_transient(error: DBAPIError) -> bool:
    """Errors of the database, not of the row: retrying the same row later may succeed."""
    return error.connection_invalidated or isinstance(error, (sa.exc.OperationalError, sa.exc.InterfaceError))


def _batched(items: Iterable[_T], size: int) -> Iterable[list[_T]]:
    batch: list[_T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _grouped(conn: Connection, key: sa.ColumnElement[Any], aggregate: sa.ColumnElement[Any]) -> dict[Any, Any]:
    return {k: v for k, v in conn.execute(sa.select(key, aggregate).group_by(key)).tuples()}


def _case_from_row(row: sa.Row[Any]) -> ErrorCase:
    return ErrorCase(
        id=row.id, created_at=row.created_at, source=row.source, model_version=row.model_version,
        audio_uri=row.audio_uri, audio_hash=row.audio_hash, prediction=row.prediction, correction=row.correction,
        error_types=tuple(row.error_types or ()), error_score=row.error_score, annotator=row.annotator,
        metadata=dict(row.meta or {}), content_hash=row.content_hash, state=row.state,
        state_reason=row.state_reason, consumed_by_run=row.consumed_by_run,
    )


def _run_from_row(row: sa.Row[Any]) -> TrainingRun:
    return TrainingRun(run_id=row.run_id, status=row.status, started_at=row.started_at, finished_at=row.finished_at,
                       dataset_id=row.dataset_id, candidate_version=row.candidate_version,
                       summary=dict(row.summary or {}))


def _make_engine(url: str) -> Engine:
    """An engine for ``url``; a bad URL or a missing driver is a StoreError naming the URL."""
    try:
        parsed = sa.make_url(url)
    except ArgumentError as error:
        raise StoreError(f"store_url: not a SQLAlchemy URL: {url!r}") from error
    try:
        if parsed.get_backend_name() == "sqlite":
            return _sqlite_engine(parsed)
        return sa.create_engine(parsed, pool_pre_ping=True)
    except (ArgumentError, ImportError) as error:
        raise StoreError(f"store_url {parsed.render_as_string(hide_password=True)}: {error}") from error


def _sqlite_engine(url: sa.URL) -> Engine:
    """SQLite set up for several Airflow tasks writing at once: WAL (readers never wait), a busy timeout, and
    write transactions that take the write lock when they begin (BEGIN IMMEDIATE), so two writers queue instead
    of one failing with "database is locked" when it upgrades a read to a write."""
    database = url.database or ""
    if database in ("", ":memory:"):
        engine = sa.create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
    else:
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30})
    sa.event.listen(engine, "connect", _sqlite_connect)
    sa.event.listen(engine, "begin", _sqlite_begin)
    return engine


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # SQLAlchemy's "begin" event below starts transactions, not pysqlite
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE_OPTION) else "BEGIN")


def _create_tables(engine: Engine) -> None:
    """Create missing tables; fail fast when the database cannot be reached.

    Processes starting together race (one sees "table already exists" for a table another just created); each
    retry finds at least one more table in place, so one attempt per table always ends the race.
    """
    url = engine.url.render_as_string(hide_password=True)
    try:
        with engine.connect():
            pass
    except DBAPIError as error:
        raise StoreError(f"store {url} is not reachable: {error.orig}") from error
    for _ in range(len(metadata.tables) + 1):
        try:
            metadata.create_all(engine.execution_options(**{_WRITE_OPTION: True}))
            return
        except DBAPIError as error:
            last = error
            log.info("creating the store's tables raced with another process (%s); retrying", error.orig)
    raise StoreError(f"store {url}: cannot create its tables: {last.orig}") from last
